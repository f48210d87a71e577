//! UDP through the TUN, end to end: SOCKS5 UDP ASSOCIATE at dante-server and
//! at `sockstun server`, full cone, bounded association table, expiry,
//! re-association, oversize drops, and an upstream without UDP ASSOCIATE.

mod common;

use common::udp_rig::*;
use common::*;
use std::net::UdpSocket;
use std::time::Duration;

fn echo_v4_and_v6(kind: Upstream, tag: &str) {
    let env = env(tag, kind, &[]);
    let n = echo_round_trips(
        &env.topo.client,
        "0.0.0.0:0",
        &format!("{TARGET_V4}:7"),
        1000,
        200,
        8,
    );
    assert_eq!(
        n,
        1000,
        "IPv4 echo via {kind:?}: {n}/1000 answered\n{}",
        env.tun.log()
    );
    let n = echo_round_trips(
        &env.topo.client,
        "[::]:0",
        &format!("[{TARGET_V6}]:7"),
        1000,
        200,
        8,
    );
    assert_eq!(
        n,
        1000,
        "IPv6 echo via {kind:?}: {n}/1000 answered\n{}\n{}",
        env.tun.log(),
        upstream_log(&env)
    );
}

#[test]
fn udp_echo_through_dante() {
    if !require_root("udp_echo_through_dante") {
        return;
    }
    echo_v4_and_v6(Upstream::Dante, "ue");
}

#[test]
fn udp_echo_through_sockstun_server() {
    if !require_root("udp_echo_through_sockstun_server") {
        return;
    }
    echo_v4_and_v6(Upstream::Sockstun, "us");
}

/// One local endpoint, two remotes: both answer, each from its own address,
/// over one association.
#[test]
fn full_cone_two_remotes() {
    if !require_root("full_cone_two_remotes") {
        return;
    }
    // No warm pool: the test counts the connections to the proxy.
    let env = env("uc", Upstream::Dante, &["--warm", "0", "--queues", "1"]);
    let (from7, from9) = env.topo.client.run_in(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(b"to seven", format!("{TARGET_V4}:7")).unwrap();
        s.send_to(b"to nine", format!("{TARGET_V4}:9")).unwrap();
        let mut got = std::collections::HashMap::new();
        let mut buf = [0u8; 100];
        for _ in 0..2 {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                got.insert(from.to_string(), buf[..n].to_vec());
            }
        }
        (
            got.get(&format!("{TARGET_V4}:7")).cloned(),
            got.get(&format!("{TARGET_V4}:9")).cloned(),
        )
    });
    assert_eq!(from7.as_deref(), Some(&b"to seven"[..]));
    assert_eq!(from9.as_deref(), Some(&b"to nine"[..]));
    // One association (one control connection) for the endpoint.
    assert_eq!(tcp_established_to(&env.topo.client, 1080), 1);
}

/// 500 local endpoints, --max-udp-flows 100: every endpoint is answered and
/// the number of associations (control connections) never exceeds the bound.
#[test]
fn many_endpoints_stay_within_the_bound() {
    if !require_root("many_endpoints_stay_within_the_bound") {
        return;
    }
    // No warm pool: the test counts the connections to the proxy.
    let mut env = env(
        "um",
        Upstream::Dante,
        &["--max-udp-flows", "100", "--warm", "0", "--queues", "1"],
    );
    // 500 endpoints at once: the table evicts the oldest idle ones as new
    // ones arrive, so the association count never exceeds the bound.
    let socks: Vec<UdpSocket> = env.topo.client.run_in(|| {
        (0..500)
            .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
            .collect()
    });
    for (i, s) in socks.iter().enumerate() {
        s.send_to(format!("burst {i}").as_bytes(), format!("{TARGET_V4}:7"))
            .unwrap();
    }
    let mut max_seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        let n = tcp_established_to(&env.topo.client, 1080);
        max_seen = max_seen.max(n);
        assert!(
            n <= 100,
            "burst: {n} associations, above --max-udp-flows 100"
        );
    }
    let burst_answered = socks
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            s.recv(&mut buf).is_ok()
        })
        .count();
    assert!(burst_answered > 0, "no endpoint of the burst was answered");
    assert!(env.tun.is_running(), "sockstun died under the burst");
    drop(socks);
    // Then 500 endpoints in waves of 50: every one is answered.
    let mut answered = 0;
    for wave in 0..10 {
        answered += env.topo.client.run_in(move || {
            let socks: Vec<UdpSocket> = (0..50)
                .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
                .collect();
            for (i, s) in socks.iter().enumerate() {
                s.send_to(format!("w{wave} e{i}").as_bytes(), format!("{TARGET_V4}:7"))
                    .unwrap();
            }
            let mut ok = 0;
            for (i, s) in socks.iter().enumerate() {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = s.recv(&mut buf) {
                    if buf[..n] == *format!("w{wave} e{i}").as_bytes() {
                        ok += 1;
                    }
                }
            }
            ok
        });
        let n = tcp_established_to(&env.topo.client, 1080);
        max_seen = max_seen.max(n);
        assert!(
            n <= 100,
            "wave {wave}: {n} associations, above --max-udp-flows 100"
        );
    }
    assert_eq!(answered, 500, "{}", env.tun.log());
    assert!(
        max_seen >= 50,
        "associations were not held at all ({max_seen})"
    );
}

/// Idle associations end (--udp-timeout), and a dead control connection
/// (the upstream restarted) is re-established on the next datagram.
#[test]
fn expiry_and_reassociation() {
    if !require_root("expiry_and_reassociation") {
        return;
    }
    // No warm pool: the test counts the connections to the proxy.
    let mut env = env(
        "ux",
        Upstream::Sockstun,
        &["--udp-timeout", "2", "--warm", "0", "--queues", "1"],
    );
    let port = env
        .topo
        .client
        .run_in(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let port = std::sync::Arc::new(port);
    let echo = |s: std::sync::Arc<UdpSocket>, msg: &'static [u8]| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(msg, format!("{TARGET_V4}:7")).unwrap();
        let mut buf = [0u8; 64];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    assert_eq!(echo(port.clone(), b"one").as_deref(), Some(&b"one"[..]));
    assert_eq!(tcp_established_to(&env.topo.client, 1080), 1);
    assert!(
        wait_until(Duration::from_secs(10), || tcp_established_to(
            &env.topo.client,
            1080
        ) == 0),
        "the idle association was not closed"
    );
    assert_eq!(
        echo(port.clone(), b"two").as_deref(),
        Some(&b"two"[..]),
        "{}",
        env.tun.log()
    );

    // Restart the upstream: the control connection dies with it.
    drop(std::mem::replace(&mut env.upstream, spawn(None, &["true"])));
    assert!(wait_until(Duration::from_secs(10), || !tcp_listening(
        &env.topo.proxy,
        1080
    )));
    env.upstream = start_upstream(Upstream::Sockstun, &env.topo.proxy, &env.dir);
    assert!(
        wait_until(Duration::from_secs(10), || echo(port.clone(), b"three")
            .as_deref()
            == Some(&b"three"[..])),
        "no re-association after the upstream restarted\n{}",
        env.tun.log()
    );
    assert!(
        env.tun.log().contains("control connection ended"),
        "{}",
        env.tun.log()
    );
}

/// A reply larger than the TUN MTU is dropped and counted, never truncated.
#[test]
fn oversize_replies_are_dropped() {
    if !require_root("oversize_replies_are_dropped") {
        return;
    }
    let mut env = env("uo", Upstream::Dante, &[]);
    let (big, small) = env.topo.client.run_in(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 65536];
        s.send_to(b"BIG:4000", format!("{TARGET_V4}:7")).unwrap();
        let big = s.recv(&mut buf).ok();
        s.send_to(b"BIG:1000", format!("{TARGET_V4}:7")).unwrap();
        let small = s.recv(&mut buf).ok();
        (big, small)
    });
    assert_eq!(
        big, None,
        "a 4000-byte reply cannot fit a 1500-byte TUN MTU"
    );
    assert_eq!(small, Some(1000));
    assert!(
        env.tun.log().contains("larger than the path allows"),
        "{}",
        env.tun.log()
    );
    // Counted: the totals at exit say so.
    env.tun.signal(libc::SIGTERM);
    assert!(
        env.tun.wait_exit(Duration::from_secs(10)).is_some(),
        "sockstun did not stop"
    );
    assert!(
        env.tun.log().contains("dropped: 1 oversize"),
        "{}",
        env.tun.log()
    );
}

/// microsocks has no UDP ASSOCIATE: UDP fails cleanly (said once), virtual
/// DNS still resolves, and TCP by name works.
#[test]
fn upstream_without_udp_associate() {
    if !require_root("upstream_without_udp_associate") {
        return;
    }
    let mut env = env("un", Upstream::Microsocks, &[]);
    let n = echo_round_trips(
        &env.topo.client,
        "0.0.0.0:0",
        &format!("{TARGET_V4}:7"),
        3,
        10,
        1,
    );
    assert_eq!(n, 0);
    let n = echo_round_trips(
        &env.topo.client,
        "0.0.0.0:0",
        &format!("{TARGET_V4}:9"),
        3,
        10,
        1,
    );
    assert_eq!(n, 0);
    let log = env.tun.log();
    assert_eq!(
        log.matches("does not support UDP ASSOCIATE").count(),
        1,
        "{log}"
    );
    let a = dig_short(&env, "web.test", "A", &[]);
    assert!(
        a.starts_with("198.19."),
        "virtual DNS through microsocks: {a}"
    );
    curl_web(&env, "through microsocks");
    assert!(env.tun.is_running(), "sockstun exited");
}

/// A datagram to a fake (virtual DNS) address goes to the proxy by name, and
/// the answer comes back from the fake address the application used.
#[test]
fn udp_to_a_fake_address_goes_by_name() {
    if !require_root("udp_to_a_fake_address_goes_by_name") {
        return;
    }
    let env = env("uf", Upstream::Dante, &[]);
    let fake = dig_short(&env, "echo.test", "A", &[]);
    assert!(fake.starts_with("198.19."), "{fake}");
    let n = echo_round_trips(
        &env.topo.client,
        "0.0.0.0:0",
        &format!("{fake}:7"),
        20,
        100,
        4,
    );
    assert_eq!(n, 20, "{}", env.tun.log());
    // The proxy resolved the name (dnsmasq heard it from the proxy's side).
    assert!(
        env.dnsmasq
            .log()
            .contains(&format!("query[A] echo.test from {PROXY_TARGET_SIDE_V4}")),
        "{}",
        env.dnsmasq.log()
    );
}

/// An application's UDP_SEGMENT send (one buffer, many datagrams, as QUIC
/// stacks send) crosses the TUN whole (USO) and arrives at the far end as
/// the datagrams it meant, each echoed intact; /metrics counts the
/// super-packet. Both families.
#[test]
fn udp_segment_sends_arrive_as_their_datagrams() {
    if !require_root("udp_segment_sends_arrive_as_their_datagrams") {
        return;
    }
    const ADMIN: &str = "127.0.0.1:9913";
    let env = env("ug", Upstream::Dante, &["--admin", ADMIN, "--warm", "0"]);
    for dst in [format!("{TARGET_V4}:7"), format!("[{TARGET_V6}]:7")] {
        let got = env.topo.client.run_in(move || {
            let bind = if dst.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = UdpSocket::bind(bind).unwrap();
            s.connect(&dst).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let seg: libc::c_int = 1000;
            // SAFETY: setsockopt reads one int through the pointer, valid for
            // the call; the socket is open.
            let r = unsafe {
                use std::os::fd::AsRawFd;
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_UDP,
                    103, // UDP_SEGMENT
                    &seg as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
            // 7 datagrams: 6 of 1000 bytes and a last one of 500, each
            // starting with its number.
            let mut buf = Vec::new();
            for i in 0..7u8 {
                let n = if i == 6 { 500 } else { 1000 };
                buf.extend((0..n).map(|j| if j == 0 { i } else { (j % 251) as u8 ^ i }));
            }
            s.send(&buf).expect("one UDP_SEGMENT send");
            let mut got = Vec::new();
            let mut b = [0u8; 2000];
            while got.len() < 7 {
                match s.recv(&mut b) {
                    Ok(n) => got.push(b[..n].to_vec()),
                    Err(_) => break,
                }
            }
            got.sort();
            (got, buf)
        });
        let (got, sent) = got;
        let want: Vec<Vec<u8>> = {
            let mut w: Vec<Vec<u8>> = sent.chunks(1000).map(|c| c.to_vec()).collect();
            w.sort();
            w
        };
        assert_eq!(got.len(), 7, "{}", env.tun.log());
        assert_eq!(got, want, "the datagrams came back changed");
    }
    let scrape = admin_get(&env.topo.client, ADMIN, "/metrics").1;
    let n = sample(&scrape, "sockstun_device_udp_super_packets_total").unwrap_or(0.0);
    assert!(n >= 2.0, "no super-packet read: USO is off\n{scrape}");
}
