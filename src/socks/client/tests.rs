//! Unit tests of the SOCKS client: handshakes against scripted proxies.

use super::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[test]
fn relay_name_means_the_proxy_address() {
    let proxy: IpAddr = "198.51.100.1".parse().unwrap();
    let r = |b: TargetAddr| relay_addr(b, proxy).to_string();
    assert_eq!(
        r(TargetAddr::Domain("relay.invalid".into(), 4000)),
        "198.51.100.1:4000"
    );
    assert_eq!(
        r(TargetAddr::Ip("0.0.0.0:4001".parse().unwrap())),
        "198.51.100.1:4001"
    );
    assert_eq!(
        r(TargetAddr::Ip("[::ffff:203.0.113.5]:4002".parse().unwrap())),
        "203.0.113.5:4002"
    );
    let v6: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
    assert_eq!(
        relay_addr(TargetAddr::Ip("[::]:4003".parse().unwrap()), v6).to_string(),
        "198.51.100.1:4003"
    );
}

#[test]
fn never_resolves_a_name_for_socks4() {
    let d = TargetAddr::Domain("example.test".into(), 80);
    assert!(matches!(
        check_carriable(ProxyKind::Socks4, &d),
        Err(DialError::AddrTypeNotSupported)
    ));
    assert!(check_carriable(ProxyKind::Socks4a, &d).is_ok());
    assert!(check_carriable(ProxyKind::Socks5, &d).is_ok());
    let v6 = TargetAddr::Ip("[2001:db8::1]:80".parse().unwrap());
    assert!(check_carriable(ProxyKind::Socks4a, &v6).is_err());
}

/// The target's first `n` bytes after a handshake: those that came with
/// the reply, then the stream's.
async fn first_bytes<S: AsyncRead + Unpin>(early: Vec<u8>, s: &mut S, n: usize) -> Vec<u8> {
    let mut got = early;
    assert!(got.len() <= n, "more early bytes than the target sent");
    let have = got.len();
    got.resize(n, 0);
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got[have..]))
        .await
        .expect("the bytes after the reply were lost")
        .unwrap();
    got
}

/// A scripted proxy on a duplex pipe: the client's bytes are checked and
/// the reply is followed by target data that must not be lost.
#[tokio::test]
async fn socks5_handshake_with_auth_keeps_the_bytes_after_the_reply() {
    let mut up = Proxy::from_url("socks5://alice:pw@127.0.0.1:1").unwrap();
    up.connect_timeout = Duration::from_secs(5);
    let (mut c, mut s) = tokio::io::duplex(1024);
    let server = tokio::spawn(async move {
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b, [5, 2, 0, 2]);
        s.write_all(&[5, 2]).await.unwrap();
        let mut a = [0u8; 10];
        s.read_exact(&mut a).await.unwrap();
        assert_eq!(&a, b"\x01\x05alice\x02pw");
        s.write_all(&[1, 0]).await.unwrap();
        let mut r = [0u8; 4 + 1 + 8 + 2];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(&r[..5], &[5, 1, 0, 3, 8]);
        s.write_all(&[5, 0, 0, 3, 3, b'a', b'b', b'c', 0, 1, b'H', b'I'])
            .await
            .unwrap();
        s
    });
    let (bound, early) = handshake(
        &mut c,
        &up,
        cmd::CONNECT,
        &TargetAddr::Domain("web.test".into(), 80),
    )
    .await
    .unwrap();
    assert_eq!(bound, TargetAddr::Domain("abc".into(), 1));
    assert_eq!(first_bytes(early, &mut c, 2).await, b"HI");
    server.await.unwrap();
}

/// Pipelined: the proxy has greeting, credentials and request before it
/// answers anything, and the client still reads exactly the replies.
#[tokio::test]
async fn socks5_pipelined_handshake_sends_everything_first() {
    for auth in [true, false] {
        let url = if auth {
            "socks5://alice:pw@127.0.0.1:1"
        } else {
            "socks5://127.0.0.1:1"
        };
        let mut up = Proxy::from_url(url).unwrap();
        up.pipeline = true;
        let (mut c, mut s) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut want: Vec<u8> = if auth {
                b"\x05\x01\x02\x01\x05alice\x02pw".to_vec()
            } else {
                vec![5, 1, 0]
            };
            want.extend_from_slice(&[5, 1, 0, 1, 203, 0, 113, 2, 0, 80]);
            // Nothing has been answered yet: all of it must arrive.
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
            let mut answer = vec![5, if auth { 2 } else { 0 }];
            if auth {
                answer.extend_from_slice(&[1, 0]);
            }
            answer.extend_from_slice(&[5, 0, 0, 1, 198, 51, 100, 1, 4, 0, b'H', b'I']);
            s.write_all(&answer).await.unwrap();
            s
        });
        let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
        let (bound, early) = tokio::time::timeout(
            Duration::from_secs(5),
            handshake(&mut c, &up, cmd::CONNECT, &dest),
        )
        .await
        .expect("pipelined handshake waited for an answer")
        .unwrap();
        assert_eq!(bound, TargetAddr::Ip("198.51.100.1:1024".parse().unwrap()));
        assert_eq!(first_bytes(early, &mut c, 2).await, b"HI", "auth={auth}");
        server.await.unwrap();
    }
}

/// Pipelined, a proxy that picks another method fails the dial cleanly.
#[tokio::test]
async fn socks5_pipelined_refused_method_is_an_error() {
    let mut up = Proxy::from_url("socks5://127.0.0.1:1").unwrap();
    up.pipeline = true;
    let (mut c, mut s) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut b = [0u8; 13];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&[5, 0xFF]).await.unwrap();
    });
    let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    let e = handshake(&mut c, &up, cmd::CONNECT, &dest)
        .await
        .unwrap_err();
    assert!(matches!(e, DialError::AuthFailed), "{e}");
}

/// A no-auth SOCKS5 proxy on a pipe: it takes the greeting and an IPv4
/// CONNECT, answers `reply`, and hangs up.
fn proxy_answering(reply: Vec<u8>) -> tokio::io::DuplexStream {
    let (c, mut s) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&[5, 0]).await.unwrap();
        let mut r = [0u8; 10];
        s.read_exact(&mut r).await.unwrap();
        s.write_all(&reply).await.unwrap();
    });
    c
}

#[tokio::test]
async fn reply_codes_map_to_errors() {
    let up = Proxy::from_url("socks5://127.0.0.1:1").unwrap();
    for (code, want) in [
        (5u8, "connection refused"),
        (3, "network unreachable"),
        (2, "not allowed"),
    ] {
        let mut c = proxy_answering(codec::encode_socks5_failure(code));
        let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
        let e = handshake(&mut c, &up, cmd::CONNECT, &dest)
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with(want), "{code}: {e}");
    }
    // No acceptable method: authentication failure, not a hang.
    let (mut c, mut s) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&[5, 0xFF]).await.unwrap();
    });
    let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    assert!(matches!(
        handshake(&mut c, &up, cmd::CONNECT, &dest).await,
        Err(DialError::AuthFailed)
    ));
}

#[tokio::test]
async fn unreachable_proxy_is_reported() {
    // Bind then drop a listener: its port is (almost surely) closed.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let up = Proxy::from_url(&format!("socks5://127.0.0.1:{port}")).unwrap();
    let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    assert!(matches!(
        connect(&up, &dest).await,
        Err(DialError::ProxyUnreachable(_))
    ));
}

/// Replies that trickle in a byte at a time are put together; bytes the
/// target sends later stay in the stream.
#[tokio::test]
async fn replies_split_into_single_bytes_are_reassembled() {
    // (url, the client's messages and the proxy's answer to each)
    let socks5: Vec<(usize, Vec<u8>)> = vec![
        (3, vec![5, 0]),
        (10, vec![5, 0, 0, 1, 198, 51, 100, 1, 4, 0]),
    ];
    let socks4: Vec<(usize, Vec<u8>)> = vec![(9, vec![0, 0x5a, 4, 0, 198, 51, 100, 1])];
    for (url, script) in [
        ("socks5://127.0.0.1:1", socks5),
        ("socks4://127.0.0.1:1", socks4),
    ] {
        let up = Proxy::from_url(url).unwrap();
        // A one-byte pipe: every read gets at most one byte.
        let (mut c, mut s) = tokio::io::duplex(1);
        let server = tokio::spawn(async move {
            for (len, answer) in script {
                let mut m = vec![0u8; len];
                s.read_exact(&mut m).await.unwrap();
                s.write_all(&answer).await.unwrap();
            }
            s.write_all(b"later").await.unwrap();
            s
        });
        let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
        let (bound, early) = handshake(&mut c, &up, cmd::CONNECT, &dest).await.unwrap();
        assert_eq!(
            bound,
            TargetAddr::Ip("198.51.100.1:1024".parse().unwrap()),
            "{url}"
        );
        assert_eq!(first_bytes(early, &mut c, 5).await, b"later", "{url}");
        server.await.unwrap();
    }
}

/// Pipelined, the method choice and the start of the reply arrive
/// together and the rest later: the partial reply is kept and completed.
#[tokio::test]
async fn pipelined_reply_split_after_the_method_choice() {
    let mut up = Proxy::from_url("socks5://127.0.0.1:1").unwrap();
    up.pipeline = true;
    // Six bytes at a time: [5 0 | 5 0 0 1], [198 51 100 1 4 0], [H I].
    let (mut c, mut s) = tokio::io::duplex(6);
    let server = tokio::spawn(async move {
        let mut got = [0u8; 13];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&[5, 0, 5, 0, 0, 1, 198, 51, 100, 1, 4, 0, b'H', b'I'])
            .await
            .unwrap();
        s
    });
    let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    let (bound, early) = handshake(&mut c, &up, cmd::CONNECT, &dest).await.unwrap();
    assert_eq!(bound, TargetAddr::Ip("198.51.100.1:1024".parse().unwrap()));
    assert_eq!(first_bytes(early, &mut c, 2).await, b"HI");
    server.await.unwrap();
}

/// A proxy that sends its reply and the target's first bytes in one
/// segment: `connect` hands those bytes out first, then the socket's.
#[tokio::test]
async fn connect_delivers_target_bytes_that_came_with_the_reply() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = Proxy::from_url(&format!("socks5://{}", l.local_addr().unwrap())).unwrap();
    let proxy = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&[5, 0]).await.unwrap();
        let mut r = [0u8; 10];
        s.read_exact(&mut r).await.unwrap();
        let mut answer = vec![5, 0, 0, 1, 198, 51, 100, 1, 4, 0];
        answer.extend_from_slice(b"220 banner\r\n");
        s.write_all(&answer).await.unwrap();
        // What the application sends still reaches the target.
        let mut q = [0u8; 4];
        s.read_exact(&mut q).await.unwrap();
        assert_eq!(&q, b"QUIT");
        s.write_all(b"221 bye\r\n").await.unwrap();
    });
    let dest = TargetAddr::Ip("203.0.113.2:25".parse().unwrap());
    let mut c = connect(&up, &dest).await.unwrap();
    let mut banner = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut banner))
        .await
        .expect("the banner that came with the reply was lost")
        .unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    c.write_all(b"QUIT").await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"221 bye\r\n");
    proxy.await.unwrap();
}

/// Some servers answer a failure with `VER REP` alone and close: the
/// code is still reported, not "closed during the handshake".
#[tokio::test]
async fn a_truncated_failure_reply_still_gives_its_code() {
    let up = Proxy::from_url("socks5://127.0.0.1:1").unwrap();
    let mut c = proxy_answering(vec![5, 5]);
    let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    let e = handshake(&mut c, &up, cmd::CONNECT, &dest)
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("connection refused"), "{e}");
    // A success cut short is a protocol error.
    let mut c = proxy_answering(vec![5, 0, 0, 1]);
    let e = handshake(&mut c, &up, cmd::CONNECT, &dest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("closed the connection"), "{e}");
    // Over SOCKS4 the same bytes are no failure code: a SOCKS5-only
    // server answering a SOCKS4 request is a proxy that hung up.
    let up4 = Proxy::from_url("socks4://127.0.0.1:1").unwrap();
    let (mut c, mut s) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut b = [0u8; 9];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&[5, 0xFF]).await.unwrap();
    });
    let e = handshake(&mut c, &up4, cmd::CONNECT, &dest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("closed the connection"), "{e}");
}

/// A proxy that answers garbage, or a valid exchange with bytes changed
/// or cut short, and then hangs up: every handshake ends, with the
/// target's bytes or an error, and none panics. (`connect` adds its
/// timeout for a proxy that says nothing at all.)
#[tokio::test]
async fn lying_proxies_get_errors_not_panics_or_hangs() {
    let dest = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    let name = TargetAddr::Domain("example.org".into(), 443);
    let ups = [
        Proxy::from_url("socks5://127.0.0.1:1").unwrap(),
        Proxy::from_url("socks5://user:secret@127.0.0.1:1").unwrap(),
        Proxy::from_url("socks4://127.0.0.1:1").unwrap(),
        Proxy::from_url("socks4a://127.0.0.1:1").unwrap(),
    ];
    let honest: [Vec<u8>; 4] = [
        [
            &[5u8, 0][..],
            &codec::encode_socks5_reply(0, "198.51.100.1:1080".parse().unwrap()),
        ]
        .concat(),
        [
            &[5u8, 2, 1, 0][..],
            &codec::encode_socks5_reply(0, "[2001:db8::1]:1080".parse().unwrap()),
        ]
        .concat(),
        codec::encode_socks4_reply(Reply::Succeeded.socks4(), "0.0.0.0:0".parse().unwrap())
            .to_vec(),
        codec::encode_socks4_reply(
            Reply::ConnectionRefused.socks4(),
            "0.0.0.0:0".parse().unwrap(),
        )
        .to_vec(),
    ];
    let mut r = crate::test_rng::TestRng::new(0x853c_49e6_748f_ea9b);
    let (mut ok, mut err) = (0, 0);
    for i in 0..2_000 {
        let which = i % ups.len();
        let answer: Vec<u8> = match r.below(3) {
            0 => (0..r.below(40)).map(|_| r.below(256) as u8).collect(),
            1 => {
                let h = &honest[which];
                h[..r.below(h.len() + 1)].to_vec()
            }
            _ => {
                let mut h = honest[which].clone();
                for _ in 0..=r.below(2) {
                    let j = r.below(h.len());
                    h[j] = r.byte();
                }
                h
            }
        };
        let (mut c, mut s) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let _ = s.write_all(&answer).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let to = if i % 2 == 0 { &dest } else { &name };
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            handshake(&mut c, &ups[which], cmd::CONNECT, to),
        )
        .await
        .unwrap_or_else(|_| panic!("handshake {i} hung"));
        match res {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // Some answers stayed valid (the honest ones cut at their full
    // length, changes in bytes nobody checks); most did not.
    assert!(ok > 50 && err > 1_000, "{ok} accepted, {err} refused");
}
