//! hop: the cheapest relay process scripts/bench.sh can put on a path, as a
//! floor for what any relay costs (a socksifier in TUN mode, a SOCKS server).
//!
//! It speaks no protocol: every TCP connection accepted on `--listen` is
//! joined to a new connection to `--to`, and every UDP datagram to `--listen`
//! goes to `--to` and its answers back to the last sender. A row through it
//! against the same path without it is the price of one more process on the
//! path: its wake-ups, its socket calls and its share of two cores. Nothing a
//! relay must do is left out and nothing else is done:
//! - TCP: a fixed pool of blocking threads (no thread made per connection,
//!   no epoll registration), each accepting, connecting, then copying with
//!   poll(2) until both directions have ended;
//! - UDP: one blocking thread per direction, `recvmmsg` batches of up to 64
//!   datagrams sent on with one `sendmmsg`.
//!
//! With `--socks` it is the least a SOCKS5 server can be: each TCP thread
//! reads the greeting, answers "no authentication", reads a CONNECT to an
//! IPv4 address, connects, answers with its bound address, then copies as
//! above; a UDP ASSOCIATE is answered with the UDP socket on `--listen`,
//! whose datagrams lose their header and go where it says, from one
//! unconnected socket, and come back with a header (IPv4 only, one client
//! at a time, no other method or command, no checks): the floor of any
//! SOCKS5 server against the same client.
//!
//! This is a benchmark tool, not a test: it is never run by `cargo test`.

use clap::Parser;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

#[path = "shared/bufs.rs"]
mod bufs;
use bufs::force_bufs;

#[derive(Parser, Debug)]
#[command(
    name = "hop",
    about = "a protocol-less TCP and UDP relay, the bench's floor"
)]
struct Cli {
    /// Address to accept TCP and receive UDP on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address every connection and datagram is relayed to.
    #[arg(long)]
    to: SocketAddr,
    /// Serve TCP as a minimal SOCKS5 server (CONNECT to IPv4 only) instead.
    #[arg(long)]
    socks: bool,
    /// Blocking TCP threads: connections served at once.
    #[arg(long, default_value_t = 64)]
    threads: usize,
}

fn main() -> io::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.listen)?;
    for _ in 0..cli.threads {
        let l = listener.try_clone()?;
        let (to, socks) = (cli.to, cli.socks);
        std::thread::spawn(move || loop {
            if let Ok((mut a, _)) = l.accept() {
                let b = if socks {
                    socks_connect(&mut a, l.local_addr())
                } else {
                    TcpStream::connect(to)
                };
                if let Ok(b) = b {
                    let _ = copy_both(a, b);
                }
            }
        });
    }
    udp(cli.listen, cli.to, cli.socks)?;
    eprintln!("hop {} -> {}", cli.listen, cli.to);
    loop {
        std::thread::park();
    }
}

/// The SOCKS5 handshake of a client that asks for no authentication and a
/// CONNECT to an IPv4 address (RFC 1928 §3, §4, §6), each message in one read.
fn socks_connect(a: &mut TcpStream, udp: io::Result<SocketAddr>) -> io::Result<TcpStream> {
    let mut m = [0u8; 262];
    let _greeting = a.read(&mut m)?;
    a.write_all(&[5, 0])?;
    let n = a.read(&mut m)?;
    if n >= 10 && m[1] == 3 {
        // UDP ASSOCIATE: the relay is the UDP socket on the listening
        // address; the association lasts as long as this connection.
        let SocketAddr::V4(u) = udp? else {
            return Err(io::Error::other("listening on IPv6"));
        };
        let mut r = [5, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        r[4..8].copy_from_slice(&u.ip().octets());
        r[8..].copy_from_slice(&u.port().to_be_bytes());
        a.write_all(&r)?;
        while a.read(&mut m)? > 0 {}
        return Err(io::Error::other("association ended"));
    }
    if n < 10 || m[1] != 1 || m[3] != 1 {
        return Err(io::Error::other("not a CONNECT to IPv4"));
    }
    let ip = std::net::Ipv4Addr::new(m[4], m[5], m[6], m[7]);
    let b = TcpStream::connect((ip, u16::from_be_bytes([m[8], m[9]])))?;
    let SocketAddr::V4(bound) = b.local_addr()? else {
        return Err(io::Error::other("bound to IPv6"));
    };
    let mut r = [5, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    r[4..8].copy_from_slice(&bound.ip().octets());
    r[8..].copy_from_slice(&bound.port().to_be_bytes());
    a.write_all(&r)?;
    Ok(b)
}

/// Copies both ways until both have seen EOF (or one errs), passing each
/// half-close on.
fn copy_both(mut a: TcpStream, mut b: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = [true, true];
    while open[0] || open[1] {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: if open[0] { libc::POLLIN } else { 0 },
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: if open[1] { libc::POLLIN } else { 0 },
                revents: 0,
            },
        ];
        // SAFETY: poll on two pollfds of a local array, its exact length.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..2 {
            if !open[i] || fds[i].revents == 0 {
                continue;
            }
            let (from, to) = if i == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            match from.read(&mut buf)? {
                0 => {
                    open[i] = false;
                    let _ = to.shutdown(Shutdown::Write);
                }
                n => to.write_all(&buf[..n])?,
            }
        }
    }
    Ok(())
}

const BATCH: usize = 64;
const SLOT: usize = 2048;
/// The RFC 1928 §7 header of a datagram to or from an IPv4 address.
const HDR: usize = 10;

fn udp(listen: SocketAddr, to: SocketAddr, socks: bool) -> io::Result<()> {
    let front = UdpSocket::bind(listen)?;
    let back = UdpSocket::bind(match to {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    // A SOCKS relay sends each datagram where its header says.
    if !socks {
        back.connect(to)?;
    }
    for s in [&front, &back] {
        force_bufs(s.as_raw_fd(), 8 << 20);
    }
    let peer = Arc::new(Mutex::new(None::<(libc::sockaddr_storage, u32)>));
    let (f2, b2, p2) = (front.try_clone()?, back.try_clone()?, peer.clone());
    std::thread::spawn(move || relay(&f2, &b2, &p2, false, socks));
    std::thread::spawn(move || relay(&back, &front, &peer, true, socks));
    Ok(())
}

/// Moves datagrams from `src` to `dst` in batches. Towards the target
/// (`answers` false) it remembers the sender; with the answers it sends each
/// to that remembered sender. With `socks`, the header is taken off on the
/// way out (and says where to) and put in front of each answer.
fn relay(
    src: &UdpSocket,
    dst: &UdpSocket,
    peer: &Mutex<Option<(libc::sockaddr_storage, u32)>>,
    answers: bool,
    socks: bool,
) {
    let head = if socks && answers { HDR } else { 0 };
    let mut bufs = vec![[0u8; SLOT]; BATCH];
    // SAFETY (both zeroed calls): plain C structs for which all zero bytes
    // are a valid value.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iov: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0
        };
        BATCH
    ];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
        for (i, h) in hdrs.iter_mut().enumerate() {
            iov[i].iov_base = bufs[i][head..].as_mut_ptr().cast();
            iov[i].iov_len = SLOT - head;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: every header points at its own live iovec, buffer and name
        // of the sizes given; the kernel writes at most that much.
        let n = unsafe {
            libc::recvmmsg(
                src.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        let to = {
            let mut p = peer.lock().unwrap();
            if !answers {
                *p = Some((names[n - 1], hdrs[n - 1].msg_hdr.msg_namelen));
            }
            *p
        };
        let Some((mut client, client_len)) = to else {
            continue;
        };
        let mut m = 0;
        for i in 0..n {
            let len = hdrs[i].msg_len as usize;
            let (start, end) = if !socks {
                (0, len)
            } else if answers {
                put_header(&mut bufs[i][..HDR], &names[i]);
                (0, HDR + len)
            } else if len >= HDR && bufs[i][3] == 1 {
                names[m] = sockaddr4(&bufs[i][4..HDR]);
                (HDR, len)
            } else {
                continue;
            };
            let h = &mut hdrs[m];
            iov[m].iov_base = bufs[i][start..].as_mut_ptr().cast();
            iov[m].iov_len = end - start;
            h.msg_hdr.msg_iov = &mut iov[m];
            if answers {
                h.msg_hdr.msg_name = (&mut client as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = client_len;
            } else if socks {
                h.msg_hdr.msg_name = (&mut names[m] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            } else {
                // `dst` is connected: no address.
                h.msg_hdr.msg_name = std::ptr::null_mut();
                h.msg_hdr.msg_namelen = 0;
            }
            m += 1;
        }
        let mut sent = 0;
        while sent < m {
            // SAFETY: the first m headers point at live iovecs, buffers and
            // names set just above, lengths within their buffers.
            let k = unsafe {
                libc::sendmmsg(
                    dst.as_raw_fd(),
                    hdrs[sent..].as_mut_ptr(),
                    (m - sent) as u32,
                    0,
                )
            };
            if k <= 0 {
                break;
            }
            sent += k as usize;
        }
    }
}

/// An IPv4 sockaddr from a header's address and port (network order).
fn sockaddr4(a: &[u8]) -> libc::sockaddr_storage {
    // SAFETY: all zero bytes are a valid sockaddr_storage, and a
    // sockaddr_in fits in one and has no stricter alignment.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        let sin = &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        sin.sin_port = u16::from_ne_bytes([a[4], a[5]]);
        s
    }
}

/// The header of an answer from `from` (IPv4) into `h`.
fn put_header(h: &mut [u8], from: &libc::sockaddr_storage) {
    // SAFETY: recvmmsg filled `from` with the sender's address; on an IPv4
    // socket that is a sockaddr_in, which sockaddr_storage can hold.
    let sin = unsafe { &*(from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    h[..4].copy_from_slice(&[0, 0, 0, 1]);
    h[4..8].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
    h[8..10].copy_from_slice(&sin.sin_port.to_ne_bytes());
}
