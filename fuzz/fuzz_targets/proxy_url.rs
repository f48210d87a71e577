//! The proxy URL parser (`Proxy::from_url`, the `--proxy` option).
//!
//! Invariants:
//! - an error never echoes the password: no character of it that appears
//!   nowhere else in the URL shows in the error text (without '@' the text
//!   after the first ':' may be `user:password`, so it counts as one too);
//! - an accepted URL gives a usable upstream (a host, a port that is not 0,
//!   the address filled in exactly when the host is an IP literal,
//!   credentials its dialect can send: RFC 1929 for SOCKS5, a user id without
//!   NUL for SOCKS4, a user-id without a colon for HTTP Basic), its escapes
//!   are '%' and two hex digits and its port is digits (RFC 3986), and its
//!   `Display` form does not show the password;
//! - parse, write back (percent-encoding the credentials), parse again: the
//!   same upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::proxy::{Proxy, ProxyKind};
use sockstun::socks::codec::{self, cmd};
use sockstun::socks::TargetAddr;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The part of the URL that is, or may be, a password.
fn password_region(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = match rest.rfind('@') {
        Some(i) => &rest[..i],
        None => rest,
    };
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Characters of `secret` that would give it away if shown: non-ASCII (the
/// error texts are ASCII and `{:?}` keeps printable Unicode as it is) and
/// found only once in the whole URL.
fn telltales<'a>(url: &'a str, secret: &'a str) -> impl Iterator<Item = char> + 'a {
    secret
        .chars()
        .filter(move |c| !c.is_ascii() && !c.is_control() && url.matches(*c).count() == 1)
}

/// The userinfo and the port text of a URL `from_url` accepted.
fn syntax(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, hostport) = match rest.rfind('@') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => ("", rest),
    };
    let port = match hostport.strip_prefix('[') {
        Some(r) => r.split_once(']').unwrap().1.trim_start_matches(':'),
        None => hostport.split_once(':').map_or("", |(_, p)| p),
    };
    (userinfo, port)
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        write!(o, "%{b:02X}").unwrap();
    }
    o
}

fn check_ok(url: &str, u: &Proxy) {
    assert!(!u.host.is_empty(), "{url}: empty host");
    assert_ne!(u.port, 0, "{url}: port 0");
    match u.host.parse::<IpAddr>() {
        Ok(ip) => assert_eq!(u.addrs, vec![SocketAddr::new(ip, u.port)], "{url}"),
        Err(_) => assert!(u.addrs.is_empty(), "{url}: a name was resolved"),
    }
    if let Some((user, pass)) = &u.auth {
        assert!(user.len() <= 255 && pass.len() <= 255);
        let shown = u.to_string();
        // Display shows the scheme, user, host and port: nothing else may
        // bring a character of the password along.
        let elsewhere = |c: char| c.is_ascii() || user.contains(c) || u.host.contains(c);
        for c in pass.chars().filter(|c| !elsewhere(*c)) {
            assert!(
                !shown.contains(c),
                "{url}: Display {shown:?} shows the password"
            );
        }
    }
    if let Some((user, pass)) = &u.auth {
        // Credentials the dialect cannot send would fail every connection
        // later, with a misleading error: they must be refused here.
        let sendable = if u.kind == ProxyKind::Http {
            // RFC 7617 section 2: no colon in the user-id, no control
            // characters in either.
            !user.contains(':') && !user.chars().chain(pass.chars()).any(char::is_control)
        } else if u.kind.is_socks5() {
            codec::encode_auth_request(user, pass).is_ok()
        } else {
            let dest = TargetAddr::Ip("192.0.2.1:80".parse().unwrap());
            codec::encode_socks4_request(cmd::CONNECT, &dest, user.as_bytes()).is_ok()
        };
        assert!(
            sendable,
            "{url}: accepted credentials {} cannot send",
            u.kind.scheme()
        );
    }
    let (userinfo, port) = syntax(url);
    // RFC 3986 §2.1 and §3.2.3: an escape is '%' and two hex digits, a port
    // is digits.
    let mut escapes = userinfo.split('%').skip(1);
    assert!(
        escapes.all(|e| e.len() >= 2 && e.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit)),
        "{url}: accepted a bad percent-escape"
    );
    assert!(
        port.bytes().all(|b| b.is_ascii_digit()),
        "{url}: accepted port {port:?}"
    );
    let host = if u.host.contains(':') {
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let auth = match &u.auth {
        Some((user, pass)) => format!("{}:{}@", enc(user), enc(pass)),
        None => String::new(),
    };
    let again = format!("{}://{auth}{host}:{}", u.kind.scheme(), u.port);
    let v =
        Proxy::from_url(&again).unwrap_or_else(|e| panic!("{url}: written back as {again}: {e}"));
    assert_eq!(
        (v.kind, &v.host, v.port, &v.addrs, &v.auth),
        (u.kind, &u.host, u.port, &u.addrs, &u.auth),
        "{url}: written back as {again}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    match Proxy::from_url(url) {
        Ok(u) => check_ok(url, &u),
        Err(e) => {
            let text = e.to_string();
            if let Some(secret) = password_region(url) {
                for c in telltales(url, secret) {
                    assert!(
                        !text.contains(c),
                        "{url:?}: error {text:?} shows the password"
                    );
                }
            }
        }
    }
});
