//! TUN mode end to end: a real TUN in a client namespace running
//! `sockstun tun`, an upstream SOCKS server in the proxy namespace, servers in
//! the target namespace that only the proxy can reach.

mod common;

use common::tun_rig::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn tun_curl_v4_v6_parallel_and_clean_exit() {
    if !require_root("tun_curl_v4_v6_parallel_and_clean_exit") {
        return;
    }
    let mut r = rig("tc");
    let dir = TempDir::new("stunw");
    let body = "hello through the tun\n".repeat(1000);
    std::fs::write(dir.file("index.html"), &body).unwrap();
    let _http = http_dir_server(&r.topo.target, 8080, &dir.file(""));
    assert!(wait_listening(&r.topo.target, target(false, 8080)));
    for (fam, url) in [
        ("-4", format!("http://{TARGET_V4}:8080/index.html")),
        ("-6", format!("http://[{TARGET_V6}]:8080/index.html")),
    ] {
        let out = r
            .topo
            .client
            .exec(&["curl", "-sS", "--max-time", "10", fam, &url]);
        assert!(
            out.status.success(),
            "curl {fam} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            r.tun.log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), body, "curl {fam}");
    }
    // 200 connections at once, half of them IPv6, each echoing its own data.
    let results = in_client(&r, || {
        let conns: Vec<_> = (0..200)
            .map(|i| {
                let addr = target(i % 2 == 1, 8002);
                std::thread::spawn(move || -> Result<(), String> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                        .map_err(|e| format!("{i}: connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let msg = format!("connection {i} ").repeat(100);
                    s.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
                    let mut back = vec![0u8; msg.len()];
                    s.read_exact(&mut back)
                        .map_err(|e| format!("{i}: read: {e}"))?;
                    if back != msg.as_bytes() {
                        return Err(format!("{i}: wrong echo"));
                    }
                    Ok(())
                })
            })
            .collect();
        conns
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let failed: Vec<_> = results.into_iter().filter_map(|r| r.err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(r.tun.log().contains("tcp flow"), "no per-flow log line");
    // SIGTERM: exit 0, device gone.
    r.tun.signal(libc::SIGTERM);
    let st = r
        .tun
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "exit status {st:?}\n{}", r.tun.log());
    let gone = r.topo.client.exec(&["ip", "link", "show", "dev", &r.dev]);
    assert!(!gone.status.success(), "device {} still exists", r.dev);
}

/// A closed port (8003) is refused, at once.
fn refused_at_once(r: &Rig, v6: bool) {
    let (res, took) = in_client(r, move || {
        let t = Instant::now();
        let res = TcpStream::connect_timeout(&target(v6, 8003), Duration::from_secs(10))
            .map(|_| ())
            .map_err(|e| e.kind());
        (res, t.elapsed())
    });
    assert_eq!(
        res,
        Err(ErrorKind::ConnectionRefused),
        "closed port v6={v6}"
    );
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
}

/// 20 MB up, half-close, checksum back, 20 MB down, through the TUN.
fn bulk(r: &Rig, v6: bool) -> Result<(), String> {
    in_client(r, move || -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&target(v6, 8000), Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let up: Vec<u8> = pattern(3, BULK).collect();
        let mut sum = Sum::new();
        sum.add(&up);
        s.write_all(&up).map_err(|e| format!("write: {e}"))?;
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let mut got = Vec::with_capacity(BULK + 8);
        s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
        if got.len() != BULK + 8 {
            return Err(format!("got {} bytes, want {}", got.len(), BULK + 8));
        }
        if got[..8] != sum.0.to_be_bytes() {
            return Err("upload checksum differs".into());
        }
        let mut want = Sum::new();
        want.add(&pattern(7, BULK).collect::<Vec<u8>>());
        let mut have = Sum::new();
        have.add(&got[8..]);
        if want.0 != have.0 {
            return Err("download checksum differs".into());
        }
        Ok(())
    })
}

#[test]
fn tun_bulk_half_close_refused() {
    if !require_root("tun_bulk_half_close_refused") {
        return;
    }
    let r = rig("tb");
    for v6 in [false, true] {
        let res = bulk(&r, v6);
        assert!(res.is_ok(), "bulk v6={v6}: {res:?}\n{}", r.tun.log());

        refused_at_once(&r, v6);
    }
}

#[test]
fn tun_upstream_stops_and_returns() {
    if !require_root("tun_upstream_stops_and_returns") {
        return;
    }
    let mut r = rig("tu");
    let echo = |r: &Rig| {
        in_client(r, || -> Result<(), ErrorKind> {
            let mut s = TcpStream::connect_timeout(&target(false, 8002), Duration::from_secs(10))
                .map_err(|e| e.kind())?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"ping").map_err(|e| e.kind())?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).map_err(|e| e.kind())?;
            Ok(())
        })
    };
    assert_eq!(echo(&r), Ok(()));
    // The upstream goes away: new connections fail fast, sockstun stays up.
    drop(r.upstream.take());
    let t = Instant::now();
    let res = echo(&r);
    assert!(res.is_err(), "connected without an upstream");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "failure took {:?}",
        t.elapsed()
    );
    assert!(r.tun.is_running(), "sockstun died:\n{}", r.tun.log());
    // It comes back: connections work again.
    let dir = TempDir::new("stund");
    let _up = start_dante(&r.topo, &dir);
    assert_eq!(echo(&r), Ok(()), "{}", r.tun.log());
}

#[test]
fn tun_bad_proxy_url_is_clear() {
    let out = std::process::Command::new(sockstun_bin())
        .args(["tun", "--proxy", "https://user:secret@x:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--proxy"), "{err}");
    assert!(!err.contains("secret"), "password leaked: {err}");
}

/// The target on 8004 greets before the client says anything: the banner
/// must reach the application (it may come in with the proxy's reply, which
/// the dial then hands on), and the connection carries data afterwards.
fn banner_then_echo(r: &Rig, v6: bool) -> Result<(), String> {
    in_client(r, move || -> Result<(), String> {
        let mut s = TcpStream::connect_timeout(&target(v6, 8004), Duration::from_secs(10))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = vec![0u8; BANNER.len()];
        s.read_exact(&mut b).map_err(|e| format!("banner: {e}"))?;
        if b != BANNER {
            return Err(format!("banner: {:?}", String::from_utf8_lossy(&b)));
        }
        s.write_all(b"QUIT\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut q = [0u8; 6];
        s.read_exact(&mut q).map_err(|e| format!("echo: {e}"))?;
        if &q != b"QUIT\r\n" {
            return Err(format!("echo: {q:?}"));
        }
        Ok(())
    })
}

#[test]
fn tun_via_sockstun_server_reset_passes_through() {
    if !require_root("tun_via_sockstun_server_reset_passes_through") {
        return;
    }
    let r = rig_with(
        "ts",
        Up::Server {
            user: None,
            cred: None,
        },
    );
    for v6 in [false, true] {
        assert_eq!(echo(&r, v6), Ok(()), "echo v6={v6}\n{}", r.tun.log());
        // A server that resets is seen as a reset.
        let res = in_client(&r, move || {
            let mut s =
                TcpStream::connect_timeout(&target(v6, 8001), Duration::from_secs(10)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 16];
            s.read(&mut b).map_err(|e| e.kind())
        });
        assert_eq!(res, Err(ErrorKind::ConnectionReset), "reset v6={v6}");
        refused_at_once(&r, v6);
    }
}

#[test]
fn tun_via_sockstun_server_with_password() {
    if !require_root("tun_via_sockstun_server_with_password") {
        return;
    }
    let mut r = rig_with(
        "tp",
        Up::Server {
            user: Some("alice:s3cr%t"),
            cred: Some("alice:s3cr%25t"),
        },
    );
    assert_eq!(echo(&r, false), Ok(()), "{}", r.tun.log());
    assert_eq!(echo(&r, true), Ok(()), "{}", r.tun.log());
    assert!(!r.tun.log().contains("s3cr"), "password in the log");
    r.tun.signal(libc::SIGINT);
    let st = r
        .tun
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGINT");
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn tun_wrong_password_fails_fast() {
    if !require_root("tun_wrong_password_fails_fast") {
        return;
    }
    wrong_password_fails_fast("tw", &[]);
}

/// A wrong password is a refusal the application sees at once, and sockstun
/// keeps running.
fn wrong_password_fails_fast(tag: &str, extra: &[&str]) {
    let mut r = rig_args(
        tag,
        Up::Server {
            user: Some("alice:right"),
            cred: Some("alice:wrong"),
        },
        extra,
    );
    let t = Instant::now();
    assert_eq!(echo(&r, false), Err(ErrorKind::ConnectionRefused));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(r.tun.is_running());
}

#[test]
fn tun_without_privilege_says_cap_net_admin() {
    if !require_root("tun_without_privilege_says_cap_net_admin") {
        return;
    }
    let ns = Netns::new("tn");
    let bin = sockstun_bin();
    let dev = uniq("stun");
    let out = ns.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        bin.to_str().unwrap(),
        "tun",
        "--proxy",
        "socks5://198.51.100.1:1080",
        "--device",
        &dev,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
}

/// `--socks-pipeline` (greeting, credentials and request in one write) works
/// with the real peers that take it: dante without authentication, and
/// `sockstun server` with a password (right and wrong).
#[test]
fn tun_socks_pipeline_with_dante_and_sockstun_server() {
    if !require_root("tun_socks_pipeline_with_dante_and_sockstun_server") {
        return;
    }
    let pipe = ["--socks-pipeline"];
    let r = rig_args("pd", Up::Dante, &pipe);
    for v6 in [false, true] {
        for _ in 0..3 {
            assert_eq!(echo(&r, v6), Ok(()), "dante v6={v6}\n{}", r.tun.log());
        }
    }
    drop(r);
    let r = rig_args(
        "pp",
        Up::Server {
            user: Some("alice:s3cret"),
            cred: Some("alice:s3cret"),
        },
        &pipe,
    );
    assert_eq!(echo(&r, false), Ok(()), "{}", r.tun.log());
    assert_eq!(echo(&r, true), Ok(()), "{}", r.tun.log());
    drop(r);
    wrong_password_fails_fast("pw", &pipe);
}

/// TUN offload (virtio-net headers, checksum offload, TSO): at MTU 1500 the
/// kernel hands over 64 KB segments with unfinished checksums. Data must
/// arrive intact both ways and on both families, with offload and without.
#[test]
fn tun_offload_at_mtu_1500_and_without() {
    if !require_root("tun_offload_at_mtu_1500_and_without") {
        return;
    }
    for (tag, extra, vnet) in [
        ("o1", &["--mtu", "1500"][..], "vnet_hdr on"),
        ("o0", &["--mtu", "1500", "--no-offload"][..], "vnet_hdr off"),
    ] {
        let r = rig_args(tag, Up::Dante, extra);
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                &r.topo.client.name,
                "-d",
                "link",
                "show",
                "dev",
                &r.dev,
            ])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&out.stdout);
        assert!(link.contains(vnet), "{extra:?}: {link}");
        for v6 in [false, true] {
            let res = bulk(&r, v6);
            assert!(res.is_ok(), "{extra:?} v6={v6}: {res:?}\n{}", r.tun.log());
            assert_eq!(echo(&r, v6), Ok(()), "{extra:?} v6={v6}");
        }
    }
}

/// A server that speaks first, through both upstreams and both families,
/// with the handshake plain and pipelined.
#[test]
fn tun_server_speaks_first() {
    if !require_root("tun_server_speaks_first") {
        return;
    }
    for (tag, up, extra) in [
        ("bd", Up::Dante, &[][..]),
        ("bp", Up::Dante, &["--socks-pipeline"][..]),
        (
            "bs",
            Up::Server {
                user: None,
                cred: None,
            },
            &[][..],
        ),
    ] {
        let r = rig_args(tag, up, extra);
        for v6 in [false, true] {
            for _ in 0..5 {
                if let Err(e) = banner_then_echo(&r, v6) {
                    panic!("{tag} v6={v6}: {e}\n{}", r.tun.log());
                }
            }
        }
    }
}
