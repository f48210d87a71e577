//! The check against scripted SOCKS5 proxies on 127.0.0.1: which step is
//! reported how, for a proxy that refuses our password, one with UDP, and
//! one that drops what follows the greeting (as microsocks does).

use super::*;
use crate::cli::CheckArgs;
use crate::socks::codec::{self, cmd, method, Parsed};
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// What the scripted proxy does.
#[derive(Clone, Copy)]
struct Fake {
    /// Username/password required, and the password it takes.
    password: Option<&'static str>,
    /// UDP ASSOCIATE relays (and echoes); else it answers 0x07.
    udp: bool,
    /// Reads the greeting with one read and drops whatever came with it.
    drops_pipelined: bool,
}

/// The next message from `rest` and `s`.
async fn next<T>(
    s: &mut TcpStream,
    rest: &mut Vec<u8>,
    parse: fn(&[u8]) -> Parsed<T>,
) -> io::Result<T> {
    loop {
        if let Some((m, used)) = parse(rest).map_err(|e| io::Error::other(e.to_string()))? {
            rest.drain(..used);
            return Ok(m);
        }
        let mut b = [0u8; 512];
        match s.read(&mut b).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => rest.extend_from_slice(&b[..n]),
        }
    }
}

async fn serve(mut s: TcpStream, f: Fake) -> io::Result<()> {
    let mut rest = Vec::new();
    let mut b = [0u8; 512];
    let n = s.read(&mut b).await?;
    rest.extend_from_slice(&b[..n]);
    let methods = next(&mut s, &mut rest, codec::parse_greeting).await?;
    if f.drops_pipelined {
        rest.clear();
    }
    match f.password {
        Some(p) if methods.contains(&method::USER_PASS) => {
            s.write_all(&codec::encode_method_choice(method::USER_PASS))
                .await?;
            let c = next(&mut s, &mut rest, codec::parse_auth_request).await?;
            let ok = c.password == p.as_bytes();
            s.write_all(&codec::encode_auth_reply(ok)).await?;
            if !ok {
                return Ok(());
            }
        }
        Some(_) => {
            return s
                .write_all(&codec::encode_method_choice(method::NO_ACCEPTABLE))
                .await
        }
        None => {
            s.write_all(&codec::encode_method_choice(method::NO_AUTH))
                .await?
        }
    }
    let req = next(&mut s, &mut rest, codec::parse_socks5_request).await?;
    let local = s.local_addr()?;
    match req.cmd {
        cmd::CONNECT => s.write_all(&codec::encode_socks5_reply(0, local)).await?,
        cmd::UDP_ASSOCIATE if f.udp => {
            let relay = UdpSocket::bind((local.ip(), 0)).await?;
            s.write_all(&codec::encode_socks5_reply(0, relay.local_addr()?))
                .await?;
            // Echo one datagram, header and all, as a relay to an echo would.
            let mut d = [0u8; 1500];
            let (n, from) = relay.recv_from(&mut d).await?;
            relay.send_to(&d[..n], from).await?;
        }
        _ => return s.write_all(&codec::encode_socks5_failure(7)).await,
    }
    // Hold the connection until the client closes it.
    while s.read(&mut b).await? > 0 {}
    Ok(())
}

async fn fake(f: Fake) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, f));
        }
    });
    addr
}

/// The check of `url` with `extra` arguments: its output and verdict.
async fn check_with(url: &str, extra: &[&str]) -> (String, bool) {
    let mut args = CheckArgs {
        url: url.into(),
        targets: Vec::new(),
        udp: None,
        timeout: 1,
        fwmark: None,
        bind_interface: None,
    };
    for w in extra.chunks(2) {
        match w[0] {
            "--target" => args.targets.push(w[1].into()),
            "--udp" => args.udp = Some(w[1].into()),
            o => panic!("{o}"),
        }
    }
    let out = Captured::default();
    let plan = Plan::from_args(&args).unwrap();
    let mut report = Report::new(Box::new(out.clone()), &plan.proxy.to_string());
    check(plan, &mut report).await;
    let ok = report.verdict();
    (out.text(), ok)
}

/// The status word of `step`'s line.
fn status(text: &str, step: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(step))
        .unwrap_or_else(|| panic!("no {step} line in\n{text}"));
    line[2 + 19..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_wrong_password_fails_at_auth_and_stops() {
    let a = fake(Fake {
        password: Some("right"),
        udp: true,
        drops_pipelined: false,
    })
    .await;
    let url = format!("socks5://alice:wrong@{a}");
    let (text, ok) = check_with(&url, &["--target", "127.0.0.1:9"]).await;
    assert!(!ok, "{text}");
    assert!(!text.contains("wrong"), "the password is shown:\n{text}");
    assert_eq!(status(&text, "greeting"), "ok", "{text}");
    assert!(text.contains("method: username/password"), "{text}");
    assert_eq!(status(&text, "auth"), "FAIL", "{text}");
    for later in [
        "connect by address",
        "udp associate",
        "udp round trip",
        "pipelined handshake",
    ] {
        assert_eq!(status(&text, later), "skip", "{text}");
    }
    assert!(
        text.ends_with("verdict: FAIL at auth: proxy authentication failed: user \"alice\" refused (is the password right?)\n"),
        "{text}"
    );
    // The right password passes every step, UDP included.
    let url = format!("socks5://alice:right@{a}");
    let (text, ok) = check_with(
        &url,
        &[
            "--target",
            "127.0.0.1:9",
            "--target",
            "web.test:80",
            "--udp",
            "127.0.0.1:7",
        ],
    )
    .await;
    assert!(ok, "{text}");
    for step in [
        "tcp connect",
        "greeting",
        "auth",
        "connect by address",
        "connect by name",
        "udp associate",
        "udp round trip",
        "pipelined handshake",
    ] {
        assert_eq!(status(&text, step), "ok", "{step}:\n{text}");
    }
    assert!(
        text.contains("web.test:80 (name sent to the proxy): connected"),
        "{text}"
    );
    assert!(text.contains(", echoed"), "{text}");
}

#[tokio::test]
async fn no_credentials_for_a_proxy_that_wants_them() {
    let a = fake(Fake {
        password: Some("right"),
        udp: false,
        drops_pipelined: false,
    })
    .await;
    let (text, ok) = check_with(&format!("socks5://{a}"), &[]).await;
    assert!(!ok);
    assert_eq!(status(&text, "auth"), "FAIL", "{text}");
    assert!(text.contains("put user:password@ in the URL"), "{text}");
}

#[tokio::test]
async fn no_udp_and_no_pipelining_are_said_and_fail_only_when_asked() {
    let a = fake(Fake {
        password: None,
        udp: false,
        drops_pipelined: true,
    })
    .await;
    let url = format!("socks5h://{a}");
    let (text, ok) = check_with(&url, &["--target", "127.0.0.1:9"]).await;
    assert!(ok, "{text}");
    assert_eq!(status(&text, "auth"), "ok", "{text}");
    assert_eq!(status(&text, "udp associate"), "no", "{text}");
    assert!(text.contains("command not supported"), "{text}");
    assert_eq!(status(&text, "pipelined handshake"), "no", "{text}");
    assert!(text.contains("leave --socks-pipeline off"), "{text}");
    assert!(
        text.ends_with("verdict: OK (4 ok, 2 not supported, 1 skipped)\n"),
        "{text}"
    );
    // Asked for with --udp, a proxy without UDP fails the check.
    let (text, ok) = check_with(&url, &["--udp", "127.0.0.1:7"]).await;
    assert!(!ok, "{text}");
    assert_eq!(status(&text, "udp associate"), "FAIL", "{text}");
    assert!(text.contains("verdict: FAIL at udp associate"), "{text}");
}

#[tokio::test]
async fn an_unreachable_proxy_stops_at_tcp_connect() {
    // A port nothing listens on: bound, then closed.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    let (text, ok) = check_with(&format!("socks4a://{a}"), &["--target", "web.test:80"]).await;
    assert!(!ok);
    assert_eq!(status(&text, "tcp connect"), "FAIL", "{text}");
    assert!(text.contains("verdict: FAIL at tcp connect"), "{text}");
    assert_eq!(status(&text, "udp associate"), "skip", "{text}");
}
