//! `sockstun server` over its life: health probes that are no errors, and a
//! SIGTERM after which every open session still logs its line.
mod common;

use common::server_lab::*;
use common::*;
use std::io::Write;
use std::time::Duration;

/// The session lines of a log (one per session).
fn sessions(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" session ")).collect()
}

/// Probes (a greeting then a clean close, or a bare connect and close) are
/// logged at debug: an info log shows no error that is not one.
#[test]
fn probes_are_not_errors() {
    if !require_root("probes_are_not_errors") {
        return;
    }
    let lab = Lab::new("slp");
    let srv = lab.server(&[]);
    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    drop(s);
    drop(lab.tcp(PROXY));
    // Then a real session, whose line marks that the two before were handled.
    let mut s = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut s, &addr4(T4, ECHO))[1], 0);
    drop(s);
    assert!(wait_until(Duration::from_secs(10), || srv
        .log()
        .contains("cmd=connect")));
    let log = srv.log();
    assert_eq!(sessions(&log).len(), 1, "{log}");
    assert!(!log.contains("closed during handshake"), "{log}");
}

/// SIGTERM: a relayed TCP session, a UDP association and a client still in
/// its handshake each get their line, outcome=shutdown, with the bytes moved.
#[test]
fn sigterm_logs_every_open_session() {
    if !require_root("sigterm_logs_every_open_session") {
        return;
    }
    let lab = Lab::new("sls");
    let mut srv = lab.server(&[]);
    let mut tcp = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut tcp, &addr4(T4, ECHO))[1], 0);
    tcp.write_all(b"hello").unwrap();
    assert_eq!(read_n(&mut tcp, 5), b"hello");
    let mut ctl = lab.tcp(PROXY);
    ctl.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut ctl, 2), [5, 0]);
    let mut req = vec![5, 3, 0];
    req.extend(addr4("0.0.0.0", 0));
    ctl.write_all(&req).unwrap();
    let r = socks5_reply(&mut ctl);
    assert_eq!(r[1], 0);
    let relay = format!("127.0.0.1:{}", u16::from_be_bytes([r[8], r[9]]));
    let u = lab.udp("127.0.0.1:0");
    let mut d = vec![0, 0, 0];
    d.extend(addr4(T4, ECHO));
    d.extend_from_slice(b"datagram");
    u.send_to(&d, relay.as_str()).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = u.recv_from(&mut b).unwrap();
    assert!(b[..n].ends_with(b"datagram"));
    // Greeted, no request yet: in its handshake, and known to be accepted.
    let mut half = lab.tcp(PROXY);
    half.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut half, 2), [5, 0]);

    srv.signal(libc::SIGTERM);
    let st = srv
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "{st:?}");
    let log = srv.log();
    let lines = sessions(&log);
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines.iter().all(|l| l.contains("outcome=shutdown")),
        "{log}"
    );
    let find = |cmd: &str| {
        lines
            .iter()
            .find(|l| l.contains(cmd))
            .copied()
            .unwrap_or("")
    };
    assert!(find("cmd=connect").contains("up=5 down=5"), "{log}");
    assert!(find("cmd=udp-associate").contains("up=8 down=8"), "{log}");
    assert!(find("cmd=-").contains("proto=socks5"), "{log}");
}
