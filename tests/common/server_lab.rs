//! A namespace with `sockstun server` and test targets, for the server tests.
//!
//! Everything lives in one namespace made for the test: the server listens on
//! 127.0.0.1:1080 (no port clash between parallel tests), the targets on
//! 203.0.113.10 / 2001:db8::10 (extra addresses on the namespace's lo), and
//! `web.test` resolves to the target through /etc/netns/<ns>/hosts.
#![allow(dead_code)]

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Output;
use std::time::Duration;

pub const T4: &str = "203.0.113.10";
pub const T6: &str = "2001:db8::10";
/// A second local address, for a peer that is not the expected one.
pub const T4_OTHER: &str = "203.0.113.11";
pub const PROXY: &str = "127.0.0.1:1080";
pub const HTTP_BODY: &str = "hello from the target\n";
/// Ports of the target services.
pub const HTTP: u16 = 80;
pub const ECHO: u16 = 7;
pub const RESET: u16 = 9;
pub const CLOSED: u16 = 81;

pub struct Lab {
    _hosts: EtcNetns,
    _udp_echo: Vec<UdpEcho>,
    pub ns: Netns,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let ns = Netns::new(tag);
        ns.ip(&["addr", "add", &format!("{T4}/32"), "dev", "lo"]);
        ns.ip(&["addr", "add", &format!("{T4_OTHER}/32"), "dev", "lo"]);
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{T6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        let hosts = EtcNetns::new(&ns);
        hosts.file(
            "hosts",
            &format!("127.0.0.1 localhost\n::1 localhost\n{T4} web.test\n{T6} web6.test\n"),
        );
        let mut lab = Lab {
            _hosts: hosts,
            _udp_echo: Vec::new(),
            ns,
        };
        for ip in [T4, T6] {
            let bind = |port: u16| SocketAddr::new(ip.parse().unwrap(), port);
            let (h, e, r, u) = lab.ns.run_in(move || {
                (
                    TcpListener::bind(bind(HTTP)).expect("bind http"),
                    TcpListener::bind(bind(ECHO)).expect("bind echo"),
                    TcpListener::bind(bind(RESET)).expect("bind reset"),
                    UdpSocket::bind(bind(ECHO)).expect("bind udp echo"),
                )
            });
            serve_tcp(h, |mut s| http_reply(&mut s, HTTP_BODY));
            serve_tcp(e, echo_stream);
            serve_tcp(r, reset_stream);
            lab._udp_echo.push(UdpEcho::on(u));
        }
        lab
    }

    /// Start `sockstun server --listen ADDR ARGS...` in the namespace and wait
    /// until it listens. The targets are addresses of the server's own host
    /// here, refused by default: they are allowed unless ARGS set their own
    /// `--allow-dest` / `--deny-dest`.
    pub fn server_on(&self, listen: &str, args: &[&str]) -> Proc {
        let mut cmd = vec!["--listen", listen];
        cmd.extend_from_slice(args);
        if !args
            .iter()
            .any(|a| *a == "--allow-dest" || *a == "--deny-dest")
        {
            for t in [T4, T4_OTHER, T6] {
                cmd.extend_from_slice(&["--allow-dest", t]);
            }
        }
        start_server(&self.ns, None, &cmd)
    }

    pub fn server(&self, args: &[&str]) -> Proc {
        self.server_on(PROXY, args)
    }

    /// Run a shell command in the namespace (no panic on failure).
    pub fn sh(&self, script: &str) -> Output {
        self.ns.exec(&["sh", "-c", script])
    }

    /// A TCP connection made inside the namespace, usable from this thread.
    pub fn tcp(&self, to: &str) -> TcpStream {
        let to: SocketAddr = to.parse().unwrap();
        let s = self
            .ns
            .run_in(move || TcpStream::connect(to).expect("connect in netns"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A UDP socket bound inside the namespace.
    pub fn udp(&self, bind: &str) -> UdpSocket {
        let bind: SocketAddr = bind.parse().unwrap();
        let s = self
            .ns
            .run_in(move || UdpSocket::bind(bind).expect("udp bind in netns"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

/// Read exactly `n` bytes or panic with what came.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    b
}

/// True when the peer closed (EOF or reset) within the read timeout.
pub fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// SOCKS5 no-auth greeting + CONNECT request; returns the 10/22-byte reply.
pub fn socks5_connect(s: &mut TcpStream, req_addr: &[u8]) -> Vec<u8> {
    socks5_connect_cmd(s, 1, req_addr)
}

/// SOCKS5 no-auth greeting + a request with command `cmd` (1 CONNECT,
/// 2 BIND, 3 UDP ASSOCIATE); returns the first reply.
pub fn socks5_connect_cmd(s: &mut TcpStream, cmd: u8, dest: &[u8]) -> Vec<u8> {
    s.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(s, 2), [5, 0]);
    let mut req = vec![5, cmd, 0];
    req.extend_from_slice(dest);
    s.write_all(&req).unwrap();
    socks5_reply(s)
}

/// Read one complete SOCKS5 reply.
pub fn socks5_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut r = read_n(s, 5);
    let rest = match r[3] {
        1 => 5,
        4 => 17,
        3 => r[4] as usize + 2,
        t => panic!("reply with address type {t}: {r:?}"),
    };
    r.extend(read_n(s, rest));
    r
}

/// `ATYP ADDR PORT` for an IPv4 address.
pub fn addr4(ip: &str, port: u16) -> Vec<u8> {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let mut v = vec![1];
    v.extend_from_slice(&ip.octets());
    v.extend_from_slice(&port.to_be_bytes());
    v
}

pub fn addr6(ip: &str, port: u16) -> Vec<u8> {
    let ip: std::net::Ipv6Addr = ip.parse().unwrap();
    let mut v = vec![4];
    v.extend_from_slice(&ip.octets());
    v.extend_from_slice(&port.to_be_bytes());
    v
}

pub fn addr_name(name: &str, port: u16) -> Vec<u8> {
    let mut v = vec![3, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v
}
