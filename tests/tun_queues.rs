//! A multi-queue TUN (`--queues 2`, issue 18), end to end: each queue is read
//! by a stack of its own on a thread of its own, and the kernel spreads the
//! flows over the queues. What must hold: every flow carries its data intact
//! whichever queue it lands on, both queues get flows, and what the queues
//! share (the virtual DNS pool, the upstream, the flow budget) is one.

mod common;

use common::udp_rig::*;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const ADMIN: &str = "127.0.0.1:9911";

/// One sample of the client's /metrics (curl inside the client namespace).
fn metric(env: &Env, series: &str) -> Option<f64> {
    sample(&admin_get(&env.topo.client, ADMIN, "/metrics").1, series)
}

/// The client's /flows.
fn flows(env: &Env) -> Vec<serde_json::Value> {
    let body = admin_get(&env.topo.client, ADMIN, "/flows").1;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Flows counted by queue: (queue 0, queue 1).
fn per_queue(env: &Env, name: &str) -> (f64, f64) {
    let q = |i: u32| metric(env, &format!("sockstun_{name}_total{{queue=\"{i}\"}}")).unwrap_or(0.0);
    (q(0), q(1))
}

/// TCP echo servers on the target, both families (port 8002).
fn start_echo(env: &Env) {
    for host in [TARGET_V4, TARGET_V6] {
        let addr = SocketAddr::new(host.parse().unwrap(), 8002);
        let l = env
            .topo
            .target
            .run_in(move || TcpListener::bind(addr).expect("bind echo"));
        serve_tcp(l, echo_stream);
    }
}

/// The bytes flow `i` sends: its own, so a flow that got another's data
/// (two queues mixing their tables) shows.
fn payload(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..32 * 1024 + i * 7)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// 200 flows at once through 2 queues, half of them IPv6: each one's bytes
/// come back whole, both queues carried some, and together exactly 200.
#[test]
fn two_queues_carry_200_parallel_flows_intact() {
    if !require_root("two_queues_carry_200_parallel_flows_intact") {
        return;
    }
    let env = env(
        "qf",
        Upstream::Sockstun,
        &["--queues", "2", "--admin", ADMIN],
    );
    assert!(
        env.tun.log().contains("queues=2"),
        "not 2 queues\n{}",
        env.tun.log()
    );
    start_echo(&env);
    let failures: Vec<String> = env.topo.client.run_in(|| {
        let threads: Vec<_> = (0..200usize)
            .map(|i| {
                std::thread::spawn(move || -> Result<(), String> {
                    let host = if i % 2 == 0 { TARGET_V4 } else { TARGET_V6 };
                    let dst = SocketAddr::new(host.parse().unwrap(), 8002);
                    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(15))
                        .map_err(|e| format!("flow {i}: connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let msg = payload(i);
                    s.write_all(&msg)
                        .map_err(|e| format!("flow {i}: write: {e}"))?;
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut back = Vec::new();
                    s.read_to_end(&mut back)
                        .map_err(|e| format!("flow {i}: read: {e}"))?;
                    if back != msg {
                        return Err(format!("flow {i}: {} bytes back, not its own", back.len()));
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .filter_map(|t| t.join().unwrap().err())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:?}\n{}", env.tun.log());
    let (q0, q1) = per_queue(&env, "queue_tcp_flows_opened");
    assert_eq!(q0 + q1, 200.0, "flows by queue: {q0} + {q1}");
    assert!(q0 > 0.0 && q1 > 0.0, "one queue idle: {q0} / {q1}");
    assert_eq!(metric(&env, "sockstun_tun_queues"), Some(2.0));
    assert_eq!(metric(&env, "sockstun_tcp_flows_opened_total"), Some(200.0));
}

/// DNS by name and UDP to the fake address it gave, from 32 local ports: the
/// queries reach both queues and all get the one address (one pool), the
/// datagrams reach both queues and are all answered, through the proxy by
/// name.
#[test]
fn udp_and_dns_by_name_on_every_queue() {
    if !require_root("udp_and_dns_by_name_on_every_queue") {
        return;
    }
    let env = env(
        "qu",
        Upstream::Dante,
        &["--queues", "2", "--admin", ADMIN, "--warm", "0"],
    );
    let ports: Vec<u16> = (0..32).map(|i| 20000 + i * 7).collect();
    let mut answers = Vec::new();
    for p in &ports {
        let (ok, out) = dig(
            &env,
            &[
                "+short",
                "-b",
                &format!("0.0.0.0#{p}"),
                &format!("@{RESOLVER}"),
                "echo.test",
                "A",
            ],
        );
        assert!(ok, "dig from port {p}: {out}\n{}", env.tun.log());
        answers.push(out.trim().to_string());
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "two answers for one name: {answers:?}");
    let fake = answers.remove(0);
    assert!(fake.starts_with("198.19."), "{fake}");
    let (d0, d1) = per_queue(&env, "queue_udp_packets");
    assert!(d0 > 0.0 && d1 > 0.0, "DNS on one queue only: {d0} / {d1}");
    for p in &ports {
        let n = echo_round_trips(
            &env.topo.client,
            &format!("0.0.0.0:{}", p + 1),
            &format!("{fake}:7"),
            5,
            200,
            5,
        );
        assert_eq!(n, 5, "from port {}\n{}", p + 1, env.tun.log());
    }
    let (u0, u1) = per_queue(&env, "queue_udp_packets");
    assert_eq!(u0 + u1, d0 + d1 + 32.0 * 5.0, "datagrams by queue");
    assert!(u0 > d0 && u1 > d1, "UDP on one queue only: {u0} / {u1}");
    assert!(
        env.dnsmasq
            .log()
            .contains(&format!("query[A] echo.test from {PROXY_TARGET_SIDE_V4}")),
        "the proxy did not resolve the name\n{}",
        env.dnsmasq.log()
    );
}

/// `--max-tcp-flows 10` bounds the device, not each queue: with 10 flows
/// held open (spread over both queues), the 11th and 12th are refused
/// whichever queue they land on, and one closing makes room again.
#[test]
fn the_flow_limit_is_shared_by_the_queues() {
    if !require_root("the_flow_limit_is_shared_by_the_queues") {
        return;
    }
    let env = env(
        "ql",
        Upstream::Sockstun,
        &["--queues", "2", "--admin", ADMIN, "--max-tcp-flows", "10"],
    );
    start_echo(&env);
    let dst: SocketAddr = format!("{TARGET_V4}:8002").parse().unwrap();
    let open = move || -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        Ok(s)
    };
    let (held, extra) = env.topo.client.run_in(move || {
        let held: Vec<TcpStream> = (0..10)
            .map(|i| open().unwrap_or_else(|e| panic!("flow {i}: {e}")))
            .collect();
        let extra: Vec<bool> = (0..2).map(|_| open().is_ok()).collect();
        (held, extra)
    });
    assert_eq!(extra, [false, false], "flows beyond the limit got through");
    let (q0, q1) = per_queue(&env, "queue_tcp_flows_opened");
    assert!(
        q0 > 0.0 && q1 > 0.0,
        "the held flows are on one queue: {q0} / {q1}"
    );
    // /flows lists each held flow once, whichever queue it is on (flow
    // numbers are one series for the device).
    let sources: std::collections::BTreeSet<String> = held
        .iter()
        .map(|s| s.local_addr().unwrap().to_string())
        .collect();
    let listed: std::collections::BTreeSet<String> = flows(&env)
        .into_iter()
        .filter(|f| f["protocol"] == "tcp")
        .map(|f| f["source"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, sources, "/flows does not list the held flows");
    drop(held);
    let again = wait_until(Duration::from_secs(10), || {
        env.topo.client.run_in(move || open().is_ok())
    });
    assert!(
        again,
        "no room after the held flows closed\n{}",
        env.tun.log()
    );
}

/// One UDP endpoint sending to 8 destinations (flows the kernel spreads
/// over both queues) keeps one association at the proxy, as with one queue
/// (full cone: one public port for the endpoint), and every destination
/// answers it.
#[test]
fn one_endpoint_is_one_association_whatever_queue() {
    if !require_root("one_endpoint_is_one_association_whatever_queue") {
        return;
    }
    let mut env = env(
        "qe",
        Upstream::Dante,
        &["--queues", "2", "--admin", ADMIN, "--warm", "0"],
    );
    let ports: Vec<u16> = (0..8).map(|i| 7100 + i).collect();
    for p in &ports {
        env.echo.push(UdpEcho::start(
            &env.topo.target,
            &format!("{TARGET_V4}:{p}"),
        ));
    }
    let answered: Vec<u16> = env.topo.client.run_in({
        let ports = ports.clone();
        move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut answered = Vec::new();
            let mut b = [0u8; 64];
            for p in &ports {
                let dst: SocketAddr = format!("{TARGET_V4}:{p}").parse().unwrap();
                s.send_to(&p.to_be_bytes(), dst).unwrap();
                if let Ok((n, from)) = s.recv_from(&mut b) {
                    if from == dst && b[..n] == p.to_be_bytes() {
                        answered.push(*p);
                    }
                }
            }
            answered
        }
    });
    assert_eq!(answered, ports, "{}", env.tun.log());
    assert_eq!(
        metric(&env, "sockstun_udp_associations_opened_total"),
        Some(1.0),
        "one endpoint, more than one association"
    );
    let (u0, u1) = per_queue(&env, "queue_udp_packets");
    assert!(
        u0 > 0.0 && u1 > 0.0,
        "the 8 flows reached one queue only: {u0} / {u1}"
    );
}
