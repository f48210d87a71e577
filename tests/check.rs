//! `sockstun check` in the client namespace of a `Topology` against real
//! proxies in the proxy namespace: dante (every step ok), microsocks (no UDP
//! ASSOCIATE, no pipelining: said, and a failure only when --udp asks for
//! UDP), `sockstun server` with a password (a wrong one fails at auth), and
//! tinyproxy (HTTP CONNECT, Basic auth right and wrong). Targets: a TCP echo
//! on 203.0.113.2 and 2001:db8:2::2 port 8000, known to the proxy as
//! web.test from its namespace's hosts file, and a UDP echo on port 7.

mod common;

use common::tinyproxy::*;
use common::*;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// A topology with the targets running, and the proxy namespace's resolver
/// files (made before any proxy starts, so the proxy sees them).
struct Lab {
    topo: Topology,
    dir: TempDir,
    _etc: EtcNetns,
    _udp: UdpEcho,
}

fn lab(tag: &str) -> Lab {
    let topo = Topology::new(tag);
    let etc = EtcNetns::new(&topo.proxy);
    etc.file(
        "hosts",
        &format!("127.0.0.1 localhost\n::1 localhost\n{TARGET_V4} web.test\n"),
    );
    // Any other name fails at once (nothing listens on loopback port 53).
    etc.file(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    for host in [TARGET_V4, TARGET_V6] {
        let addr = SocketAddr::new(host.parse().unwrap(), 8000);
        let l = topo.target.run_in(move || TcpListener::bind(addr).unwrap());
        serve_tcp(l, echo_stream);
    }
    let udp = UdpEcho::start(&topo.target, &format!("{TARGET_V4}:7"));
    Lab {
        dir: TempDir::new(tag),
        topo,
        _etc: etc,
        _udp: udp,
    }
}

/// `sockstun check ARGS` in the client namespace: its output and exit code.
fn check(lab: &Lab, args: &[&str]) -> (String, i32) {
    let bin = sockstun_bin();
    let mut cmd = vec![bin.to_str().unwrap(), "check"];
    cmd.extend_from_slice(args);
    let out = lab.topo.client.exec(&cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    (format!("{text}{err}"), out.status.code().unwrap_or(-1))
}

/// The status word of each step line, by step name, in order.
fn statuses(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| {
            let (name, rest) = l.split_at(2 + 19);
            let status = rest.split_whitespace().next().unwrap_or("").to_string();
            (name.trim().to_string(), status)
        })
        .collect()
}

fn status(text: &str, step: &str) -> String {
    statuses(text)
        .into_iter()
        .find(|(n, _)| n == step)
        .unwrap_or_else(|| panic!("no {step} line in:\n{text}"))
        .1
}

const TARGETS: [&str; 6] = [
    "--target",
    "203.0.113.2:8000",
    "--target",
    "[2001:db8:2::2]:8000",
    "--target",
    "web.test:8000",
];

#[test]
fn check_dante_every_step_ok() {
    if !require_root("check_dante_every_step_ok") {
        return;
    }
    let lab = lab("ckd");
    let _dante = Dante {
        internal: &[PROXY_V4],
        external: &["p1"],
        client_rule: &[],
        socks_rule: &[DANTE_UDP],
        log_file: false,
        mothers: None,
    }
    .start(&lab.topo.proxy, &lab.dir);
    let url = format!("socks5h://{PROXY_V4}:{DANTE_PORT}");
    let mut args = vec![url.as_str()];
    args.extend_from_slice(&TARGETS);
    args.extend_from_slice(&["--udp", "203.0.113.2:7"]);
    let (text, code) = check(&lab, &args);
    assert_eq!(code, 0, "{text}");
    let steps = statuses(&text);
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "tcp connect",
            "greeting",
            "auth",
            "connect by address",
            "connect by address",
            "connect by name",
            "udp associate",
            "udp round trip",
            "pipelined handshake"
        ],
        "{text}"
    );
    assert!(steps.iter().all(|(_, s)| s == "ok"), "{text}");
    assert!(
        text.contains("web.test:8000 (name sent to the proxy): connected"),
        "{text}"
    );
    assert!(text.contains(", echoed"), "{text}");
    assert!(text.contains("verdict: OK (9 ok)"), "{text}");
}

#[test]
fn check_microsocks_no_udp_no_pipelining() {
    if !require_root("check_microsocks_no_udp_no_pipelining") {
        return;
    }
    let lab = lab("ckm");
    let _ms = lab
        .topo
        .proxy
        .spawn(&["microsocks", "-i", PROXY_V4, "-p", "1080"]);
    assert!(
        wait_until(Duration::from_secs(10), || tcp_listening(
            &lab.topo.proxy,
            1080
        )),
        "microsocks did not start"
    );
    let url = format!("socks5://{PROXY_V4}:1080");
    let mut args = vec![url.as_str(), "--timeout", "2"];
    args.extend_from_slice(&TARGETS[..2]);
    args.extend_from_slice(&TARGETS[4..]);
    let (text, code) = check(&lab, &args);
    assert_eq!(code, 0, "{text}");
    for step in [
        "tcp connect",
        "greeting",
        "auth",
        "connect by address",
        "connect by name",
    ] {
        assert_eq!(status(&text, step), "ok", "{step}:\n{text}");
    }
    assert_eq!(status(&text, "udp associate"), "no", "{text}");
    assert!(
        text.contains("no UDP ASSOCIATE (command not supported)"),
        "{text}"
    );
    assert_eq!(status(&text, "pipelined handshake"), "no", "{text}");
    assert!(text.contains("leave --socks-pipeline off"), "{text}");
    assert!(text.contains("verdict: OK"), "{text}");
    // With --udp, UDP is asked for: its absence fails the check.
    let (text, code) = check(&lab, &[&url, "--timeout", "2", "--udp", "203.0.113.2:7"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("verdict: FAIL at udp associate"), "{text}");
}

#[test]
fn check_wrong_password_fails_at_auth() {
    if !require_root("check_wrong_password_fails_at_auth") {
        return;
    }
    let lab = lab("ckp");
    let listen = format!("{PROXY_V4}:1080");
    let _server = start_server(
        &lab.topo.proxy,
        None,
        &["--listen", &listen, "--user", "alice:right"],
    );
    let wrong = format!("socks5://alice:wrong@{listen}");
    let (text, code) = check(&lab, &[&wrong, "--target", "203.0.113.2:8000"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&text, "greeting"), "ok", "{text}");
    assert!(text.contains("method: username/password"), "{text}");
    assert_eq!(status(&text, "auth"), "FAIL", "{text}");
    assert_eq!(status(&text, "connect by address"), "skip", "{text}");
    assert!(
        text.contains("verdict: FAIL at auth: proxy authentication failed"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "the password is shown:\n{text}");
    // The right password: every step, UDP and pipelining included.
    let right = format!("socks5://alice:right@{listen}");
    let mut args = vec![right.as_str(), "--udp", "203.0.113.2:7"];
    args.extend_from_slice(&TARGETS);
    let (text, code) = check(&lab, &args);
    assert_eq!(code, 0, "{text}");
    assert!(statuses(&text).iter().all(|(_, s)| s == "ok"), "{text}");
    assert!(text.contains("user \"alice\" accepted"), "{text}");
}

#[test]
fn check_tinyproxy_http_connect() {
    if !require_root("check_tinyproxy_http_connect") {
        return;
    }
    let lab = lab("ckh");
    let _tp = start_tinyproxy(&lab.topo.proxy, &lab.dir, Some(("alice", "right")));
    let mut args = vec![tinyproxy_url(Some("alice:right"))];
    args.extend(TARGETS.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (text, code) = check(&lab, &args);
    assert_eq!(code, 0, "{text}");
    for step in [
        "tcp connect",
        "auth",
        "connect by address",
        "connect by name",
    ] {
        assert_eq!(status(&text, step), "ok", "{step}:\n{text}");
    }
    assert_eq!(status(&text, "greeting"), "skip", "{text}");
    assert_eq!(status(&text, "udp associate"), "no", "{text}");
    assert!(text.contains("HTTP CONNECT carries TCP only"), "{text}");
    assert_eq!(status(&text, "pipelined handshake"), "skip", "{text}");
    // A wrong password: the auth step fails (tinyproxy answers 401).
    let wrong = tinyproxy_url(Some("alice:wrong"));
    let (text, code) = check(&lab, &[&wrong, "--target", "203.0.113.2:8000"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(status(&text, "auth"), "FAIL", "{text}");
    assert!(text.contains("verdict: FAIL at auth"), "{text}");
}
