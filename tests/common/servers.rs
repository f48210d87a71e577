//! Targets the tests talk to (TCP echo, reset, HTTP, UDP echo) and waiters
//! on sockets in a namespace.
#![allow(dead_code)]

use super::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Serve every connection `l` accepts with `f`, each on its own thread, for
/// the life of the test process.
pub fn serve_tcp(l: TcpListener, f: fn(TcpStream)) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || f(s));
        }
    });
}

/// Echo until EOF, then pass the EOF back (half-close aware).
pub fn echo_stream(mut s: TcpStream) {
    let mut b = vec![0u8; 65536];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&b[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Read one chunk, then abort the connection (RST).
pub fn reset_stream(mut s: TcpStream) {
    let mut b = [0u8; 64];
    let _ = s.read(&mut b);
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}

/// Read one HTTP request (up to its blank line) and answer `body`, HTTP/1.0,
/// `Connection: close`. Nothing is answered when the client goes first.
pub fn http_reply(s: &mut TcpStream, body: &str) {
    let mut req = Vec::new();
    let mut b = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&b[..n]),
        }
    }
    let _ = write!(
        s,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// An HTTP server in `ns` on `addr`: answers every request with `body`, one
/// connection at a time; stopped on drop.
pub struct Http {
    stop: Arc<AtomicBool>,
}

impl Http {
    pub fn start(ns: &Netns, addr: &str, body: &'static str) -> Http {
        let addr: SocketAddr = addr.parse().expect("http addr");
        let l = ns.run_in(move || TcpListener::bind(addr).expect("bind http"));
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        http_reply(&mut c, body);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Http { stop }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Python's HTTP server in `ns` on `port` (both families), serving the files
/// of `dir`. Not waited for.
pub fn http_dir_server(ns: &Netns, port: u16, dir: &str) -> Proc {
    ns.spawn(&[
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "::",
        "--directory",
        dir,
    ])
}

/// A UDP echo server, stopped on drop. A datagram `BIG:<n>` is answered with
/// n bytes (at most 65,000) instead, for the oversize tests.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    /// On `addr` in `ns`.
    pub fn start(ns: &Netns, addr: &str) -> UdpEcho {
        let addr: SocketAddr = addr.parse().expect("echo addr");
        UdpEcho::on(ns.run_in(move || UdpSocket::bind(addr).expect("bind echo")))
    }

    /// On a socket bound already.
    pub fn on(sock: UdpSocket) -> UdpEcho {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if let Some(len) = std::str::from_utf8(&buf[..n])
                        .ok()
                        .and_then(|s| s.strip_prefix("BIG:"))
                        .and_then(|s| s.parse::<usize>().ok())
                    {
                        let _ = sock.send_to(&vec![b'x'; len.min(65000)], from);
                    } else {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }
        });
        UdpEcho { stop }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// True once something accepts TCP connections at `addr` inside `ns`
/// (connects, within 10 s).
pub fn wait_listening(ns: &Netns, addr: SocketAddr) -> bool {
    let ns2 = Netns {
        name: ns.name.clone(),
    };
    let ok = ns2.run_in(move || {
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    });
    // Not ours to delete.
    std::mem::forget(ns2);
    ok
}

/// `ss -H ARGS` in `ns`: its lines.
fn ss(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["ss", "-H"];
    cmd.extend_from_slice(args);
    let out = ns.exec(&cmd);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Listening TCP sockets on `port` in `ns` (any address).
pub fn tcp_listening(ns: &Netns, port: u16) -> bool {
    !ss(ns, &["-ltn", &format!("sport = :{port}")]).is_empty()
}

/// A listening TCP socket on exactly `addr` in `ns`.
pub fn tcp_listening_on(ns: &Netns, addr: SocketAddr) -> bool {
    let want = addr.to_string();
    ss(ns, &["-ltn"])
        .iter()
        .any(|l| l.split_whitespace().nth(3) == Some(want.as_str()))
}

/// Established TCP connections in `ns` towards remote port `port`.
pub fn tcp_established_to(ns: &Netns, port: u16) -> usize {
    ss(
        ns,
        &["-tn", "state", "established", &format!("dport = :{port}")],
    )
    .len()
}
