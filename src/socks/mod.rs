//! SOCKS4, SOCKS4a, SOCKS5 (RFC 1928) and username/password auth (RFC 1929).
//!
//! - `codec`: parses and builds messages, no I/O;
//! - `handshake`: the incremental reader of a handshake's messages, for the
//!   client and the server alike;
//! - `client`: dials through an upstream with those (`connect`,
//!   `udp_associate`, `probe`; `Socks5Steps`, one message at a time, for
//!   `sockstun check`);
//! - `error`: `DialError`, why a dial failed.
//!
//! The proxy as configured (`Proxy`, its URL) is `crate::proxy`.
//!
//! `crate::server` serves with `codec` and `handshake`.

pub mod client;
pub mod codec;
pub mod error;
pub mod handshake;

use std::fmt;
use std::net::SocketAddr;

/// A destination as SOCKS carries it: an address or a name the proxy resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Domain(String, u16),
}

impl TargetAddr {
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }

    /// `IPv4:PORT`, `[IPv6]:PORT` or `NAME:PORT` as a user writes it. A name
    /// stays a name, for the proxy to resolve: it is never resolved here.
    pub fn parse(s: &str) -> Result<TargetAddr, &'static str> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(TargetAddr::Ip(a));
        }
        let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("bad port")?;
        if host.is_empty() || host.len() > 255 || host.contains([':', '[', ']', '/', ' ']) {
            return Err("bad host");
        }
        Ok(TargetAddr::Domain(host.to_string(), port))
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TargetAddr;

    #[test]
    fn target_syntax() {
        let ip = |s: &str| TargetAddr::Ip(s.parse().unwrap());
        assert_eq!(
            TargetAddr::parse("203.0.113.2:80"),
            Ok(ip("203.0.113.2:80"))
        );
        assert_eq!(
            TargetAddr::parse("[2001:db8::2]:443"),
            Ok(ip("[2001:db8::2]:443"))
        );
        assert_eq!(
            TargetAddr::parse("web.test:8000"),
            Ok(TargetAddr::Domain("web.test".into(), 8000))
        );
        for bad in [
            "web.test",
            ":80",
            "h:0",
            "h:+80",
            "h:x",
            "2001:db8::2:80",
            "a b:1",
            "h:65536",
        ] {
            assert!(TargetAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
