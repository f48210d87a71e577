//! The SOCKS client's reply parsing (`socks::client::handshake`, with its
//! `Replies` reader), fed by a lying proxy: an in-memory stream that answers
//! with the fuzz bytes, in pieces of a fuzz-chosen size, then closes.
//!
//! Input: a config byte (dialect, credentials, pipelining, destination,
//! command), a piece-size byte, then the proxy's bytes.
//!
//! Invariants:
//! - the handshake ends on a stream that never blocks (no wait for bytes that
//!   will not come), with the same answer, the same bytes written and the
//!   same bytes left for the target whether the proxy's bytes come whole, a
//!   byte at a time or in pieces;
//! - on success no byte is lost or duplicated: what came after the replies
//!   (handed on) followed by what is still unread is the end of what the proxy
//!   sent;
//! - everything the client wrote is well-formed, as the server's parsers read
//!   it (greeting, RFC 1929 credentials, request with our command and
//!   destination; SOCKS4/4a requests), and nothing else;
//! - no error text shows the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::socks::client::{handshake, Proxy};
use sockstun::socks::codec::{self, cmd, method};
use sockstun::socks::TargetAddr;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

#[path = "../common/liar.rs"]
mod liar;
use liar::Liar;

const PASSWORD: &str = "pw-Zq8x";

#[derive(Debug, PartialEq)]
struct Outcome {
    /// The bound address, or the error text.
    answer: Result<TargetAddr, String>,
    written: Vec<u8>,
    /// Bytes handed on with the reply, then those never read.
    after: Option<Vec<u8>>,
}

fn run(up: &Proxy, command: u8, dest: &TargetAddr, script: &[u8], piece: usize) -> Outcome {
    let mut s = Liar {
        script,
        at: 0,
        piece,
        written: Vec::new(),
    };
    let r = {
        let mut fut = pin!(handshake(&mut s, up, command, dest));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("handshake waits on a stream that never blocks"),
        }
    };
    let (answer, after) = match r {
        Ok((bound, mut early)) => {
            early.extend_from_slice(&script[s.at..]);
            (Ok(bound), Some(early))
        }
        Err(e) => (Err(e.to_string()), None),
    };
    Outcome {
        answer,
        written: s.written,
        after,
    }
}

/// What the server's parsers make of what the client wrote.
fn check_written(up: &Proxy, command: u8, dest: &TargetAddr, w: &[u8]) {
    if !up.kind.is_socks5() {
        let (req, n) = codec::parse_socks4_request(w)
            .expect("a SOCKS4 request")
            .expect("a whole SOCKS4 request");
        assert_eq!(n, w.len(), "bytes after the SOCKS4 request");
        assert_eq!((req.cmd, &req.dest), (command, dest));
        assert_eq!(req.socks4a, matches!(dest, TargetAddr::Domain(..)));
        let uid: &[u8] = if up.auth.is_some() { b"user" } else { b"" };
        assert_eq!(req.user_id, uid);
        return;
    }
    let (methods, mut at) = codec::parse_greeting(w)
        .expect("a greeting")
        .expect("a whole greeting");
    let offered_auth = methods.contains(&method::USER_PASS);
    assert_eq!(offered_auth, up.auth.is_some());
    if at < w.len() && w[at] == codec::AUTH_VERSION {
        let (c, n) = codec::parse_auth_request(&w[at..])
            .expect("credentials")
            .expect("whole credentials");
        assert!(offered_auth);
        assert_eq!(
            (c.user.as_str(), c.password.as_slice()),
            ("user", PASSWORD.as_bytes())
        );
        at += n;
    }
    if at < w.len() {
        let (req, n) = codec::parse_socks5_request(&w[at..])
            .expect("a request")
            .expect("a whole request");
        assert_eq!((req.cmd, &req.dest), (command, dest));
        at += n;
    }
    assert_eq!(at, w.len(), "bytes after the request");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cfg, piece, script) = (data[0], data[1], &data[2..]);
    let scheme = ["socks5", "socks5h", "socks4", "socks4a"][usize::from(cfg & 3)];
    let auth = if cfg & 4 != 0 {
        format!("user:{PASSWORD}@")
    } else {
        String::new()
    };
    let mut up = Proxy::from_url(&format!("{scheme}://{auth}127.0.0.1:1")).unwrap();
    up.pipeline = cfg & 8 != 0;
    let dest = match (cfg >> 4) & 3 {
        0 => TargetAddr::Ip("203.0.113.2:80".parse().unwrap()),
        1 => TargetAddr::Ip("[2001:db8::2]:443".parse().unwrap()),
        2 => TargetAddr::Domain("example.org".into(), 8080),
        // What `udp_associate` sends.
        _ => TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
    };
    // The commands sockstun sends: CONNECT (and BIND, which the codec has),
    // UDP ASSOCIATE only over SOCKS5.
    let command = match cfg >> 6 {
        1 => cmd::BIND,
        2 if up.kind.is_socks5() => cmd::UDP_ASSOCIATE,
        _ => cmd::CONNECT,
    };

    let whole = run(&up, command, &dest, script, usize::MAX);
    for p in [1, usize::from(piece).max(1)] {
        let other = run(&up, command, &dest, script, p);
        assert_eq!(other, whole, "pieces of {p} bytes");
    }
    if let Some(after) = &whole.after {
        assert!(
            script.ends_with(after),
            "bytes after the reply lost or duplicated"
        );
    }
    if let Err(e) = &whole.answer {
        assert!(!e.contains(PASSWORD), "{e}");
    }
    // A destination the dialect cannot carry is refused before anything is sent.
    if whole.written.is_empty() {
        assert!(whole.answer.is_err());
    } else {
        check_written(&up, command, &dest, &whole.written);
    }
});
