//! DNS through the TUN, end to end: `dig` and `curl` in the client namespace,
//! dnsmasq in the target namespace as the only resolver (reachable only
//! through the proxy), and a capture on the client's veth to prove that no
//! DNS leaves the client namespace outside the proxy connection.

mod common;

use common::udp_rig::*;
use common::*;
use std::time::Duration;

/// Stop the capture and check it: no packet to or from port 53 on the
/// client's veth, but the proxy connection was seen (the capture works).
fn assert_no_leak(cap: Capture, what: &str) {
    let lines = cap.finish(&["port 53", "tcp port 1080"]);
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

    let a = dig_short(&env, "web.test", "A", &[]);
    let a: std::net::Ipv4Addr = a.parse().unwrap_or_else(|_| panic!("no A answer: {a:?}"));
    assert_eq!(a.octets()[..2], [198, 19], "A {a} not from the fake pool");
    // Any resolver address is answered, over TCP too, with the same address.
    let (ok, out) = dig(&env, &["+short", "+tcp", "@192.0.2.53", "web.test", "A"]);
    assert!(ok && out.trim() == a.to_string(), "{out}");
    let aaaa = dig_short(&env, "web.test", "AAAA", &[]);
    assert!(
        aaaa.starts_with("fc00:5::"),
        "AAAA {aaaa} not from the fake pool"
    );
    // Other types without --dns-upstream: NOERROR, no answer.
    let (ok, out) = dig(&env, &[&format!("@{RESOLVER}"), "mail.test", "MX"]);
    assert!(
        ok && out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );

    // curl resolves through the system resolver (resolv.conf points at the
    // target, answered by sockstun) and connects by name through the proxy.
    curl_web(&env, "virtual mode");
    assert!(
        wait_until(Duration::from_secs(5), || upstream_log(&env)
            .contains("web.test:80")),
        "the upstream did not see a CONNECT by name:\n{}",
        upstream_log(&env)
    );
    assert_no_leak(cap, "virtual mode");
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
    assert_eq!(dig_short(&env, "mail.test", "MX", &[]), "10 mx.mail.test.");
    assert_eq!(
        dig_short(&env, "txt.test", "TXT", &[]),
        "\"hello sockstun\""
    );
    assert_eq!(
        dig_short(&env, "txt.test", "TXT", &["+tcp"]),
        "\"hello sockstun\""
    );
    curl_web(&env, "virtual mode, dante");
    // Dante logs the address it resolved; the resolution itself shows in
    // dnsmasq's log, asked by the proxy's side (203.0.113.1).
    assert!(
        env.dnsmasq
            .log()
            .contains(&format!("query[A] web.test from {PROXY_TARGET_SIDE_V4}")),
        "web.test was not resolved at the proxy:\n{}",
        env.dnsmasq.log()
    );
    assert_no_leak(cap, "virtual mode with upstream");
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
    // The real answers from dnsmasq, over UDP and TCP.
    assert_eq!(dig_short(&env, "web.test", "A", &[]), TARGET_V4);
    assert_eq!(dig_short(&env, "web.test", "A", &["+tcp"]), TARGET_V4);
    assert_eq!(dig_short(&env, "mail.test", "MX", &[]), "10 mx.mail.test.");
    assert!(
        env.dnsmasq.log().contains("query[MX] mail.test"),
        "{}",
        env.dnsmasq.log()
    );
    assert_no_leak(cap, "tcp mode");
}

/// `--dns udp`: queries travel like any UDP, through UDP ASSOCIATE.
#[test]
fn udp_mode_goes_through_udp_associate() {
    if !require_root("udp_mode_goes_through_udp_associate") {
        return;
    }
    let env = env("du", Upstream::Dante, &["--dns", "udp"]);
    let cap = Capture::start(&env);
    assert_eq!(dig_short(&env, "web.test", "A", &[]), TARGET_V4);
    assert_eq!(
        dig_short(&env, "txt.test", "TXT", &[]),
        "\"hello sockstun\""
    );
    assert!(
        upstream_log(&env).contains("udpassociate"),
        "{}",
        upstream_log(&env)
    );
    assert_no_leak(cap, "udp mode");
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
    assert!(dig_short(&env, "web.test", "A", &[]).starts_with("198.19."));
}

/// A DNS query for `name` (type `qtype`, id `id`), as a stub resolver asks.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// `--dns udp`: queries from 20 source ports at once, all with the same id,
/// go over one association, and each gets the answer to its own question,
/// with its own id.
#[test]
fn udp_mode_queries_share_one_association() {
    if !require_root("udp_mode_queries_share_one_association") {
        return;
    }
    // No warm pool: the test counts the connections to the proxy. One
    // queue: each queue's UDP table has its own shared association.
    let env = env(
        "dq",
        Upstream::Dante,
        &["--dns", "udp", "--warm", "0", "--queues", "1"],
    );
    let asked: Vec<(&str, u16)> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                ("web.test", 1)
            } else {
                ("txt.test", 16)
            }
        })
        .collect();
    let qs: Vec<Vec<u8>> = asked.iter().map(|(n, t)| query(0x5151, n, *t)).collect();
    let sent = qs.clone();
    let answers: Vec<Option<Vec<u8>>> = env.topo.client.run_in(move || {
        let socks: Vec<std::net::UdpSocket> = (0..sent.len())
            .map(|_| std::net::UdpSocket::bind("0.0.0.0:0").unwrap())
            .collect();
        for (s, q) in socks.iter().zip(&sent) {
            s.send_to(q, format!("{RESOLVER}:53")).unwrap();
        }
        socks
            .iter()
            .map(|s| {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 1500];
                s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
            })
            .collect()
    });
    for (i, (a, q)) in answers.iter().zip(&qs).enumerate() {
        let a = a.as_ref().unwrap_or_else(|| panic!("query {i} unanswered"));
        assert_eq!(&a[..2], &[0x51, 0x51], "query {i}: the asker's id");
        assert_ne!(a[2] & 0x80, 0, "query {i}: a response");
        // Its own question, and an answer to it.
        assert_eq!(&a[12..q.len()], &q[12..], "query {i} ({:?})", asked[i]);
        assert_ne!(&a[6..8], &[0, 0], "query {i} ({:?}): no answer", asked[i]);
    }
    assert_eq!(tcp_established_to(&env.topo.client, 1080), 1);
}
