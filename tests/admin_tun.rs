//! `--admin` of `sockstun tun`, end to end: the counters of /metrics after a
//! known load are exactly that load, /flows shows a live flow with the name
//! behind its fake address, /health follows the only proxy. The admin
//! endpoint is queried with curl inside the client namespace.

mod common;

use common::udp_rig::*;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const ADMIN: &str = "127.0.0.1:9901";

/// `curl http://ADMIN/PATH` in `ns`: (HTTP status, body).
fn get(ns: &Netns, path: &str) -> (u16, String) {
    admin_get(ns, ADMIN, path)
}

fn metric(env: &Env, series: &str) -> Option<f64> {
    sample(&get(&env.topo.client, "/metrics").1, series)
}

/// A TCP echo server on the target (port 8002).
fn start_echo(env: &Env) {
    let l = env
        .topo
        .target
        .run_in(|| TcpListener::bind((TARGET_V4, 8002)).expect("bind echo"));
    serve_tcp(l, echo_stream);
}

/// `n` flows, each `size` bytes echoed, closed by both ends.
fn echo_flows(env: &Env, n: usize, size: usize) {
    env.topo.client.run_in(move || {
        for i in 0..n {
            let dst: SocketAddr = format!("{TARGET_V4}:8002").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("flow {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = vec![b'x'; size];
            s.write_all(&msg).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), size, "flow {i}");
        }
    });
}

/// After 5 echoed flows of 1000 bytes, one refused flow, 10 UDP datagrams
/// echoed and one DNS query, /metrics counts exactly those.
#[test]
fn admin_metrics_count_exactly_the_load() {
    if !require_root("admin_metrics_count_exactly_the_load") {
        return;
    }
    let env = env("am", Upstream::Dante, &["--admin", ADMIN]);
    start_echo(&env);
    assert!(wait_until(Duration::from_secs(10), || get(
        &env.topo.client,
        "/health"
    )
    .0 == 200));
    echo_flows(&env, 5, 1000);
    // Port 8003 is closed: the target refuses, the application gets a RST.
    let refused = env.topo.client.run_in(|| {
        let dst: SocketAddr = format!("{TARGET_V4}:8003").parse().unwrap();
        TcpStream::connect_timeout(&dst, Duration::from_secs(10)).map(|_| ())
    });
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    let ok = echo_round_trips(
        &env.topo.client,
        "0.0.0.0:0",
        &format!("{TARGET_V4}:7"),
        10,
        100,
        1,
    );
    assert_eq!(ok, 10);
    let a = dig_short(&env, "web.test", "A", &[]);
    assert!(a.starts_with("198.19."), "{a}");
    // The flows are closed (both ends): their bytes are in the totals once
    // the relays have ended.
    let settled = wait_until(Duration::from_secs(10), || {
        let s = get(&env.topo.client, "/metrics").1;
        sample(&s, "sockstun_tcp_flows_open") == Some(0.0)
            && sample(&s, "sockstun_tcp_bytes_total{direction=\"down\"}") == Some(5000.0)
    });
    let scrape = get(&env.topo.client, "/metrics").1;
    assert!(settled, "flows did not settle:\n{scrape}");
    for (series, want) in [
        ("sockstun_tcp_flows_opened_total", 6.0),
        ("sockstun_tcp_flows_refused_total{reason=\"reset\"}", 1.0),
        (
            "sockstun_tcp_flows_refused_total{reason=\"host_unreachable\"}",
            0.0,
        ),
        ("sockstun_tcp_bytes_total{direction=\"up\"}", 5000.0),
        ("sockstun_tcp_bytes_total{direction=\"down\"}", 5000.0),
        ("sockstun_udp_associations_opened_total", 1.0),
        ("sockstun_udp_datagrams_total{direction=\"out\"}", 10.0),
        ("sockstun_udp_datagrams_total{direction=\"in\"}", 10.0),
        (
            "sockstun_udp_datagrams_dropped_total{reason=\"queue_full\"}",
            0.0,
        ),
        ("sockstun_dns_queries_total{type=\"A\"}", 1.0),
        ("sockstun_dns_queries_total{type=\"AAAA\"}", 0.0),
        ("sockstun_dns_answers_total{rcode=\"NOERROR\"}", 1.0),
        ("sockstun_dns_fake_pool_in_use", 1.0),
        (
            &format!("sockstun_proxy_up{{proxy=\"socks5://{PROXY_V4}:1080\"}}"),
            1.0,
        ),
    ] {
        assert_eq!(sample(&scrape, series), Some(want), "{series} in\n{scrape}");
    }
    for series in [
        "sockstun_device_packets_total{direction=\"in\"}",
        "sockstun_device_packets_total{direction=\"out\"}",
        "sockstun_device_bytes_total{direction=\"in\"}",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            sample(&scrape, series).unwrap_or(0.0) > 0.0,
            "{series} in\n{scrape}"
        );
    }
}

/// A live flow to a name resolved through the TUN (virtual DNS) shows in
/// /flows with that name, its proxy and its bytes so far.
#[test]
fn admin_flows_show_a_live_flow_with_its_name() {
    if !require_root("admin_flows_show_a_live_flow_with_its_name") {
        return;
    }
    let env = env("af", Upstream::Sockstun, &["--admin", ADMIN]);
    let fake = dig_short(&env, "web.test", "A", &[]);
    assert!(fake.starts_with("198.19."), "{fake}");
    let dst: SocketAddr = format!("{fake}:80").parse().unwrap();
    // Connected and kept open: the HTTP server waits for the end of the
    // request, which never comes.
    let mut s = env
        .topo
        .client
        .run_in(move || TcpStream::connect_timeout(&dst, Duration::from_secs(10)).unwrap());
    s.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    let mut flow = serde_json::Value::Null;
    let seen = wait_until(Duration::from_secs(10), || {
        let (code, body) = get(&env.topo.client, "/flows");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        flow = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|f| f["destination"] == dst.to_string())
                    .cloned()
            })
            .unwrap_or_default();
        code == 200 && flow["bytes_up"] == 16
    });
    assert!(seen, "no live flow to {dst} with 16 bytes up: {flow}");
    assert_eq!(flow["protocol"], "tcp");
    assert_eq!(flow["name"], "web.test");
    assert_eq!(flow["state"], "open");
    assert_eq!(flow["via"], format!("socks5://{PROXY_V4}:1080"));
    assert_eq!(flow["bytes_down"], 0);
    drop(s);
    assert!(
        wait_until(Duration::from_secs(10), || !get(&env.topo.client, "/flows")
            .1
            .contains("web.test")),
        "the flow stayed listed after it closed"
    );
}

/// A UDP association to a name resolved through the TUN shows in /flows,
/// while it lives, with its endpoint, the name, its proxy and the datagrams
/// and bytes each way.
#[test]
fn admin_flows_show_a_live_udp_association() {
    if !require_root("admin_flows_show_a_live_udp_association") {
        return;
    }
    let env = env("au", Upstream::Sockstun, &["--admin", ADMIN]);
    let fake = dig_short(&env, "web.test", "A", &[]);
    assert!(fake.starts_with("198.19."), "{fake}");
    let dst = format!("{fake}:7");
    let ok = echo_round_trips(&env.topo.client, "0.0.0.0:0", &dst, 10, 100, 1);
    assert_eq!(ok, 10);
    // The association outlives the socket (--udp-timeout, 60 s).
    let mut flow = serde_json::Value::Null;
    let seen = wait_until(Duration::from_secs(10), || {
        let (code, body) = get(&env.topo.client, "/flows");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        flow = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|f| f["protocol"] == "udp" && f["destination"] == dst)
                    .cloned()
            })
            .unwrap_or_default();
        code == 200 && flow["datagrams_down"] == 10
    });
    assert!(
        seen,
        "no UDP association to {dst} with 10 datagrams back: {flow}"
    );
    assert_eq!(flow["datagrams_up"], 10);
    assert_eq!(flow["bytes_up"], 1000);
    assert_eq!(flow["bytes_down"], 1000);
    assert_eq!(flow["name"], "web.test");
    assert_eq!(flow["state"], "live");
    assert_eq!(flow["via"], format!("socks5://{PROXY_V4}:1080"));
    let source: SocketAddr = flow["source"].as_str().unwrap_or("").parse().unwrap();
    assert_ne!(source.port(), 0, "{flow}");
}

/// /health: 200 while the only proxy answers its probes, 503 once it is
/// dead, 200 again when it is back.
#[test]
fn admin_health_follows_the_only_proxy() {
    if !require_root("admin_health_follows_the_only_proxy") {
        return;
    }
    let mut env = env(
        "ah",
        Upstream::Sockstun,
        &["--admin", ADMIN, "--health-interval", "1"],
    );
    let health = |env: &Env| get(&env.topo.client, "/health").0;
    assert!(wait_until(Duration::from_secs(10), || health(&env) == 200));
    env.upstream.signal(libc::SIGKILL);
    assert!(env.upstream.wait_exit(Duration::from_secs(5)).is_some());
    assert!(
        wait_until(Duration::from_secs(10), || health(&env) == 503),
        "/health stayed {} with the proxy dead",
        health(&env)
    );
    assert_eq!(
        metric(
            &env,
            &format!("sockstun_proxy_up{{proxy=\"socks5://{PROXY_V4}:1080\"}}")
        ),
        Some(0.0)
    );
    assert!(
        metric(
            &env,
            &format!("sockstun_proxy_failures_total{{proxy=\"socks5://{PROXY_V4}:1080\"}}")
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    env.upstream = start_upstream(Upstream::Sockstun, &env.topo.proxy, &env.dir);
    assert!(
        wait_until(Duration::from_secs(10), || health(&env) == 200),
        "/health stayed {} with the proxy back",
        health(&env)
    );
}
