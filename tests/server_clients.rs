//! `sockstun server` against real clients: curl, ncat, and the `socks` crate
//! (UDP ASSOCIATE, BIND v4 and v5). Each test runs in its own namespace.
mod common;

use common::server_lab::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn curl(lab: &Lab, proxy_args: &str, url: &str) -> (bool, String, String) {
    let out = lab.sh(&format!("curl -sS --max-time 15 {proxy_args} {url}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_every_socks_flavour_ipv4_ipv6_and_names() {
    if !require_root("curl_every_socks_flavour_ipv4_ipv6_and_names") {
        return;
    }
    let lab = Lab::new("svc");
    let srv = lab.server(&[]);
    for (args, url) in [
        (format!("--socks4 {PROXY}"), format!("http://{T4}/")),
        (format!("--socks4a {PROXY}"), "http://web.test/".to_string()),
        (format!("--socks5 {PROXY}"), format!("http://{T4}/")),
        (format!("--socks5 {PROXY}"), format!("http://[{T6}]/")),
        (
            format!("--socks5-hostname {PROXY}"),
            "http://web.test/".to_string(),
        ),
        (
            format!("--socks5-hostname {PROXY}"),
            "http://web6.test/".to_string(),
        ),
        (
            format!("-x socks5h://{PROXY}"),
            "http://web.test/".to_string(),
        ),
    ] {
        let (ok, body, err) = curl(&lab, &args, &url);
        assert!(ok && body == HTTP_BODY, "curl {args} {url}: {err} {body:?}");
    }
    // The names were resolved by the server (curl only sent them), and each
    // session logged one line with its destination and bytes (written when
    // the session ends, which may be just after curl exited).
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .matches(" session ")
            .count()
            == 7),
        "{}",
        srv.log()
    );
    let log = srv.log();
    assert!(
        log.contains("proto=socks4a") && log.contains("dest=web.test:80"),
        "{log}"
    );
    assert!(log.contains(&format!("via=[{T6}]:80")), "{log}");
    assert!(
        log.contains("cmd=connect") && log.contains("outcome=closed"),
        "{log}"
    );
}

#[test]
fn curl_with_user_and_password() {
    if !require_root("curl_with_user_and_password") {
        return;
    }
    let lab = Lab::new("svu");
    let srv = lab.server(&["--user", "alice:s3cret", "--user", "bob:other"]);
    let (ok, body, err) = curl(
        &lab,
        &format!("-x socks5h://alice:s3cret@{PROXY}"),
        "http://web.test/",
    );
    assert!(ok && body == HTTP_BODY, "right password: {err}");
    let (ok, body, err) = curl(
        &lab,
        &format!("-x socks5://alice:s3cret@{PROXY}"),
        &format!("http://{T4}/"),
    );
    assert!(ok && body == HTTP_BODY, "right password, socks5: {err}");
    let (ok, body, _) = curl(
        &lab,
        &format!("-x socks5h://alice:wrong@{PROXY}"),
        "http://web.test/",
    );
    assert!(!ok && body.is_empty(), "wrong password accepted");
    let (ok, _, _) = curl(&lab, &format!("-x socks5h://{PROXY}"), "http://web.test/");
    assert!(!ok, "no credentials accepted");
    // SOCKS4 carries no password: refused when users exist.
    let (ok, _, _) = curl(&lab, &format!("--socks4 {PROXY}"), &format!("http://{T4}/"));
    assert!(!ok, "SOCKS4 accepted although users are configured");
    assert!(wait_until(Duration::from_secs(10), || srv
        .log()
        .contains("authentication failed")));
    let log = srv.log();
    assert!(
        log.contains("user=alice") && log.contains("authentication failed"),
        "{log}"
    );
    assert!(
        !log.contains("s3cret") && !log.contains("wrong"),
        "a password reached the log:\n{log}"
    );
}

#[test]
fn ncat_socks4_and_socks5_with_proxy_auth() {
    if !require_root("ncat_socks4_and_socks5_with_proxy_auth") {
        return;
    }
    let lab = Lab::new("svn");
    let _open = lab.server(&[]);
    let _auth = lab.server_on("127.0.0.1:1081", &["--user", "carol:pa55"]);
    let out = lab.sh(&format!(
        "echo via-socks4 | ncat --proxy {PROXY} --proxy-type socks4 {T4} {ECHO}"
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-socks4\n",
        "{out:?}"
    );
    let out = lab.sh(&format!(
        "echo via-socks5 | ncat --proxy 127.0.0.1:1081 --proxy-type socks5 --proxy-auth carol:pa55 {T4} {ECHO}"
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-socks5\n",
        "{out:?}"
    );
    let out = lab.sh(&format!(
        "echo x | ncat --proxy 127.0.0.1:1081 --proxy-type socks5 --proxy-auth carol:nope {T4} {ECHO}"
    ));
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "wrong password: {out:?}"
    );
}

#[test]
fn udp_associate_with_the_socks_crate() {
    if !require_root("udp_associate_with_the_socks_crate") {
        return;
    }
    let lab = Lab::new("svd");
    let srv = lab.server(&["--user", "dave:pw"]);
    lab.ns.run_in(|| {
        let d = socks::Socks5Datagram::bind_with_password(PROXY, "127.0.0.1:0", "dave", "pw")
            .expect("associate");
        d.get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The relay address is where the client reached the server, never 0.0.0.0.
        match d.proxy_addr() {
            socks::TargetAddr::Ip(a) => assert_eq!(a.ip().to_string(), "127.0.0.1"),
            other => panic!("relay address {other:?}"),
        }
        let t4: SocketAddr = format!("{T4}:{ECHO}").parse().unwrap();
        let t6: SocketAddr = format!("[{T6}]:{ECHO}").parse().unwrap();
        let mut buf = [0u8; 2048];
        for (i, to) in [t4, t6].into_iter().enumerate() {
            let msg = format!("datagram {i}");
            d.send_to(msg.as_bytes(), to).unwrap();
            let (n, from) = d.recv_from(&mut buf).expect("echo through the association");
            assert_eq!(&buf[..n], msg.as_bytes());
            assert!(
                matches!(from, socks::TargetAddr::Ip(a) if a == to),
                "{from:?}"
            );
        }
        // A name is resolved by the server.
        d.send_to(b"by name", ("web.test", ECHO)).unwrap();
        let (n, from) = d.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"by name");
        assert!(
            matches!(from, socks::TargetAddr::Ip(a) if a == t4),
            "{from:?}"
        );
        // A large datagram arrives whole.
        let big = vec![0xA5u8; 8000];
        let mut bigbuf = vec![0u8; 9000];
        d.send_to(&big, t4).unwrap();
        let (n, _) = d.recv_from(&mut bigbuf).unwrap();
        assert_eq!(&bigbuf[..n], &big[..]);
    });
    // Dropping the datagram closed the control connection: the association ends.
    assert!(
        wait_until(Duration::from_secs(10), || srv
            .log()
            .contains("control connection closed")),
        "{}",
        srv.log()
    );
    assert!(srv.log().contains("cmd=udp-associate"));
}

/// Connect to `to` from local address `from` inside the namespace.
fn connect_from(lab: &Lab, from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    lab.ns.run_in(move || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        s.bind(&from.into())?;
        s.connect(&to.into())?;
        Ok(s.into())
    })
}

#[test]
fn bind_socks4_and_socks5_with_the_socks_crate() {
    if !require_root("bind_socks4_and_socks5_with_the_socks_crate") {
        return;
    }
    let lab = Lab::new("svb");
    let srv = lab.server(&[]);
    let peer_port = 0u16;

    // SOCKS4 BIND, expecting a peer from T4.
    let l4 = lab
        .ns
        .run_in(move || socks::Socks4Listener::bind(PROXY, (T4, peer_port), "").expect("bind v4"));
    let at = l4.proxy_addr().unwrap();
    // A peer from another address is turned away; the expected one is let in.
    let mut stranger = connect_from(&lab, T4_OTHER, at).expect("stranger connects");
    stranger
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        closed(&mut stranger),
        "an unexpected BIND peer was not refused"
    );
    let mut peer = connect_from(&lab, T4, at).expect("peer connects");
    let mut s4 = l4.accept().expect("second BIND reply");
    peer.write_all(b"from peer").unwrap();
    let mut b = [0u8; 9];
    s4.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"from peer");
    s4.write_all(b"from client").unwrap();
    let mut b = [0u8; 11];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"from client");
    drop((s4, peer));

    // SOCKS5 BIND.
    let l5 = lab
        .ns
        .run_in(move || socks::Socks5Listener::bind(PROXY, (T4, 0)).expect("bind v5"));
    let at = match l5.proxy_addr() {
        socks::TargetAddr::Ip(a) => *a,
        other => panic!("bound {other:?}"),
    };
    let mut peer = connect_from(&lab, T4, at).expect("peer connects");
    let mut s5 = l5.accept().expect("second BIND reply");
    s5.write_all(b"v5").unwrap();
    let mut b = [0u8; 2];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"v5");
    drop((s5, peer));
    assert!(wait_until(Duration::from_secs(10), || srv
        .log()
        .matches("cmd=bind")
        .count()
        == 2));
    let log = srv.log();
    assert!(
        log.contains("cmd=bind") && log.contains("proto=socks4"),
        "{log}"
    );
}
