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
    pub note: FlowNote,
}

/// What the dialer adds to the flow's log line: the name behind the
/// destination and the rule that chose the way (None: none to tell).
#[derive(Debug, Clone, Default)]
pub struct FlowNote {
    pub name: Option<Arc<str>>,
    pub rule: Option<Arc<str>>,
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

impl Refusal {
    /// The names of the answers, in the order of [`Refusal::index`].
    pub const LABELS: [&'static str; 5] = [
        "reset",
        "net_unreachable",
        "host_unreachable",
        "prohibited",
        "port_unreachable",
    ];

    /// A small index per answer (for counters).
    pub fn index(self) -> usize {
        match self {
            Refusal::Reset => 0,
            Refusal::Unreachable(Unreachable::Net) => 1,
            Refusal::Unreachable(Unreachable::Host) => 2,
            Refusal::Unreachable(Unreachable::Prohibited) => 3,
            Refusal::Unreachable(Unreachable::Port) => 4,
        }
    }
}

/// Told when a TCP flow starts relaying and when it ends, for a live view of
/// the flows (`--admin`). Called once per flow each, on the flow's task, never
/// per packet; the byte counts are read from the flow when asked.
pub trait FlowObserver: Send + Sync + 'static {
    /// Flow `id` was dialed through `via` and starts relaying.
    fn opened(
        &self,
        id: u64,
        src: SocketAddr,
        dst: SocketAddr,
        via: &Arc<str>,
        bytes: Arc<dyn FlowBytes>,
    );
    /// Flow `id` ended.
    fn closed(&self, id: u64);
}

/// A live flow's byte counts: the counters the relay already keeps on it
/// (implemented by the flow's shared state, `flow.rs`).
pub trait FlowBytes: Send + Sync + 'static {
    /// Bytes from the application towards the proxy, so far.
    fn up(&self) -> u64;
    /// Bytes from the proxy back to the application, so far.
    fn down(&self) -> u64;
}

/// A dial that failed: the answer the application gets, and why (for the
/// flow's log line). The dialer chooses the answer; the stack knows no proxy.
#[derive(Debug)]
pub struct DialFailed {
    pub answer: Refusal,
    pub reason: Box<dyn std::error::Error + Send + Sync>,
    pub note: FlowNote,
}

impl DialFailed {
    pub fn new(
        answer: Refusal,
        reason: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> DialFailed {
        DialFailed {
            answer,
            reason: reason.into(),
            note: FlowNote::default(),
        }
    }

    /// The same failure, with the name and rule for the log line.
    pub fn noted(mut self, note: FlowNote) -> DialFailed {
        self.note = note;
        self
    }
}

impl fmt::Display for DialFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}
