//! Several proxies as one upstream (`--proxy` given twice): failover when a
//! proxy dies (TCP and UDP), round-robin, hash, a proxy that refuses our
//! credentials, and a target's refusal that is not retried elsewhere. Two
//! dante-servers (or dante and `sockstun server`) in the proxy namespace, on
//! 198.51.100.1 and 198.51.100.3.

mod common;

use common::dante::*;
use common::tun_rig::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROXY_B: &str = "198.51.100.3";

/// When each connection of the client loop started, and how it went.
type Results = Arc<Mutex<Vec<(Instant, Result<(), ErrorKind>)>>>;

fn url(addr: &str) -> String {
    format!("socks5://{addr}:{DANTE_PORT}")
}

/// The flows' log lines that went through `proxy`.
fn flows_via(tun: &Proc, proxy: &str) -> usize {
    let via = format!("via={}", url(proxy));
    tun.log()
        .lines()
        .filter(|l| l.contains("tcp flow") && l.contains(&via))
        .count()
}

/// dante on `addr` (port 1080) in the proxy namespace, relaying UDP too.
fn dante_at(topo: &Topology, dir: &TempDir, addr: &'static str) -> Proc {
    let internal: &'static [&'static str] = Box::leak(Box::new([addr]));
    Dante {
        internal,
        external: &["p1"],
        client_rule: &[],
        socks_rule: &[DANTE_UDP],
        log_file: false,
        mothers: None,
    }
    .start(&topo.proxy, dir)
}

/// Kill dante's main process (its children follow it) and wait until
/// nothing listens at `addr` any more.
fn kill_dante(topo: &Topology, dante: Proc, addr: &str) {
    drop(dante);
    let a: SocketAddr = format!("{addr}:{DANTE_PORT}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !tcp_listening_on(
            &topo.proxy,
            a
        )),
        "dante on {a} still listens"
    );
}

struct Two {
    topo: Topology,
    tun: Proc,
    a: Option<Proc>,
    _b: Proc,
    _dir_a: TempDir,
    _dir_b: TempDir,
}

/// Target servers, dante on both proxy addresses, and `sockstun tun` with
/// both as a group (A first) plus `extra`.
fn two(tag: &str, extra: &[&str]) -> Two {
    let topo = Topology::new(tag);
    topo.proxy
        .ip(&["addr", "add", &format!("{PROXY_B}/24"), "dev", "p0"]);
    start_servers(&topo);
    let (dir_a, dir_b) = (TempDir::new("stga"), TempDir::new("stgb"));
    let a = dante_at(&topo, &dir_a, PROXY_V4);
    let b = dante_at(&topo, &dir_b, PROXY_B);
    let (ua, ub) = (url(PROXY_V4), url(PROXY_B));
    let mut args = vec!["--proxy", &ub];
    args.extend_from_slice(extra);
    let (tun, _dev) = start_tun_with(&topo, &ua, &args);
    Two {
        topo,
        tun,
        a: Some(a),
        _b: b,
        _dir_a: dir_a,
        _dir_b: dir_b,
    }
}

/// One echo connection from the client namespace to the target's port 8002.
fn echo_once(topo: &Topology, port: u16) -> Result<(), ErrorKind> {
    topo.client.run_in(move || {
        let t = SocketAddr::new(TARGET_V4.parse().unwrap(), port);
        let mut s =
            TcpStream::connect_timeout(&t, Duration::from_secs(10)).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ping").map_err(|e| e.kind())?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).map_err(|e| e.kind())?;
        Ok(())
    })
}

/// A UDP echo through the TUN to the target's port 7: sends until an answer
/// comes back within `within`.
fn udp_echo(sock: &UdpSocket, within: Duration) -> bool {
    let to = SocketAddr::new(TARGET_V4.parse().unwrap(), 7);
    let deadline = Instant::now() + within;
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 64];
    while Instant::now() < deadline {
        let _ = sock.send_to(b"udp ping", to);
        if let Ok((n, _)) = sock.recv_from(&mut b) {
            if &b[..n] == b"udp ping" {
                return true;
            }
        }
    }
    false
}

#[test]
fn failover_when_a_proxy_dies_and_back_when_it_returns() {
    if !require_root("failover_when_a_proxy_dies_and_back_when_it_returns") {
        return;
    }
    let mut g = two("gf", &["--health-interval", "1"]);
    let _udp_echo = common::servers::UdpEcho::start(&g.topo.target, &format!("{TARGET_V4}:7"));
    let udp = g
        .topo
        .client
        .run_in(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    assert!(
        udp_echo(&udp, Duration::from_secs(10)),
        "UDP before the kill\n{}",
        g.tun.log()
    );
    assert!(echo_once(&g.topo, 8002).is_ok());
    assert_eq!(
        flows_via(&g.tun, PROXY_B),
        0,
        "failover uses the first proxy"
    );

    // A client opens a connection every 50 ms; A dies under it.
    let results: Results = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r2, s2) = (results.clone(), stop.clone());
    let client = g.topo.client.spawn_in(move || {
        let mut handles = Vec::new();
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let r3 = r2.clone();
            handles.push(std::thread::spawn(move || {
                let started = Instant::now();
                let t = SocketAddr::new(TARGET_V4.parse().unwrap(), 8002);
                let res = TcpStream::connect_timeout(&t, Duration::from_secs(10))
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        s.write_all(b"ping")?;
                        let mut b = [0u8; 4];
                        s.read_exact(&mut b)
                    })
                    .map_err(|e| e.kind());
                r3.lock().unwrap().push((started, res));
            }));
            std::thread::sleep(Duration::from_millis(50));
        }
        for h in handles {
            let _ = h.join();
        }
    });
    let count = |r: &Results| r.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || count(&results) >= 10));
    kill_dante(&g.topo, g.a.take().unwrap(), PROXY_V4);
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            results
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| *t > killed + Duration::from_secs(1))
                .count()
                >= 60
        }),
        "the client stalled\n{}",
        g.tun.log()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.join().unwrap();
    let results = results.lock().unwrap();
    let late_failures: Vec<_> = results
        .iter()
        .filter(|(t, r)| *t > killed + Duration::from_secs(1) && r.is_err())
        .collect();
    assert!(
        late_failures.is_empty(),
        "connections started 1 s after the kill failed: {late_failures:?}\n{}",
        g.tun.log()
    );
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    assert!(failed <= 3, "{failed} connections failed around the kill");
    let log = g.tun.log();
    assert!(
        log.contains(&format!("proxy {} is down", url(PROXY_V4))),
        "no down line\n{log}"
    );
    // Back-off: the dead proxy is not tried by every flow. Over three seconds
    // and sixty flows, a back-off doubling from 1 s leaves a handful of tries.
    let tries = log
        .lines()
        .filter(|l| {
            l.contains(&format!("through {}:", url(PROXY_V4)))
                && l.contains("trying the next proxy")
        })
        .count();
    assert!(tries <= 6, "{tries} flows tried the dead proxy\n{log}");
    // UDP: the association through A died with it; the next datagram opens
    // one through B.
    assert!(
        udp_echo(&udp, Duration::from_secs(10)),
        "UDP after the kill\n{log}"
    );

    // A comes back: the next probe says so and flows use it again.
    let a = dante_at(&g.topo, &TempDir::new("stga2"), PROXY_V4);
    g.a = Some(a);
    assert!(
        wait_until(Duration::from_secs(15), || g
            .tun
            .log()
            .contains(&format!("proxy {} is back up", url(PROXY_V4)))),
        "A not seen back\n{}",
        g.tun.log()
    );
    let before = flows_via(&g.tun, PROXY_V4);
    assert!(echo_once(&g.topo, 8002).is_ok());
    assert!(
        wait_until(Duration::from_secs(5), || flows_via(&g.tun, PROXY_V4)
            > before),
        "the first proxy is not used again\n{}",
        g.tun.log()
    );
}

#[test]
fn round_robin_spreads_and_hash_sticks() {
    if !require_root("round_robin_spreads_and_hash_sticks") {
        return;
    }
    let mut g = two("gr", &["--proxy-policy", "round-robin"]);
    for _ in 0..100 {
        echo_once(&g.topo, 8002).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || flows_via(
        &g.tun, PROXY_V4
    ) + flows_via(
        &g.tun, PROXY_B
    ) >= 100));
    let (a, b) = (flows_via(&g.tun, PROXY_V4), flows_via(&g.tun, PROXY_B));
    assert!(
        (40..=60).contains(&a) && (40..=60).contains(&b),
        "round-robin split {a}/{b}"
    );
    drop(g.tun);

    // hash: one destination, one proxy.
    let (ua, ub) = (url(PROXY_V4), url(PROXY_B));
    let dev = uniq("stun");
    g.tun = start_tun_on(
        &g.topo,
        &ua,
        &dev,
        &[
            "--ipv4",
            TUN_V4,
            "--ipv6",
            TUN_V6,
            "--proxy",
            &ub,
            "--proxy-policy",
            "hash",
        ],
    );
    g.topo.route_default_via_tun(&dev);
    for _ in 0..50 {
        echo_once(&g.topo, 8002).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || flows_via(
        &g.tun, PROXY_V4
    ) + flows_via(
        &g.tun, PROXY_B
    ) >= 50));
    let (a, b) = (flows_via(&g.tun, PROXY_V4), flows_via(&g.tun, PROXY_B));
    assert!(
        a == 50 || b == 50,
        "one destination went through both proxies: {a}/{b}"
    );
}

#[test]
fn a_target_refusal_is_not_retried_elsewhere() {
    if !require_root("a_target_refusal_is_not_retried_elsewhere") {
        return;
    }
    let g = two("gt", &[]);
    assert!(echo_once(&g.topo, 8002).is_ok());
    // Port 8003 is closed: A relays the refusal, which is the answer.
    assert_eq!(echo_once(&g.topo, 8003), Err(ErrorKind::ConnectionRefused));
    let log = g.tun.log();
    assert!(
        wait_until(Duration::from_secs(5), || g
            .tun
            .log()
            .contains("tcp flow refused")),
        "{log}"
    );
    assert!(
        !g.tun.log().contains("trying the next proxy"),
        "a target's refusal was retried through another proxy\n{}",
        g.tun.log()
    );
    assert!(!g.tun.log().contains("is down"), "{}", g.tun.log());
}

#[test]
fn a_proxy_that_refuses_our_credentials_is_said_so_and_skipped() {
    if !require_root("a_proxy_that_refuses_our_credentials_is_said_so_and_skipped") {
        return;
    }
    let topo = Topology::new("ga");
    topo.proxy
        .ip(&["addr", "add", &format!("{PROXY_B}/24"), "dev", "p0"]);
    start_servers(&topo);
    let listen = format!("{PROXY_V4}:{DANTE_PORT}");
    let _server = start_server(
        &topo.proxy,
        None,
        &["--listen", &listen, "--user", "alice:right"],
    );
    let dir_b = TempDir::new("stgb");
    let _b = dante_at(&topo, &dir_b, PROXY_B);
    let wrong = format!("socks5://alice:wrong@{PROXY_V4}:{DANTE_PORT}");
    let ub = url(PROXY_B);
    let (tun, _dev) = start_tun_with(&topo, &wrong, &["--proxy", &ub]);
    assert!(
        wait_until(Duration::from_secs(10), || tun
            .log()
            .contains("refuses our credentials")),
        "{}",
        tun.log()
    );
    assert!(!tun.log().contains("wrong"), "a password in the log");
    for _ in 0..5 {
        assert!(echo_once(&topo, 8002).is_ok(), "{}", tun.log());
    }
    assert!(wait_until(Duration::from_secs(5), || flows_via(
        &tun, PROXY_B
    ) == 5));
}

#[test]
fn http_and_socks_in_one_group_and_the_http_proxy_dies() {
    if !require_root("http_and_socks_in_one_group_and_the_http_proxy_dies") {
        return;
    }
    use common::tinyproxy::*;
    let topo = Topology::new("gh");
    topo.proxy
        .ip(&["addr", "add", &format!("{PROXY_B}/24"), "dev", "p0"]);
    start_servers(&topo);
    let _udp_echo = common::servers::UdpEcho::start(&topo.target, &format!("{TARGET_V4}:7"));
    let (dir_h, dir_b) = (TempDir::new("stgh"), TempDir::new("stgb"));
    let tiny = start_tinyproxy(&topo.proxy, &dir_h, None);
    let _b = dante_at(&topo, &dir_b, PROXY_B);
    let http = tinyproxy_url(None);
    let ub = url(PROXY_B);
    let (tun, _dev) = start_tun_with(&topo, &http, &["--proxy", &ub, "--health-interval", "1"]);
    let via_http = |tun: &Proc| {
        tun.log()
            .lines()
            .filter(|l| l.contains("tcp flow") && l.contains(&format!("via={http}")))
            .count()
    };
    // TCP goes through the HTTP proxy (first); UDP, which it cannot carry,
    // through dante.
    assert!(echo_once(&topo, 8002).is_ok(), "{}", tun.log());
    assert!(wait_until(Duration::from_secs(5), || via_http(&tun) == 1));
    let udp = topo.client.run_in(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    assert!(
        udp_echo(&udp, Duration::from_secs(10)),
        "UDP\n{}",
        tun.log()
    );
    assert!(
        tun.log().contains(&format!("associated through {ub}")),
        "UDP did not go through dante\n{}",
        tun.log()
    );
    // tinyproxy dies: TCP moves to dante, without a failed connection.
    let a: SocketAddr = format!("{PROXY_V4}:{TINYPROXY_PORT}").parse().unwrap();
    drop(tiny);
    assert!(wait_until(Duration::from_secs(10), || !tcp_listening_on(
        &topo.proxy,
        a
    )));
    for _ in 0..10 {
        assert!(echo_once(&topo, 8002).is_ok(), "{}", tun.log());
    }
    assert!(wait_until(Duration::from_secs(5), || flows_via(
        &tun, PROXY_B
    ) == 10));
    assert!(
        tun.log().contains(&format!("proxy {http} is down")),
        "{}",
        tun.log()
    );
    assert!(
        udp_echo(&udp, Duration::from_secs(10)),
        "UDP after\n{}",
        tun.log()
    );
}
