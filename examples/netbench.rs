//! netbench: the load generator of scripts/bench.sh.
//!
//! One tool for every path so the figures compare fairly: each client mode
//! talks to the target either directly (the kernel routes it, which is also
//! how traffic enters a TUN) or through a SOCKS5 proxy (`--socks`: CONNECT,
//! or UDP ASSOCIATE for `udp`). The server runs in the target namespace and
//! serves TCP and UDP on one port.
//!
//! TCP protocol: the client's first byte picks the service.
//! - `S` sink: read 0x5a bytes until a 0x00 byte ends them, answer the byte
//!   count (u64 BE). Used by `up`, so the figure is what the receiver got, not
//!   what sat in buffers. An end byte rather than a half-close, because some
//!   proxies (microsocks) tear both directions down on a half-close.
//! - `G` source: write until the peer goes away. Used by `down`.
//! - `E` echo: echo until EOF. Used by `rr` and `hold`.
//! - `C` one echo, then the server closes first (so TIME-WAIT lands on the
//!   target, not on the client's ports). Used by `crr` and `fb`.
//!
//! UDP: every datagram is echoed to its sender. On port 53 of each address
//! the server answers DNS queries (the query back with QR and RA set and no
//! records: NOERROR, NODATA), so a DNS round trip can be timed.
//!
//! Every client mode prints one line `RESULT key=value ...` for bench.sh.
//! This is a benchmark tool, not a test: it is never run by `cargo test`.

use clap::{Parser, Subcommand};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "shared/bufs.rs"]
mod bufs;
use bufs::force_bufs;

const BUF: usize = 128 * 1024;

#[derive(Parser, Debug)]
#[command(name = "netbench", about = "sockstun's benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    /// Target server (netbench server) address.
    #[arg(long, default_value = "203.0.113.2:9000")]
    target: SocketAddr,
    /// Reach the target through this SOCKS5 proxy instead of directly.
    #[arg(long)]
    socks: Option<SocketAddr>,
    /// Duration of the measurement, seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Serve sink/source/echo on TCP and echo on UDP.
    Server {
        /// Address to serve on (repeatable). Give each address its own
        /// listener so UDP replies leave from the address they were sent to.
        #[arg(long, default_value = "0.0.0.0:9000")]
        listen: Vec<SocketAddr>,
    },
    /// Throughput client to target (Gbit/s, measured at the receiver).
    Up {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// Throughput target to client (Gbit/s).
    Down {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// 1-byte request/response on one connection: transactions/s, p50, p99.
    Rr {
        #[command(flatten)]
        c: Common,
    },
    /// Connect, 1-byte request, 1-byte response, close: connections/s.
    Crr {
        #[command(flatten)]
        c: Common,
        /// Concurrent workers, each doing connections one after another.
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
    /// Connections opened one at a time: the time from `connect()` (the
    /// SOCKS handshake included with `--socks`) to the first byte of the
    /// answer to a 1-byte request; p50, p99 and every sample (`samples_us`).
    Fb {
        #[command(flatten)]
        c: Common,
        /// Stop after this many connections (or after `--secs`).
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// UDP echo at a fixed offered rate: answered packets/s and loss.
    Udp {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 50_000)]
        pps: u64,
        /// Datagram payload size, bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// How long replies are still counted after the last datagram, ms.
        #[arg(long, default_value_t = 1000)]
        grace_ms: u64,
    },
    /// UDP echo with one datagram in flight: round trip p50, p99 and lost
    /// datagrams (no reply within 1 s).
    UdpRtt {
        #[command(flatten)]
        c: Common,
        /// Datagram payload size, bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// DNS queries one at a time, each from a new socket (a new source port,
    /// as a stub resolver asks) to port `--port` of the target's address:
    /// p50, p99 and lost queries (no answer within 1 s). With `--socks` one
    /// association carries every query (an application that speaks SOCKS
    /// keeps its association).
    Dns {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 53)]
        port: u16,
    },
    /// Open N connections, prove each end to end, hold them `--secs`, check
    /// each again. Prints `ESTABLISHED n` when all are up (bench.sh samples
    /// memory then).
    Hold {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Parallel openers.
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
}

fn main() {
    raise_nofile();
    let cli = Cli::parse();
    let r = match cli.mode {
        Mode::Server { listen } => server(listen),
        Mode::Up { c, streams } => up(&c, streams),
        Mode::Down { c, streams } => down(&c, streams),
        Mode::Rr { c } => rr(&c),
        Mode::Crr { c, workers } => crr(&c, workers),
        Mode::Fb { c, count } => fb(&c, count),
        Mode::Udp {
            c,
            pps,
            size,
            grace_ms,
        } => udp(&c, pps, size, grace_ms),
        Mode::UdpRtt { c, size } => udp_rtt(&c, size),
        Mode::Dns { c, port } => dns(&c, port),
        Mode::Hold { c, conns, workers } => hold(&c, conns, workers),
    };
    if let Err(e) = r {
        eprintln!("netbench: {e}");
        std::process::exit(1);
    }
}

/// Holding 10,000 connections needs more descriptors than the usual soft limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------- SOCKS5 client

fn socks_addr(buf: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            buf.push(1);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(4);
            buf.extend_from_slice(&ip.octets());
        }
    }
    buf.extend_from_slice(&a.port().to_be_bytes());
}

/// Read a SOCKS5 reply (RFC 1928 section 6) and return BND.ADDR:BND.PORT.
fn socks_reply(s: &mut TcpStream) -> io::Result<SocketAddr> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    if h[0] != 5 || h[1] != 0 {
        return Err(io::Error::other(format!("socks reply {:#04x}", h[1])));
    }
    let ip: IpAddr = match h[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a)?;
            IpAddr::from(a)
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a)?;
            IpAddr::from(a)
        }
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l)?;
            let mut d = vec![0u8; l[0] as usize];
            s.read_exact(&mut d)?;
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
        t => return Err(io::Error::other(format!("socks atyp {t}"))),
    };
    let mut p = [0u8; 2];
    s.read_exact(&mut p)?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(p)))
}

/// Open a TCP connection to the SOCKS5 proxy and send `cmd` for `dest`
/// (no auth). Returns the control stream and the reply's bound address.
fn socks_request(
    proxy: SocketAddr,
    cmd: u8,
    dest: SocketAddr,
) -> io::Result<(TcpStream, SocketAddr)> {
    let mut s = dial(proxy)?;
    s.write_all(&[5, 1, 0])?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)?;
    if m != [5, 0] {
        return Err(io::Error::other(format!("socks method {m:?}")));
    }
    let mut req = vec![5, cmd, 0];
    socks_addr(&mut req, dest);
    s.write_all(&req)?;
    let bnd = socks_reply(&mut s)?;
    Ok((s, bnd))
}

/// Every run must end: a peer that stops answering (a proxy out of threads,
/// a stalled flow) turns into an error after this long, not a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn dial(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn connect(c: &Common) -> io::Result<TcpStream> {
    match c.socks {
        None => dial(c.target),
        Some(p) => Ok(socks_request(p, 1, c.target)?.0),
    }
}

fn result(kv: &[(&str, String)]) {
    let line: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("RESULT {}", line.join(" "));
}

// ---------------------------------------------------------------- clients

fn up(c: &Common, streams: usize) -> io::Result<()> {
    let start = Instant::now();
    let dur = Duration::from_secs_f64(c.secs);
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || -> io::Result<(u64, Duration)> {
                let mut s = connect(&c)?;
                s.write_all(b"S")?;
                let buf = vec![0x5au8; BUF];
                let t0 = Instant::now();
                while t0.elapsed() < dur {
                    s.write_all(&buf)?;
                }
                s.write_all(&[0])?;
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                Ok((u64::from_be_bytes(n), t0.elapsed()))
            })
        })
        .collect();
    let mut bytes = 0;
    for h in handles {
        let (b, _) = h
            .join()
            .map_err(|_| io::Error::other("stream panicked"))??;
        bytes += b;
    }
    // The window is from the first connect to the last byte counted, so a
    // stream that started late does not inflate the sum.
    let secs = start.elapsed().as_secs_f64();
    result(&[
        ("gbps", format!("{:.3}", bytes as f64 * 8.0 / secs / 1e9)),
        ("bytes", bytes.to_string()),
        ("secs", format!("{secs:.3}")),
    ]);
    Ok(())
}

fn down(c: &Common, streams: usize) -> io::Result<()> {
    let dur = Duration::from_secs_f64(c.secs);
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || -> io::Result<u64> {
                let mut s = connect(&c)?;
                s.write_all(b"G")?;
                let mut buf = vec![0u8; BUF];
                let mut n = 0u64;
                while start.elapsed() < dur {
                    match s.read(&mut buf)? {
                        0 => return Err(io::Error::other("source closed early")),
                        k => n += k as u64,
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let mut bytes = 0;
    for h in handles {
        bytes += h
            .join()
            .map_err(|_| io::Error::other("stream panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    result(&[
        ("gbps", format!("{:.3}", bytes as f64 * 8.0 / secs / 1e9)),
        ("bytes", bytes.to_string()),
        ("secs", format!("{secs:.3}")),
    ]);
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn rr(c: &Common) -> io::Result<()> {
    let mut s = connect(c)?;
    s.write_all(b"E")?;
    let dur = Duration::from_secs_f64(c.secs);
    let mut lat = Vec::with_capacity(1 << 20);
    let mut b = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    result(&[
        ("n", lat.len().to_string()),
        ("tps", format!("{:.0}", lat.len() as f64 / secs)),
        ("p50_us", format!("{:.1}", percentile(&lat, 0.50))),
        ("p99_us", format!("{:.1}", percentile(&lat, 0.99))),
    ]);
    Ok(())
}

fn crr_one(c: &Common) -> io::Result<()> {
    let mut s = connect(c)?;
    s.write_all(b"Cx")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    // Wait for the server's FIN, so the server is the side in TIME-WAIT.
    let mut rest = [0u8; 16];
    while s.read(&mut rest)? > 0 {}
    Ok(())
}

fn crr(c: &Common, workers: usize) -> io::Result<()> {
    let dur = Duration::from_secs_f64(c.secs);
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let first_err = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (c, ok, err, first_err) = (c.clone(), ok.clone(), err.clone(), first_err.clone());
            std::thread::spawn(move || {
                while start.elapsed() < dur {
                    match crr_one(&c) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_err.lock().unwrap().get_or_insert(e.to_string());
                            err.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    result(&[
        ("cps", format!("{:.0}", ok as f64 / secs)),
        ("ok", ok.to_string()),
        ("errors", err.load(Ordering::Relaxed).to_string()),
    ]);
    if let Some(e) = first_err.lock().unwrap().take() {
        eprintln!("netbench crr: first error: {e}");
    }
    Ok(())
}

fn fb(c: &Common, count: usize) -> io::Result<()> {
    let dur = Duration::from_secs_f64(c.secs);
    let mut lat = Vec::with_capacity(count);
    let mut errors = 0u64;
    let mut first_err = None;
    let start = Instant::now();
    while lat.len() < count && start.elapsed() < dur {
        let t0 = Instant::now();
        let r = (|| -> io::Result<Duration> {
            let mut s = connect(c)?;
            s.write_all(b"Cx")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            let t = t0.elapsed();
            // The server closes first (TIME-WAIT on its side); wait for it
            // so the next connection starts on a quiet path.
            let mut rest = [0u8; 16];
            while s.read(&mut rest)? > 0 {}
            Ok(t)
        })();
        match r {
            Ok(t) => lat.push(t.as_nanos() as u64),
            Err(e) => {
                errors += 1;
                first_err.get_or_insert(e.to_string());
                if errors > 10 && lat.is_empty() {
                    break;
                }
            }
        }
    }
    let samples: Vec<String> = lat.iter().map(|n| (n / 1000).to_string()).collect();
    let mut sorted = lat.clone();
    sorted.sort_unstable();
    result(&[
        ("n", sorted.len().to_string()),
        ("errors", errors.to_string()),
        (
            "p50_ms",
            format!("{:.2}", percentile(&sorted, 0.50) / 1000.0),
        ),
        (
            "p99_ms",
            format!("{:.2}", percentile(&sorted, 0.99) / 1000.0),
        ),
        ("samples_us", samples.join(",")),
    ]);
    if let Some(e) = first_err {
        eprintln!("netbench fb: first error: {e}");
    }
    if lat.is_empty() {
        return Err(io::Error::other("no connection answered"));
    }
    Ok(())
}

/// A UDP socket towards the target: with a proxy, through UDP ASSOCIATE
/// (datagrams go to the relay with the RFC 1928 section 7 header, returned
/// in `hdr`); without, straight to the target. The control connection must
/// live as long as the association.
fn udp_path(c: &Common) -> io::Result<(Option<TcpStream>, UdpSocket, Vec<u8>)> {
    let (ctl, relay, hdr) = match c.socks {
        None => (None, c.target, Vec::new()),
        Some(p) => {
            let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            let (ctl, mut bnd) = socks_request(p, 3, local)?;
            if bnd.ip().is_unspecified() {
                bnd.set_ip(p.ip());
            }
            let mut h = vec![0, 0, 0];
            socks_addr(&mut h, c.target);
            (Some(ctl), bnd, h)
        }
    };
    let sock = UdpSocket::bind(match relay {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    force_bufs(sock.as_raw_fd(), 8 << 20);
    sock.connect(relay)?;
    Ok((ctl, sock, hdr))
}

fn udp_rtt(c: &Common, size: usize) -> io::Result<()> {
    let size = size.max(8);
    let (_ctl, sock, hdr) = udp_path(c)?;
    let hlen = hdr.len();
    let mut pkt = hdr.clone();
    pkt.resize(hlen + size, 0x5a);
    let mut buf = vec![0u8; 65536];
    let dur = Duration::from_secs_f64(c.secs);
    let mut lat = Vec::with_capacity(1 << 16);
    let mut lost = 0u64;
    let start = Instant::now();
    let mut seq = 0u64;
    // One timeout for every wait (not a setsockopt per datagram inside the
    // timed window); a stale answer ends the wait early, the deadline holds.
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    while start.elapsed() < dur {
        seq += 1;
        pkt[hlen..hlen + 8].copy_from_slice(&seq.to_be_bytes());
        let t0 = Instant::now();
        sock.send(&pkt)?;
        // A late answer to an earlier datagram is skipped.
        let mine = |a: &[u8]| a.len() >= hlen + 8 && a[hlen..hlen + 8] == seq.to_be_bytes();
        match await_answer(&sock, &mut buf, t0, mine)? {
            Some(ns) => lat.push(ns),
            None => lost += 1,
        }
    }
    report_latency(lat, lost, "no datagram answered")
}

/// Wait up to a second after `t0` for the datagram `mine` accepts (others
/// are skipped): its round trip in ns, None when none came.
fn await_answer(
    sock: &UdpSocket,
    buf: &mut [u8],
    t0: Instant,
    mine: impl Fn(&[u8]) -> bool,
) -> io::Result<Option<u64>> {
    let deadline = t0 + Duration::from_secs(1);
    while Instant::now() < deadline {
        match sock.recv(buf) {
            Ok(n) if mine(&buf[..n]) => return Ok(Some(t0.elapsed().as_nanos() as u64)),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The result line of a latency scenario; an error (`none`) when nothing
/// was answered.
fn report_latency(mut lat: Vec<u64>, lost: u64, none: &str) -> io::Result<()> {
    lat.sort_unstable();
    result(&[
        ("n", lat.len().to_string()),
        ("lost", lost.to_string()),
        ("p50_us", format!("{:.1}", percentile(&lat, 0.50))),
        ("p99_us", format!("{:.1}", percentile(&lat, 0.99))),
    ]);
    if lat.is_empty() {
        return Err(io::Error::other(none.to_string()));
    }
    Ok(())
}

/// A query for `n<seq>.bench.test` type A, id `id`.
fn dns_query(id: u16, seq: u64) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in [format!("n{seq}"), "bench".into(), "test".into()] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns(c: &Common, port: u16) -> io::Result<()> {
    let mut c = c.clone();
    c.target.set_port(port);
    let shared = match c.socks {
        Some(_) => Some(udp_path(&c)?),
        None => None,
    };
    let dur = Duration::from_secs_f64(c.secs);
    let mut lat = Vec::with_capacity(1 << 14);
    let (mut lost, mut seq) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while start.elapsed() < dur {
        seq += 1;
        let id = (seq as u16).wrapping_mul(40503);
        let own;
        let (sock, hdr) = match &shared {
            Some((_, s, h)) => (s, h.as_slice()),
            None => {
                own = UdpSocket::bind(match c.target {
                    SocketAddr::V4(_) => "0.0.0.0:0",
                    SocketAddr::V6(_) => "[::]:0",
                })?;
                own.connect(c.target)?;
                (&own, &[][..])
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut pkt = hdr.to_vec();
        pkt.extend_from_slice(&dns_query(id, seq));
        let t0 = Instant::now();
        sock.send(&pkt)?;
        let hl = hdr.len();
        let mine = |a: &[u8]| a.len() >= hl + 12 && a[hl..hl + 2] == id.to_be_bytes();
        match await_answer(sock, &mut buf, t0, mine)? {
            Some(ns) => lat.push(ns),
            None => lost += 1,
        }
    }
    report_latency(lat, lost, "no query answered")
}

fn udp(c: &Common, pps: u64, size: usize, grace_ms: u64) -> io::Result<()> {
    let size = size.max(8);
    let (_ctl, sock, hdr) = udp_path(c)?;
    let rx = sock.try_clone()?;
    let dur = Duration::from_secs_f64(c.secs);
    let total = (pps as f64 * c.secs) as u64;
    let done = Arc::new(AtomicBool::new(false));
    let hlen = hdr.len();
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || -> u64 {
            rx.set_read_timeout(Some(Duration::from_millis(100))).ok();
            let mut seen = vec![false; total as usize + 1];
            let mut got = 0u64;
            let mut buf = vec![0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    if n >= hlen + 8 {
                        let seq = u64::from_be_bytes(buf[hlen..hlen + 8].try_into().unwrap());
                        if let Some(s) = seen.get_mut(seq as usize) {
                            if !*s {
                                *s = true;
                                got += 1;
                            }
                        }
                    }
                }
            }
            got
        })
    };
    let mut pkt = hdr.clone();
    pkt.resize(hlen + size, 0x5a);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut send_err = 0u64;
    while sent < total {
        // Pace in 1 ms slices: send what the schedule owes, then sleep.
        let due = ((start.elapsed().as_secs_f64() * pps as f64) as u64).min(total);
        while sent < due {
            pkt[hlen..hlen + 8].copy_from_slice(&sent.to_be_bytes());
            if sock.send(&pkt).is_err() {
                send_err += 1;
            }
            sent += 1;
        }
        if start.elapsed() > dur + Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Replies still in flight get a grace period (1 s unless told).
    std::thread::sleep(Duration::from_millis(grace_ms));
    done.store(true, Ordering::Relaxed);
    let got = receiver.join().unwrap_or(0);
    result(&[
        ("offered_pps", format!("{:.0}", sent as f64 / send_secs)),
        ("answered_pps", format!("{:.0}", got as f64 / send_secs)),
        (
            "loss_pct",
            format!(
                "{:.2}",
                100.0 * (sent - got.min(sent)) as f64 / sent.max(1) as f64
            ),
        ),
        ("sent", sent.to_string()),
        ("answered", got.to_string()),
        ("send_errors", send_err.to_string()),
    ]);
    Ok(())
}

fn hold_open(c: &Common) -> io::Result<TcpStream> {
    let mut s = connect(c)?;
    s.write_all(b"Ex")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(s)
}

fn hold(c: &Common, conns: usize, workers: usize) -> io::Result<()> {
    let t0 = Instant::now();
    let held = Arc::new(Mutex::new(Vec::with_capacity(conns)));
    let next = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let first_err = Arc::new(Mutex::new(None::<String>));
    let handles: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (c, held, next, errs, first_err) = (
                c.clone(),
                held.clone(),
                next.clone(),
                errs.clone(),
                first_err.clone(),
            );
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < conns as u64 {
                    match hold_open(&c) {
                        Ok(s) => held.lock().unwrap().push(s),
                        Err(e) => {
                            first_err.lock().unwrap().get_or_insert(e.to_string());
                            errs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let mut held = std::mem::take(&mut *held.lock().unwrap());
    println!(
        "ESTABLISHED {} errors {} in {:.2}s",
        held.len(),
        errs.load(Ordering::Relaxed),
        open_secs
    );
    io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs_f64(c.secs));
    // Every held connection must still carry data end to end.
    let mut alive = 0u64;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        if s.write_all(b"y").is_ok() && s.read_exact(&mut b).is_ok() && b[0] == b'y' {
            alive += 1;
        }
    }
    result(&[
        ("wanted", conns.to_string()),
        ("established", held.len().to_string()),
        ("alive_after_hold", alive.to_string()),
        (
            "errors",
            (errs.load(Ordering::Relaxed) + held.len() as u64 - alive).to_string(),
        ),
        ("open_secs", format!("{open_secs:.2}")),
    ]);
    if let Some(e) = first_err.lock().unwrap().take() {
        eprintln!("netbench hold: first error: {e}");
    }
    Ok(())
}

// ---------------------------------------------------------------- server

fn server(listen: Vec<SocketAddr>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut listeners = Vec::new();
        for a in listen {
            listeners.push(tokio::net::TcpListener::bind(a).await?);
            let udp = std::net::UdpSocket::bind(a)?;
            force_bufs(udp.as_raw_fd(), 8 << 20);
            // The UDP echo is a plain blocking thread: one socket, no fan-out.
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            });
            let dns = std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 53))?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = dns.recv_from(&mut buf) {
                    if n >= 12 {
                        buf[2] |= 0x80; // QR: a response
                        buf[3] = 0x80; // RA, NOERROR
                        let _ = dns.send_to(&buf[..n], from);
                    }
                }
            });
            eprintln!("netbench server on {a} (DNS on port 53)");
        }
        let tasks: Vec<tokio::task::JoinHandle<()>> = listeners
            .into_iter()
            .map(|tcp| {
                tokio::spawn(async move {
                    loop {
                        match tcp.accept().await {
                            Ok((s, _)) => {
                                tokio::spawn(async move {
                                    let _ = serve(s).await;
                                });
                            }
                            // Out of descriptors: back off, keep serving.
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn serve(mut s: tokio::net::TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.set_nodelay(true)?;
    let mut m = [0u8; 1];
    s.read_exact(&mut m).await?;
    match m[0] {
        b'S' => {
            let mut buf = vec![0u8; BUF];
            let mut n = 0u64;
            loop {
                match s.read(&mut buf).await? {
                    0 => return Ok(()),
                    // The end byte is the last one sent, so it can only be
                    // the last byte of a read.
                    k if buf[k - 1] == 0 => {
                        n += k as u64 - 1;
                        break;
                    }
                    k => n += k as u64,
                }
            }
            s.write_all(&n.to_be_bytes()).await?;
        }
        b'G' => {
            let buf = vec![0xa5u8; BUF];
            loop {
                s.write_all(&buf).await?;
            }
        }
        b'E' => {
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await? {
                    0 => break,
                    k => s.write_all(&buf[..k]).await?,
                }
            }
        }
        b'C' => {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            s.write_all(&b).await?;
        }
        _ => {}
    }
    Ok(())
}
