//! SOCKS4, SOCKS4a, SOCKS5 (RFC 1928) and username/password auth (RFC 1929).
//!
//! - `codec`: parses and builds messages, no I/O;
//! - `handshake`: the incremental reader of a handshake's messages, for the
//!   client and the server alike;
//! - `client`: dials through an upstream with those (`connect`,
//!   `udp_associate`, `probe`);
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
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}
