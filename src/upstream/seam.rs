//! The seam itself: the trait every proxy protocol implements and what it
//! returns; `blame` sorts a failure between the target and the proxy.

use crate::relay::RelayStream;
use crate::socks::TargetAddr;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connection to a target through the proxy, ready for the relay.
pub type Stream = Box<dyn RelayStream>;

/// A stream, and the proxy that carries it (its URL without the password),
/// for the flow's log line.
pub struct Connected {
    pub stream: Stream,
    pub via: Arc<str>,
}

/// A UDP association, and the proxy that holds it.
pub struct Associated {
    pub assoc: Association,
    pub via: Arc<str>,
}

/// Why the proxy gave no stream or association. The SOCKS client's failures
/// name the cases every proxy protocol has (the target refused or could not
/// be reached, the proxy's rules, our credentials, the proxy itself down or
/// broken), at the finest grain any of them reports (RFC 1928's reply
/// codes): another protocol maps its answers onto them.
pub use crate::socks::client::DialError as Error;

/// A live UDP association: datagrams go to its relay address framed as RFC
/// 1928 section 7 says (the one UDP framing proxies speak); it lasts while
/// its control connection is open.
pub use crate::socks::client::UdpAssociation as Association;

/// A proxy, seen from TUN mode.
pub trait Upstream: fmt::Display + Send + Sync + 'static {
    /// A stream to `target` (a CONNECT), within the proxy's connect timeout.
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>>;

    /// A UDP association. `Error::CommandNotSupported` when the proxy (or
    /// its protocol) has none.
    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>>;

    /// Reach the proxy and present our credentials, then close cleanly: a
    /// start-up check that carries no traffic.
    fn probe(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Whether a target can be sent by name (virtual DNS dials fake
    /// addresses by name).
    fn carries_names(&self) -> bool;

    /// Whether `associate` can ever succeed (an HTTP proxy carries TCP only).
    fn carries_udp(&self) -> bool;
}

/// How a failed dial reflects on the proxy that tried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The target's own answer, relayed by a working proxy (refused,
    /// unreachable, TTL expired): another proxy would hear the same.
    Target,
    /// The proxy works but will not carry this (its rules, an address type
    /// or command it lacks): another proxy may.
    Refusal,
    /// The proxy failed: unreachable, broken, timed out, or our credentials
    /// refused.
    Proxy,
}

/// Whose failure `e` is.
pub fn blame(e: &Error) -> Blame {
    match e {
        Error::Refused | Error::NetUnreachable | Error::HostUnreachable | Error::TtlExpired => {
            Blame::Target
        }
        Error::NotAllowed
        | Error::CommandNotSupported
        | Error::AddrTypeNotSupported
        | Error::General => Blame::Refusal,
        Error::Timeout | Error::AuthFailed | Error::ProxyUnreachable(_) | Error::Protocol(_) => {
            Blame::Proxy
        }
    }
}
