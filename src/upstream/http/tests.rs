//! Unit tests of the HTTP CONNECT client: fake proxies on 127.0.0.1 and on
//! in-memory pipes, scripted answers.

use super::*;
use crate::upstream::Stream;
use std::time::{Duration, Instant};
use tokio::io::DuplexStream;
use tokio::net::TcpListener;

const PASSWORD: &str = "s3cr:t-pw";

fn v4() -> TargetAddr {
    TargetAddr::Ip("203.0.113.2:80".parse().unwrap())
}

fn targets() -> [(TargetAddr, &'static str); 3] {
    [
        (v4(), "203.0.113.2:80"),
        (
            TargetAddr::Ip("[2001:db8::2]:443".parse().unwrap()),
            "[2001:db8::2]:443",
        ),
        (TargetAddr::Domain("web.test".into(), 8080), "web.test:8080"),
    ]
}

/// `http://[alice:PASSWORD@]127.0.0.1:port` with a short timeout.
fn proxy_at(port: u16, auth: bool) -> Proxy {
    let cred = if auth { "alice:s3cr%3At-pw@" } else { "" };
    let mut up = Proxy::from_url(&format!("http://{cred}127.0.0.1:{port}")).unwrap();
    up.connect_timeout = Duration::from_secs(5);
    up
}

/// The request head a fake proxy reads: up to its blank line.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut req = Vec::new();
    let mut b = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        req.push(b[0]);
    }
    req
}

/// What the fake proxy does once it has answered.
#[derive(Clone, Copy)]
enum Then {
    /// Echo what comes through the tunnel, until EOF.
    Echo,
    /// Hang up.
    Close,
    /// Keep the connection open, saying nothing more, until the client goes.
    Hold,
}

/// A fake HTTP proxy on 127.0.0.1 for one connection: reads the request
/// head, writes `answer` `piece` bytes at a time, then does `then`. The
/// task returns the request it read.
async fn fake_proxy(
    answer: Vec<u8>,
    piece: usize,
    then: Then,
) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let req = read_request(&mut s).await;
        for chunk in answer.chunks(piece.max(1)) {
            if s.write_all(chunk).await.is_err() {
                return req;
            }
            tokio::task::yield_now().await;
        }
        match then {
            Then::Echo => {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
            Then::Close => {}
            Then::Hold => {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            }
        }
        req
    });
    (port, task)
}

fn expected_request(authority: &str, auth: bool) -> String {
    let mut r = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if auth {
        // base64("alice:s3cr:t-pw"), computed apart.
        r.push_str("Proxy-Authorization: Basic YWxpY2U6czNjcjp0LXB3\r\n");
    }
    r + "\r\n"
}

/// The request, byte for byte, for IPv4, IPv6 and name targets with and
/// without credentials; after the 200 the tunnel carries data both ways.
#[tokio::test]
async fn sends_connect_with_host_and_credentials_then_tunnels() {
    for auth in [false, true] {
        for (target, authority) in targets() {
            let answer = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
            let (port, proxy) = fake_proxy(answer, usize::MAX, Then::Echo).await;
            let up = proxy_at(port, auth);
            let mut c = connect(&up, &target).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            drop(c);
            let req = proxy.await.unwrap();
            assert_eq!(
                String::from_utf8(req).unwrap(),
                expected_request(authority, auth),
                "auth={auth} {target}"
            );
        }
    }
}

/// Bytes that came in after the 200's head are the target's: read first,
/// before those that come later, none lost, none doubled.
#[tokio::test]
async fn early_bytes_after_200_come_first() {
    let mut answer =
        b"HTTP/1.0 200 Connection established\r\nProxy-agent: fake\r\nContent-Length: 5\r\n\r\n"
            .to_vec();
    answer.extend_from_slice(b"220 banner\r\n");
    let (port, proxy) = fake_proxy(answer, usize::MAX, Then::Echo).await;
    let mut c = connect(&proxy_at(port, false), &v4()).await.unwrap();
    let mut banner = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut banner))
        .await
        .expect("the banner that came with the 200 was lost")
        .unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    c.write_all(b"QUIT").await.unwrap();
    let mut q = [0u8; 4];
    c.read_exact(&mut q).await.unwrap();
    assert_eq!(&q, b"QUIT");
    drop(c);
    proxy.await.unwrap();
}

/// A pipe whose proxy end reads the request, then answers `answer` and
/// hangs up (reading whatever else comes).
fn proxy_answering(answer: &[u8], pipe: usize) -> DuplexStream {
    let (c, mut s) = tokio::io::duplex(pipe);
    let answer = answer.to_vec();
    tokio::spawn(async move {
        let _ = read_request(&mut s).await;
        let _ = s.write_all(&answer).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    c
}

async fn answer_to(answer: &[u8]) -> Result<Vec<u8>, Error> {
    let up = proxy_at(1, true);
    let mut c = proxy_answering(answer, 4096);
    tokio::time::timeout(Duration::from_secs(5), handshake(&mut c, &up, &v4()))
        .await
        .expect("handshake hung")
}

/// Each status the table at the top of http.rs names, and a few it does not.
#[tokio::test]
async fn statuses_map_to_errors() {
    use std::mem::discriminant as kind;
    for (status, want) in [
        ("407 Proxy Authentication Required", Error::AuthFailed),
        ("401 Unauthorized", Error::AuthFailed),
        ("403 Access violation", Error::NotAllowed),
        ("405 Method Not Allowed", Error::CommandNotSupported),
        ("501 Not Implemented", Error::CommandNotSupported),
        ("500 Unable to connect", Error::Refused),
        ("502 Bad Gateway", Error::Refused),
        ("503 Service Unavailable", Error::HostUnreachable),
        ("504 Gateway Timeout", Error::TtlExpired),
        ("404 Not Found", Error::General),
        ("301 Moved Permanently", Error::General),
        ("101 Switching Protocols", Error::General),
        ("400 Bad Request", Error::General),
        ("600 Beyond", Error::Protocol(String::new())),
        ("099 Below", Error::Protocol(String::new())),
    ] {
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\n<p>{PASSWORD}</p>"
        );
        let e = answer_to(answer.as_bytes()).await.unwrap_err();
        assert_eq!(kind(&e), kind(&want), "{status}: {e}");
        assert!(!e.to_string().contains("s3cr"), "{status}: {e}");
    }
    for ok in ["200 Connection established", "204 No Content", "299 Odd"] {
        let answer = format!("HTTP/1.1 {ok}\r\n\r\n");
        assert_eq!(answer_to(answer.as_bytes()).await.unwrap(), b"", "{ok}");
    }
}

/// Through a real socket: 407, 403 and 502 end the dial at once with their
/// errors (TUN mode then answers RST, ICMP prohibited, RST).
#[tokio::test]
async fn refusals_over_tcp_end_the_dial_at_once() {
    for (answer, want) in [
        (
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
            "proxy authentication failed",
        ),
        (
            "HTTP/1.1 403 Forbidden\r\n\r\n",
            "not allowed by the proxy's rules",
        ),
        ("HTTP/1.1 502 Bad Gateway\r\n\r\n", "connection refused"),
    ] {
        // The proxy keeps the connection open: only the answer ends the dial.
        let (port, proxy) = fake_proxy(answer.as_bytes().to_vec(), usize::MAX, Then::Hold).await;
        let t = Instant::now();
        let e = connect(&proxy_at(port, true), &v4()).await.unwrap_err();
        assert_eq!(e.to_string(), want);
        assert!(t.elapsed() < Duration::from_secs(2), "{want}: {:?}", t.elapsed());
        proxy.await.unwrap();
    }
}

/// A response trickling in a byte at a time (an interim 100 first, bare LF
/// line ends in the final head) is put together; the target's bytes stay
/// in the stream.
#[tokio::test]
async fn response_split_byte_by_byte() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\nVia: 1.1 fake\n\nlater";
    // A one-byte pipe: every read gets one byte.
    let mut c = proxy_answering(answer, 1);
    let early = handshake(&mut c, &proxy_at(1, false), &v4()).await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert_eq!([early, rest].concat(), b"later");

    // Over TCP too, one small segment at a time.
    let (port, proxy) = fake_proxy(answer.to_vec(), 1, Then::Close).await;
    let mut c = connect(&proxy_at(port, false), &v4()).await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"later");
    proxy.await.unwrap();
}

/// A head that never ends is cut at `MAX_HEAD` bytes, also when the proxy
/// keeps sending: an error, and nothing read past the bound.
#[tokio::test]
async fn oversized_head_is_an_error() {
    // Fields of 200 bytes: fewer than the 64 fields parsed per head fit in
    // the bound, so the bound is what is hit.
    let pad = format!("X-Pad: {}\r\n", "a".repeat(191));
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    while answer.len() <= 2 * MAX_HEAD {
        answer.extend_from_slice(pad.as_bytes());
    }
    let total = answer.len();
    let (mut c, mut s) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let _ = read_request(&mut s).await;
        s.write_all(&answer).await.unwrap();
        s
    });
    let e = tokio::time::timeout(
        Duration::from_secs(5),
        handshake(&mut c, &proxy_at(1, false), &v4()),
    )
    .await
    .expect("hung on an endless head")
    .unwrap_err();
    assert!(e.to_string().contains("longer than 8192 bytes"), "{e}");
    // Exactly the bound was read: the rest is still in the pipe.
    drop(server.await.unwrap());
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), total - MAX_HEAD);

    // More fields than a head may have: an error too, whatever the size.
    let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(65));
    let e = answer_to(many.as_bytes()).await.unwrap_err();
    assert!(e.to_string().contains("too many headers"), "{e}");

    // Over TCP, with the proxy holding the connection open.
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    answer.resize(MAX_HEAD + 100, b'a');
    let (port, proxy) = fake_proxy(answer, usize::MAX, Then::Hold).await;
    let e = connect(&proxy_at(port, false), &v4()).await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    proxy.await.unwrap();
}

/// A proxy that hangs up in the middle of its head, or says nothing and
/// hangs up: protocol errors, at once.
#[tokio::test]
async fn proxy_closing_mid_head_is_an_error() {
    for answer in [
        &b"HTTP/1.1 200 Connection est"[..],
        b"HTTP/1.1 200 OK\r\nVia: x\r\n",
        b"",
    ] {
        let (port, proxy) = fake_proxy(answer.to_vec(), usize::MAX, Then::Close).await;
        let e = connect(&proxy_at(port, false), &v4()).await.unwrap_err();
        assert!(
            e.to_string().contains("closed the connection"),
            "{answer:?}: {e}"
        );
        proxy.await.unwrap();
    }
}

/// Answers that are not HTTP/1.x responses.
#[tokio::test]
async fn malformed_responses_are_protocol_errors() {
    for answer in [
        &b"HTTP/2 200\r\n\r\n"[..],
        b"\x05\x00\x05\x00\x00\x01\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Half: cut",
    ] {
        let e = answer_to(answer).await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{answer:?}: {e}");
        assert!(!e.to_string().contains("s3cr"), "{e}");
    }
}

/// A proxy that accepts and reads the request but never answers: the dial
/// ends after `connect_timeout`, not later.
#[tokio::test]
async fn silent_proxy_times_out() {
    let (port, proxy) = fake_proxy(Vec::new(), 1, Then::Hold).await;
    let mut up = proxy_at(port, false);
    up.connect_timeout = Duration::from_millis(300);
    let t = Instant::now();
    let e = connect(&up, &v4()).await.unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    proxy.await.unwrap();
}

/// A name that would change the request (CR, LF, space, colon) or is no
/// name is refused before anything is sent.
#[tokio::test]
async fn names_that_cannot_be_sent_are_refused_before_connecting() {
    // Port 1 on loopback: nothing is dialed, or the error would differ.
    let up = proxy_at(1, false);
    let long = "a".repeat(256);
    for name in [
        "web.test\r\nX-Evil: 1",
        "web test",
        "web.test:81",
        "",
        "[::1]",
        long.as_str(),
    ] {
        let target = TargetAddr::Domain(name.to_string(), 80);
        let e = connect(&up, &target).await.unwrap_err();
        assert!(matches!(e, Error::AddrTypeNotSupported), "{name:?}: {e}");
    }
    let ok = request(&up, &TargetAddr::Domain("a-b_c.example~x".into(), 1)).unwrap();
    assert!(ok.starts_with(b"CONNECT a-b_c.example~x:1 HTTP/1.1\r\n"));
}

/// The probe connects and closes cleanly (the proxy reads EOF, no bytes);
/// a closed port is "unreachable".
#[tokio::test]
async fn probe_connects_and_closes() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let proxy = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let http = Http::new(proxy_at(port, true));
    http.probe().await.unwrap();
    assert_eq!(proxy.await.unwrap(), b"");
    // Bind then drop a listener: its port is (almost surely) closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = Http::new(proxy_at(port, false)).probe().await.unwrap_err();
    assert!(matches!(e, Error::ProxyUnreachable(_)), "{e}");
}

/// TCP only, names carried, UDP refused as the seam says.
#[tokio::test]
async fn no_udp_names_carried() {
    let http = Http::new(proxy_at(1, false));
    assert!(http.carries_names());
    assert!(!http.carries_udp());
    assert!(matches!(
        http.associate().await,
        Err(Error::CommandNotSupported)
    ));
    assert_eq!(http.to_string(), "http://127.0.0.1:1");
    let http = Http::new(proxy_at(1, true));
    assert_eq!(http.to_string(), "http://alice:***@127.0.0.1:1");
}

/// `reset()` on a tunnel aborts it: the proxy's side sees a reset, not EOF.
#[tokio::test]
async fn reset_aborts_the_tunnel() {
    use crate::relay::RelayStream;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let proxy = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let mut b = [0u8; 16];
        s.read(&mut b).await.map_err(|e| e.kind())
    });
    let up = proxy_at(port, false);
    let mut stream: Stream = Box::new(connect(&up, &v4()).await.unwrap());
    stream.reset();
    drop(stream);
    assert_eq!(proxy.await.unwrap(), Err(io::ErrorKind::ConnectionReset));
}

/// A proxy that echoes the password in its reason phrase: the log line
/// does not show it.
#[test]
fn a_reason_phrase_with_the_password_is_not_shown() {
    let up = proxy_at(1, true);
    assert_eq!(shown_reason("Bad Gateway", &up), "Bad Gateway");
    assert_eq!(
        shown_reason(&format!("no {PASSWORD} here"), &up),
        "(not shown)"
    );
    assert_eq!(shown_reason("a\r\nb\x1b[31m", &up), "ab[31m");
}
