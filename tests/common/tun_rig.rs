//! The TUN test rig: a client namespace running `sockstun tun`, an upstream
//! (dante-server or `sockstun server`) in the proxy namespace, and servers in
//! the target namespace that only the proxy can reach. Shared by the TUN test
//! files.
#![allow(dead_code)]

use super::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// dante-server in the proxy namespace, no authentication, both families.
pub fn start_dante(topo: &Topology, dir: &TempDir) -> Proc {
    start_dante_n(topo, dir, 1)
}

/// `start_dante` with `n` mother processes (more for thousands of clients).
pub fn start_dante_n(topo: &Topology, dir: &TempDir, n: u32) -> Proc {
    Dante {
        internal: &[PROXY_V4, PROXY_V6],
        external: &["p1"],
        client_rule: &[],
        socks_rule: &[],
        log_file: false,
        mothers: Some(n),
    }
    .start(&topo.proxy, dir)
}

/// `sockstun tun` in the client namespace (with `extra` options), on a device
/// it creates with the rig's addresses, and routes into it.
pub fn start_tun_with(topo: &Topology, proxy_url: &str, extra: &[&str]) -> (Proc, String) {
    let dev = uniq("stun");
    let mut args = vec!["--ipv4", TUN_V4, "--ipv6", TUN_V6];
    args.extend_from_slice(extra);
    let p = start_tun_on(topo, proxy_url, &dev, &args);
    topo.route_default_via_tun(&dev);
    (p, dev)
}

/// `sockstun tun --device dev` in the client namespace with `extra` options
/// (no address or MTU of its own), once it says the device is up.
pub fn start_tun_on(topo: &Topology, proxy_url: &str, dev: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--connect-timeout", "3"];
    args.extend_from_slice(extra);
    start_tun(&topo.client, "debug,smoltcp=info", proxy_url, dev, &args)
}

/// Servers in the target namespace, on both families:
/// - 8000: reads until EOF, answers the 8-byte checksum of what it read, then
///   `BULK` bytes of a known pattern, then closes.
/// - 8001: reads one chunk, then resets the connection.
/// - 8002: echo (half-close aware).
/// - 8004: speaks first (a banner, as SMTP, SSH and FTP servers do), then echo.
///
/// Port 8003 stays closed.
pub fn start_servers(topo: &Topology) {
    for host in [TARGET_V4, TARGET_V6] {
        for port in [8000u16, 8001, 8002, 8004] {
            let addr = SocketAddr::new(host.parse().unwrap(), port);
            let l = topo.target.run_in(move || TcpListener::bind(addr).unwrap());
            std::thread::spawn(move || serve(l, port));
        }
    }
}

pub const BULK: usize = 20 << 20;

pub fn pattern(seed: u64, len: usize) -> impl Iterator<Item = u8> {
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
pub struct Sum(pub u64);
impl Sum {
    pub fn new() -> Sum {
        Sum(0xcbf29ce484222325)
    }
    pub fn add(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

pub fn serve(l: TcpListener, port: u16) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        std::thread::spawn(move || match port {
            8000 => {
                let mut buf = vec![0u8; 65536];
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
            8001 => reset_stream(c),
            8004 if c.write_all(BANNER).is_err() => {}
            _ => echo_stream(c),
        });
    }
}

/// Everything a test needs, torn down on drop (processes, then namespaces).
pub struct Rig {
    pub tun: Proc,
    pub dev: String,
    pub upstream: Option<Proc>,
    pub _dir: TempDir,
    pub topo: Topology,
}

/// `sockstun server` in the proxy namespace, optionally with a user.
pub fn start_sockstun_server(topo: &Topology, user: Option<&str>) -> Proc {
    let v4 = format!("{PROXY_V4}:{DANTE_PORT}");
    let v6 = format!("[{PROXY_V6}]:{DANTE_PORT}");
    let mut args = vec!["--listen", &v4, "--listen", &v6];
    match user {
        Some(u) => args.extend_from_slice(&["--user", u]),
        None => args.extend_from_slice(&["--allow-client", "198.51.100.0/24"]),
    }
    // A destination the proxy's rules refuse (SOCKS5 reply 0x02).
    args.extend_from_slice(&[
        "--deny-dest",
        "203.0.113.99/32",
        "--deny-dest",
        "2001:db8:2::99/128",
    ]);
    start_server(&topo.proxy, None, &args)
}

pub enum Up {
    Dante,
    /// `sockstun server`; with a user, the TUN side's URL carries `cred`.
    Server {
        user: Option<&'static str>,
        cred: Option<&'static str>,
    },
}

pub fn rig(tag: &str) -> Rig {
    rig_with(tag, Up::Dante)
}

pub fn rig_with(tag: &str, up: Up) -> Rig {
    rig_args(tag, up, &[])
}

pub fn rig_args(tag: &str, up: Up, extra: &[&str]) -> Rig {
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

pub fn target(v6: bool, port: u16) -> SocketAddr {
    SocketAddr::new(
        if v6 { TARGET_V6 } else { TARGET_V4 }.parse().unwrap(),
        port,
    )
}

/// Run `f` in the client namespace (its sockets route through the TUN).
pub fn in_client<T: Send + 'static>(r: &Rig, f: impl FnOnce() -> T + Send + 'static) -> T {
    r.topo.client.run_in(f)
}

pub const BANNER: &[u8] = b"220 target.test ESMTP ready\r\n";

pub fn echo(r: &Rig, v6: bool) -> Result<(), ErrorKind> {
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
