//! The SOCKS server's incremental parsers (and the client-side reply parsers
//! that share the codec): SOCKS4/4a and SOCKS5 requests, the SOCKS5 greeting,
//! RFC 1929 authentication, addresses.
//!
//! Invariants, for every parser on the same bytes:
//! - fed whole or a byte at a time it says the same thing: a message complete
//!   at `n` bytes is complete at exactly `n` (with the same value) and
//!   incomplete before; an error is incomplete and then that same error;
//!   incomplete input stays incomplete at every prefix;
//! - a complete message re-encodes to the bytes it was parsed from (the fields
//!   an encoder normalises, such as SOCKS5 RSV or the SOCKS4a marker, aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::socks::codec::{self, CodecError, Parsed};
use sockstun::socks::TargetAddr;
use std::fmt::Debug;
use std::net::SocketAddr;

/// Longer messages than this do not exist (a SOCKS4a request with a 255-byte
/// user id and a 255-byte name is 520): the byte-by-byte check is quadratic.
const MAX: usize = 600;

/// Check the incremental contract of `f` on `b`; returns the whole answer.
fn consistent<T: PartialEq + Debug>(
    name: &str,
    b: &[u8],
    f: fn(&[u8]) -> Parsed<T>,
) -> Result<Option<(T, usize)>, CodecError> {
    let whole = f(b);
    match &whole {
        Ok(Some((v, n))) => {
            let n = *n;
            assert!(n > 0 && n <= b.len(), "{name}: length {n} of {}", b.len());
            for k in 0..n {
                assert_eq!(f(&b[..k]), Ok(None), "{name}: prefix {k} of {n}");
            }
            for k in n..b.len() {
                match f(&b[..k]) {
                    Ok(Some((w, m))) => {
                        assert_eq!((&w, m), (v, n), "{name}: prefix {k} gives another message")
                    }
                    r => panic!("{name}: prefix {k} of a message of {n}: {r:?}"),
                }
            }
        }
        Ok(None) => {
            for k in 0..b.len() {
                assert_eq!(f(&b[..k]), Ok(None), "{name}: prefix {k} of incomplete");
            }
        }
        Err(e) => {
            let mut erred = false;
            for k in 0..b.len() {
                match f(&b[..k]) {
                    Ok(None) => assert!(!erred, "{name}: incomplete again after the error"),
                    Err(e2) => {
                        assert_eq!(&e2, e, "{name}: prefix {k} gives another error");
                        erred = true;
                    }
                    Ok(Some(m)) => panic!("{name}: prefix {k} complete {m:?}, whole {e:?}"),
                }
            }
        }
    }
    whole
}

fn addr_bytes(a: &TargetAddr) -> Vec<u8> {
    let mut v = Vec::new();
    codec::encode_addr(a, &mut v).expect("a parsed address encodes");
    v
}

fuzz_target!(|data: &[u8]| {
    let b = &data[..data.len().min(MAX)];

    if let Ok(Some((a, n))) = consistent("addr", b, codec::parse_addr) {
        assert_eq!(addr_bytes(&a), &b[..n], "addr re-encodes");
    }
    if let Ok(Some((methods, n))) = consistent("greeting", b, codec::parse_greeting) {
        assert_eq!(codec::encode_greeting(&methods), &b[..n]);
    }
    if let Ok(Some((m, n))) = consistent("method choice", b, codec::parse_method_choice) {
        assert_eq!(codec::encode_method_choice(m), &b[..n]);
    }
    if let Ok(Some((c, n))) = consistent("auth request", b, codec::parse_auth_request) {
        let mut v = vec![codec::AUTH_VERSION, c.user.len() as u8];
        v.extend_from_slice(c.user.as_bytes());
        v.push(c.password.len() as u8);
        v.extend_from_slice(&c.password);
        assert_eq!(v, &b[..n], "auth request re-encodes");
        if let Ok(pw) = std::str::from_utf8(&c.password) {
            assert_eq!(codec::encode_auth_request(&c.user, pw).unwrap(), &b[..n]);
        }
        // What may be logged does not depend on the password.
        let blank = codec::Credentials {
            user: c.user.clone(),
            password: Vec::new(),
        };
        assert_eq!(format!("{c:?}"), format!("{blank:?}"));
    }
    if let Ok(Some((ok, n))) = consistent("auth reply", b, codec::parse_auth_reply) {
        assert_eq!((ok, n), (b[1] == 0, 2));
    }
    if let Ok(Some((r, n))) = consistent("socks5 request", b, codec::parse_socks5_request) {
        // RSV is not checked on input and always written as 0.
        let mut want = b[..n].to_vec();
        want[2] = 0;
        assert_eq!(codec::encode_socks5_request(r.cmd, &r.dest).unwrap(), want);
    }
    if let Ok(Some((r, n))) = consistent("socks5 reply", b, codec::parse_socks5_reply) {
        let mut want = b[..n].to_vec();
        want[2] = 0;
        let mut v = vec![codec::SOCKS5_VERSION, r.rep, 0];
        v.extend(addr_bytes(&r.bound));
        assert_eq!(v, want, "socks5 reply re-encodes");
        if let TargetAddr::Ip(a) = r.bound {
            assert_eq!(codec::encode_socks5_reply(r.rep, a), want);
        }
    }
    if let Ok(Some((r, n))) = consistent("socks4 request", b, codec::parse_socks4_request) {
        let mut want = b[..n].to_vec();
        if r.socks4a {
            // Any 0.0.0.x (x != 0) marks SOCKS4a; the encoder writes 0.0.0.1.
            assert!(matches!(r.dest, TargetAddr::Domain(..)));
            want[7] = 1;
        } else {
            assert!(matches!(r.dest, TargetAddr::Ip(SocketAddr::V4(_))));
        }
        assert_eq!(
            codec::encode_socks4_request(r.cmd, &r.dest, &r.user_id).unwrap(),
            want,
            "socks4 request re-encodes"
        );
    }
    if let Ok(Some((r, n))) = consistent("socks4 reply", b, codec::parse_socks4_reply) {
        assert_eq!(codec::encode_socks4_reply(r.code, r.bound), &b[..n]);
    }
});
