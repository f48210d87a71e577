//! A TUN device the operator made before sockstun ran (`ip tuntap add`,
//! systemd-networkd, a container runtime) is theirs: sockstun opens it and
//! leaves its addresses, MTU and routes alone, unless a flag asks for a
//! change, which it undoes at exit.

mod common;

use common::tun_rig::*;
use common::*;
use std::time::Duration;

/// What the operator configured on `dev`: addresses, MTU and queue length,
/// and the default routes of both families. Left out: what the kernel changes by itself when
/// a reader attaches (the carrier comes up: the IPv6 link-local address, the
/// routes' `linkdown` mark).
type Snapshot = (Vec<String>, String, String, String);

fn snapshot(ns: &Netns, dev: &str) -> Snapshot {
    let addrs = String::from_utf8_lossy(&ns.ip(&["-o", "addr", "show", "dev", dev]).stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|&t| t == "inet" || t == "inet6")?;
            w.next().map(str::to_string)
        })
        .filter(|a: &String| !a.starts_with("fe80:"))
        .collect();
    let sys = |attr: &str| {
        let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/{attr}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mtu = format!("mtu {} qlen {}", sys("mtu"), sys("tx_queue_len"));
    let route = |fam: &str| {
        let out = ns.ip(&[fam, "route", "show", "default"]);
        String::from_utf8_lossy(&out.stdout).replace(" linkdown", "")
    };
    let (r4, r6) = (route("-4"), route("-6"));
    (addrs, mtu, r4, r6)
}

/// The rig with the operator's persistent device in the client namespace: a
/// /30, MTU 1500, default routes of both families through it (`owner`: more
/// words for `ip tuntap add`).
fn operator_rig(tag: &str, owner: &[&str]) -> (Topology, TempDir, Proc, String) {
    let topo = Topology::new(tag);
    let dir = TempDir::new("stunx");
    let dante = start_dante(&topo, &dir);
    start_servers(&topo);
    let dev = uniq("stpx");
    let c = &topo.client;
    let mut add = vec!["tuntap", "add", "dev", &dev, "mode", "tun"];
    add.extend_from_slice(owner);
    c.ip(&add);
    c.ip(&["addr", "add", "198.18.0.1/30", "dev", &dev]);
    c.ip(&["link", "set", "dev", &dev, "mtu", "1500", "up"]);
    topo.route_default_via_tun(&dev);
    (topo, dir, dante, dev)
}

/// Both families echo through the TUN; then sockstun stops cleanly and the
/// device is as `before` (what the operator made, or nothing of ours left).
fn echo_stop_and_compare(r: &mut Rig, dev: &str, before: &Snapshot, what: &str) {
    for v6 in [false, true] {
        assert_eq!(echo(r, v6), Ok(()), "v6={v6}\n{}", r.tun.log());
    }
    stop(&mut r.tun);
    assert_eq!(&snapshot(&r.topo.client, dev), before, "{what}");
}

fn stop(tun: &mut Proc) {
    tun.signal(libc::SIGTERM);
    let st = tun
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "exit status {st:?}\n{}", tun.log());
}

#[test]
fn tun_existing_device_keeps_what_the_operator_set() {
    if !require_root("tun_existing_device_keeps_what_the_operator_set") {
        return;
    }
    let (topo, dir, dante, dev) = operator_rig("te", &[]);
    let url = format!("socks5://{PROXY_V4}:{DANTE_PORT}");
    let c = &topo.client;
    let before = snapshot(c, &dev);
    assert!(
        before.2.contains(&dev) && before.3.contains(&dev),
        "{before:?}"
    );

    // Opened with no address or MTU flag: nothing changes, flows work. A
    // single-queue device is read on its one queue whatever --queues says.
    let admin = "127.0.0.1:9912";
    let tun = start_tun_on(&topo, &url, &dev, &["--queues", "2", "--admin", admin]);
    let mut r = Rig {
        tun,
        dev: dev.clone(),
        upstream: Some(dante),
        _dir: dir,
        topo,
    };
    assert_eq!(
        snapshot(&r.topo.client, &dev),
        before,
        "changed while running\n{}",
        r.tun.log()
    );
    assert!(
        r.tun.log().contains("opened existing TUN device"),
        "{}",
        r.tun.log()
    );
    assert!(
        r.tun.log().contains("is a single-queue device") && r.tun.log().contains("queues=1"),
        "{}",
        r.tun.log()
    );
    echo_stop_and_compare(&mut r, &dev, &before, "changed after exit");

    // Explicit flags: the address is added beside the operator's (whose
    // routes stay), the MTU set; both are undone at exit.
    r.tun = start_tun_on(
        &r.topo,
        &url,
        &dev,
        &[
            "--ipv4",
            "198.18.0.5/30",
            "--ipv6",
            "2001:db8:ff::1/64",
            "--mtu",
            "0x578",
        ],
    );
    let during = snapshot(&r.topo.client, &dev);
    for a in ["198.18.0.1/30", "198.18.0.5/30", "2001:db8:ff::1/64"] {
        assert!(during.0.iter().any(|x| x == a), "{a} missing: {during:?}");
    }
    assert_eq!(during.1, "mtu 1400 qlen 500");
    assert_eq!(
        (&during.2, &during.3),
        (&before.2, &before.3),
        "routes changed"
    );
    echo_stop_and_compare(&mut r, &dev, &before, "not undone at exit");

    // A start that fails half-way undoes what it did: the MTU is set, then
    // the IPv6 address cannot be added (IPv6 is off on the device).
    let c = &r.topo.client;
    c.sh(&format!("sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1"));
    let bin = sockstun_bin();
    let url2 = url.clone();
    let out = c.exec(&[
        bin.to_str().unwrap(),
        "tun",
        "--proxy",
        &url2,
        "--device",
        &dev,
        "--mtu",
        "1400",
        "--ipv6",
        "2001:db8:ff::1/64",
    ]);
    assert!(!out.status.success(), "started with IPv6 off on the device");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2001:db8:ff::1/64"), "{err}");
    assert_eq!(
        snapshot(c, &dev).1,
        before.1,
        "MTU left changed after a failed start\n{err}"
    );
    c.sh(&format!("sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=0"));

    // A device left down is brought up for the run and down again after.
    r.topo.client.ip(&["link", "set", "dev", &dev, "down"]);
    let is_up = |r: &Rig| {
        let out = r
            .topo
            .client
            .exec(&["cat", &format!("/sys/class/net/{dev}/flags")]);
        let f = String::from_utf8_lossy(&out.stdout);
        u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).unwrap() & 1 == 1
    };
    r.tun = start_tun_on(&r.topo, &url, &dev, &[]);
    assert!(is_up(&r), "{}", r.tun.log());
    stop(&mut r.tun);
    assert!(!is_up(&r), "left up");
    let exists = r.topo.client.exec(&["ip", "link", "show", "dev", &dev]);
    assert!(exists.status.success(), "the operator's device was removed");
}

/// The operator's persistent multi-queue device (`ip tuntap add ...
/// multi_queue`) is opened as it was made: `--queues 2` attaches 2 queues,
/// flows of both families work on both, the default opens as many as it
/// can use (1 with --queues 1), and at exit the device is still there,
/// still multi-queue, with nothing of the operator's changed.
#[test]
fn tun_existing_multi_queue_device_is_read_on_its_queues() {
    if !require_root("tun_existing_multi_queue_device_is_read_on_its_queues") {
        return;
    }
    let (topo, dir, dante, dev) = operator_rig("tm", &["multi_queue"]);
    let url = format!("socks5://{PROXY_V4}:{DANTE_PORT}");
    let before = snapshot(&topo.client, &dev);
    let admin = "127.0.0.1:9912";
    let tun = start_tun_on(&topo, &url, &dev, &["--queues", "2", "--admin", admin]);
    let mut r = Rig {
        tun,
        dev: dev.clone(),
        upstream: Some(dante),
        _dir: dir,
        topo,
    };
    let sys = |r: &Rig, path: &str| {
        let out = r
            .topo
            .client
            .exec(&["sh", "-c", &format!("ls /sys/class/net/{dev}/{path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(r.tun.log().contains("queues=2"), "{}", r.tun.log());
    assert_eq!(
        sys(&r, "queues").matches("rx-").count(),
        2,
        "{}",
        sys(&r, "queues")
    );
    // Enough flows that both queues carry some (one in 2^16 runs would not).
    for i in 0..16 {
        assert_eq!(echo(&r, i % 2 == 1), Ok(()), "flow {i}\n{}", r.tun.log());
    }
    let scrape = admin_get(&r.topo.client, admin, "/metrics").1;
    for q in ["0", "1"] {
        let series = format!("sockstun_queue_tcp_flows_opened_total{{queue=\"{q}\"}}");
        let n = sample(&scrape, &series).unwrap_or(0.0);
        assert!(n > 0.0, "queue {q} carried no flow\n{scrape}");
    }
    stop(&mut r.tun);
    let flags = r
        .topo
        .client
        .exec(&["cat", &format!("/sys/class/net/{dev}/tun_flags")]);
    let flags = String::from_utf8_lossy(&flags.stdout);
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_ne!(flags & 0x100, 0, "no longer multi-queue: {flags:#x}");
    assert_eq!(snapshot(&r.topo.client, &dev), before, "changed after exit");
    r.tun = start_tun_on(&r.topo, &url, &dev, &["--queues", "1"]);
    assert!(
        r.tun.log().contains("is a multi-queue device") && r.tun.log().contains("queues=1"),
        "{}",
        r.tun.log()
    );
    echo_stop_and_compare(&mut r, &dev, &before, "changed after exit");
}

/// An unprivileged user runs sockstun on a persistent device made for it
/// (`ip tuntap add ... user nobody`): no capability is needed to open it and
/// nothing is configured, so flows work and the exit is clean.
#[test]
fn tun_unprivileged_user_on_its_own_device() {
    if !require_root("tun_unprivileged_user_on_its_own_device") {
        return;
    }
    let (topo, dir, dante, dev) = operator_rig("tq", &["user", "65534"]);
    let c = &topo.client;
    let before = snapshot(c, &dev);
    // Debian makes /dev/net/tun 0666; a hardened host may not. Give this
    // run's mount namespace (private to `ip netns exec`) a node that is, so
    // the test does not depend on the host's choice and changes nothing of it.
    let node = dir.file("tun");
    let dir_path = dir.file("");
    let bin = sockstun_bin();
    let script = format!(
        "mknod -m 0666 {node} c 10 200 && mount --bind {node} /dev/net/tun && chmod 0700 {dir} && exec setpriv \
         --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all {} --log debug \
         tun --proxy socks5://{PROXY_V4}:{DANTE_PORT} --device {dev}",
        bin.display(),
        dir = dir_path,
    );
    let tun = c.spawn(&["sh", "-c", &script]);
    assert!(
        wait_until(Duration::from_secs(10), || tun
            .log()
            .contains("TUN device up")),
        "{}",
        tun.log()
    );
    let mut r = Rig {
        tun,
        dev: dev.clone(),
        upstream: Some(dante),
        _dir: dir,
        topo,
    };
    echo_stop_and_compare(&mut r, &dev, &before, "changed after exit");
}
