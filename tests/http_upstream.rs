//! TUN mode through an HTTP CONNECT proxy: `sockstun tun --proxy http://...`
//! in the client namespace, tinyproxy (Debian's) in the proxy namespace,
//! servers in the target namespace that only the proxy can reach. The
//! proxy resolves names from its namespace's hosts file; the client's only
//! resolver is sockstun's virtual DNS.

mod common;

use common::tinyproxy::*;
use common::tun_rig::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// A TUN rig whose upstream is tinyproxy, and the resolver files of its
/// namespaces (dropped after the rig's processes and namespaces).
struct HttpRig {
    r: Rig,
    _etc: Vec<EtcNetns>,
}

/// tinyproxy (with `auth` as its BasicAuth), the target's servers
/// (tun_rig's: 8000-8004), and `sockstun tun --proxy http://[cred@]...`.
fn http_rig(tag: &str, auth: Option<(&str, &str)>, cred: Option<&str>) -> HttpRig {
    let topo = Topology::new(tag);
    let dir = TempDir::new(tag);
    // The client asks sockstun's virtual DNS (any address on port 53 goes
    // into the TUN); the proxy knows web.test from its hosts file, and its
    // resolver (loopback, where nothing listens) fails at once for others.
    let client = EtcNetns::resolv_conf(&topo.client, TARGET_V4);
    let proxy = EtcNetns::new(&topo.proxy);
    proxy.file(
        "hosts",
        &format!(
            "127.0.0.1 localhost\n::1 localhost\n{TARGET_V4} web.test\n{TARGET_V6} web.test\n"
        ),
    );
    proxy.file(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    let tinyproxy = start_tinyproxy(&topo.proxy, &dir, auth);
    start_servers(&topo);
    let (tun, dev) = start_tun_with(&topo, &tinyproxy_url(cred), &[]);
    HttpRig {
        r: Rig {
            tun,
            dev,
            upstream: Some(tinyproxy),
            _dir: dir,
            topo,
        },
        _etc: vec![client, proxy],
    }
}

impl HttpRig {
    fn proxy_log(&self) -> String {
        self.r
            .upstream
            .as_ref()
            .map(|p| p.log())
            .unwrap_or_default()
    }

    /// A new `sockstun tun` with the proxy URL carrying `cred`, in place of
    /// the running one (whose device goes with it).
    fn restart_tun(&mut self, cred: Option<&str>) {
        let (tun, dev) = start_tun_with(&self.r.topo, &tinyproxy_url(cred), &[]);
        self.r.tun = tun;
        self.r.dev = dev;
    }
}

/// `curl -sS URL` in the client with `args`: (success, body, the address
/// curl connected to, stderr).
fn curl(h: &HttpRig, args: &[&str], url: &str) -> (bool, String, String, String) {
    let mut cmd = vec!["curl", "-sS", "--max-time", "10", "-w", "\n%{remote_ip}"];
    cmd.extend_from_slice(args);
    cmd.push(url);
    let out = h.r.topo.client.exec(&cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, ip) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (
        out.status.success(),
        body.to_string(),
        ip.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl by IPv4, by IPv6 and by name: each CONNECT reaches tinyproxy with
/// the address, or with the name (virtual DNS gave the application a fake
/// address and sockstun dialed by name: nothing resolved the name but the
/// proxy).
#[test]
fn http_curl_by_ip_and_by_name() {
    if !require_root("http_curl_by_ip_and_by_name") {
        return;
    }
    let h = http_rig("hc", None, None);
    let web = TempDir::new("hcw");
    let body = "hello through an HTTP proxy\n".repeat(1000);
    std::fs::write(web.file("index.html"), &body).unwrap();
    let _web = http_dir_server(&h.r.topo.target, 8080, &web.file(""));
    assert!(wait_listening(&h.r.topo.target, target(false, 8080)));
    for (what, args, authority) in [
        ("IPv4", &["-4"][..], format!("{TARGET_V4}:8080")),
        ("IPv6", &["-6"][..], format!("[{TARGET_V6}]:8080")),
        ("name", &[][..], "web.test:8080".to_string()),
    ] {
        let url = format!("http://{authority}/index.html");
        let (ok, got, ip, err) = curl(&h, args, &url);
        assert!(ok, "curl {what}: {err}\n{}", h.r.tun.log());
        assert_eq!(got, body, "curl {what}");
        let request = format!("CONNECT {authority} HTTP/1.1");
        assert!(
            wait_until(Duration::from_secs(5), || h.proxy_log().contains(&request)),
            "tinyproxy never saw {request:?}:\n{}",
            h.proxy_log()
        );
        if what == "name" {
            assert!(
                ip.starts_with("198.19.") || ip.starts_with("fc00:5::"),
                "curl connected to {ip}, not a virtual DNS address"
            );
            assert!(
                h.r.tun.log().contains("is web.test:8080: dialing by name"),
                "{}",
                h.r.tun.log()
            );
        }
    }
    // The start-up check connected and closed.
    assert!(
        wait_until(Duration::from_secs(5), || h
            .r
            .tun
            .log()
            .contains(&format!("upstream {} answers", tinyproxy_url(None)))),
        "{}",
        h.r.tun.log()
    );
}

const TEN_MB: usize = 10 << 20;

/// 10 MB up and, at the same time, the same 10 MB echoed down, on one
/// connection; every byte compared.
fn ten_mb_each_way(h: &HttpRig, v6: bool) -> Result<(), String> {
    in_client(&h.r, move || -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&target(v6, 8002), Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let writer = std::thread::spawn(move || {
            let up: Vec<u8> = pattern(11, TEN_MB).collect();
            w.write_all(&up)
        });
        let mut got = vec![0u8; TEN_MB];
        s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
        writer.join().unwrap().map_err(|e| format!("write: {e}"))?;
        let want: Vec<u8> = pattern(11, TEN_MB).collect();
        if let Some(i) = (0..TEN_MB).find(|&i| got[i] != want[i]) {
            return Err(format!("byte {i} differs"));
        }
        Ok(())
    })
}

#[test]
fn http_10mb_each_way_byte_for_byte() {
    if !require_root("http_10mb_each_way_byte_for_byte") {
        return;
    }
    let h = http_rig("hb", None, None);
    for v6 in [false, true] {
        let res = ten_mb_each_way(&h, v6);
        assert!(res.is_ok(), "v6={v6}: {res:?}\n{}", h.r.tun.log());
    }
    // Both flows' log lines count every byte both ways.
    let counts = format!("up={TEN_MB} down={TEN_MB}");
    assert!(
        wait_until(Duration::from_secs(10), || h
            .r
            .tun
            .log()
            .matches(&counts)
            .count()
            == 2),
        "{}",
        h.r.tun.log()
    );
}

/// The right password carries traffic and never shows in the log; a wrong
/// one (tinyproxy: 401) and none at all (407) fail each connection at once
/// with a RST, not after the connect timeout (3 s here), and sockstun runs
/// on.
#[test]
fn http_basic_auth_right_and_wrong() {
    if !require_root("http_basic_auth_right_and_wrong") {
        return;
    }
    let mut h = http_rig("ha", Some(("alice", "s3cret-pw")), Some("alice:s3cret-pw"));
    for v6 in [false, true] {
        assert_eq!(echo(&h.r, v6), Ok(()), "v6={v6}\n{}", h.r.tun.log());
    }
    assert!(!h.r.tun.log().contains("s3cret"), "password in the log");
    for (cred, what) in [(Some("alice:wrong-pw"), "wrong password"), (None, "none")] {
        h.restart_tun(cred);
        for v6 in [false, true] {
            let t = Instant::now();
            assert_eq!(
                echo(&h.r, v6),
                Err(ErrorKind::ConnectionRefused),
                "{what} v6={v6}\n{}",
                h.r.tun.log()
            );
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{what}: took {:?}",
                t.elapsed()
            );
        }
        let log = h.r.tun.log();
        assert_eq!(
            log.matches("tcp flow refused: proxy authentication failed (answered with RST)")
                .count(),
            2,
            "{what}:\n{log}"
        );
        assert!(!log.contains("wrong-pw"), "password in the log");
        assert!(h.r.tun.is_running(), "sockstun exited");
    }
}

/// A closed port behind the proxy (tinyproxy: 500 "Unable to connect") is
/// "connection refused" for the application, at once, on both families; so
/// is a name the proxy cannot resolve.
#[test]
fn http_closed_port_and_unknown_name_are_refused() {
    if !require_root("http_closed_port_and_unknown_name_are_refused") {
        return;
    }
    let h = http_rig("hr", None, None);
    for v6 in [false, true] {
        let (res, took) = in_client(&h.r, move || {
            let t = Instant::now();
            let res = TcpStream::connect_timeout(&target(v6, 8003), Duration::from_secs(10))
                .map(|_| ())
                .map_err(|e| e.kind());
            (res, t.elapsed())
        });
        assert_eq!(
            res,
            Err(ErrorKind::ConnectionRefused),
            "v6={v6}\n{}",
            h.r.tun.log()
        );
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    }
    let refused = "tcp flow refused: connection refused (answered with RST)";
    assert_eq!(
        h.r.tun.log().matches(refused).count(),
        2,
        "{}",
        h.r.tun.log()
    );
    // A name: virtual DNS answers it, tinyproxy cannot resolve it.
    let t = Instant::now();
    let (ok, _, _, err) = curl(&h, &["-4"], "http://nowhere.test:8002/");
    assert!(!ok, "curl reached nowhere.test");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}: {err}",
        t.elapsed()
    );
    assert!(
        h.proxy_log().contains("CONNECT nowhere.test:8002"),
        "{}",
        h.proxy_log()
    );
    let log = h.r.tun.log();
    assert!(
        log.contains("is nowhere.test:8002: dialing by name"),
        "{log}"
    );
    assert_eq!(log.matches(refused).count(), 3, "{log}");
}

/// UDP cannot cross an HTTP proxy: sockstun says so once at start, drops
/// and counts every datagram, and TCP goes on working.
#[test]
fn http_udp_is_dropped_counted_and_said_once() {
    if !require_root("http_udp_is_dropped_counted_and_said_once") {
        return;
    }
    let mut h = http_rig("hu", None, None);
    let _echo = UdpEcho::start(&h.r.topo.target, &format!("{TARGET_V4}:7"));
    let warning = "carries TCP only (HTTP CONNECT): UDP through the TUN is dropped and counted";
    assert!(
        wait_until(Duration::from_secs(5), || h.r.tun.log().contains(warning)),
        "{}",
        h.r.tun.log()
    );
    let sock =
        h.r.topo
            .client
            .run_in(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let dst = format!("{TARGET_V4}:7");
    // The first datagram finds out (its association ends at once), the
    // next four are dropped on arrival.
    sock.send_to(b"datagram 0", &dst).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || h
            .r
            .tun
            .log()
            .contains("proxy has no UDP ASSOCIATE")),
        "{}",
        h.r.tun.log()
    );
    for i in 1..5 {
        sock.send_to(format!("datagram {i}").as_bytes(), &dst)
            .unwrap();
    }
    let mut b = [0u8; 64];
    assert!(sock.recv_from(&mut b).is_err(), "a datagram came back");
    assert_eq!(echo(&h.r, false), Ok(()), "TCP after UDP");
    assert!(!h.proxy_log().contains(":7 HTTP"), "a CONNECT for UDP");

    h.r.tun.signal(libc::SIGTERM);
    assert!(
        h.r.tun.wait_exit(Duration::from_secs(10)).is_some(),
        "sockstun did not stop"
    );
    let log = h.r.tun.log();
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    // "udp: ... datagrams out, ...; dropped: 0 oversize, N no UDP ASSOCIATE, ..."
    let dropped = log
        .lines()
        .filter(|l| l.contains("datagrams out"))
        .find_map(|l| {
            let field = l.split_once("dropped: ")?.1.split(", ").nth(1)?;
            field.strip_suffix(" no UDP ASSOCIATE")?.parse::<u64>().ok()
        });
    assert!(
        dropped.is_some_and(|n| n >= 5),
        "dropped {dropped:?}:\n{log}"
    );
}

/// A target that speaks first: its banner comes through (it may come in
/// with tinyproxy's 200), then the connection carries data.
#[test]
fn http_server_speaks_first() {
    if !require_root("http_server_speaks_first") {
        return;
    }
    let h = http_rig("hf", None, None);
    for v6 in [false, true] {
        for i in 0..5 {
            let res = in_client(&h.r, move || -> Result<(), String> {
                let mut s = TcpStream::connect_timeout(&target(v6, 8004), Duration::from_secs(10))
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut b = vec![0u8; BANNER.len()];
                s.read_exact(&mut b).map_err(|e| format!("banner: {e}"))?;
                if b != BANNER {
                    return Err(format!("banner: {:?}", String::from_utf8_lossy(&b)));
                }
                s.write_all(b"QUIT\r\n").map_err(|e| e.to_string())?;
                let mut q = [0u8; 6];
                s.read_exact(&mut q).map_err(|e| format!("echo: {e}"))?;
                if &q != b"QUIT\r\n" {
                    return Err(format!("echo: {q:?}"));
                }
                Ok(())
            });
            assert!(res.is_ok(), "v6={v6} #{i}: {res:?}\n{}", h.r.tun.log());
        }
    }
}
