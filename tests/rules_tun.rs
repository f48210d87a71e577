//! Routing rules end to end: `sockstun tun` with `--rule`s in the client
//! namespace, dante in the proxy namespace, and a target the client can also
//! reach directly over a second link that only marked sockets may use (as a
//! real host exempts sockstun's sockets with `--fwmark` and a policy rule):
//!
//! ```text
//!  client --veth-- proxy (dante) --veth-- target 203.0.113.2
//!    `------------ direct link -------------' 203.0.113.129 (cd/td, 203.0.113.128/25)
//!    203.0.113.130 on cd, routed in table 100 for fwmark 0x438 only
//! ```
//! The target's servers answer with the address they see the client at:
//! the proxy's (203.0.113.1) or the client's own direct one (203.0.113.130).

mod common;

use common::udp_rig::*;
use common::*;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const DIRECT_TARGET: &str = "203.0.113.129";
const CLIENT_DIRECT: &str = "203.0.113.130";
const MARK: &str = "0x438";
/// Answers with the peer's address, then closes.
const WHOAMI_TCP: u16 = 8080;
/// Answers each datagram with its sender's address.
const WHOAMI_UDP: u16 = 7001;

/// Read the request (up to its blank line), answer the peer's address, and
/// close after the client does (closing with its request unread would RST).
fn whoami(mut s: TcpStream) {
    use std::io::Write;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut b = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&b[..n]),
        }
    }
    let peer = s.peer_addr().map(|a| a.ip().to_canonical().to_string());
    let _ = s.write_all(peer.unwrap_or_default().as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
}

/// The direct link, the policy routing that keeps it to marked sockets,
/// dnsmasq on the direct side (`direct.test` is the direct address there),
/// and the whoami servers on both target addresses.
struct Direct {
    _dnsmasq: Proc,
}

fn direct_side(env: &Env) -> Direct {
    let (c, t) = (&env.topo.client, &env.topo.target);
    let (cd, td) = (uniq("cd"), uniq("td"));
    run(&[
        "ip", "link", "add", &cd, "netns", &c.name, "type", "veth", "peer", "name", &td, "netns",
        &t.name,
    ]);
    // No prefix route in the client's main table: unmarked traffic (the
    // applications') keeps going into the TUN.
    c.ip(&[
        "addr",
        "add",
        &format!("{CLIENT_DIRECT}/25"),
        "dev",
        &cd,
        "noprefixroute",
    ]);
    c.ip(&["link", "set", &cd, "up"]);
    c.ip(&[
        "route",
        "add",
        "203.0.113.128/25",
        "dev",
        &cd,
        "src",
        CLIENT_DIRECT,
        "table",
        "100",
    ]);
    c.ip(&[
        "rule", "add", "fwmark", MARK, "lookup", "100", "pref", "100",
    ]);
    t.ip(&["addr", "add", &format!("{DIRECT_TARGET}/25"), "dev", &td]);
    t.ip(&["link", "set", &td, "up"]);
    // Both families on one socket each ([::] takes IPv4 too here).
    let l = t.run_in(|| TcpListener::bind(("::", WHOAMI_TCP)).expect("bind whoami"));
    serve_tcp(l, whoami);
    let u = t.run_in(|| UdpSocket::bind(("::", WHOAMI_UDP)).expect("bind udp whoami"));
    std::thread::spawn(move || {
        let mut b = [0u8; 1500];
        while let Ok((_, from)) = u.recv_from(&mut b) {
            let who = from.ip().to_canonical().to_string();
            let _ = u.send_to(who.as_bytes(), from);
        }
    });
    let direct_test = format!("--address=/direct.test/{DIRECT_TARGET}");
    let dnsmasq = start_dnsmasq_on(t, &env.dir, DIRECT_TARGET, &[&direct_test]);
    Direct { _dnsmasq: dnsmasq }
}

/// The environment with `rules`, sockstun marking its sockets.
fn rules_env(tag: &str, rules: &[&str], extra: &[&str]) -> (Env, Direct) {
    let mut args = vec!["--fwmark", MARK, "--direct-dns", DIRECT_TARGET];
    for r in rules {
        args.extend_from_slice(&["--rule", r]);
    }
    args.extend_from_slice(extra);
    let env = env(tag, Upstream::Dante, &args);
    let direct = direct_side(&env);
    (env, direct)
}

/// What the whoami server at `addr` says (connect from the client
/// namespace), or the error.
fn tcp_whoami(env: &Env, addr: &str) -> Result<String, ErrorKind> {
    let addr: SocketAddr = addr.parse().unwrap();
    env.topo.client.run_in(move || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.kind())?;
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.kind())?;
        Ok(out)
    })
}

/// curl by name in the client namespace (names resolved by the virtual DNS).
fn curl_whoami(env: &Env, name: &str) -> String {
    // whoami answers before reading: curl sees a bare reply (HTTP/0.9).
    let out2 = env.topo.client.exec(&[
        "curl",
        "-sS",
        "--http0.9",
        "--max-time",
        "10",
        &format!("http://{name}:{WHOAMI_TCP}/"),
    ]);
    assert!(
        out2.status.success(),
        "curl {name}: {}",
        String::from_utf8_lossy(&out2.stderr)
    );
    String::from_utf8_lossy(&out2.stdout).into_owned()
}

/// Datagrams to `dst` from a connected socket in the client namespace: the
/// answer, or the error (ECONNREFUSED after an ICMP port unreachable). Asked
/// twice: the second datagram leaves from the stack task on the association
/// the first opened (its fast path), and must be answered the same.
fn udp_whoami(env: &Env, dst: &str) -> Result<String, ErrorKind> {
    let dst: SocketAddr = dst.parse().unwrap();
    env.topo.client.run_in(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(dst).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let ask = || {
            let mut b = [0u8; 256];
            // A few tries: the first datagram may wait for the association.
            for _ in 0..3 {
                s.send(b"who").map_err(|e| e.kind())?;
                match s.recv(&mut b) {
                    Ok(n) => return Ok(String::from_utf8_lossy(&b[..n]).into_owned()),
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    }
                    Err(e) => return Err(e.kind()),
                }
            }
            Err(ErrorKind::TimedOut)
        };
        let first = ask()?;
        let second = ask()?;
        Ok(if first == second {
            second
        } else {
            format!("{first}, then {second}")
        })
    })
}

/// The fake address the virtual DNS hands out for `name`.
fn fake_of(env: &Env, name: &str) -> String {
    let a = dig_short(env, name, "A", &[]);
    assert!(
        a.starts_with("198.19."),
        "{name}: {a:?} is not a fake address"
    );
    a
}

/// TCP: a `cidr:` rule goes direct (the target sees the client's own
/// address, dante sees nothing), a `suffix:` rule sends one name direct
/// (resolved on the host by --direct-dns) and another name goes through the
/// proxy, a `block` rule is refused at once; each flow's log line names its
/// rule.
#[test]
fn tcp_rules_go_direct_through_the_proxy_or_nowhere() {
    if !require_root("tcp_rules_go_direct_through_the_proxy_or_nowhere") {
        return;
    }
    let (env, _d) = rules_env(
        "rt",
        &[
            "cidr:203.0.113.128/25 => direct",
            "suffix:direct.test => direct",
            "tcp port:8081 => block",
        ],
        &[],
    );
    // By address.
    let direct = format!("{DIRECT_TARGET}:{WHOAMI_TCP}");
    assert_eq!(tcp_whoami(&env, &direct), Ok(CLIENT_DIRECT.to_string()));
    let proxied = format!("{TARGET_V4}:{WHOAMI_TCP}");
    assert_eq!(
        tcp_whoami(&env, &proxied),
        Ok(PROXY_TARGET_SIDE_V4.to_string())
    );
    // By name: direct.test only resolves on the direct side, web.test only
    // at the proxy.
    assert_eq!(curl_whoami(&env, "direct.test"), CLIENT_DIRECT);
    // dante may reach web.test over either family.
    let via = curl_whoami(&env, "web.test");
    assert!(
        via == PROXY_TARGET_SIDE_V4 || via == "2001:db8:2::1",
        "web.test was not reached through the proxy: {via}"
    );
    // Blocked: refused at once, nothing asked of the proxy.
    let started = Instant::now();
    let blocked = tcp_whoami(&env, &format!("{TARGET_V4}:8081"));
    assert_eq!(blocked, Err(ErrorKind::ConnectionRefused));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let dante = upstream_log(&env);
    assert!(
        dante.contains(TARGET_V4) && !dante.contains(DIRECT_TARGET) && !dante.contains(":8081"),
        "dante saw the direct or blocked flows, or nothing:\n{dante}"
    );
    let log = env.tun.log();
    for want in [
        "rule=\"cidr:203.0.113.128/25 => direct\"",
        "rule=\"suffix:direct.test => direct\"",
        "rule=\"tcp port:8081 => block\"",
        "rule=\"default\"",
        "direct: direct.test resolved on this host (not at the proxy): 203.0.113.129",
        "name=\"direct.test\"",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
}

/// UDP: direct by address and by name (replies come back from the address
/// the application sent to, the fake one for a name), through the proxy
/// otherwise, and a `block` rule answers ICMP port unreachable.
#[test]
fn udp_rules_go_direct_through_the_proxy_or_nowhere() {
    if !require_root("udp_rules_go_direct_through_the_proxy_or_nowhere") {
        return;
    }
    let (env, _d) = rules_env(
        "ru",
        &[
            "udp cidr:203.0.113.128/25 => direct",
            "suffix:direct.test => direct",
            "udp port:9 => block",
        ],
        &[],
    );
    assert_eq!(
        udp_whoami(&env, &format!("{DIRECT_TARGET}:{WHOAMI_UDP}")),
        Ok(CLIENT_DIRECT.to_string())
    );
    // Through dante: the target sees the proxy's address.
    assert_eq!(
        udp_whoami(&env, &format!("{TARGET_V4}:{WHOAMI_UDP}")),
        Ok(PROXY_TARGET_SIDE_V4.to_string())
    );
    // By name, from the connected socket: the reply carries the fake address.
    let fake = fake_of(&env, "direct.test");
    assert_eq!(
        udp_whoami(&env, &format!("{fake}:{WHOAMI_UDP}")),
        Ok(CLIENT_DIRECT.to_string())
    );
    assert_eq!(
        udp_whoami(&env, &format!("{TARGET_V4}:9")),
        Err(ErrorKind::ConnectionRefused)
    );
    let dante = upstream_log(&env);
    assert!(
        !dante.contains(DIRECT_TARGET),
        "dante saw a direct flow:\n{dante}"
    );
    // Written just after the ICMP answer: wait for it.
    let logged = |l: &str| {
        l.contains("blocked (answered with ICMP port unreachable)")
            && l.contains("rule=\"udp port:9 => block\"")
    };
    assert!(
        wait_until(Duration::from_secs(5), || logged(&env.tun.log())),
        "{}",
        env.tun.log()
    );
}

/// With no mark (nothing keeps sockstun's own direct sockets out of the
/// TUN), a direct flow comes back into the TUN: it is refused at once with
/// one warning, not looped until the descriptors run out.
#[test]
fn a_direct_flow_that_loops_into_the_tun_is_refused() {
    if !require_root("a_direct_flow_that_loops_into_the_tun_is_refused") {
        return;
    }
    let env = env(
        "rl",
        Upstream::Dante,
        &["--rule", "cidr:203.0.113.128/25 => direct"],
    );
    let started = Instant::now();
    let r = tcp_whoami(&env, &format!("{DIRECT_TARGET}:{WHOAMI_TCP}"));
    assert_eq!(r, Err(ErrorKind::ConnectionRefused));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let log = env.tun.log();
    assert_eq!(log.matches("came back into the TUN").count(), 1, "{log}");
    assert!(
        env.tun.log().contains("rule=\"direct loop guard\""),
        "{log}"
    );
}

/// SIGHUP reads --rules-file again (named in the config file, relative to
/// it): a name blocked before goes direct after.
#[test]
fn sighup_reloads_the_rules_file() {
    if !require_root("sighup_reloads_the_rules_file") {
        return;
    }
    let dir = TempDir::new("rr");
    let rules = dir.join("rules.txt");
    std::fs::write(&rules, "# before\nsuffix:direct.test => block\n").unwrap();
    let cfg = dir.join("tun.toml");
    std::fs::write(&cfg, "rules-file = \"rules.txt\"\n").unwrap();
    let (env, _d) = rules_env("rr", &[], &["--config", cfg.to_str().unwrap()]);
    let fake = fake_of(&env, "direct.test");
    let addr = format!("{fake}:{WHOAMI_TCP}");
    assert_eq!(tcp_whoami(&env, &addr), Err(ErrorKind::ConnectionRefused));
    std::fs::write(&rules, "suffix:direct.test => direct\n").unwrap();
    env.tun.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || env
            .tun
            .log()
            .contains("SIGHUP: 1 rule(s), default action proxy")),
        "{}",
        env.tun.log()
    );
    assert_eq!(tcp_whoami(&env, &addr), Ok(CLIENT_DIRECT.to_string()));
    // The flow's line comes when it ends.
    let want = format!("via=direct rule=\"{}:1\"", rules.display());
    assert!(
        wait_until(Duration::from_secs(5), || env.tun.log().contains(&want)),
        "{}",
        env.tun.log()
    );
}

/// `--rules-test` prints each destination's way and rule and starts
/// nothing (no root, no proxy needed); a bad rule is an error naming it.
#[test]
fn rules_test_prints_the_way_without_starting() {
    let dir = TempDir::new("rtp");
    let file = dir.join("rules.txt");
    std::fs::write(
        &file,
        "# lan\ncidr:10.0.0.0/8 => direct\nkeyword:ads => block\n",
    )
    .unwrap();
    let out = std::process::Command::new(sockstun_bin())
        .args(["tun", "--rules-file", file.to_str().unwrap()])
        .args(["--rule", "suffix:bank.example port:443 => direct"])
        .args(["--default-action", "block"])
        .args([
            "--rules-test",
            "www.bank.example:443",
            "--rules-test",
            "10.1.2.3",
        ])
        .args([
            "--rules-test",
            "ads.example",
            "--rules-test",
            "[2001:db8::1]:80",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = file.display();
    for want in [
        "3 rule(s), default action block".to_string(),
        "www.bank.example:443 tcp => direct  (rule suffix:bank.example port:443 => direct)".into(),
        format!("10.1.2.3 udp => direct  (rule {f}:2: cidr:10.0.0.0/8 => direct)"),
        format!("ads.example tcp => block  (rule {f}:3: keyword:ads => block)"),
        "[2001:db8::1]:80 tcp => block  (no rule matches: the default)".into(),
    ] {
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }
    for (args, want) in [
        (
            &["--rule", "suffix:x => allow"][..],
            "unknown action \"allow\"",
        ),
        (
            &["--rule", "suffix:x => proxy:eu"][..],
            "proxy:eu: no --group eu",
        ),
        (
            &["--group", "e u=socks5://127.0.0.1:1"][..],
            "the name before '=' is letters",
        ),
    ] {
        let bad = std::process::Command::new(sockstun_bin())
            .arg("tun")
            .args(args)
            .args(["--rules-test", "x"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(
            !bad.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
    let ok = std::process::Command::new(sockstun_bin())
        .args([
            "tun",
            "--group",
            "eu=socks5://127.0.0.1:1",
            "--rule",
            "udp => proxy:eu",
        ])
        .args(["--rules-test", "x:53"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        text.contains("x:53 udp => proxy:eu  (rule udp => proxy:eu)"),
        "{text}"
    );
}

/// `proxy:GROUP`: the flows a rule names go through that `--group`
/// (`sockstun server` beside dante), TCP and UDP; the rest through
/// `--proxy` (dante).
#[test]
fn a_named_group_carries_the_flows_its_rule_names() {
    if !require_root("a_named_group_carries_the_flows_its_rule_names") {
        return;
    }
    let group = format!("second=socks5://{PROXY_V4}:1081");
    let (env, _d) = rules_env(
        "rg",
        &[
            "cidr:203.0.113.2/32 port:8080 => proxy:second",
            "udp port:7001 => proxy:second",
        ],
        // No warm pool: the test counts the connections to each proxy.
        &["--group", &group, "--warm", "0", "--queues", "1"],
    );
    let server = start_server(
        &env.topo.proxy,
        Some("debug"),
        &[
            "--listen",
            &format!("{PROXY_V4}:1081"),
            "--allow-client",
            "198.51.100.0/24",
        ],
    );
    let to = format!("{TARGET_V4}:{WHOAMI_TCP}");
    assert_eq!(tcp_whoami(&env, &to), Ok(PROXY_TARGET_SIDE_V4.to_string()));
    let udp = format!("{TARGET_V4}:{WHOAMI_UDP}");
    assert_eq!(udp_whoami(&env, &udp), Ok(PROXY_TARGET_SIDE_V4.to_string()));
    // Named by no rule (a name, not the address): through dante.
    let via_dante = curl_whoami(&env, "web.test");
    assert!(
        via_dante.contains('.') || via_dante.contains(':'),
        "{via_dante}"
    );
    let slog = server.log();
    assert!(
        slog.contains(&format!("dest={to}")) && !slog.contains("web.test"),
        "the group's proxy did not carry exactly the flows its rules name:\n{slog}"
    );
    // The UDP association (its session line comes when it ends) holds its
    // control connection to the group's proxy, none to dante.
    assert_eq!(tcp_established_to(&env.topo.client, 1081), 1);
    assert_eq!(tcp_established_to(&env.topo.client, 1080), 0);
    let via = format!(
        "via=socks5://{PROXY_V4}:1081 rule=\"cidr:203.0.113.2/32 port:8080 => proxy:second\""
    );
    assert!(
        wait_until(Duration::from_secs(5), || env.tun.log().contains(&via)),
        "{}",
        env.tun.log()
    );
}
