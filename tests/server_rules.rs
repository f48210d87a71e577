//! `sockstun server`, one raw-byte test per protocol rule, plus limits and
//! timeouts. Each test runs in its own namespace (see common/server_lab.rs).
mod common;

use common::server_lab::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Nothing arrives within `d` (the server is waiting for more bytes).
fn silent_for(s: &mut TcpStream, d: Duration) -> bool {
    s.set_read_timeout(Some(d)).unwrap();
    let mut b = [0u8; 16];
    let r = s.read(&mut b);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut)
}

#[test]
fn greeting_and_request_split_over_reads() {
    if !require_root("greeting_and_request_split_over_reads") {
        return;
    }
    let lab = Lab::new("srs");
    let _srv = lab.server(&[]);
    let mut s = lab.tcp(PROXY);
    // Half a greeting must not be answered (microsocks answers 05 FF here).
    s.write_all(&[5]).unwrap();
    assert!(
        silent_for(&mut s, Duration::from_millis(300)),
        "answered half a greeting"
    );
    s.write_all(&[2, 0]).unwrap();
    assert!(
        silent_for(&mut s, Duration::from_millis(200)),
        "answered before the last method"
    );
    s.write_all(&[2]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    let mut req = vec![5, 1, 0];
    req.extend(addr4(T4, ECHO));
    s.write_all(&req[..5]).unwrap();
    assert!(
        silent_for(&mut s, Duration::from_millis(200)),
        "answered a partial request"
    );
    s.write_all(&req[5..]).unwrap();
    let r = socks5_reply(&mut s);
    assert_eq!(&r[..4], &[5, 0, 0, 1], "{r:?}");
    s.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut s, 4), b"ping");
}

#[test]
fn zero_methods_and_gssapi_only_get_ff() {
    if !require_root("zero_methods_and_gssapi_only_get_ff") {
        return;
    }
    let lab = Lab::new("srm");
    let _srv = lab.server(&[]);
    for greeting in [&[5u8, 0][..], &[5, 1, 1]] {
        let mut s = lab.tcp(PROXY);
        s.write_all(greeting).unwrap();
        assert_eq!(read_n(&mut s, 2), [5, 0xFF], "greeting {greeting:?}");
        assert!(closed(&mut s));
    }
}

#[test]
fn unknown_command_and_address_type_get_complete_replies() {
    if !require_root("unknown_command_and_address_type_get_complete_replies") {
        return;
    }
    let lab = Lab::new("sru");
    let _srv = lab.server(&[]);
    let cases: [(&[u8], u8); 4] = [
        (&[5, 9, 0, 1, 203, 0, 113, 10, 0, 80], 0x07),
        (&[5, 1, 0, 9, 1, 2, 3, 4, 0, 80], 0x08),
        // Empty domain, and a domain with a NUL byte.
        (&[5, 1, 0, 3, 0, 0, 80], 0x01),
        (&[5, 1, 0, 3, 3, b'a', 0, b'b', 0, 80], 0x01),
    ];
    for (req, rep) in cases {
        let mut s = lab.tcp(PROXY);
        s.write_all(&[5, 1, 0]).unwrap();
        assert_eq!(read_n(&mut s, 2), [5, 0]);
        s.write_all(req).unwrap();
        // A whole reply with a bound address, not a truncated one.
        assert_eq!(
            read_n(&mut s, 10),
            [5, rep, 0, 1, 0, 0, 0, 0, 0, 0],
            "request {req:?}"
        );
        assert!(closed(&mut s), "not closed after {req:?}");
    }
    // SOCKS4 with an unknown command: 0x5B.
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 7, 0, 80, 203, 0, 113, 10, 0]).unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);
}

#[test]
fn auth_reply_version_is_1() {
    if !require_root("auth_reply_version_is_1") {
        return;
    }
    let lab = Lab::new("sra");
    let srv = lab.server(&["--user", "alice:s3cret"]);
    // No user/pass offered while users exist: no acceptable method.
    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0xFF]);

    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 2, 0, 2]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 2]);
    s.write_all(b"\x01\x05alice\x06s3cret").unwrap();
    assert_eq!(
        read_n(&mut s, 2),
        [1, 0],
        "RFC 1929 reply: version 1, status 0"
    );
    let mut req = vec![5, 1, 0];
    req.extend(addr_name("web.test", ECHO));
    s.write_all(&req).unwrap();
    assert_eq!(socks5_reply(&mut s)[1], 0);

    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 1, 2]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 2]);
    s.write_all(b"\x01\x05alice\x05wrong").unwrap();
    let r = read_n(&mut s, 2);
    assert_eq!(r[0], 1, "RFC 1929 reply version");
    assert_ne!(r[1], 0, "wrong password accepted");
    assert!(closed(&mut s));
    // A user name with CR/LF is logged escaped: it cannot forge a log line.
    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 1, 2]).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 2]);
    s.write_all(b"\x01\x0cx\r\nFORGED ok\x01p").unwrap();
    assert_ne!(read_n(&mut s, 2)[1], 0);
    assert!(wait_until(Duration::from_secs(10), || srv
        .log()
        .contains(r"user=x\r\nFORGED ok")));
    assert!(!srv.log().lines().any(|l| l.starts_with("FORGED")));
    assert!(!srv.log().contains("s3cret"));
}

#[test]
fn socks4_and_socks4a_marker() {
    if !require_root("socks4_and_socks4a_marker") {
        return;
    }
    let lab = Lab::new("sr4");
    let _srv = lab.server(&[]);
    // SOCKS4a: DSTIP 0.0.0.x with x != 0, then USERID, then the host name.
    let mut s = lab.tcp(PROXY);
    let mut req = vec![4, 1, 0, ECHO as u8, 0, 0, 0, 7];
    req.extend_from_slice(b"user\0web.test\0");
    s.write_all(&req).unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5A]);
    s.write_all(b"4a").unwrap();
    assert_eq!(read_n(&mut s, 2), b"4a");
    // 0.0.0.0 is not the marker: it is the address 0.0.0.0 (refused).
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 1, 0, ECHO as u8, 0, 0, 0, 0, 0]).unwrap();
    s.write_all(b"web.test\0").unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);
    // Plain SOCKS4 to an address.
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 1, 0, ECHO as u8, 203, 0, 113, 10, b'u', 0])
        .unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5A]);
}

#[test]
fn socks4_refused_when_users_are_configured() {
    if !require_root("socks4_refused_when_users_are_configured") {
        return;
    }
    let lab = Lab::new("sr4u");
    let srv = lab.server(&["--user", "alice:pw"]);
    for req in [
        &[
            4u8, 1, 0, ECHO as u8, 203, 0, 113, 10, b'a', b'l', b'i', b'c', b'e', 0,
        ][..],
        &[
            4, 1, 0, ECHO as u8, 0, 0, 0, 1, 0, b'w', b'e', b'b', b'.', b't', b'e', b's', b't', 0,
        ],
    ] {
        let mut s = lab.tcp(PROXY);
        s.write_all(req).unwrap();
        assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);
        assert!(closed(&mut s));
    }
    assert!(wait_until(Duration::from_secs(10), || srv
        .log()
        .contains("SOCKS4 carries no password")));
}

#[test]
fn loopback_and_localhost_refused_unless_allowed() {
    if !require_root("loopback_and_localhost_refused_unless_allowed") {
        return;
    }
    let lab = Lab::new("srl");
    // The server's own port on 127.0.0.1 is a real listener to aim at.
    let _srv = lab.server(&[]);
    for dest in [
        addr4("127.0.0.1", 1080),
        addr_name("localhost", 1080),
        addr6("::1", 1080),
        addr6("::ffff:127.0.0.1", 1080),
        addr4("0.0.0.0", 1080),
        addr4("169.254.169.254", 80),
    ] {
        let mut s = lab.tcp(PROXY);
        let r = socks5_connect(&mut s, &dest);
        assert_eq!(r[1], 0x02, "dest {dest:?} not refused with 0x02: {r:?}");
    }
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 1, 4, 56, 127, 0, 0, 1, 0]).unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);

    // --allow-dest lifts the default, for the address actually dialed.
    let _open = lab.server_on("127.0.0.1:1081", &["--allow-dest", "127.0.0.1/32"]);
    let mut s = lab.tcp("127.0.0.1:1081");
    assert_eq!(socks5_connect(&mut s, &addr4("127.0.0.1", 1080))[1], 0x00);
    let mut s = lab.tcp("127.0.0.1:1081");
    assert_eq!(
        socks5_connect(&mut s, &addr6("::ffff:127.0.0.1", 1080))[1],
        0x00
    );
    let mut s = lab.tcp("127.0.0.1:1081");
    assert_eq!(
        socks5_connect(&mut s, &addr6("::1", 1080))[1],
        0x02,
        "::1 is not in the allowed CIDR"
    );
    // --deny-dest adds to the list, and the most specific network wins.
    let _deny = lab.server_on(
        "127.0.0.1:1082",
        &[
            "--allow-dest",
            "203.0.113.0/24",
            "--deny-dest",
            "203.0.113.10/32",
        ],
    );
    let mut s = lab.tcp("127.0.0.1:1082");
    assert_eq!(
        socks5_connect(&mut s, &addr_name("web.test", ECHO))[1],
        0x02
    );
}

/// SSRF: every address of the server host reaches its services bound to
/// 0.0.0.0, not only the one the client connected to.
#[test]
fn host_addresses_on_other_interfaces_refused_unless_allowed() {
    if !require_root("host_addresses_on_other_interfaces_refused_unless_allowed") {
        return;
    }
    let lab = Lab::new("srh");
    // An interface other than the listener's (a veth pair inside the
    // namespace: the kernel here has no dummy driver).
    lab.ns.ip(&[
        "link", "add", "host0", "type", "veth", "peer", "name", "host1",
    ]);
    lab.ns
        .ip(&["addr", "add", "198.51.100.77/24", "dev", "host0"]);
    lab.ns.ip(&["link", "set", "host0", "up"]);
    let l = lab
        .ns
        .run_in(|| std::net::TcpListener::bind("0.0.0.0:2222").expect("bind 0.0.0.0"));
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || drop(s));
        }
    });
    let u = lab
        .ns
        .run_in(|| std::net::UdpSocket::bind("0.0.0.0:2222").expect("udp bind 0.0.0.0"));
    let _echo = UdpEcho::on(u);
    let srv = lab.server(&[]);
    let mut s = lab.tcp(PROXY);
    assert_eq!(
        socks5_connect(&mut s, &addr4("198.51.100.77", 2222))[1],
        0x02,
        "a host address on another interface was dialed"
    );
    assert!(closed(&mut s));
    // SOCKS4: 0x5B.
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 1, 8, 174, 198, 51, 100, 77, 0]).unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);
    // UDP: the datagram is dropped, the echo never answers.
    let mut ctl = lab.tcp(PROXY);
    let r = socks5_connect_cmd(&mut ctl, 3, &addr4("0.0.0.0", 0));
    assert_eq!(r[1], 0, "{r:?}");
    let relay: SocketAddr = format!("127.0.0.1:{}", u16::from_be_bytes([r[8], r[9]]))
        .parse()
        .unwrap();
    let c = lab.udp("127.0.0.1:0");
    let mut d = vec![0, 0, 0];
    d.extend(addr4("198.51.100.77", 2222));
    d.extend_from_slice(b"host");
    c.send_to(&d, relay).unwrap();
    // Then one that is relayed: its echo is the first (and only) reply.
    let mut ok = vec![0, 0, 0];
    ok.extend(addr4(T4, ECHO));
    ok.extend_from_slice(b"target");
    c.send_to(&ok, relay).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = c.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n], &ok[..], "the host address was relayed");
    drop(ctl);
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .contains("control connection closed (1 datagrams dropped)")),
        "{}",
        srv.log()
    );

    // --allow-dest lets it through.
    let _open = lab.server_on("127.0.0.1:1081", &["--allow-dest", "198.51.100.77"]);
    let mut s = lab.tcp("127.0.0.1:1081");
    assert_eq!(
        socks5_connect(&mut s, &addr4("198.51.100.77", 2222))[1],
        0x00
    );
    let mut ctl = lab.tcp("127.0.0.1:1081");
    let r = socks5_connect_cmd(&mut ctl, 3, &addr4("0.0.0.0", 0));
    let relay: SocketAddr = format!("127.0.0.1:{}", u16::from_be_bytes([r[8], r[9]]))
        .parse()
        .unwrap();
    c.send_to(&d, relay).unwrap();
    let (n, _) = c.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n], &d[..], "allowed host address not relayed");
}

#[test]
fn connect_failures_map_to_reply_codes() {
    if !require_root("connect_failures_map_to_reply_codes") {
        return;
    }
    let lab = Lab::new("src");
    let _srv = lab.server(&[]);
    let mut s = lab.tcp(PROXY);
    assert_eq!(
        socks5_connect(&mut s, &addr4(T4, CLOSED))[1],
        0x05,
        "closed port: refused"
    );
    // No route in the namespace: network unreachable.
    let mut s = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut s, &addr4("198.51.100.99", 80))[1], 0x03);
    let mut s = lab.tcp(PROXY);
    assert_eq!(
        socks5_connect(&mut s, &addr_name("no-such-host.invalid", 80))[1],
        0x04
    );
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 1, 0, CLOSED as u8, 203, 0, 113, 10, 0])
        .unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);
    // An unreachable route: host unreachable.
    lab.ns
        .ip(&["route", "add", "unreachable", "198.51.100.128/25"]);
    let mut s = lab.tcp(PROXY);
    assert_eq!(
        socks5_connect(&mut s, &addr4("198.51.100.200", 80))[1],
        0x04
    );
    // SYNs that vanish: sent into a veth whose other end drops them (not
    // local, no forwarding), with a fixed neighbour so no ARP failure ends
    // the wait first. Timeout: 0x06.
    lab.ns.ip(&[
        "link", "add", "void0", "type", "veth", "peer", "name", "void1",
    ]);
    lab.ns.ip(&["link", "set", "void0", "up"]);
    lab.ns.ip(&["link", "set", "void1", "up"]);
    lab.ns
        .ip(&["route", "add", "198.51.100.0/26", "dev", "void0"]);
    lab.ns.ip(&[
        "neigh",
        "add",
        "198.51.100.7",
        "lladdr",
        "02:00:00:00:00:07",
        "dev",
        "void0",
        "nud",
        "permanent",
    ]);
    let _slow = lab.server_on("127.0.0.1:1081", &["--connect-timeout", "1"]);
    let mut s = lab.tcp("127.0.0.1:1081");
    assert_eq!(socks5_connect(&mut s, &addr4("198.51.100.7", 80))[1], 0x06);
}

#[test]
fn half_close_and_reset_pass_through() {
    if !require_root("half_close_and_reset_pass_through") {
        return;
    }
    let lab = Lab::new("srh");
    let srv = lab.server(&[]);
    // The client sends 2 MB and shuts its write side; the echo answers all of
    // it after seeing the EOF, and the client sees the EOF passed back.
    let mut s = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut s, &addr6(T6, ECHO))[1], 0);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&d2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .expect("read to EOF after half-close");
    writer.join().unwrap();
    assert!(
        back == data,
        "echo differs: {} of {} bytes",
        back.len(),
        data.len()
    );

    // The target resets: the client sees a reset, not a clean EOF.
    let mut s = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut s, &addr4(T4, RESET))[1], 0);
    s.write_all(b"x").unwrap();
    let mut rest = Vec::new();
    let e = s
        .read_to_end(&mut rest)
        .expect_err("clean EOF instead of a reset");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .contains("reset by target")),
        "{}",
        srv.log()
    );
}

#[test]
fn max_clients_refuses_cleanly() {
    if !require_root("max_clients_refuses_cleanly") {
        return;
    }
    let lab = Lab::new("srx");
    let _srv = lab.server(&["--max-clients", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = lab.tcp(PROXY);
        assert_eq!(socks5_connect(&mut s, &addr4(T4, ECHO))[1], 0);
        held.push(s);
    }
    let mut s = lab.tcp(PROXY);
    s.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(
        read_n(&mut s, 2),
        [5, 0xFF],
        "over the limit: not a clean refusal"
    );
    assert!(closed(&mut s));
    let mut s = lab.tcp(PROXY);
    s.write_all(&[4, 1, 0, ECHO as u8, 203, 0, 113, 10, 0])
        .unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5B]);
    // A slot frees when a client leaves.
    drop(held.pop());
    assert!(wait_until(Duration::from_secs(10), || {
        let mut s = lab.tcp(PROXY);
        s.write_all(&[5, 1, 0]).unwrap();
        read_n(&mut s, 2) == [5, 0]
    }));
}

#[test]
fn handshake_timeout_closes_idle_clients() {
    if !require_root("handshake_timeout_closes_idle_clients") {
        return;
    }
    let lab = Lab::new("srt");
    let srv = lab.server(&["--handshake-timeout", "1", "--user", "u:p"]);
    // Silent after connecting, after half a greeting, and after the method
    // choice without sending credentials: all closed by the server.
    let mut a = lab.tcp(PROXY);
    let mut b = lab.tcp(PROXY);
    b.write_all(&[5, 2]).unwrap();
    let mut c = lab.tcp(PROXY);
    c.write_all(&[5, 1, 2]).unwrap();
    assert_eq!(read_n(&mut c, 2), [5, 2]);
    for s in [&mut a, &mut b, &mut c] {
        assert!(closed(s), "idle unauthenticated connection left open");
    }
    assert!(wait_until(Duration::from_secs(5), || srv
        .log()
        .matches("handshake timeout")
        .count()
        == 3));
}

#[test]
fn udp_associate_rules() {
    if !require_root("udp_associate_rules") {
        return;
    }
    let lab = Lab::new("srd");
    let srv = lab.server(&[]);
    let mut ctl = lab.tcp(PROXY);
    let r = socks5_connect_cmd(&mut ctl, 3, &addr4("0.0.0.0", 0));
    assert_eq!(&r[..4], &[5, 0, 0, 1], "{r:?}");
    // BND.ADDR is where the client reached the server, never 0.0.0.0.
    assert_eq!(&r[4..8], &[127, 0, 0, 1]);
    let relay: SocketAddr = format!("127.0.0.1:{}", u16::from_be_bytes([r[8], r[9]]))
        .parse()
        .unwrap();

    let u = lab.udp("127.0.0.1:0");
    let dgram = |frag: u8, dest: &[u8], payload: &[u8]| {
        let mut d = vec![0, 0, frag];
        d.extend_from_slice(dest);
        d.extend_from_slice(payload);
        d
    };
    // A fragment (FRAG != 0) is dropped, an unfragmented datagram relayed.
    u.send_to(&dgram(1, &addr4(T4, ECHO), b"fragment"), relay)
        .unwrap();
    u.send_to(&dgram(0, &addr4(T4, ECHO), b"whole"), relay)
        .unwrap();
    // From another client address: dropped.
    let other = lab.udp(&format!("{T4_OTHER}:0"));
    other
        .send_to(&dgram(0, &addr4(T4, ECHO), b"stranger"), relay)
        .unwrap();
    // To a refused destination: dropped.
    u.send_to(&dgram(0, &addr4("127.0.0.1", 1080), b"loop"), relay)
        .unwrap();
    u.send_to(&dgram(0, &addr6(T6, ECHO), b"six"), relay)
        .unwrap();
    // The two families use two outgoing sockets: their replies may come in
    // either order. A relayed fragment would come back before "whole" (same
    // socket, same echo), so two reads would see it.
    let mut b = [0u8; 256];
    let mut got = Vec::new();
    for _ in 0..2 {
        let (n, from) = u.recv_from(&mut b).unwrap();
        assert_eq!(from, relay);
        got.push(b[..n].to_vec());
    }
    got.sort();
    let mut want = vec![
        dgram(0, &addr4(T4, ECHO), b"whole"),
        dgram(0, &addr6(T6, ECHO), b"six"),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "replies are not exactly the two relayed datagrams"
    );
    // The association ends with its control connection.
    drop(ctl);
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .contains("control connection closed (3 datagrams dropped)")),
        "{}",
        srv.log()
    );
}

/// DST.PORT of UDP ASSOCIATE does not lock the association: behind a NAT the
/// client's datagrams come from another port than the one it named.
#[test]
fn udp_associate_dst_port_does_not_lock_the_source_port() {
    if !require_root("udp_associate_dst_port_does_not_lock_the_source_port") {
        return;
    }
    let lab = Lab::new("srp");
    let _srv = lab.server(&[]);
    let u = lab.udp("127.0.0.1:0");
    let named = if u.local_addr().unwrap().port() == 40000 {
        40001
    } else {
        40000
    };
    let mut ctl = lab.tcp(PROXY);
    let r = socks5_connect_cmd(&mut ctl, 3, &addr4("127.0.0.1", named));
    assert_eq!(r[1], 0, "{r:?}");
    let relay: SocketAddr = format!("127.0.0.1:{}", u16::from_be_bytes([r[8], r[9]]))
        .parse()
        .unwrap();
    let mut d = vec![0, 0, 0];
    d.extend(addr4(T4, ECHO));
    d.extend_from_slice(b"natted");
    u.send_to(&d, relay).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = u
        .recv_from(&mut b)
        .expect("datagram from another port than DST.PORT was dropped");
    assert_eq!(&b[..n], &d[..]);
}

#[test]
fn open_proxy_needs_to_be_asked_for() {
    if !require_root("open_proxy_needs_to_be_asked_for") {
        return;
    }
    let lab = Lab::new("sro");
    let bin = sockstun_bin();
    let out = lab
        .ns
        .exec(&[bin.to_str().unwrap(), "server", "--listen", "0.0.0.0:1090"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started an open proxy on 0.0.0.0");
    assert!(
        err.contains("--allow-client") && err.contains("--user"),
        "{err}"
    );
    let out = lab
        .ns
        .exec(&[bin.to_str().unwrap(), "server", "--listen", "[::]:1090"]);
    assert!(!out.status.success(), "started an open proxy on [::]");
    // Each way of doing it on purpose starts.
    let _a = lab.server_on("0.0.0.0:1091", &["--user", "u:p"]);
    let _b = lab.server_on("0.0.0.0:1092", &["--allow-client", "198.51.100.0/24"]);
    // A client outside --allow-client is turned away.
    let mut s = lab.tcp(&format!("{T4}:1092"));
    s.write_all(&[5, 1, 0]).unwrap();
    assert!(closed(&mut s));
}

#[test]
fn idle_relay_bind_deadline_and_idle_association_end() {
    if !require_root("idle_relay_bind_deadline_and_idle_association_end") {
        return;
    }
    let lab = Lab::new("sri");
    let srv = lab.server(&["--idle-timeout", "1", "--bind-timeout", "1"]);
    // A relayed connection with no traffic is closed.
    let mut s = lab.tcp(PROXY);
    assert_eq!(socks5_connect(&mut s, &addr4(T4, ECHO))[1], 0);
    s.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut s, 1), b"x");
    assert!(closed(&mut s), "idle relay left open");
    // BIND with no peer: the second reply is a failure (0x06) and the end.
    let mut b = lab.tcp(PROXY);
    let first = socks5_connect_cmd(&mut b, 2, &addr4(T4, 0));
    assert_eq!(first[1], 0, "{first:?}");
    assert_eq!(
        &first[4..8],
        &[203, 0, 113, 10],
        "BIND listens on the address facing the peer"
    );
    let second = socks5_reply(&mut b);
    assert_eq!(second[1], 0x06, "{second:?}");
    assert!(closed(&mut b));
    // A UDP association with no datagrams ends, closing its control connection.
    let mut c = lab.tcp(PROXY);
    assert_eq!(socks5_connect_cmd(&mut c, 3, &addr4("0.0.0.0", 0))[1], 0);
    assert!(closed(&mut c), "idle association left open");
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .matches("outcome=idle timeout")
            .count()
            == 2),
        "{}",
        srv.log()
    );
}

#[test]
fn ipv6_listener_users_file_and_sigterm() {
    if !require_root("ipv6_listener_users_file_and_sigterm") {
        return;
    }
    let lab = Lab::new("sr6");
    let dir = TempDir::new("users");
    let users = dir.file("users");
    std::fs::write(&users, "# test users\n\nerin:pa:ss\nfrank:x\n").unwrap();
    let mut srv = lab.server_on("[::1]:1080", &["--users-file", &users]);
    let out =
        lab.sh("curl -sS --max-time 15 -x 'socks5h://[::1]:1080' -U 'erin:pa:ss' http://web.test/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), HTTP_BODY, "{out:?}");
    lab.ns.run_in(|| {
        let d = socks::Socks5Datagram::bind_with_password("[::1]:1080", "[::1]:0", "erin", "pa:ss")
            .expect("associate over IPv6");
        d.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match d.proxy_addr() {
            socks::TargetAddr::Ip(a) => assert_eq!(a.ip().to_string(), "::1"),
            other => panic!("relay address {other:?}"),
        }
        d.send_to(b"v6 control", (T4, ECHO)).unwrap();
        let mut b = [0u8; 64];
        let (n, _) = d.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"v6 control");
    });
    srv.signal(libc::SIGTERM);
    let st = srv
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

#[test]
fn pipelined_greeting_request_and_data() {
    if !require_root("pipelined_greeting_request_and_data") {
        return;
    }
    let lab = Lab::new("srp");
    let srv = lab.server(&[]);
    // Greeting, request and the first data in one write (optimistic clients):
    // nothing is lost, the data reaches the target first.
    let mut s = lab.tcp(PROXY);
    let mut all = vec![5, 1, 0, 5, 1, 0];
    all.extend(addr4(T4, ECHO));
    all.extend_from_slice(b"early bytes");
    s.write_all(&all).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    assert_eq!(socks5_reply(&mut s)[1], 0);
    assert_eq!(read_n(&mut s, 11), b"early bytes");
    // The same for SOCKS4a.
    let mut s = lab.tcp(PROXY);
    let mut all = vec![4, 1, 0, ECHO as u8, 0, 0, 0, 1, 0];
    all.extend_from_slice(b"web.test\0four-a early");
    s.write_all(&all).unwrap();
    assert_eq!(read_n(&mut s, 8)[..2], [0, 0x5A]);
    assert_eq!(read_n(&mut s, 12), b"four-a early");
    drop(s);
    assert!(
        wait_until(Duration::from_secs(10), || srv.log().contains("up=12")),
        "{}",
        srv.log()
    );
}
