//! The HTTP CONNECT client (`upstream::http::handshake`: the request, then
//! the response heads read incrementally and parsed with httparse), fed by
//! a lying proxy: an in-memory stream that answers with the fuzz bytes, in
//! pieces of a fuzz-chosen size, then closes.
//!
//! Input: a config byte (bit 0: credentials; bits 1-2: destination IPv4,
//! IPv6, name), a piece-size byte, then the proxy's bytes.
//!
//! Invariants:
//! - the handshake ends on a stream that never blocks (no wait for bytes
//!   that will not come), and never reads more than `MAX_HEAD` bytes;
//! - the same answer, the same bytes written and the same bytes left for
//!   the target whether the proxy's bytes come whole, a byte at a time or in
//!   pieces; a byte at a time the client reads nothing past the head, so the
//!   early bytes of the other runs are exactly the bytes after the head:
//!   none lost, none duplicated;
//! - on success what was consumed ends with a blank line and the answer
//!   was a 2xx (per the independent status check below);
//! - the client wrote exactly the expected request (authority form, Host,
//!   Basic credentials), and nothing else;
//! - no error text shows the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::socks::client::Proxy;
use sockstun::socks::TargetAddr;
use sockstun::upstream::http::{handshake, MAX_HEAD};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

#[path = "../common/liar.rs"]
mod liar;
use liar::Liar;

const PASSWORD: &str = "pw-Zq8x";
/// base64("user:pw-Zq8x"), computed apart.
const BASIC: &str = "dXNlcjpwdy1acTh4";

#[derive(Debug, PartialEq)]
struct Outcome {
    /// Ok, or the error text.
    answer: Result<(), String>,
    written: Vec<u8>,
    /// On success: the bytes handed on with the head, then those never read.
    after: Option<Vec<u8>>,
    /// Bytes the client read.
    read: usize,
}

fn run(up: &Proxy, dest: &TargetAddr, script: &[u8], piece: usize) -> Outcome {
    let mut s = Liar {
        script,
        at: 0,
        piece,
        written: Vec::new(),
    };
    let r = {
        let mut fut = pin!(handshake(&mut s, up, dest));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("handshake waits on a stream that never blocks"),
        }
    };
    assert!(s.at <= MAX_HEAD, "read {} bytes, past the bound", s.at);
    let (answer, after) = match r {
        Ok(mut early) => {
            early.extend_from_slice(&script[s.at..]);
            (Ok(()), Some(early))
        }
        Err(e) => (Err(e.to_string()), None),
    };
    Outcome {
        answer,
        written: s.written,
        after,
        read: s.at,
    }
}

/// The status code of the last head in `head` (the one that ended the
/// exchange), read without httparse: the three digits after the first
/// space of the last status line that starts with "HTTP/1.".
fn last_status(head: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(head);
    let line = text.split('\n').rfind(|l| l.starts_with("HTTP/1."))?;
    line.split(' ').nth(1)?.get(..3)?.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cfg, piece, script) = (data[0], data[1], &data[2..]);
    let auth = cfg & 1 != 0;
    let cred = if auth {
        format!("user:{PASSWORD}@")
    } else {
        String::new()
    };
    let up = Proxy::from_url(&format!("http://{cred}127.0.0.1:1")).unwrap();
    let (dest, authority) = match (cfg >> 1) & 3 {
        0 => (
            TargetAddr::Ip("203.0.113.2:80".parse().unwrap()),
            "203.0.113.2:80",
        ),
        1 => (
            TargetAddr::Ip("[2001:db8::2]:443".parse().unwrap()),
            "[2001:db8::2]:443",
        ),
        _ => (
            TargetAddr::Domain("example.org".into(), 8080),
            "example.org:8080",
        ),
    };

    let bytewise = run(&up, &dest, script, 1);
    for p in [usize::MAX, usize::from(piece).max(1)] {
        let other = run(&up, &dest, script, p);
        assert_eq!(
            (&other.answer, &other.written, &other.after),
            (&bytewise.answer, &bytewise.written, &bytewise.after),
            "pieces of {p} bytes"
        );
    }

    let mut want = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if auth {
        want += &format!("Proxy-Authorization: Basic {BASIC}\r\n");
    }
    want += "\r\n";
    assert_eq!(
        String::from_utf8_lossy(&bytewise.written),
        want,
        "request written"
    );

    match &bytewise.answer {
        Ok(()) => {
            let after = bytewise.after.as_ref().unwrap();
            // A byte at a time nothing past the head is read.
            assert_eq!(after.len(), script.len() - bytewise.read);
            let head = &script[..bytewise.read];
            assert!(
                head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                "success before a blank line: {head:?}"
            );
            if let Some(code) = last_status(head) {
                assert!((200..300).contains(&code), "success on {code}: {head:?}");
            }
        }
        Err(e) => assert!(!e.contains(PASSWORD), "{e}"),
    }
});
