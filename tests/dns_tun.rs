//! DNS through the TUN, end to end: `dig` and `curl` in the client namespace,
//! dnsmasq in the target namespace as the only resolver (reachable only
//! through the proxy), and a capture on the client's veth to prove that no
//! DNS leaves the client namespace outside the proxy connection.

mod common;
#[path = "udp_fixtures/mod.rs"]
mod udp_fixtures;

use common::*;
use udp_fixtures::*;

/// The first address in the answer section of `dig +short` output.
fn short(out: &str) -> String {
    out.lines().next().unwrap_or("").trim().to_string()
}

fn assert_no_leak(lines: &[String], what: &str) {
    assert!(
        lines[0].trim().is_empty(),
        "{what}: DNS left the client namespace:\n{}",
        lines[0]
    );
    assert!(
        !lines[1].trim().is_empty(),
        "{what}: the capture saw no proxy traffic at all (capture broken?)"
    );
}

/// Virtual mode (the default), sockstun server upstream: A and AAAA come from
/// the fake pools over UDP and TCP, curl reaches web.test by name although it
/// resolves only at the proxy, other types get an empty answer without
/// --dns-upstream, and nothing leaks.
#[test]
fn virtual_dns_resolves_at_the_proxy() {
    if !require_root("virtual_dns_resolves_at_the_proxy") {
        return;
    }
    let env = env("dv", Upstream::Sockstun, &[]);
    let cap = Capture::start(&env);

    let (ok, out) = dig(&env, &["+short", &format!("@{RESOLVER}"), "web.test", "A"]);
    assert!(ok, "dig failed: {out}");
    let a: std::net::Ipv4Addr = short(&out)
        .parse()
        .unwrap_or_else(|_| panic!("no A answer: {out:?}"));
    assert!(
        a.octets()[..2] == [198, 19],
        "A {a} not from the fake pool 198.19.0.0/16"
    );
    // Any resolver address is answered, over TCP too, with the same address.
    let (ok, out) = dig(&env, &["+short", "+tcp", "@192.0.2.53", "web.test", "A"]);
    assert!(ok);
    assert_eq!(short(&out), a.to_string());
    let (ok, out) = dig(
        &env,
        &["+short", &format!("@{RESOLVER}"), "web.test", "AAAA"],
    );
    assert!(ok);
    assert!(
        short(&out).starts_with("fc00:5::"),
        "AAAA not from the fake pool: {out:?}"
    );
    // Other types without --dns-upstream: NOERROR, no answer.
    let (ok, out) = dig(&env, &[&format!("@{RESOLVER}"), "mail.test", "MX"]);
    assert!(ok);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );

    // curl resolves through the system resolver (resolv.conf points at the
    // target, answered by sockstun) and connects by name through the proxy.
    let out = env
        .topo
        .client
        .exec(&["curl", "-sS", "--max-time", "10", "http://web.test/"]);
    assert!(
        out.status.success(),
        "curl http://web.test/ failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.tun.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from web.test\n"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || upstream_log(&env)
            .contains("web.test:80")),
        "the upstream did not see a CONNECT by name:\n{}",
        upstream_log(&env)
    );

    let lines = cap.finish(&["port 53", "tcp port 1080"]);
    assert_no_leak(&lines, "virtual mode");
    // The client's queries were answered locally: dnsmasq only heard the
    // proxy resolving web.test for the CONNECT, never the MX question.
    assert!(
        !env.dnsmasq.log().contains("query[MX]"),
        "{}",
        env.dnsmasq.log()
    );
}

/// Virtual mode with --dns-upstream, dante upstream: MX and TXT go
/// DNS-over-TCP through the proxy to dnsmasq; curl by name through dante.
#[test]
fn virtual_dns_forwards_other_types() {
    if !require_root("virtual_dns_forwards_other_types") {
        return;
    }
    let env = env("df", Upstream::Dante, &["--dns-upstream", RESOLVER]);
    let cap = Capture::start(&env);
    let (ok, out) = dig(
        &env,
        &["+short", &format!("@{RESOLVER}"), "mail.test", "MX"],
    );
    assert!(ok, "{out}");
    assert_eq!(short(&out), "10 mx.mail.test.");
    let (ok, out) = dig(
        &env,
        &["+short", &format!("@{RESOLVER}"), "txt.test", "TXT"],
    );
    assert!(ok, "{out}");
    assert_eq!(short(&out), "\"hello sockstun\"");
    let (ok, out) = dig(
        &env,
        &["+short", "+tcp", &format!("@{RESOLVER}"), "txt.test", "TXT"],
    );
    assert!(ok, "{out}");
    assert_eq!(short(&out), "\"hello sockstun\"");
    let out = env
        .topo
        .client
        .exec(&["curl", "-sS", "--max-time", "10", "http://web.test/"]);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from web.test\n"
    );
    // Dante logs the address it resolved; the resolution itself shows in
    // dnsmasq's log, asked by the proxy's side (203.0.113.1).
    assert!(
        env.dnsmasq
            .log()
            .contains(&format!("query[A] web.test from {PROXY_TARGET_SIDE_V4}")),
        "web.test was not resolved at the proxy:\n{}",
        env.dnsmasq.log()
    );
    let lines = cap.finish(&["port 53", "tcp port 1080"]);
    assert_no_leak(&lines, "virtual mode with upstream");
}

/// `--dns tcp`: every query is DNS-over-TCP through a CONNECT to the upstream.
#[test]
fn tcp_mode_carries_every_query_over_the_proxy() {
    if !require_root("tcp_mode_carries_every_query_over_the_proxy") {
        return;
    }
    let env = env(
        "dt",
        Upstream::Dante,
        &["--dns", "tcp", "--dns-upstream", RESOLVER],
    );
    let cap = Capture::start(&env);
    for extra in [None, Some("+tcp")] {
        let mut args = vec!["+short", "@198.18.0.2", "web.test", "A"];
        args.extend(extra);
        let (ok, out) = dig(&env, &args);
        assert!(ok, "{out}");
        assert_eq!(short(&out), TARGET_V4, "the real answer from dnsmasq");
    }
    let (ok, out) = dig(
        &env,
        &["+short", &format!("@{RESOLVER}"), "mail.test", "MX"],
    );
    assert!(ok);
    assert_eq!(short(&out), "10 mx.mail.test.");
    assert!(
        env.dnsmasq.log().contains("query[A] web.test"),
        "{}",
        env.dnsmasq.log()
    );
    let lines = cap.finish(&["port 53", "tcp port 1080"]);
    assert_no_leak(&lines, "tcp mode");
}

/// `--dns udp`: queries travel like any UDP, through UDP ASSOCIATE.
#[test]
fn udp_mode_goes_through_udp_associate() {
    if !require_root("udp_mode_goes_through_udp_associate") {
        return;
    }
    let env = env("du", Upstream::Dante, &["--dns", "udp"]);
    let cap = Capture::start(&env);
    let (ok, out) = dig(&env, &["+short", &format!("@{RESOLVER}"), "web.test", "A"]);
    assert!(ok, "{out}\n{}", env.tun.log());
    assert_eq!(short(&out), TARGET_V4);
    let (ok, out) = dig(
        &env,
        &["+short", &format!("@{RESOLVER}"), "txt.test", "TXT"],
    );
    assert!(ok);
    assert_eq!(short(&out), "\"hello sockstun\"");
    assert!(
        upstream_log(&env).contains("udpassociate"),
        "{}",
        upstream_log(&env)
    );
    let lines = cap.finish(&["port 53", "tcp port 1080"]);
    assert_no_leak(&lines, "udp mode");
}

/// Malformed queries get FORMERR (or nothing) and break nothing.
#[test]
fn malformed_queries_are_answered_or_dropped() {
    if !require_root("malformed_queries_are_answered_or_dropped") {
        return;
    }
    let env = env("dm", Upstream::Dante, &[]);
    let answers = env.topo.client.run_in(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
            .unwrap();
        let dst = format!("{RESOLVER}:53");
        let mut got = Vec::new();
        // A runt, a header with a truncated question, a response, garbage.
        let queries: [&[u8]; 4] = [
            &[1, 2, 3],
            &[0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e'],
            &[0, 1, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xFF; 300],
        ];
        for q in queries {
            s.send_to(q, &dst).unwrap();
            let mut buf = [0u8; 600];
            got.push(s.recv(&mut buf).ok().map(|n| buf[..n].to_vec()));
        }
        got
    });
    assert_eq!(answers[0], None, "a runt has no id to answer");
    let formerr = answers[1]
        .as_ref()
        .expect("FORMERR for a truncated question");
    assert_eq!(&formerr[..2], &[0xAB, 0xCD]);
    assert_eq!(formerr[3] & 0xF, 1, "rcode FORMERR");
    assert_eq!(answers[2], None, "a response is not answered");
    // 0xFF.. has QR set: dropped.
    assert_eq!(answers[3], None);
    // Still alive and answering.
    let (ok, out) = dig(&env, &["+short", &format!("@{RESOLVER}"), "web.test", "A"]);
    assert!(ok && short(&out).starts_with("198.19."), "{out}");
}
