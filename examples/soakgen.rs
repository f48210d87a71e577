//! soakgen: the mixed, paced load of scripts/soak.sh (and its HTTP server).
//!
//! `soakgen http --listen ADDR` serves `GET /N` with an N-byte body and
//! closes (HTTP/1.1, `Connection: close`); curl talks to it as well.
//!
//! `soakgen load` runs, until `--secs` have passed, side by side:
//! - short HTTP requests (`--http` targets, addresses or names), paced at
//!   `--rate` per second with a burst at `--burst-rate` for `--burst-secs`
//!   every `--burst-every` seconds; a slow machine lowers the rate (the
//!   pacer waits for a free worker), it never piles requests up;
//! - batches of `--held` idle connections to the echo service, each proven
//!   end to end when opened and again after `--hold-secs`, then closed;
//! - `--bulk` long transfers, paced at `--bulk-kbps` each, half up (the
//!   receiver's byte count must match) and half down, restarted when done;
//! - a resetting client: a transfer cut by an `SO_LINGER 0` close, every
//!   `60 / --resets-per-min` seconds, alternately downloading and uploading;
//! - UDP echo requests every `--udp-ms` (resent each second, up to 5 times),
//!   a fresh socket (a new association) every 20 requests.
//!
//! The echo target is a `netbench server` (examples/netbench.rs: `E` echo,
//! `G` source, `S` sink, UDP echo). Names are resolved by the system
//! resolver each time (through a TUN's virtual DNS), or sent to the proxy
//! with `--socks` (SOCKS5, address type 3: the proxy resolves them).
//!
//! Every request appends one line to `--events`:
//! `START_MS END_MS KIND ok|FAIL detail` (Unix epoch milliseconds), so
//! soak.sh can tell failures inside an upstream restart from the others.
//! This is a soak tool, not a test: `cargo test` never runs it.

use clap::{Parser, Subcommand};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Generous: a loaded machine is slow, not broken. Pass/fail must not
/// depend on its speed.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Parser, Debug)]
#[command(name = "soakgen", about = "sockstun's soak load generator")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

// Parsed once at start: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Mode {
    /// Serve `GET /N` (N body bytes) on every address.
    Http {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Run the mixed load.
    Load(Args),
}

#[derive(clap::Args, Debug, Clone)]
struct Args {
    /// HTTP targets (ADDR:PORT or NAME:PORT), used in turn.
    #[arg(long, required = true)]
    http: Vec<String>,
    /// The netbench server (TCP echo/source/sink, UDP echo).
    #[arg(long)]
    echo: String,
    /// UDP echo target, if not --echo (a name exercises virtual DNS).
    #[arg(long)]
    udp_echo: Option<String>,
    /// Go through this SOCKS5 proxy instead of the routing table.
    #[arg(long)]
    socks: Option<SocketAddr>,
    #[arg(long, default_value_t = 120)]
    secs: u64,
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, default_value_t = 100.0)]
    burst_rate: f64,
    #[arg(long, default_value_t = 60)]
    burst_every: u64,
    #[arg(long, default_value_t = 10)]
    burst_secs: u64,
    /// Concurrent short-request workers.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    #[arg(long, default_value_t = 300)]
    held: usize,
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
    /// Seconds between a batch's close and the next batch.
    #[arg(long, default_value_t = 30)]
    held_pause: u64,
    #[arg(long, default_value_t = 2)]
    bulk: usize,
    #[arg(long, default_value_t = 60)]
    bulk_secs: u64,
    #[arg(long, default_value_t = 2048)]
    bulk_kbps: u64,
    #[arg(long, default_value_t = 30)]
    resets_per_min: u64,
    #[arg(long, default_value_t = 500)]
    udp_ms: u64,
    #[arg(long)]
    events: String,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.mode {
        Mode::Http { listen } => http_server(listen),
        Mode::Load(a) => load(a),
    };
    if let Err(e) = r {
        eprintln!("soakgen: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- events

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Events {
    out: Mutex<BufWriter<File>>,
    ok: AtomicU64,
    fail: AtomicU64,
}

impl Events {
    fn record(&self, kind: &str, start: u64, r: io::Result<String>) {
        let (tag, detail) = match r {
            Ok(d) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                ("ok", d)
            }
            Err(e) => {
                self.fail.fetch_add(1, Ordering::Relaxed);
                ("FAIL", e.to_string().replace([' ', '\n'], "_"))
            }
        };
        let mut o = self.out.lock().unwrap();
        let _ = writeln!(o, "{start} {} {kind} {tag} {detail}", now_ms());
    }
    fn flush(&self) {
        let _ = self.out.lock().unwrap().flush();
    }
}

// ---------------------------------------------------------------- connecting

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

/// ADDR:PORT, or NAME:PORT split for the proxy or the resolver.
fn split_dest(d: &str) -> io::Result<(String, u16)> {
    if let Ok(a) = d.parse::<SocketAddr>() {
        return Ok((a.ip().to_string(), a.port()));
    }
    let (h, p) = d
        .rsplit_once(':')
        .ok_or_else(|| err(format!("bad dest {d}")))?;
    Ok((
        h.to_string(),
        p.parse().map_err(|_| err(format!("bad port {d}")))?,
    ))
}

fn resolve(d: &str) -> io::Result<Vec<SocketAddr>> {
    let (h, p) = split_dest(d)?;
    let v: Vec<SocketAddr> = (h.as_str(), p).to_socket_addrs()?.collect();
    if v.is_empty() {
        return Err(err(format!("{d}: no address")));
    }
    Ok(v)
}

fn timeouts(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
}

fn dial(to: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = err("no address");
    for a in to {
        match TcpStream::connect_timeout(a, IO_TIMEOUT) {
            Ok(s) => {
                timeouts(&s)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// SOCKS5 address (RFC 1928 section 4): IPv4, IPv6 or a name.
fn socks_addr(buf: &mut Vec<u8>, d: &str) -> io::Result<()> {
    let (h, p) = split_dest(d)?;
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            buf.push(1);
            buf.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            buf.push(4);
            buf.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            buf.extend_from_slice(&[3, h.len() as u8]);
            buf.extend_from_slice(h.as_bytes());
        }
    }
    buf.extend_from_slice(&p.to_be_bytes());
    Ok(())
}

/// Length of a SOCKS5 address (type byte included) at the start of `b`.
fn socks_addr_len(b: &[u8]) -> io::Result<usize> {
    match b.first() {
        Some(1) => Ok(1 + 4 + 2),
        Some(4) => Ok(1 + 16 + 2),
        Some(3) if b.len() > 1 => Ok(2 + b[1] as usize + 2),
        _ => Err(err("bad socks address")),
    }
}

/// SOCKS5 request `cmd` for `dest`, no auth; the stream and BND address.
fn socks(proxy: SocketAddr, cmd: u8, dest: &str) -> io::Result<(TcpStream, SocketAddr)> {
    let mut s = dial(&[proxy])?;
    let mut req = vec![5, 1, 0, 5, cmd, 0];
    socks_addr(&mut req, dest)?;
    // Greeting and request in one write: sockstun server takes a pipeline.
    s.write_all(&req)?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)?;
    if m != [5, 0] {
        return Err(err(format!("socks method {m:?}")));
    }
    let mut h = [0u8; 5];
    s.read_exact(&mut h)?;
    if h[0] != 5 || h[1] != 0 {
        return Err(err(format!("socks reply {:#04x}", h[1])));
    }
    let mut rest = vec![0u8; socks_addr_len(&[h[3], h[4]])? - 2 + 1];
    rest[0] = h[4];
    s.read_exact(&mut rest[1..])?;
    let bnd = match h[3] {
        1 => SocketAddr::new(IpAddr::from(<[u8; 4]>::try_from(&rest[..4]).unwrap()), 0),
        4 => SocketAddr::new(IpAddr::from(<[u8; 16]>::try_from(&rest[..16]).unwrap()), 0),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    };
    let port = u16::from_be_bytes([rest[rest.len() - 2], rest[rest.len() - 1]]);
    Ok((s, SocketAddr::new(bnd.ip(), port)))
}

fn connect(a: &Args, dest: &str) -> io::Result<TcpStream> {
    match a.socks {
        None => dial(&resolve(dest)?),
        Some(p) => Ok(socks(p, 1, dest)?.0),
    }
}

// ---------------------------------------------------------------- the load

fn load(a: Args) -> io::Result<()> {
    let ev = Arc::new(Events {
        out: Mutex::new(BufWriter::new(File::create(&a.events)?)),
        ok: AtomicU64::new(0),
        fail: AtomicU64::new(0),
    });
    let end = Instant::now() + Duration::from_secs(a.secs);
    let mut th = Vec::new();
    let spawn = |f: fn(&Args, &Events, Instant, usize), i: usize| {
        let (a, ev) = (a.clone(), ev.clone());
        std::thread::spawn(move || f(&a, &ev, end, i))
    };
    th.push(spawn(short_pacer, 0));
    if a.held > 0 {
        th.push(spawn(held, 0));
    }
    for i in 0..a.bulk {
        th.push(spawn(bulk, i));
    }
    if a.resets_per_min > 0 {
        th.push(spawn(resets, 0));
    }
    if a.udp_ms > 0 {
        th.push(spawn(udp, 0));
    }
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(2));
        ev.flush();
    }
    for t in th {
        let _ = t.join();
    }
    ev.flush();
    println!(
        "RESULT ok={} failed={}",
        ev.ok.load(Ordering::Relaxed),
        ev.fail.load(Ordering::Relaxed)
    );
    Ok(())
}

fn sleep_until(t: Instant, end: Instant) {
    let t = t.min(end);
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Hands out tickets at the current rate to a fixed pool of workers.
fn short_pacer(a: &Args, ev: &Events, end: Instant, _: usize) {
    let t0 = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<u64>(a.workers);
    let rx = Arc::new(Mutex::new(rx));
    std::thread::scope(|sc| {
        for _ in 0..a.workers.max(1) {
            let rx = rx.clone();
            sc.spawn(move || loop {
                let n = match rx.lock().unwrap().recv() {
                    Ok(n) => n,
                    Err(_) => return,
                };
                let dest = &a.http[n as usize % a.http.len()];
                let start = now_ms();
                ev.record("http", start, http_get(a, dest, 64 + (n * 7919) % 16384));
            });
        }
        let mut next = Instant::now();
        let mut n = 0u64;
        while next < end {
            let s = next.duration_since(t0).as_secs();
            let burst = a.burst_every > 0 && s % a.burst_every < a.burst_secs;
            let rate = if burst { a.burst_rate } else { a.rate };
            next += Duration::from_secs_f64(1.0 / rate.max(0.1));
            sleep_until(next, end);
            if tx.send(n).is_err() {
                break;
            }
            n += 1;
            // A slow machine: do not try to catch up.
            next = next.max(Instant::now() - Duration::from_millis(100));
        }
        drop(tx);
    });
}

fn http_get(a: &Args, dest: &str, len: u64) -> io::Result<String> {
    let mut s = connect(a, dest)?;
    let (host, _) = split_dest(dest)?;
    write!(
        s,
        "GET /{len} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| err(format!("no header end in {} bytes", resp.len())))?;
    if !resp.starts_with(b"HTTP/1.1 200 ") || resp.len() - head_end - 4 != len as usize {
        return Err(err(format!("bad response ({} bytes)", resp.len())));
    }
    Ok(dest.to_string())
}

fn hold_open(a: &Args) -> io::Result<TcpStream> {
    let mut s = connect(a, &a.echo)?;
    s.write_all(b"Ex")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != b'x' {
        return Err(err("bad echo"));
    }
    Ok(s)
}

/// Batches of idle connections: open, prove, hold, prove again, close.
fn held(a: &Args, ev: &Events, end: Instant, _: usize) {
    while Instant::now() < end {
        let conns = Mutex::new(Vec::new());
        let next = AtomicU64::new(0);
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < a.held as u64 {
                        let start = now_ms();
                        match hold_open(a) {
                            Ok(s) => conns.lock().unwrap().push((start, s)),
                            Err(e) => ev.record("held", start, Err(e)),
                        }
                    }
                });
            }
        });
        sleep_until(Instant::now() + Duration::from_secs(a.hold_secs), end);
        for (start, mut s) in conns.into_inner().unwrap() {
            let mut b = [0u8; 1];
            let r = s.write_all(b"y").and_then(|_| s.read_exact(&mut b));
            ev.record("held", start, r.map(|_| "held".into()));
        }
        sleep_until(Instant::now() + Duration::from_secs(a.held_pause), end);
    }
}

/// Paced long transfers, restarted when they end.
fn bulk(a: &Args, ev: &Events, end: Instant, i: usize) {
    while Instant::now() + Duration::from_secs(2) < end {
        let start = now_ms();
        let stop = (Instant::now() + Duration::from_secs(a.bulk_secs)).min(end);
        let (kind, r) = if i % 2 == 0 {
            ("bulk-up", bulk_up(a, stop))
        } else {
            ("bulk-down", bulk_down(a, stop))
        };
        let failed = r.is_err();
        ev.record(kind, start, r);
        if failed {
            // The upstream is restarting: no tight retry loop.
            sleep_until(Instant::now() + Duration::from_secs(1), end);
        }
    }
}

/// Writes `0x5a` at `--bulk-kbps` until `stop`; the sink's count must match.
fn bulk_up(a: &Args, stop: Instant) -> io::Result<String> {
    let mut s = connect(a, &a.echo)?;
    s.write_all(b"S")?;
    let buf = [0x5au8; 16384];
    let (t0, rate) = (Instant::now(), a.bulk_kbps as f64 * 1024.0);
    let mut sent = 0u64;
    while Instant::now() < stop {
        if (sent as f64) < t0.elapsed().as_secs_f64() * rate {
            s.write_all(&buf)?;
            sent += buf.len() as u64;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    s.write_all(&[0])?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    match u64::from_be_bytes(n) {
        n if n == sent => Ok(format!("{sent}B")),
        n => Err(err(format!("sent {sent} bytes, the sink counted {n}"))),
    }
}

/// Reads the source (`0xa5` bytes) at `--bulk-kbps` until `stop`.
fn bulk_down(a: &Args, stop: Instant) -> io::Result<String> {
    let mut s = connect(a, &a.echo)?;
    s.write_all(b"G")?;
    let mut buf = [0u8; 16384];
    let (t0, rate) = (Instant::now(), a.bulk_kbps as f64 * 1024.0);
    let mut got = 0u64;
    while Instant::now() < stop {
        if (got as f64) < t0.elapsed().as_secs_f64() * rate {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(err(format!("source closed after {got} bytes")));
            }
            if buf[..n].iter().any(|&b| b != 0xa5) {
                return Err(err(format!("corrupt byte after {got} bytes")));
            }
            got += n as u64;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(format!("{got}B"))
}

/// A transfer cut short by a reset (SO_LINGER 0, then close).
fn reset_one(a: &Args, down: bool) -> io::Result<String> {
    let mut s = connect(a, &a.echo)?;
    let mut buf = [0x5au8; 16384];
    if down {
        s.write_all(b"G")?;
        let mut got = 0;
        while got < 64 * 1024 {
            match s.read(&mut buf)? {
                0 => return Err(err("source closed early")),
                n => got += n,
            }
        }
    } else {
        s.write_all(b"S")?;
        for _ in 0..4 {
            s.write_all(&buf)?;
        }
    }
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    drop(s);
    Ok(if down { "rst-down" } else { "rst-up" }.into())
}

fn resets(a: &Args, ev: &Events, end: Instant, _: usize) {
    let every = Duration::from_secs_f64(60.0 / a.resets_per_min as f64);
    let mut i = 0u64;
    while Instant::now() < end {
        let next = Instant::now() + every;
        let start = now_ms();
        ev.record("reset", start, reset_one(a, i % 2 == 0));
        i += 1;
        sleep_until(next, end);
    }
}

/// A UDP socket towards the echo target: straight (through the routing
/// table) or through a SOCKS5 UDP ASSOCIATE (the header goes in front).
struct UdpPath {
    sock: UdpSocket,
    hdr: Vec<u8>,
    _ctl: Option<TcpStream>,
}

fn udp_open(a: &Args, target: &str) -> io::Result<UdpPath> {
    let (ctl, to, hdr) = match a.socks {
        None => (None, resolve(target)?[0], Vec::new()),
        Some(p) => {
            let (ctl, mut bnd) = socks(p, 3, "0.0.0.0:0")?;
            if bnd.ip().is_unspecified() {
                bnd.set_ip(p.ip());
            }
            let mut h = vec![0, 0, 0];
            socks_addr(&mut h, target)?;
            (Some(ctl), bnd, h)
        }
    };
    let sock = UdpSocket::bind(match to {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    sock.connect(to)?;
    sock.set_read_timeout(Some(Duration::from_millis(250)))?;
    Ok(UdpPath {
        sock,
        hdr,
        _ctl: ctl,
    })
}

/// One echo request: resent every second, up to 5 times.
fn udp_echo(u: &UdpPath, seq: u64) -> io::Result<String> {
    let mut pkt = u.hdr.clone();
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"soak");
    let mut buf = [0u8; 2048];
    for attempt in 1..=5 {
        u.sock.send(&pkt)?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            let n = match u.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) => return Err(e),
            };
            let off = if u.hdr.is_empty() {
                0
            } else {
                3 + socks_addr_len(buf.get(3..n).unwrap_or(&[]))?
            };
            if n >= off + 8 && buf[off..off + 8] == seq.to_be_bytes() {
                return Ok(format!("attempt{attempt}"));
            }
        }
    }
    Err(err("no echo after 5 attempts"))
}

fn udp(a: &Args, ev: &Events, end: Instant, _: usize) {
    let target = a.udp_echo.clone().unwrap_or_else(|| a.echo.clone());
    let mut seq = 0u64;
    while Instant::now() < end {
        let start = now_ms();
        let u = match udp_open(a, &target) {
            Ok(u) => u,
            Err(e) => {
                ev.record("udp", start, Err(e));
                sleep_until(Instant::now() + Duration::from_secs(1), end);
                continue;
            }
        };
        for _ in 0..20 {
            if Instant::now() >= end {
                break;
            }
            let start = now_ms();
            ev.record("udp", start, udp_echo(&u, seq));
            seq += 1;
            sleep_until(Instant::now() + Duration::from_millis(a.udp_ms), end);
        }
    }
}

// ---------------------------------------------------------------- HTTP server

fn http_server(listen: Vec<SocketAddr>) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for a in listen {
            let l = tokio::net::TcpListener::bind(a).await?;
            eprintln!("soakgen http on {a}");
            tasks.push(tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, _)) => {
                            tokio::spawn(async move {
                                let t = Duration::from_secs(30);
                                let _ = tokio::time::timeout(t, http_serve(s)).await;
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn http_serve(mut s: tokio::net::TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = Vec::new();
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await? {
            0 => return Ok(()),
            n if req.len() + n > 16384 => return Ok(()),
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    // "GET /N ..." asks for N body bytes; anything else gets 64.
    let len = std::str::from_utf8(&req)
        .ok()
        .and_then(|r| r.strip_prefix("GET /"))
        .and_then(|r| r.split([' ', '?']).next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(64)
        .min(1 << 20);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.resize(out.len() + len, b'h');
    s.write_all(&out).await?;
    s.shutdown().await
}
