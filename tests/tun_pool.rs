//! The warm pool and learned pipelining of `sockstun tun` (issue 18), end
//! to end: a real TUN in a client namespace, dante, `sockstun server`,
//! microsocks or a recording SOCKS5 server in the proxy namespace.

mod common;

use common::tun_rig::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// sockstun's established connections to the proxy, seen from the client
/// namespace: (local port, bytes received on it).
fn to_proxy(r: &Rig) -> Vec<(u16, u64)> {
    let out = r
        .topo
        .client
        .exec(&["ss", "-Htin", "state", "established", "dport", "=", ":1080"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut conns = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with(char::is_whitespace) {
            continue;
        }
        let Some(local) = l.split_whitespace().nth(2) else {
            continue;
        };
        let port = local.rsplit(':').next().unwrap().parse().unwrap();
        let info = match lines.peek() {
            Some(n) if n.starts_with(char::is_whitespace) => *n,
            _ => "",
        };
        let received = info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bytes_received:"))
            .map_or(0, |n| n.parse().unwrap());
        conns.push((port, received));
    }
    conns
}

/// A connection through the TUN to the echo server, held open once it
/// echoed.
fn held_echo(r: &Rig) -> TcpStream {
    in_client(r, || {
        let mut s = TcpStream::connect_timeout(&target(false, 8002), Duration::from_secs(10))
            .expect("connect through the tun");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        s
    })
}

/// With the pool (dante): N ready connections while idle; a flow's CONNECT
/// goes on one of them (no new connection for it), and the pool refills.
#[test]
fn pool_flow_rides_a_connection_opened_before_it() {
    if !require_root("pool_flow_rides_a_connection_opened_before_it") {
        return;
    }
    // One queue: each queue's thread keeps a pool of its own.
    let r = rig_args("wp", Up::Dante, &["--warm", "3", "--queues", "1"]);
    assert!(
        wait_until(Duration::from_secs(10), || to_proxy(&r).len() == 3),
        "not 3 ready connections: {:?}\n{}",
        to_proxy(&r),
        r.tun.log()
    );
    let pooled: Vec<u16> = to_proxy(&r).iter().map(|c| c.0).collect();
    let flow = held_echo(&r);
    // The flow's connection received the greeting's answer, the CONNECT's
    // and the echo; a ready one only the greeting's (2 bytes).
    let now = to_proxy(&r);
    let busy: Vec<_> = now.iter().filter(|c| c.1 > 2).collect();
    assert_eq!(busy.len(), 1, "{now:?}");
    assert!(
        pooled.contains(&busy[0].0),
        "the flow went on a new connection {busy:?}, not one of {pooled:?}"
    );
    // The taken one is replaced: 3 ready, and the flow's.
    assert!(
        wait_until(Duration::from_secs(10), || to_proxy(&r).len() == 4),
        "no refill: {:?}",
        to_proxy(&r)
    );
    drop(flow);
    let logged = || r.tun.log().contains("tcp flow");
    assert!(
        wait_until(Duration::from_secs(10), logged),
        "{}",
        r.tun.log()
    );
}

/// Ready connections killed behind sockstun's back (`ss -K` in the client
/// namespace, then the proxy restarted): the next flows still succeed.
#[test]
fn pool_killed_connections_are_invisible_to_flows() {
    if !require_root("pool_killed_connections_are_invisible_to_flows") {
        return;
    }
    let mut r = rig_args("wk", Up::Dante, &["--warm", "2", "--queues", "1"]);
    assert!(
        wait_until(Duration::from_secs(10), || to_proxy(&r).len() == 2),
        "{:?}",
        to_proxy(&r)
    );
    let out = r
        .topo
        .client
        .exec(&["ss", "-K", "state", "established", "dport", "=", ":1080"]);
    assert!(out.status.success(), "ss -K: {out:?}");
    for _ in 0..3 {
        assert_eq!(echo(&r, false), Ok(()), "after ss -K\n{}", r.tun.log());
    }
    assert!(wait_until(Duration::from_secs(10), || to_proxy(&r).len() == 2));
    // The proxy restarted: every ready connection is closed by it.
    drop(r.upstream.take());
    let dir = TempDir::new("stund2");
    r.upstream = Some(start_dante(&r.topo, &dir));
    for v6 in [false, true] {
        assert_eq!(echo(&r, v6), Ok(()), "after restart\n{}", r.tun.log());
    }
}

/// What the recording proxy saw of each CONNECT: whether greeting and
/// request came in the connection's first read.
type Seen = Arc<Mutex<Vec<bool>>>;

/// A SOCKS5 server (no authentication) in the proxy namespace that records
/// whether each request came in one read with the greeting, answers UDP
/// ASSOCIATE with "not supported" and relays CONNECT to the target.
fn recording_proxy(topo: &Topology) -> Seen {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let addr: SocketAddr = format!("{PROXY_V4}:1081").parse().unwrap();
    let l = topo.proxy.run_in(move || TcpListener::bind(addr).unwrap());
    topo.proxy.spawn_in(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let log = log.clone();
            std::thread::spawn(move || record_one(c, &log));
        }
    });
    seen
}

fn record_one(mut c: TcpStream, log: &Mutex<Vec<bool>>) -> Option<()> {
    let mut b = [0u8; 512];
    let n = c.read(&mut b).ok()?;
    let greeting = 2 + *b.get(1)? as usize;
    let mut req = b.get(greeting..n)?.to_vec();
    let one_read = !req.is_empty();
    c.write_all(&[5, 0]).ok()?;
    while req.len() < 10 {
        let n = c.read(&mut b).ok().filter(|n| *n > 0)?;
        req.extend_from_slice(&b[..n]);
    }
    if req[1] != 1 || req[3] != 1 {
        c.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).ok()?;
        return None;
    }
    log.lock().unwrap().push(one_read);
    let ip = std::net::Ipv4Addr::new(req[4], req[5], req[6], req[7]);
    let port = u16::from_be_bytes([req[8], req[9]]);
    let t = TcpStream::connect((ip, port)).ok()?;
    c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).ok()?;
    let (mut c2, mut t2) = (c.try_clone().ok()?, t.try_clone().ok()?);
    std::thread::spawn(move || std::io::copy(&mut t2, &mut c2));
    let (mut c, mut t) = (c, t);
    std::io::copy(&mut c, &mut t).ok()?;
    t.shutdown(std::net::Shutdown::Write).ok()
}

/// No flag: a proxy that takes a pipelined handshake gets one (greeting
/// and CONNECT in one read) once learned; dante and `sockstun server` are
/// learned to take it, microsocks not to, and flows work through each.
#[test]
fn pipelining_is_learned_without_a_flag() {
    if !require_root("pipelining_is_learned_without_a_flag") {
        return;
    }
    let topo = Topology::new("wl");
    start_servers(&topo);
    let seen = recording_proxy(&topo);
    let url = format!("socks5://{PROXY_V4}:1081");
    let (tun, dev) = start_tun_with(&topo, &url, &["--warm", "0", "--queues", "1"]);
    let r = Rig {
        tun,
        dev,
        upstream: None,
        _dir: TempDir::new("stunl"),
        topo,
    };
    let learned = "takes a pipelined handshake: Some(true)";
    assert!(
        wait_until(Duration::from_secs(10), || r.tun.log().contains(learned)),
        "{}",
        r.tun.log()
    );
    assert_eq!(echo(&r, false), Ok(()), "{}", r.tun.log());
    assert_eq!(*seen.lock().unwrap(), [true], "greeting and CONNECT apart");
    drop(r);
    for up in ["dante", "server", "microsocks"] {
        for warm in ["0", "2"] {
            learned_of(up, warm);
        }
    }
}

/// `up` as the upstream, no pipelining flag, `--warm warm`: what sockstun
/// learned, and flows work.
fn learned_of(up: &str, warm: &str) {
    let topo = Topology::new(&format!("w{}{warm}", &up[..1]));
    let dir = TempDir::new("stunu");
    let proxy = match up {
        "dante" => start_dante(&topo, &dir),
        "server" => start_sockstun_server(&topo, None),
        _ => {
            let p = topo
                .proxy
                .spawn(&["microsocks", "-i", PROXY_V4, "-p", "1080"]);
            let addr: SocketAddr = format!("{PROXY_V4}:1080").parse().unwrap();
            let listening = || tcp_listening_on(&topo.proxy, addr);
            assert!(wait_until(Duration::from_secs(10), listening));
            p
        }
    };
    start_servers(&topo);
    let url = format!("socks5://{PROXY_V4}:{DANTE_PORT}");
    let want = if up == "microsocks" { "false" } else { "true" };
    let learned = format!("takes a pipelined handshake: Some({want})");
    let (tun, dev) = start_tun_with(&topo, &url, &["--warm", warm]);
    let r = Rig {
        tun,
        dev,
        upstream: Some(proxy),
        _dir: dir,
        topo,
    };
    assert!(
        wait_until(Duration::from_secs(10), || r.tun.log().contains(&learned)),
        "{up}: {}",
        r.tun.log()
    );
    for v6 in [false, true] {
        for _ in 0..3 {
            assert_eq!(echo(&r, v6), Ok(()), "{up} v6={v6}\n{}", r.tun.log());
        }
    }
}
