//! `DialError`: why a dial through the upstream proxy failed.

use super::codec::Reply;
use std::fmt;
use std::io;

/// Why a dial through the proxy failed. The first variants are the proxy's
/// answers (SOCKS5 reply codes 0x01–0x08), so TUN mode can answer the
/// application the way a direct connection would have failed.
#[derive(Debug)]
pub enum DialError {
    /// 0x05, or SOCKS4 0x5B (SOCKS4 has a single failure code).
    Refused,
    /// 0x03
    NetUnreachable,
    /// 0x04
    HostUnreachable,
    /// 0x02 (ruleset), or SOCKS4 0x5C/0x5D (identd).
    NotAllowed,
    /// 0x06
    TtlExpired,
    /// The handshake (including the proxy's connect to the target) took longer
    /// than `connect_timeout`.
    Timeout,
    /// 0x07
    CommandNotSupported,
    /// 0x08, or a destination the dialect cannot carry (IPv6 or a name over
    /// SOCKS4: names are never resolved locally).
    AddrTypeNotSupported,
    /// The proxy wants credentials we do not have, or rejected ours.
    AuthFailed,
    /// No TCP connection to any of the proxy's addresses (the last error).
    ProxyUnreachable(io::Error),
    /// The proxy broke the protocol (or closed during the handshake).
    Protocol(String),
    /// 0x01 or an unknown reply code.
    General,
}

/// The proxy's answer to a request (see `codec::Reply`, the table of codes).
impl From<Reply> for DialError {
    fn from(r: Reply) -> DialError {
        match r {
            Reply::NotAllowed => DialError::NotAllowed,
            Reply::NetUnreachable => DialError::NetUnreachable,
            Reply::HostUnreachable => DialError::HostUnreachable,
            Reply::ConnectionRefused => DialError::Refused,
            Reply::TtlExpired => DialError::TtlExpired,
            Reply::CommandNotSupported => DialError::CommandNotSupported,
            Reply::AddrTypeNotSupported => DialError::AddrTypeNotSupported,
            Reply::GeneralFailure | Reply::Succeeded => DialError::General,
        }
    }
}

impl DialError {
    /// A SOCKS5 failure code as the error it reports; an unknown code is
    /// a general failure.
    pub(super) fn from_socks5_reply(rep: u8) -> DialError {
        Reply::from_socks5(rep).map_or(DialError::General, DialError::from)
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused => write!(f, "connection refused"),
            DialError::NetUnreachable => write!(f, "network unreachable"),
            DialError::HostUnreachable => write!(f, "host unreachable"),
            DialError::NotAllowed => write!(f, "not allowed by the proxy's rules"),
            DialError::TtlExpired => write!(f, "TTL expired"),
            DialError::Timeout => write!(f, "timed out"),
            DialError::CommandNotSupported => write!(f, "command not supported by the proxy"),
            DialError::AddrTypeNotSupported => write!(f, "address type not supported"),
            DialError::AuthFailed => write!(f, "proxy authentication failed"),
            DialError::ProxyUnreachable(e) => write!(f, "proxy unreachable: {e}"),
            DialError::Protocol(s) => write!(f, "proxy protocol error: {s}"),
            DialError::General => write!(f, "general failure"),
        }
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DialError::ProxyUnreachable(e) => Some(e),
            _ => None,
        }
    }
}
