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
//! With `--socks` the TCP side is the least a SOCKS5 server can be: each
//! thread reads the greeting, answers "no authentication", reads a CONNECT
//! to an IPv4 address, connects, answers with its bound address, then copies
//! as above (no other method, command or address type, no checks): the floor
//! of any SOCKS5 server against the same client.
//!
//! This is a benchmark tool, not a test: it is never run by `cargo test`.

use clap::Parser;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

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
                    socks_connect(&mut a)
                } else {
                    TcpStream::connect(to)
                };
                if let Ok(b) = b {
                    let _ = copy_both(a, b);
                }
            }
        });
    }
    udp(cli.listen, cli.to)?;
    eprintln!("hop {} -> {}", cli.listen, cli.to);
    loop {
        std::thread::park();
    }
}

/// The SOCKS5 handshake of a client that asks for no authentication and a
/// CONNECT to an IPv4 address (RFC 1928 §3, §4, §6), each message in one read.
fn socks_connect(a: &mut TcpStream) -> io::Result<TcpStream> {
    let mut m = [0u8; 262];
    let _greeting = a.read(&mut m)?;
    a.write_all(&[5, 0])?;
    let n = a.read(&mut m)?;
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

fn udp(listen: SocketAddr, to: SocketAddr) -> io::Result<()> {
    let front = UdpSocket::bind(listen)?;
    let back = UdpSocket::bind(match to {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    back.connect(to)?;
    for s in [&front, &back] {
        bufs(s.as_raw_fd(), 8 << 20);
    }
    let peer = Arc::new(Mutex::new(None::<(libc::sockaddr_storage, u32)>));
    let (f2, b2, p2) = (front.try_clone()?, back.try_clone()?, peer.clone());
    std::thread::spawn(move || relay(&f2, &b2, Some(&p2), false));
    std::thread::spawn(move || relay(&back, &front, Some(&peer), true));
    Ok(())
}

/// Moves datagrams from `src` to `dst` in batches. Towards the target
/// (`answers` false) it remembers the sender; with the answers it sends each
/// to that remembered sender.
fn relay(
    src: &UdpSocket,
    dst: &UdpSocket,
    peer: Option<&Mutex<Option<(libc::sockaddr_storage, u32)>>>,
    answers: bool,
) {
    let mut bufs = vec![[0u8; SLOT]; BATCH];
    // SAFETY (all the zeroed calls below): plain C structs for which all
    // zero bytes are a valid value.
    let mut names: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: SLOT,
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    loop {
        for (i, h) in hdrs.iter_mut().enumerate() {
            iov[i].iov_len = SLOT;
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
        let to = peer.and_then(|p| {
            let mut p = p.lock().unwrap();
            if !answers {
                *p = Some((names[n - 1], hdrs[n - 1].msg_hdr.msg_namelen));
            }
            *p
        });
        let (mut dest, dest_len) = to.unwrap_or((names[0], 0));
        for (i, h) in hdrs.iter_mut().take(n).enumerate() {
            iov[i].iov_len = h.msg_len as usize;
            if answers {
                h.msg_hdr.msg_name = (&mut dest as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = dest_len;
            } else {
                // `dst` is connected: no address.
                h.msg_hdr.msg_name = std::ptr::null_mut();
                h.msg_hdr.msg_namelen = 0;
            }
        }
        if answers && to.is_none() {
            continue;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: the first n headers were filled by recvmmsg above and
            // point at live buffers, lengths cut to what was received.
            let k = unsafe {
                libc::sendmmsg(
                    dst.as_raw_fd(),
                    hdrs[sent..].as_mut_ptr(),
                    (n - sent) as u32,
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

/// Large socket buffers past rmem_max (root only), as netbench's own.
fn bufs(fd: i32, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt on an open socket with a pointer to a local int
        // and its exact size; failure is harmless (the default stays).
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}
