//! The zero-copy TCP relay of `sockstun server` (issue 19): between the
//! client's socket and the destination's, a direction that moves bulk data
//! moves it by `splice(2)` through a pipe, with the semantics of the copy
//! loop. Each test checks the session's `spliced=` (bytes that never crossed
//! into user space) so that it fails when the relay falls back to copying.
//!
//! Payloads are a pseudo-random pattern of a period no read or write size
//! divides; the far end checks every byte it receives against the pattern at
//! its offset (a lost, repeated or reordered chunk shows at once), with
//! `memcmp` so the check is cheap even in a debug build.
mod common;

use common::server_lab::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The pattern's period: a prime number of bytes.
const PERIOD: usize = (1 << 20) + 7;
const CHUNK: usize = 256 * 1024;

/// `PERIOD` pseudo-random bytes (xorshift64 from `seed`).
fn pattern(seed: u64) -> Arc<Vec<u8>> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(PERIOD + 8);
    while v.len() < PERIOD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(PERIOD);
    Arc::new(v)
}

/// Write the pattern's bytes at stream offsets `from..to`.
fn send(s: &mut TcpStream, pat: &[u8], from: u64, to: u64) -> std::io::Result<()> {
    let mut off = from;
    while off < to {
        let i = (off % PERIOD as u64) as usize;
        let n = CHUNK.min(PERIOD - i).min((to - off) as usize);
        s.write_all(&pat[i..i + n])?;
        off += n as u64;
    }
    Ok(())
}

/// Read to EOF, checking every byte against the pattern; the byte count at
/// EOF, or what went wrong (a differing byte, more than `max`, a read error).
fn receive(s: &mut TcpStream, pat: &[u8], max: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return Ok(off),
            Ok(n) => n,
            Err(e) => return Err(format!("read error after {off} bytes: {e}")),
        };
        if off + n as u64 > max {
            return Err(format!("more than the {max} bytes sent"));
        }
        let mut done = 0;
        while done < n {
            let i = ((off + done as u64) % PERIOD as u64) as usize;
            let k = (n - done).min(PERIOD - i);
            if buf[done..done + k] != pat[i..i + k] {
                return Err(format!("bytes differ at offset {}", off + done as u64));
            }
            done += k;
        }
        off += n as u64;
    }
}

/// A listener of the test's own on the lab's target address.
fn listen(lab: &Lab, port: u16) -> TcpListener {
    let a = SocketAddr::new(T4.parse().unwrap(), port);
    lab.ns
        .run_in(move || TcpListener::bind(a).expect("bind target"))
}

/// A SOCKS5 CONNECT through the lab's server to `port` of the target.
fn connect(lab: &Lab, port: u16) -> TcpStream {
    let mut c = lab.tcp(PROXY);
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(socks5_connect(&mut c, &addr4(T4, port))[1], 0);
    c
}

/// The session line of the one CONNECT session the server logged, once it
/// did (within 20 s).
fn session_line(srv: &Proc) -> String {
    let found = wait_until(Duration::from_secs(20), || {
        srv.log().lines().any(|l| l.contains("cmd=connect"))
    });
    let log = srv.log();
    assert!(found, "no session line:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("cmd=connect")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    lines[0].to_string()
}

/// A numeric field `key=N` of a log line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// Bytes a bulk direction may copy rather than splice. It turns to splice
/// from its first read that fills the relay's 64 KiB buffer: the very first
/// on a quiet machine, later when a loaded sender trickles in smaller
/// reads; and a splice that finds a ready socket twice says EAGAIN copies
/// one chunk. Seen up to 2.5 MB under load; everything past this bound is
/// the copy loop doing the work splice should.
const COPIED_MAX: u64 = 8 * MIB;

/// `spliced=` of a session line that moved `up` and `down` bytes: all of
/// each bulk direction but its first reads.
fn assert_spliced(line: &str, up: u64, down: u64) {
    let spliced = field(line, "spliced");
    assert!(
        spliced <= up + down && spliced + 2 * COPIED_MAX >= up + down,
        "not spliced: {line}"
    );
}

/// Bytes held in the pipes of process `pid` (each pipe counted once).
fn pipe_bytes(pid: u32) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for e in dir.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if !link.starts_with("pipe:") || !seen.insert(link) {
            continue;
        }
        // Opening /proc/PID/fd/N of a pipe opens that pipe: FIONREAD then
        // says how many bytes it holds. Nothing is read.
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(e.path())
        else {
            continue;
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a descriptor we own writes one c_int to `n`.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) } == 0 {
            total += n as u64;
        }
    }
    total
}

/// Send `up` bytes from `c` (then half-close) while receiving what comes
/// back; the verified count received at EOF.
fn talk(
    c: &mut TcpStream,
    up: &Arc<Vec<u8>>,
    n: u64,
    down: &[u8],
    max: u64,
) -> Result<u64, String> {
    let mut w = c.try_clone().unwrap();
    // A stalled relay ends the test in seconds, with what each end saw
    // (not at the server's 300 s idle timeout, with a panic).
    w.set_write_timeout(Some(STALL)).unwrap();
    c.set_read_timeout(Some(STALL)).unwrap();
    let up = up.clone();
    let writer = std::thread::spawn(move || {
        send(&mut w, &up, 0, n)
            .and_then(|()| w.shutdown(Shutdown::Write))
            .map_err(|e| format!("write: {e}"))
    });
    let got = receive(c, down, max);
    let wrote = writer.join().unwrap();
    wrote.and(got)
}

/// No byte moving for this long is a stall.
const STALL: Duration = Duration::from_secs(30);

/// The target side of `talk`: accept one connection, send `n` bytes of
/// `down` while receiving, half-close; the verified count received at EOF.
fn serve_talk(
    l: TcpListener,
    up: Arc<Vec<u8>>,
    down: Arc<Vec<u8>>,
    n: u64,
    max: u64,
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        talk(&mut s, &down, n, &up, max)
    })
}

#[test]
fn one_gib_each_way_spliced_and_verified() {
    if !require_root("one_gib_each_way_spliced_and_verified") {
        return;
    }
    let lab = Lab::new("ssg");
    let srv = lab.server(&[]);
    let (up, down) = (pattern(1), pattern(2));
    let target = serve_talk(listen(&lab, 5001), up.clone(), down.clone(), GIB, GIB);
    let mut c = connect(&lab, 5001);
    let t0 = std::time::Instant::now();
    let got_down = talk(&mut c, &up, GIB, &down, GIB);
    // What the sockets and the server's pipes held, while they still do.
    let state = match got_down {
        Ok(_) => String::new(),
        Err(_) => format!(
            "{}\npipes hold {} bytes",
            String::from_utf8_lossy(&lab.sh("ss -tnmi").stdout),
            pipe_bytes(srv.child.id())
        ),
    };
    drop(c);
    let got_up = target.join().unwrap();
    eprintln!("1 GiB each way in {:?}", t0.elapsed());
    assert_eq!(got_down, Ok(GIB), "down; {state}\n{}", srv.log());
    assert_eq!(got_up, Ok(GIB), "up; {state}\n{}", srv.log());
    let line = session_line(&srv);
    assert!(line.contains("outcome=closed"), "{line}");
    assert_eq!(
        (field(&line, "up"), field(&line, "down")),
        (GIB, GIB),
        "{line}"
    );
    assert_spliced(&line, GIB, GIB);
}

/// The client sends its request and half-closes while the answer is still
/// flowing: the target sees EOF after exactly what was sent, the answer
/// goes on to its end and the client sees EOF after it.
#[test]
fn half_close_in_the_middle_of_a_spliced_transfer() {
    if !require_root("half_close_in_the_middle_of_a_spliced_transfer") {
        return;
    }
    let lab = Lab::new("ssh");
    let srv = lab.server(&[]);
    let (up, down) = (pattern(3), pattern(4));
    const UP: u64 = 32 * MIB;
    const HALF: u64 = 64 * MIB;
    let l = listen(&lab, 5002);
    let (up2, down2) = (up.clone(), down.clone());
    let target = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = s.try_clone().unwrap();
        let (eof_tx, eof_rx) = mpsc::channel();
        std::thread::spawn(move || eof_tx.send(receive(&mut r, &up2, UP)));
        // Half the answer, then the rest only once the request's EOF came
        // through: the answer is mid-way when the client half-closes.
        send(&mut s, &down2, 0, HALF).unwrap();
        let got = eof_rx
            .recv_timeout(Duration::from_secs(40))
            .unwrap_or_else(|_| Err("no EOF from the client".into()));
        if got.is_ok() {
            send(&mut s, &down2, HALF, 2 * HALF).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    let mut c = connect(&lab, 5002);
    let got_down = talk(&mut c, &up, UP, &down, 2 * HALF);
    assert_eq!(
        target.join().unwrap(),
        Ok(UP),
        "the target's view of the request"
    );
    assert_eq!(got_down, Ok(2 * HALF), "the answer after the half-close");
    let line = session_line(&srv);
    assert!(line.contains("outcome=closed"), "{line}");
    assert_eq!(
        (field(&line, "up"), field(&line, "down")),
        (UP, 2 * HALF),
        "{line}"
    );
    assert_spliced(&line, UP, 2 * HALF);
}

/// The client streams to a target that reads nothing, until the server's
/// pipe holds bytes it cannot write on; then the target resets. The client
/// sees a reset (not a clean EOF), the session ends with its counts, the
/// pipe and its bytes are gone (not reused), and the next session through
/// the same server moves its bytes intact.
#[test]
fn target_reset_while_the_pipe_holds_data() {
    if !require_root("target_reset_while_the_pipe_holds_data") {
        return;
    }
    let lab = Lab::new("ssr");
    let srv = lab.server(&[]);
    let pid = srv.child.id();
    let l = listen(&lab, 5003);
    let acceptor = std::thread::spawn(move || (l.accept().unwrap().0, l));
    let mut c = connect(&lab, 5003);
    let (target, l) = acceptor.join().unwrap();
    let pat = pattern(5);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = c.try_clone().unwrap();
    // Writes that give up after a while, so the writer can be stopped: the
    // reset must then be seen by the reader alone (a socket reports its
    // error once, to whichever call comes first).
    w.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (pat2, sent2, stop2) = (pat.clone(), sent.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let off = sent2.load(Ordering::Relaxed);
            let i = (off % PERIOD as u64) as usize;
            let n = 65536.min(PERIOD - i);
            match w.write(&pat2[i..i + n]) {
                Ok(n) => sent2.fetch_add(n as u64, Ordering::Relaxed),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => 0,
                Err(e) => return Err(e),
            };
        }
        Ok(())
    });
    assert!(
        wait_until(Duration::from_secs(20), || pipe_bytes(pid) > 0),
        "the server's pipe never held the bytes the target does not read (sent {})",
        sent.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap().expect("writing to the proxy");
    socket2::SockRef::from(&target)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(target);
    let mut rest = Vec::new();
    let got = c.read_to_end(&mut rest);
    assert!(
        got.as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{got:?} instead of a reset: {}",
        session_line(&srv)
    );
    let line = session_line(&srv);
    assert!(
        line.contains("outcome=reset by target") || line.contains("outcome=error on target side"),
        "{line}"
    );
    let (up, down) = (field(&line, "up"), field(&line, "down"));
    assert!(up > 0 && up <= sent.load(Ordering::Relaxed), "{line}");
    let spliced = field(&line, "spliced");
    assert!(down == 0 && spliced > 0 && spliced <= up, "{line}");
    assert_eq!(
        pipe_bytes(pid),
        0,
        "a pipe still holds the dead session's bytes"
    );

    // Pipes the server keeps for reuse are clean: a new session through it.
    let (up, down) = (pattern(6), pattern(7));
    let target = serve_talk(l, up.clone(), down.clone(), 16 * MIB, 16 * MIB);
    let mut c = connect(&lab, 5003);
    assert_eq!(talk(&mut c, &up, 16 * MIB, &down, 16 * MIB), Ok(16 * MIB));
    assert_eq!(target.join().unwrap(), Ok(16 * MIB));
}
