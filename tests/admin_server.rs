//! `--admin` of `sockstun server`: /metrics counts sessions by command and
//! outcome, an authentication failure, and the bytes moved by splice.
//! Queried with curl inside the namespace.

mod common;

use common::server_lab::*;
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

const ADMIN: &str = "127.0.0.1:9902";

fn scrape(lab: &Lab) -> String {
    let out = lab.ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{ADMIN}/metrics"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl_via(lab: &Lab, cred: &str) -> bool {
    let proxy = format!("socks5h://{cred}@{PROXY}");
    lab.ns
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-x",
            &proxy,
            "http://web.test/",
        ])
        .status
        .success()
}

#[test]
fn admin_server_counts_sessions_and_auth_failures() {
    if !require_root("admin_server_counts_sessions_and_auth_failures") {
        return;
    }
    let lab = Lab::new("as");
    let _server = lab.server(&["--user", "alice:s3cret", "--admin", ADMIN]);
    assert!(curl_via(&lab, "alice:s3cret"));
    assert!(curl_via(&lab, "alice:s3cret"));
    assert!(!curl_via(&lab, "alice:wrong"));
    let want = [
        (
            "sockstun_sessions_total{command=\"connect\",outcome=\"relayed\"}",
            2.0,
        ),
        (
            "sockstun_sessions_total{command=\"none\",outcome=\"refused\"}",
            1.0,
        ),
        ("sockstun_auth_failures_total", 1.0),
        ("sockstun_sessions_open", 0.0),
        (
            "sockstun_clients_refused_total{reason=\"not_allowed\"}",
            0.0,
        ),
    ];
    let done = wait_until(Duration::from_secs(10), || {
        let s = scrape(&lab);
        want.iter().all(|(k, v)| sample(&s, k) == Some(*v))
    });
    let s = scrape(&lab);
    assert!(done, "{want:?} not all in\n{s}");
    let down = sample(&s, "sockstun_bytes_total{direction=\"down\"}").unwrap_or(0.0);
    assert!(down >= 2.0 * HTTP_BODY.len() as f64, "{s}");
}

/// UDP ASSOCIATE: the datagrams relayed each way are counted, once the
/// association has ended (like its bytes).
#[test]
fn admin_server_counts_udp_datagrams() {
    if !require_root("admin_server_counts_udp_datagrams") {
        return;
    }
    let lab = Lab::new("asu");
    let _server = lab.server(&["--admin", ADMIN]);
    let mut ctl = lab.tcp(PROXY);
    let r = socks5_connect_cmd(&mut ctl, 3, &addr4("0.0.0.0", 0));
    assert_eq!(&r[..2], &[5, 0], "{r:?}");
    let relay: SocketAddr = format!("127.0.0.1:{}", u16::from_be_bytes([r[8], r[9]]))
        .parse()
        .unwrap();
    let u = lab.udp("127.0.0.1:0");
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut d = vec![0, 0, 0];
    d.extend(addr4(T4, ECHO));
    d.extend_from_slice(b"ping");
    let mut b = [0u8; 256];
    for i in 0..7 {
        u.send_to(&d, relay).unwrap();
        let (n, _) = u
            .recv_from(&mut b)
            .unwrap_or_else(|e| panic!("echo {i}: {e}"));
        assert_eq!(&b[..n], &d[..]);
    }
    drop(ctl);
    let want = [
        ("sockstun_udp_datagrams_total{direction=\"up\"}", 7.0),
        ("sockstun_udp_datagrams_total{direction=\"down\"}", 7.0),
        (
            "sockstun_sessions_total{command=\"udp-associate\",outcome=\"relayed\"}",
            1.0,
        ),
    ];
    let done = wait_until(Duration::from_secs(10), || {
        let s = scrape(&lab);
        want.iter().all(|(k, v)| sample(&s, k) == Some(*v))
    });
    let s = scrape(&lab);
    assert!(done, "{want:?} not all in\n{s}");
}

/// A bulk CONNECT session between two sockets goes by splice: the session's
/// line and the metrics say how many of its bytes never crossed user space
/// (all but each direction's first reads, copied until one fills 64 KiB).
#[test]
fn admin_server_counts_spliced_bytes() {
    if !require_root("admin_server_counts_spliced_bytes") {
        return;
    }
    let lab = Lab::new("asz");
    let server = lab.server(&["--admin", ADMIN]);
    let mut s = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut s, &addr4(T4, ECHO))[1], 0);
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&d2).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "echo differs: {} bytes back", back.len());
    let n = data.len() as f64;
    let want = [
        ("sockstun_bytes_total{direction=\"up\"}", n),
        ("sockstun_bytes_total{direction=\"down\"}", n),
    ];
    let done = wait_until(Duration::from_secs(10), || {
        let s = scrape(&lab);
        want.iter().all(|(k, v)| sample(&s, k) == Some(*v))
    });
    let s = scrape(&lab);
    assert!(done, "{want:?} not all in\n{s}");
    let up = sample(&s, "sockstun_spliced_bytes_total{direction=\"up\"}").unwrap_or(0.0);
    let down = sample(&s, "sockstun_spliced_bytes_total{direction=\"down\"}").unwrap_or(0.0);
    let copied_max = (1 << 20) as f64;
    assert!(up <= n && up + copied_max >= n, "{s}");
    assert!(down <= n && down + copied_max >= n, "{s}");
    let spliced = format!("spliced={} ", up + down);
    assert!(server.log().contains(&spliced), "{}", server.log());
}
