//! One association as `/flows` shows it, read from its `FlowState`.

use super::shared::FlowState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A live UDP association of TUN mode.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpFlowInfo {
    /// The application's endpoint (the association's key).
    pub local: SocketAddr,
    /// The first destination, as the application addressed it; None before
    /// the first datagram went out.
    pub destination: Option<SocketAddr>,
    /// The name behind that destination when it is a fake address.
    pub name: Option<String>,
    /// The proxy, once associated.
    pub via: Option<String>,
    /// Datagrams and payload bytes: out (to the proxy), in (back).
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub age_ms: u64,
    /// Whether the UDP ASSOCIATE is up ("live") or still being set up.
    pub live: bool,
}

impl UdpFlowInfo {
    pub(super) fn of(local: SocketAddr, st: &FlowState, now_ms: u64) -> UdpFlowInfo {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (destination, name) = match st.first.get() {
            Some((d, n)) => (Some(*d), n.clone()),
            None => (None, None),
        };
        UdpFlowInfo {
            local,
            destination,
            name,
            via: st.via().map(|v| v.to_string()),
            datagrams_out: get(&st.n_out),
            bytes_out: get(&st.b_out),
            datagrams_in: get(&st.n_in),
            bytes_in: get(&st.b_in),
            age_ms: now_ms.saturating_sub(st.opened_ms),
            live: st.live.load(Ordering::Relaxed),
        }
    }
}
