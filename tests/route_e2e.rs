//! The routing scripts with the real `sockstun tun` and a real upstream
//! (dante-server), end to end:
//!
//! ```text
//!  lan client ---- machine / gateway ---------- isp + proxy (danted) ---- target (HTTP)
//!  eth0             lan0       up0               isp0   lo         p1        t0
//!  .130/25          .129/25    198.51.100.2/25   .1/25  .200/32    203.0.113.1/24  .2/24
//!  2001:db8:3::2    ::1        2001:db8:1::2     ::1    1:ff::1    2001:db8:2::1   ::2
//! ```
//! The machine's default routes point at the isp namespace, which does not
//! forward: the target is reachable only through the proxy. 198.51.100.200 (on
//! the isp's lo) is reached over the machine's default route, so it lies inside
//! the range route-up sends into the TUN.

mod common;

use common::routes::*;
use common::{
    http_dir_server, require_root, spawn_tun, uniq, wait_until, Dante, EtcNetns, Netns, Proc,
    TempDir, DANTE_UDP, TUN_V4, TUN_V6,
};
use std::time::Duration;

const FWMARK: &str = "1080";
/// The same mark as `ip rule` prints it; dist/sockstun-tun@.service passes one
/// value to both sockstun and route-up, so both must take this form too.
const FWMARK_HEX: &str = "0x438";
const BODY: &str = "hello from the target, through the tunnel\n";
const BIG: usize = 4 << 20;

struct Net {
    m: Netns,
    isp: Netns,
    _target: Netns,
    lan: Option<Netns>,
    _etc: Vec<EtcNetns>,
    tmp: TempDir,
    dante: Proc,
    _http: Proc,
    _udp_echo: Proc,
}

impl Net {
    fn new(tag: &str, with_lan: bool) -> Net {
        let (m, isp) = uplinked_machine(tag);
        let target = target_behind(tag, &isp);
        isp.ip(&["addr", "add", "198.51.100.200/32", "dev", "lo"]);
        isp.ip(&["addr", "add", "2001:db8:1:ff::1/128", "dev", "lo"]);
        isp.sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
        let lan = with_lan.then(|| lan_behind(tag, &m));

        let tmp = TempDir::new("route-e2e");
        // The proxy resolves the names it is asked for from its own hosts file.
        let etc_isp = EtcNetns::new(&isp);
        etc_isp.file("hosts", "127.0.0.1 localhost\n203.0.113.2 target.test\n");

        let dante = Dante {
            internal: &["198.51.100.1", "2001:db8:1::1", "198.51.100.200"],
            external: &["p1"],
            client_rule: &["log: connect error"],
            socks_rule: &[DANTE_UDP, "log: connect error"],
            log_file: false,
            mothers: Some(1),
        }
        .start(&isp, &tmp);
        let www = tmp.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), BODY).unwrap();
        std::fs::write(www.join("big.bin"), vec![b'x'; BIG]).unwrap();
        let http = http_dir_server(&target, 80, www.to_str().unwrap());
        // UDP echo on both families, for the UDP relay through the proxy.
        let udp_echo = target.spawn(&[
            "python3",
            "-c",
            "import socket\n\
             s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.bind(('::', 7007))\n\
             while True:\n    d, a = s.recvfrom(4096)\n    s.sendto(d, a)\n",
        ]);
        for addr in ["sport = :80", "sport = :7007"] {
            let ok = wait_until(Duration::from_secs(10), || {
                let out = target.exec(&["ss", "-Hln", addr]);
                !String::from_utf8_lossy(&out.stdout).trim().is_empty()
            });
            assert!(ok, "nothing listens on {addr}");
        }
        Net {
            m,
            isp,
            _target: target,
            lan,
            _etc: vec![etc_isp],
            tmp,
            dante,
            _http: http,
            _udp_echo: udp_echo,
        }
    }

    /// `sockstun tun` in the machine namespace; returns once its device is up.
    fn sockstun(&self, proxy: &str, extra: &[&str]) -> (Proc, String) {
        let dev = uniq("stun");
        let mut args = vec!["--ipv4", TUN_V4, "--ipv6", TUN_V6, "--connect-timeout", "3"];
        args.extend_from_slice(extra);
        let p = spawn_tun(&self.m, "debug,smoltcp=info", proxy, &dev, &args);
        wait_tun_up(&self.m, &dev, &p);
        (p, dev)
    }
}

/// curl inside `ns`; Ok(body) or Err(curl's exit code and message).
fn curl(ns: &Netns, url: &str) -> Result<String, String> {
    let out = ns.exec(&["curl", "-sS", "-g", "--max-time", "10", url]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text(&out))
    }
}

fn assert_through(net: &Net, ns: &Netns, url: &str, dante_sees: &str, tun: &Proc) {
    assert_eq!(
        curl(ns, url).as_deref(),
        Ok(BODY),
        "curl {url}\n--- sockstun ---\n{}\n--- dante ---\n{}",
        tun.log(),
        net.dante.log()
    );
    let ok = wait_until(Duration::from_secs(5), || {
        net.dante.log().contains(dante_sees)
    });
    assert!(
        ok,
        "dante's log does not show {dante_sees:?}:\n{}",
        net.dante.log()
    );
}

/// The addresses `dig +short` answers inside `ns` (its error messages dropped).
fn dig(ns: &Netns, args: &str) -> String {
    let out = ns.exec(&["sh", "-c", &format!("dig +short +time=2 +tries=1 {args}")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.parse::<std::net::IpAddr>().is_ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// No path to the target: curl fails (at once with an ICMP error, or, where
/// packets are silently dropped, after its 2 s limit).
fn no_way_out(ns: &Netns, urls: &[&str]) {
    for url in urls {
        let out = ns.exec(&["curl", "-sS", "-g", "--max-time", "2", url]);
        let r = if out.status.success() {
            Ok(text(&out))
        } else {
            Err(text(&out))
        };
        assert!(r.is_err(), "{url} reachable without the tunnel: {r:?}");
    }
}

#[test]
fn machine_mode_through_the_proxy_and_back() {
    if !require_root("machine_mode_through_the_proxy_and_back") {
        return;
    }
    let net = Net::new("re", false);
    let m = &net.m;
    no_way_out(m, &["http://203.0.113.2/", "http://[2001:db8:2::2]/"]);
    let etc = EtcNetns::new(m);
    let resolv = etc.file(
        "resolv.conf",
        "search example.test\nnameserver 192.0.2.53\n",
    );
    let state = net.tmp.join("route.state");
    let (tun, dev) = net.sockstun("socks5://198.51.100.1:1080", &["--fwmark", FWMARK]);
    let before = snapshot(m, Some(&resolv));

    let st = state.to_str().unwrap();
    let args = [
        "--device",
        &dev,
        "--proxy",
        "198.51.100.1",
        "--fwmark",
        FWMARK,
        "--resolv-conf",
        resolv.to_str().unwrap(),
        "--state",
        st,
    ];
    ok_script(m, "route-up", &args);
    // The proxy connection comes from the machine's uplink address: direct.
    assert_through(&net, m, "http://203.0.113.2/", "198.51.100.2.", &tun);
    assert!(
        net.dante.log().contains("203.0.113.2.80"),
        "{}",
        net.dante.log()
    );
    assert_through(&net, m, "http://[2001:db8:2::2]/", "2001:db8:2::2.80", &tun);
    let got = stdout(m, "ip route get 198.51.100.1");
    assert!(got.contains("dev up0"), "{got}");

    // Idempotent while traffic flows.
    ok_script(m, "route-up", &args);
    assert_through(&net, m, "http://203.0.113.2/", "203.0.113.2.80", &tun);

    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        before,
        "route-down did not restore"
    );
    no_way_out(m, &["http://203.0.113.2/"]);
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, Some(&resolv)), before, "second route-down");
}

#[test]
fn machine_mode_proxy_inside_routed_range_uses_fwmark() {
    if !require_root("machine_mode_proxy_inside_routed_range_uses_fwmark") {
        return;
    }
    let net = Net::new("rf", false);
    let m = &net.m;
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    let (tun, dev) = net.sockstun("socks5://198.51.100.200:1080", &["--fwmark", FWMARK_HEX]);
    let before = snapshot(m, None);
    // No --proxy: only the mark keeps sockstun's connection out of the TUN.
    ok_script(
        m,
        "route-up",
        &[
            "--device", &dev, "--fwmark", FWMARK_HEX, "--no-dns", "--state", st,
        ],
    );
    let unmarked = stdout(m, "ip route get 198.51.100.200");
    assert!(
        unmarked.contains(&format!("dev {dev}")),
        "proxy not in the routed range: {unmarked}"
    );
    let marked = stdout(m, &format!("ip route get 198.51.100.200 mark {FWMARK_HEX}"));
    assert!(marked.contains("dev up0"), "{marked}");
    assert_through(&net, m, "http://203.0.113.2/", "198.51.100.200.1080", &tun);
    assert_through(&net, m, "http://[2001:db8:2::2]/", "2001:db8:2::2.80", &tun);
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, None), before);
}

/// One UDP datagram to the target's echo port from inside `ns`, answered?
/// (retried a few times: UDP may lose the first packet while the association
/// is set up).
fn udp_echo(ns: &Netns, host: &str) -> Result<(), String> {
    let code = format!(
        "import socket, sys\n\
         fam = socket.AF_INET6 if ':' in '{host}' else socket.AF_INET\n\
         s = socket.socket(fam, socket.SOCK_DGRAM)\n\
         s.settimeout(1)\n\
         for i in range(5):\n    \
             s.sendto(b'udp-ping', ('{host}', 7007))\n    \
             try:\n        d = s.recv(100)\n    except socket.timeout:\n        continue\n    \
             sys.exit(0 if d == b'udp-ping' else 2)\n\
         sys.exit(1)\n"
    );
    let out = ns.exec(&["python3", "-c", &code]);
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

/// UDP through the TUN: the UDP relay socket towards the proxy carries the
/// mark too (the proxy is inside the routed range and has no --proxy rule).
#[test]
fn machine_mode_udp_relay_carries_the_mark() {
    if !require_root("machine_mode_udp_relay_carries_the_mark") {
        return;
    }
    let net = Net::new("ru", false);
    let m = &net.m;
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    let (tun, dev) = net.sockstun("socks5://198.51.100.200:1080", &["--fwmark", FWMARK]);
    assert!(
        udp_echo(m, "203.0.113.2").is_err(),
        "UDP reaches the target directly"
    );
    ok_script(
        m,
        "route-up",
        &[
            "--device", &dev, "--fwmark", FWMARK, "--no-dns", "--state", st,
        ],
    );
    for host in ["203.0.113.2", "2001:db8:2::2"] {
        let r = udp_echo(m, host);
        assert!(
            r.is_ok(),
            "UDP echo {host}: {r:?}\n{}\n{}",
            tun.log(),
            net.dante.log()
        );
    }
    ok_script(m, "route-down", &["--state", st]);
}

/// The other guard alone: no mark, only the `--proxy` address rule keeps the
/// proxy connection direct; sockstun pins it to the uplink with
/// `--bind-interface` (SO_BINDTODEVICE), the alternative to `--fwmark`.
#[test]
fn machine_mode_proxy_rule_and_bind_interface() {
    if !require_root("machine_mode_proxy_rule_and_bind_interface") {
        return;
    }
    let net = Net::new("rb", false);
    let m = &net.m;
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    let (tun, dev) = net.sockstun("socks5://198.51.100.200:1080", &["--bind-interface", "up0"]);
    let before = snapshot(m, None);
    ok_script(
        m,
        "route-up",
        &[
            "--device",
            &dev,
            "--proxy",
            "198.51.100.200:1080",
            "--no-dns",
            "--state",
            st,
        ],
    );
    let rules = stdout(m, "ip rule");
    assert!(!rules.contains("fwmark"), "{rules}");
    assert_through(&net, m, "http://203.0.113.2/", "198.51.100.200.1080", &tun);
    assert_through(&net, m, "http://[2001:db8:2::2]/", "2001:db8:2::2.80", &tun);
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, None), before);
}

#[test]
fn machine_mode_restored_after_kill_9() {
    if !require_root("machine_mode_restored_after_kill_9") {
        return;
    }
    let net = Net::new("rk", false);
    let m = &net.m;
    let etc = EtcNetns::new(m);
    let resolv = etc.file("resolv.conf", "nameserver 192.0.2.53\noptions ndots:2\n");
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    // Before sockstun: its device vanishes with it.
    let before = snapshot(m, Some(&resolv));
    let (mut tun, dev) = net.sockstun("socks5://198.51.100.1:1080", &["--fwmark", FWMARK]);
    ok_script(
        m,
        "route-up",
        &[
            "--device",
            &dev,
            "--proxy",
            "198.51.100.1",
            "--fwmark",
            FWMARK,
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--state",
            st,
        ],
    );
    assert_through(&net, m, "http://203.0.113.2/", "203.0.113.2.80", &tun);
    // Kill it in the middle of a (rate-limited) download.
    let part = net.tmp.join("big.part");
    let mut dl = m.spawn(&[
        "curl",
        "-sS",
        "--limit-rate",
        "256k",
        "--speed-limit",
        "1",
        "--speed-time",
        "3",
        "-o",
        part.to_str().unwrap(),
        "http://203.0.113.2/big.bin",
    ]);
    let started = wait_until(Duration::from_secs(10), || {
        std::fs::metadata(&part).is_ok_and(|md| md.len() > 0)
    });
    assert!(started, "download did not start: {}", dl.log());
    tun.signal(libc::SIGKILL);
    assert!(
        tun.wait_exit(Duration::from_secs(10)).is_some(),
        "sockstun survived SIGKILL"
    );
    let gone = wait_until(Duration::from_secs(10), || {
        !m.exec(&["ip", "link", "show", "dev", &dev])
            .status
            .success()
    });
    assert!(gone, "{dev} still there after sockstun died");
    let st_dl = dl.wait_exit(Duration::from_secs(30));
    assert!(
        st_dl.is_some_and(|s| !s.success()),
        "download: {st_dl:?} {}",
        dl.log()
    );
    let got = std::fs::metadata(&part).map(|md| md.len()).unwrap_or(0);
    assert!(got < BIG as u64, "the download finished before the kill");
    // Kill switch: nothing leaks out of the uplink meanwhile; fails at once.
    let r = curl(m, "http://203.0.113.2/");
    assert!(
        r.as_ref().is_err_and(|e| e.contains("status Some(7)")),
        "{r:?}"
    );

    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        before,
        "route-down after kill -9"
    );
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, Some(&resolv)), before);
}

#[test]
fn gateway_mode_lan_through_the_proxy() {
    if !require_root("gateway_mode_lan_through_the_proxy") {
        return;
    }
    let net = Net::new("rg", true);
    let (m, lan) = (&net.m, net.lan.as_ref().unwrap());
    let urls = ["http://203.0.113.2/", "http://[2001:db8:2::2]/"];
    no_way_out(lan, &urls);
    let state = net.tmp.join("gateway.state");
    let st = state.to_str().unwrap();
    // A hardened gateway: strict reverse-path filtering, which would drop the
    // replies sockstun writes into the TUN unless gateway-up handles it.
    m.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1");
    let (tun, dev) = net.sockstun("socks5://198.51.100.1:1080", &["--mtu", "1280"]);
    no_way_out(lan, &urls);
    let before = snapshot(m, None);

    ok_script(
        m,
        "gateway-up",
        &["--device", &dev, "--lan", "lan0", "--state", st],
    );
    assert_through(&net, lan, urls[0], "203.0.113.2.80", &tun);
    assert_through(&net, lan, urls[1], "2001:db8:2::2.80", &tun);
    // The LAN's SYNs (MSS 1460) were clamped to the TUN's MTU of 1280.
    let nft = stdout(m, "nft list ruleset");
    let clamped = nft
        .lines()
        .any(|l| l.contains("maxseg size set 1240") && !l.contains("counter packets 0 "));
    assert!(clamped, "no SYN clamped:\n{nft}");
    // The gateway's own traffic is left alone: it still has no way out.
    no_way_out(m, &["http://203.0.113.2/"]);

    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(snapshot(m, None), before, "gateway-down did not restore");
    no_way_out(lan, &urls);
    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(snapshot(m, None), before);
}

/// DNS from the LAN to the gateway's own address is answered by sockstun's
/// virtual DNS, and the name is resolved at the proxy.
#[test]
fn gateway_mode_lan_dns_through_the_tunnel() {
    if !require_root("gateway_mode_lan_dns_through_the_tunnel") {
        return;
    }
    let net = Net::new("rd", true);
    let (m, lan) = (&net.m, net.lan.as_ref().unwrap());
    let etc = EtcNetns::new(lan);
    etc.file(
        "resolv.conf",
        "nameserver 198.51.100.129\noptions timeout:1 attempts:1\n",
    );
    let dig = |args: &str| dig(lan, args);
    assert_eq!(
        dig("@198.51.100.129 target.test A"),
        "",
        "DNS answered without the tunnel"
    );
    let state = net.tmp.join("gateway.state");
    let st = state.to_str().unwrap();
    let (tun, dev) = net.sockstun("socks5://198.51.100.1:1080", &[]);
    ok_script(
        m,
        "gateway-up",
        &["--device", &dev, "--lan", "lan0", "--state", st],
    );

    let a = dig("@198.51.100.129 target.test A");
    assert!(
        a.starts_with("198.19."),
        "A from the virtual DNS pool: {a:?}\n{}",
        tun.log()
    );
    let a6 = dig("@2001:db8:3::1 target.test AAAA");
    assert!(
        !a6.is_empty(),
        "AAAA over IPv6 to the gateway: {a6:?}\n{}",
        tun.log()
    );
    // curl resolves through the gateway; the proxy is asked for the name.
    assert_through(&net, lan, "http://target.test/", "203.0.113.2.80", &tun);
    // A bulk download, forwarded: sockstun's large segments (segmentation
    // offload) are cut by the kernel to the LAN's MSS on the way out.
    let got = lan.exec(&[
        "sh",
        "-c",
        "curl -sS --max-time 20 http://target.test/big.bin | wc -c",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        BIG.to_string(),
        "big download through the gateway: {}\n{}",
        text(&got),
        tun.log()
    );

    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(
        dig("@198.51.100.129 target.test A"),
        "",
        "DNS answered after gateway-down"
    );
}

/// Whole-machine mode with the resolver pointed at the virtual DNS: names are
/// resolved at the proxy, never by the machine's own DNS server.
#[test]
fn machine_mode_dns_through_the_tunnel() {
    if !require_root("machine_mode_dns_through_the_tunnel") {
        return;
    }
    let net = Net::new("rn", false);
    let m = &net.m;
    let etc = EtcNetns::new(m);
    // The machine's own DNS server would be the isp: nothing answers there.
    let resolv = etc.file(
        "resolv.conf",
        "nameserver 198.51.100.1\noptions timeout:1 attempts:1\n",
    );
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    let (tun, dev) = net.sockstun("socks5://198.51.100.1:1080", &["--fwmark", FWMARK]);
    let before = snapshot(m, Some(&resolv));
    ok_script(
        m,
        "route-up",
        &[
            "--device",
            &dev,
            "--proxy",
            "198.51.100.1",
            "--fwmark",
            FWMARK,
            "--resolv-conf",
            resolv.to_str().unwrap(),
            "--state",
            st,
        ],
    );
    let a = dig(m, "target.test A");
    assert!(
        a.starts_with("198.19."),
        "A from the virtual DNS pool: {a:?}\n{}",
        tun.log()
    );
    assert_through(&net, m, "http://target.test/", "203.0.113.2.80", &tun);
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, Some(&resolv)), before);
    let _ = &net.isp;
}
