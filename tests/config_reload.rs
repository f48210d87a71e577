//! The config file at run time: SIGHUP reloads `sockstun server`'s users and
//! rules (open sessions keep relaying; a configuration that does not validate
//! keeps the old one), per-user rules refuse and log the rule, and SIGHUP in
//! TUN mode moves new flows to a new proxy. Each test runs in namespaces of
//! its own (common/server_lab.rs, the TUN topology of common/mod.rs).
mod common;

use common::server_lab::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The allow-dest lines the lab's targets need (they are the lab host's own
/// addresses).
fn lab_dests() -> String {
    format!("allow-dest = [\"{T4}\", \"{T4_OTHER}\", \"{T6}\"]\n")
}

/// `sockstun server --config FILE --listen PROXY` in the lab.
fn server_with(lab: &Lab, file: &str) -> Proc {
    start_server(&lab.ns, None, &["--config", file, "--listen", PROXY])
}

/// SOCKS5 with username/password, then CONNECT to T4:`port`: the reply code,
/// or None when authentication failed.
fn connect_as(lab: &Lab, user: &str, pass: &str, port: u16) -> (TcpStream, Option<u8>) {
    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 1, 2]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 2]);
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(pass.len() as u8);
    auth.extend_from_slice(pass.as_bytes());
    s.write_all(&auth).unwrap();
    if read_n(&mut s, 2) != [1, 0] {
        return (s, None);
    }
    let mut req = vec![5, 1, 0];
    req.extend(addr4(T4, port));
    s.write_all(&req).unwrap();
    let r = socks5_reply(&mut s);
    (s, Some(r[1]))
}

fn echoes(s: &mut TcpStream, what: &[u8]) -> bool {
    s.write_all(what).is_ok() && {
        let mut b = vec![0u8; what.len()];
        s.read_exact(&mut b).is_ok() && b == what
    }
}

/// Send SIGHUP and wait for the `n`th log line containing `says`.
fn hup_until(srv: &Proc, says: &str, n: usize) {
    srv.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || srv.log().matches(says).count() >= n),
        "no {says:?} after SIGHUP:\n{}",
        srv.log()
    );
}

#[test]
fn sighup_adds_a_user_without_dropping_an_open_session() {
    if !require_root("sighup_adds_a_user_without_dropping_an_open_session") {
        return;
    }
    let lab = Lab::new("cfa");
    let dir = TempDir::new("cfa");
    let file = dir.join("server.toml");
    let file = file.to_str().unwrap();
    std::fs::write(file, format!("user = [\"alice:a-pass\"]\n{}", lab_dests())).unwrap();
    let srv = server_with(&lab, file);
    let (mut alice, code) = connect_as(&lab, "alice", "a-pass", ECHO);
    assert_eq!(code, Some(0));
    assert!(echoes(&mut alice, b"before"));
    assert_eq!(
        connect_as(&lab, "bob", "b-pass", ECHO).1,
        None,
        "bob before the reload"
    );

    std::fs::write(dir.file("bob.pass"), "b-pass\n").unwrap();
    std::fs::write(
        file,
        format!(
            "user = [\"alice:a-pass\", {{ name = \"bob\", password-file = \"bob.pass\" }}]\n{}",
            lab_dests()
        ),
    )
    .unwrap();
    hup_until(&srv, "SIGHUP: configuration reloaded: 2 user(s)", 1);
    let (mut bob, code) = connect_as(&lab, "bob", "b-pass", ECHO);
    assert_eq!(code, Some(0), "bob after the reload");
    assert!(echoes(&mut bob, b"bob"));
    // The session opened before the reload still relays.
    assert!(echoes(&mut alice, b"after"), "{}", srv.log());
}

#[test]
fn per_user_rule_refuses_one_user_and_names_the_rule() {
    if !require_root("per_user_rule_refuses_one_user_and_names_the_rule") {
        return;
    }
    let lab = Lab::new("cfr");
    let dir = TempDir::new("cfr");
    let file = dir.join("server.toml");
    let file = file.to_str().unwrap();
    std::fs::write(
        file,
        format!(
            "user = [\"alice:a\", \"bob:b\"]\n{}\n\
             [[rule]]\nname = \"bob-no-web\"\naction = \"block\"\nusers = [\"bob\"]\nto = [\"{T4}/32\"]\nports = [{HTTP}]\n\n\
             [[rule]]\nname = \"everyone\"\naction = \"pass\"\ncommands = [\"connect\"]\n",
            lab_dests()
        ),
    )
    .unwrap();
    let srv = server_with(&lab, file);
    assert_eq!(
        connect_as(&lab, "bob", "b", HTTP).1,
        Some(2),
        "bob to the web"
    );
    assert_eq!(
        connect_as(&lab, "alice", "a", HTTP).1,
        Some(0),
        "alice to the web"
    );
    let (mut bob, code) = connect_as(&lab, "bob", "b", ECHO);
    assert_eq!(code, Some(0), "bob elsewhere");
    assert!(echoes(&mut bob, b"x"));
    let refused = |l: &&str| l.contains("user=bob") && l.contains("refused by rule \"bob-no-web\"");
    assert!(
        wait_until(WAIT, || srv.log().lines().any(|l| refused(&l))),
        "{}",
        srv.log()
    );
}

#[test]
fn a_reload_that_does_not_validate_keeps_the_old_config() {
    if !require_root("a_reload_that_does_not_validate_keeps_the_old_config") {
        return;
    }
    let lab = Lab::new("cfb");
    let dir = TempDir::new("cfb");
    let file = dir.join("server.toml");
    let file = file.to_str().unwrap();
    std::fs::write(file, format!("user = [\"alice:a\"]\n{}", lab_dests())).unwrap();
    let srv = server_with(&lab, file);
    // An unknown key, then a bad value: each refused, the old users kept.
    for (bad, n) in [("max-clientz = 3\n", 1), ("idle-timeout = \"soon\"\n", 2)] {
        std::fs::write(
            file,
            format!("user = [\"alice:a\", \"bob:b\"]\n{bad}{}", lab_dests()),
        )
        .unwrap();
        hup_until(&srv, "not valid, keeping the one in force", n);
        assert_eq!(
            connect_as(&lab, "bob", "b", ECHO).1,
            None,
            "bob after {bad}"
        );
        let (mut alice, code) = connect_as(&lab, "alice", "a", ECHO);
        assert_eq!(code, Some(0));
        assert!(echoes(&mut alice, b"still"));
    }
    let log = srv.log();
    assert!(
        log.contains("line 2") && log.contains("max-clientz"),
        "{log}"
    );
}

/// One echo connection from the client namespace to the target's 8002.
fn echo_once(topo: &Topology) -> bool {
    topo.client.run_in(|| {
        let t = SocketAddr::new(TARGET_V4.parse().unwrap(), 8002);
        let Ok(mut s) = TcpStream::connect_timeout(&t, WAIT) else {
            return false;
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        echoes(&mut s, b"ping")
    })
}

#[test]
fn tun_sighup_moves_new_flows_to_the_new_proxy() {
    if !require_root("tun_sighup_moves_new_flows_to_the_new_proxy") {
        return;
    }
    const PROXY_B: &str = "198.51.100.3";
    let topo = Topology::new("cft");
    topo.proxy
        .ip(&["addr", "add", &format!("{PROXY_B}/24"), "dev", "p0"]);
    common::tun_rig::start_servers(&topo);
    let proxies: Vec<Proc> = [PROXY_V4, PROXY_B]
        .iter()
        .map(|a| {
            let l = format!("{a}:1080");
            start_server(
                &topo.proxy,
                None,
                &["--listen", &l, "--allow-client", "198.51.100.0/24"],
            )
        })
        .collect();
    let dir = TempDir::new("cft");
    let file = dir.join("tun.toml");
    let file = file.to_str().unwrap();
    let url = |a: &str| format!("socks5://{a}:1080");
    std::fs::write(
        file,
        format!("proxy = \"{}\"\nconnect-timeout = 3\n", url(PROXY_V4)),
    )
    .unwrap();
    let dev = uniq("cft");
    let bin = sockstun_bin();
    let mut tun = topo.client.spawn(&[
        bin.to_str().unwrap(),
        "--log",
        "debug,smoltcp=info",
        "tun",
        "--config",
        file,
        "--device",
        &dev,
        "--ipv4",
        TUN_V4,
        "--ipv6",
        TUN_V6,
    ]);
    assert!(
        wait_until(WAIT, || tun.log().contains("TUN device up")
            || !tun.is_running()),
        "{}",
        tun.log()
    );
    topo.route_default_via_tun(&dev);
    let via = |a: &str| {
        let v = format!("via={}", url(a));
        let log = tun.log();
        log.lines()
            .filter(|l| l.contains("tcp flow") && l.contains(&v))
            .count()
    };
    assert!(echo_once(&topo));
    assert!(wait_until(WAIT, || via(PROXY_V4) == 1), "{}", tun.log());

    std::fs::write(
        file,
        format!("proxy = [\"{}\"]\nconnect-timeout = 3\n", url(PROXY_B)),
    )
    .unwrap();
    tun.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || tun.log().contains("SIGHUP: upstream")),
        "{}",
        tun.log()
    );
    for _ in 0..3 {
        assert!(echo_once(&topo));
    }
    assert!(wait_until(WAIT, || via(PROXY_B) == 3), "{}", tun.log());
    assert_eq!(via(PROXY_V4), 1);
    // A bad reload keeps the new proxy.
    std::fs::write(file, "proxy = \"socks9://x\"\n").unwrap();
    tun.signal(libc::SIGHUP);
    assert!(
        wait_until(WAIT, || tun.log().contains("not valid, keeping upstream")),
        "{}",
        tun.log()
    );
    assert!(echo_once(&topo));
    assert!(wait_until(WAIT, || via(PROXY_B) == 4), "{}", tun.log());
    drop(proxies);
}
