//! What the stack asks of whoever builds it: a dialer for new TCP flows (and
//! the answer the application gets when a dial fails), and a handler for UDP.

use super::wire::Unreachable;
use crate::relay::RelayStream;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

pub type DialFuture = Pin<Box<dyn Future<Output = Result<Dialed, DialFailed>> + Send>>;

/// The far side of a new flow, and what carries it (a proxy's name, for the
/// flow's log line; the stack does not look into it).
pub struct Dialed {
    pub stream: Box<dyn RelayStream>,
    pub via: Arc<str>,
}

/// Opens the far side of every new TCP flow. Called on the stack task, so
/// `dial` must return at once; the future runs on its own task.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, src: SocketAddr, dst: SocketAddr) -> DialFuture;
}

/// Receives every inbound UDP packet (the whole IPv4 or IPv6 packet). Called on
/// the stack task: it must not block (queue the work, or drop and count).
pub trait UdpHandler: Send + Sync + 'static {
    fn on_packet(&self, packet: &[u8]);
}

/// How the application is told that a dial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A RST: the application sees "Connection refused".
    Reset,
    /// An ICMP/ICMPv6 destination unreachable: "No route to host" / "Network is
    /// unreachable" / "Permission denied", and Happy Eyeballs moves on.
    Unreachable(Unreachable),
}

/// A dial that failed: the answer the application gets, and why (for the
/// flow's log line). The dialer chooses the answer; the stack knows no proxy.
#[derive(Debug)]
pub struct DialFailed {
    pub answer: Refusal,
    pub reason: Box<dyn std::error::Error + Send + Sync>,
}

impl DialFailed {
    pub fn new(
        answer: Refusal,
        reason: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DialFailed {
        DialFailed {
            answer,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for DialFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}
