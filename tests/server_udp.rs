//! `sockstun server`'s UDP relay in batches (recvmmsg/sendmmsg): many
//! datagrams taken in one call each way, every one relayed intact and in order
//! per peer, the largest datagram among small ones, and a bad datagram in the
//! middle of a batch dropped alone.
//!
//! A batch is made certain, not hoped for: the server is stopped (SIGSTOP,
//! waited for until the kernel says it is stopped) while a burst is queued on
//! its socket, and continued once the whole burst waits there.
mod common;

use common::server_lab::*;
use common::*;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// UDP ASSOCIATE on a new control connection; the relay's address.
fn associate(lab: &Lab) -> (TcpStream, SocketAddr) {
    let mut ctl = lab.tcp(PROXY);
    let r = socks5_connect_cmd(&mut ctl, 3, &addr4("0.0.0.0", 0));
    assert_eq!(&r[..4], &[5, 0, 0, 1], "{r:?}");
    let port = u16::from_be_bytes([r[8], r[9]]);
    (ctl, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A client datagram: the SOCKS header for `dest`, then `payload`.
fn dgram(frag: u8, dest: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, frag];
    d.extend_from_slice(dest);
    d.extend_from_slice(payload);
    d
}

fn addr_of(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(a) => addr4(&a.ip().to_string(), a.port()),
        SocketAddr::V6(a) => addr6(&a.ip().to_string(), a.port()),
    }
}

/// Payload number `i`, `len` bytes, each byte depending on both.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 7 + i * 13) as u8).collect()
}

/// A receive buffer that holds a whole burst (root may go past rmem_max).
fn big_rcvbuf(s: &UdpSocket) {
    let v: libc::c_int = 8 << 20;
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE");
}

/// A target socket in the lab's namespace, for the test to drive.
fn target(lab: &Lab, at: &str) -> UdpSocket {
    let s = lab.udp(at);
    big_rcvbuf(&s);
    s
}

/// Run `f` (which queues datagrams on the server's sockets) while the server
/// is stopped, so that it finds them all waiting when it runs again.
fn while_stopped(srv: &Proc, f: impl FnOnce()) {
    let stat = format!("/proc/{}/stat", srv.child.id());
    let state = || {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // "pid (comm) S ...": the state follows the last ')'.
        s.rsplit(')')
            .next()
            .and_then(|r| r.trim_start().chars().next())
    };
    srv.signal(libc::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(10), || state() == Some('T')),
        "the server did not stop"
    );
    f();
    srv.signal(libc::SIGCONT);
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut b = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut b).expect("a datagram within 10 s");
    b.truncate(n);
    (b, from)
}

/// The sizes of a burst: small ones of many lengths, and at `BIG_AT` a
/// datagram near the largest UDP payload (it fills most of a batch slot).
const BURST: usize = 40;
const BIG_AT: usize = 20;
const BIG: usize = 60_000;
fn size(i: usize) -> usize {
    if i == BIG_AT {
        BIG
    } else {
        1 + (i * 37) % 600
    }
}

#[test]
fn udp_batch_relayed_intact_and_in_order_per_peer_both_ways() {
    if !require_root("udp_batch_relayed_intact_and_in_order_per_peer_both_ways") {
        return;
    }
    let lab = Lab::new("sub");
    let srv = lab.server(&[]);
    let (ctl, relay) = associate(&lab);
    let u = lab.udp("127.0.0.1:0");
    big_rcvbuf(&u);
    let t4 = target(&lab, &format!("{T4}:5555"));
    let t6 = target(&lab, &format!("[{T6}]:5555"));
    let (a4, a6) = (t4.local_addr().unwrap(), t6.local_addr().unwrap());
    // One datagram each way first: the association learns the client's
    // port, and the targets learn the server's outgoing sockets.
    u.send_to(&dgram(0, &addr_of(a4), b"hello"), relay).unwrap();
    u.send_to(&dgram(0, &addr_of(a6), b"hello"), relay).unwrap();
    let (h4, o4) = recv(&t4);
    let (h6, o6) = recv(&t6);
    assert_eq!((&h4[..], &h6[..]), (&b"hello"[..], &b"hello"[..]));

    // Client -> targets: a burst alternating between the two peers.
    let to = |i: usize| if i % 2 == 0 { a4 } else { a6 };
    while_stopped(&srv, || {
        for i in 0..BURST {
            u.send_to(&dgram(0, &addr_of(to(i)), &payload(i, size(i))), relay)
                .unwrap();
        }
    });
    for (t, parity) in [(&t4, 0), (&t6, 1)] {
        for i in (0..BURST).filter(|i| i % 2 == parity) {
            let (d, _) = recv(t);
            assert_eq!(d.len(), size(i), "datagram {i}: wrong length");
            assert!(d == payload(i, size(i)), "datagram {i}: not intact");
        }
    }

    // Targets -> client: a burst from each, queued on the outgoing sockets.
    while_stopped(&srv, || {
        for i in 0..BURST {
            let (t, o) = if i % 2 == 0 { (&t4, o4) } else { (&t6, o6) };
            t.send_to(&payload(i, size(i)), o).unwrap();
        }
    });
    let mut next = [0usize, 1];
    for _ in 0..BURST {
        let (d, from) = recv(&u);
        assert_eq!(from, relay);
        let k = if d[3] == 1 { 0 } else { 1 };
        let i = next[k];
        next[k] += 2;
        let want = dgram(0, &addr_of(to(i)), &payload(i, size(i)));
        assert_eq!(d.len(), want.len(), "reply {i}: wrong length");
        assert!(d == want, "reply {i}: not intact, or out of order");
    }
    drop(ctl);
    assert!(
        wait_until(Duration::from_secs(10), || srv.log().lines().any(|l| l
            .contains("cmd=udp-associate")
            && l.contains("control connection closed"))),
        "{}",
        srv.log()
    );
    assert!(!srv.log().contains("dropped"), "{}", srv.log());
}

#[test]
fn udp_bad_datagrams_in_a_batch_are_dropped_alone() {
    if !require_root("udp_bad_datagrams_in_a_batch_are_dropped_alone") {
        return;
    }
    let lab = Lab::new("sud");
    let srv = lab.server(&[]);
    let (ctl, relay) = associate(&lab);
    let u = lab.udp("127.0.0.1:0");
    let t = target(&lab, &format!("{T4}:5556"));
    let dest = addr_of(t.local_addr().unwrap());
    u.send_to(&dgram(0, &dest, b"first"), relay).unwrap();
    assert_eq!(recv(&t).0, b"first");
    let bad: [Vec<u8>; 5] = [
        // Reserved bytes not zero.
        {
            let mut d = dgram(0, &dest, b"reserved");
            d[0] = 1;
            d
        },
        // A fragment (FRAG != 0): no reassembly.
        dgram(1, &dest, b"fragment"),
        // A header cut short.
        vec![0, 0, 0, 1, 203, 0],
        // An unknown address type.
        dgram(0, &[9, 1, 2, 3, 4, 0, 7], b"atyp"),
        // A destination the server refuses.
        dgram(0, &addr4("127.0.0.1", 1080), b"refused"),
    ];
    while_stopped(&srv, || {
        for (i, b) in bad.iter().enumerate() {
            u.send_to(&dgram(0, &dest, &payload(i, 100 + i)), relay)
                .unwrap();
            u.send_to(b, relay).unwrap();
        }
        u.send_to(&dgram(0, &dest, b"last"), relay).unwrap();
    });
    for i in 0..bad.len() {
        assert_eq!(recv(&t).0, payload(i, 100 + i), "good datagram {i}");
    }
    assert_eq!(recv(&t).0, b"last", "a bad datagram was relayed");
    drop(ctl);
    log_with(
        || srv.log(),
        "control connection closed (5 datagrams dropped)",
    );
}

/// The idle timeout counts datagrams either way: replies alone (the client
/// silent after its first datagram, as for a stream it only listens to)
/// keep the association for several timeouts, and its line counts them.
#[test]
fn udp_replies_alone_keep_the_association_alive() {
    if !require_root("udp_replies_alone_keep_the_association_alive") {
        return;
    }
    let lab = Lab::new("sur");
    let srv = lab.server(&["--idle-timeout", "2"]);
    let (ctl, relay) = associate(&lab);
    let u = lab.udp("127.0.0.1:0");
    let t = target(&lab, &format!("{T4}:5557"));
    let a = t.local_addr().unwrap();
    u.send_to(&dgram(0, &addr_of(a), b"start"), relay).unwrap();
    let (_, o) = recv(&t);
    // Three idle timeouts of replies, two a second: a reply late by up to
    // 1.5 s on a loaded machine still keeps the association.
    for i in 0..12 {
        t.send_to(&payload(i, 10), o).unwrap();
        let (d, from) = recv(&u);
        assert_eq!(from, relay);
        assert!(d == dgram(0, &addr_of(a), &payload(i, 10)), "reply {i}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(ctl);
    let log = log_with(|| srv.log(), "cmd=udp-associate");
    assert!(log.contains("outcome=control connection closed"), "{log}");
    assert!(log.contains("up=5 down=120"), "{log}");
}

/// The server's log once it holds `needle` (10 s at most, else the test
/// fails showing the log).
fn log_with(log: impl Fn() -> String, needle: &str) -> String {
    assert!(
        wait_until(Duration::from_secs(10), || log().contains(needle)),
        "no {needle:?} in:\n{}",
        log()
    );
    log()
}
