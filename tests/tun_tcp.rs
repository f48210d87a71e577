//! TUN mode end to end: a real TUN in a client namespace running
//! `sockstun tun`, an upstream SOCKS server in the proxy namespace, servers in
//! the target namespace that only the proxy can reach.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DANTE_PORT: u16 = 1080;
const TUN_V6: &str = "2001:db8:ff::1/64";

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(uniq(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// dante-server in the proxy namespace, no authentication, both families.
fn start_dante(topo: &Topology, dir: &TempDir) -> Proc {
    let conf = dir.file("danted.conf");
    std::fs::write(
        &conf,
        format!(
            "logoutput: stderr\n\
             internal: {PROXY_V4} port = {DANTE_PORT}\n\
             internal: {PROXY_V6} port = {DANTE_PORT}\n\
             external: p1\n\
             socksmethod: none\n\
             clientmethod: none\n\
             user.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{ from: 0/0 to: 0/0 }}\n\
             socks pass {{ from: 0/0 to: 0/0 }}\n"
        ),
    )
    .unwrap();
    let p = topo.proxy.spawn(&["danted", "-f", &conf, "-N", "1"]);
    let addr: SocketAddr = format!("{PROXY_V4}:{DANTE_PORT}").parse().unwrap();
    assert!(
        wait_listening(&topo.proxy, addr),
        "dante did not start:\n{}",
        p.log()
    );
    p
}

/// True once something accepts TCP connections at `addr` inside `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) -> bool {
    let name = ns.name.clone();
    let ns2 = Netns { name };
    let ok = ns2.run_in(move || {
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    });
    std::mem::forget(ns2);
    ok
}

/// `sockstun tun` in the client namespace (with `extra` options), routes
/// into its device.
fn start_tun_with(topo: &Topology, proxy_url: &str, extra: &[&str]) -> (Proc, String) {
    let dev = uniq("stun");
    let bin = sockstun_bin();
    let mut args = vec![
        bin.to_str().unwrap(),
        "--log",
        "debug,smoltcp=info",
        "tun",
        "--proxy",
        proxy_url,
        "--device",
        &dev,
        "--ipv4",
        "198.18.0.1/15",
        "--ipv6",
        TUN_V6,
        "--connect-timeout",
        "3",
    ];
    args.extend_from_slice(extra);
    let p = topo.client.spawn(&args);
    let up = wait_until(Duration::from_secs(10), || {
        p.log().contains("TUN device up")
    });
    assert!(up, "sockstun tun did not start:\n{}", p.log());
    topo.route_default_via_tun(&dev);
    (p, dev)
}

/// Servers in the target namespace, on both families:
/// - 8000: reads until EOF, answers the 8-byte checksum of what it read, then
///   `BULK` bytes of a known pattern, then closes.
/// - 8001: reads one byte, then resets the connection.
/// - 8002: echo.
/// - 8004: speaks first (a banner, as SMTP, SSH and FTP servers do), then echo.
///
/// Port 8003 stays closed.
fn start_servers(topo: &Topology) {
    for host in [TARGET_V4, TARGET_V6] {
        for port in [8000u16, 8001, 8002, 8004] {
            let addr = SocketAddr::new(host.parse().unwrap(), port);
            let l = topo.target.run_in(move || TcpListener::bind(addr).unwrap());
            std::thread::spawn(move || serve(l, port));
        }
    }
}

const BULK: usize = 20 << 20;

fn pattern(seed: u64, len: usize) -> impl Iterator<Item = u8> {
    let mut x = seed | 1;
    (0..len).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    })
}

/// FNV-1a, enough to tell whether 20 MB arrived intact and in order.
#[derive(Clone, Copy)]
struct Sum(u64);
impl Sum {
    fn new() -> Sum {
        Sum(0xcbf29ce484222325)
    }
    fn add(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

fn serve(l: TcpListener, port: u16) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            match port {
                8000 => {
                    let mut sum = Sum::new();
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => sum.add(&buf[..n]),
                            Err(_) => return,
                        }
                    }
                    let _ = c.write_all(&sum.0.to_be_bytes());
                    let data: Vec<u8> = pattern(7, BULK).collect();
                    let _ = c.write_all(&data);
                }
                8001 => {
                    let _ = c.read(&mut buf[..1]);
                    let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                }
                8004 if c.write_all(BANNER).is_err() => {}
                _ => loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                },
            }
        });
    }
}

/// Everything a test needs, torn down on drop (processes, then namespaces).
struct Rig {
    tun: Proc,
    dev: String,
    upstream: Option<Proc>,
    _dir: TempDir,
    topo: Topology,
}

/// `sockstun server` in the proxy namespace, optionally with a user.
fn start_sockstun_server(topo: &Topology, user: Option<&str>) -> Proc {
    let bin = sockstun_bin();
    let v4 = format!("{PROXY_V4}:{DANTE_PORT}");
    let v6 = format!("[{PROXY_V6}]:{DANTE_PORT}");
    let mut cmd = vec![
        bin.to_str().unwrap(),
        "server",
        "--listen",
        &v4,
        "--listen",
        &v6,
    ];
    match user {
        Some(u) => cmd.extend_from_slice(&["--user", u]),
        None => cmd.extend_from_slice(&["--allow-client", "198.51.100.0/24"]),
    }
    // A destination the proxy's rules refuse (SOCKS5 reply 0x02).
    cmd.extend_from_slice(&[
        "--deny-dest",
        "203.0.113.99/32",
        "--deny-dest",
        "2001:db8:2::99/128",
    ]);
    let p = topo.proxy.spawn(&cmd);
    assert!(
        wait_listening(&topo.proxy, v4.parse().unwrap()),
        "sockstun server did not start:\n{}",
        p.log()
    );
    p
}

enum Up {
    Dante,
    /// `sockstun server`; with a user, the TUN side's URL carries `cred`.
    Server {
        user: Option<&'static str>,
        cred: Option<&'static str>,
    },
}

fn rig(tag: &str) -> Rig {
    rig_with(tag, Up::Dante)
}

fn rig_with(tag: &str, up: Up) -> Rig {
    rig_args(tag, up, &[])
}

fn rig_args(tag: &str, up: Up, extra: &[&str]) -> Rig {
    let topo = Topology::new(tag);
    let dir = TempDir::new("stund");
    let (upstream, url) = match up {
        Up::Dante => (
            start_dante(&topo, &dir),
            format!("socks5://{PROXY_V4}:{DANTE_PORT}"),
        ),
        Up::Server { user, cred } => (
            start_sockstun_server(&topo, user),
            match cred {
                Some(c) => format!("socks5://{c}@{PROXY_V4}:{DANTE_PORT}"),
                None => format!("socks5://{PROXY_V4}:{DANTE_PORT}"),
            },
        ),
    };
    start_servers(&topo);
    let (tun, dev) = start_tun_with(&topo, &url, extra);
    Rig {
        tun,
        dev,
        upstream: Some(upstream),
        _dir: dir,
        topo,
    }
}

fn target(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(
        if v6 { TARGET_V6 } else { TARGET_V4 }.parse().unwrap(),
        port,
    )
}

/// Run `f` in the client namespace (its sockets route through the TUN).
fn in_client<T: Send + 'static>(r: &Rig, f: impl FnOnce() -> T + Send + 'static) -> T {
    r.topo.client.run_in(f)
}

#[test]
fn tun_curl_v4_v6_parallel_and_clean_exit() {
    if !require_root("tun_curl_v4_v6_parallel_and_clean_exit") {
        return;
    }
    let mut r = rig("tc");
    let dir = TempDir::new("stunw");
    let body = "hello through the tun\n".repeat(1000);
    std::fs::write(dir.file("index.html"), &body).unwrap();
    let _http = r.topo.target.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "::",
        "--directory",
        &dir.file(""),
    ]);
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
        .args(["tun", "--proxy", "http://user:secret@x:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--proxy"), "{err}");
    assert!(!err.contains("secret"), "password leaked: {err}");
}

const BANNER: &[u8] = b"220 target.test ESMTP ready\r\n";

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

fn echo(r: &Rig, v6: bool) -> Result<(), ErrorKind> {
    in_client(r, move || -> Result<(), ErrorKind> {
        let mut s = TcpStream::connect_timeout(&target(v6, 8002), Duration::from_secs(10))
            .map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"ping").map_err(|e| e.kind())?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).map_err(|e| e.kind())?;
        if &b != b"ping" {
            return Err(ErrorKind::InvalidData);
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
