//! The stack's settings and counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct StackConfig {
    /// MTU of the device: the MSS our SYNs advertise is based on it, and so
    /// is the largest packet written (without segment offload).
    pub mtu: usize,
    /// Room for one read from the source, when it is more than the MTU (a
    /// device with offloads returns segments up to 64 KB, and a header).
    pub read_slot: Option<usize>,
    /// The sink finishes TCP checksums and cuts large TCP packets into
    /// segments ([`PacketSink::send_tcp`]): smoltcp then computes no TCP
    /// checksum and works with 64 KB segments whatever the MTU, the
    /// application's MSS is kept for the sink and replaced in its SYN by the
    /// largest.
    pub segment_offload: bool,
    /// Most TCP flows open at once; SYNs beyond it are answered with a RST.
    pub max_flows: usize,
    /// What the stacks of one device's queues share, when set: their flows
    /// are counted against one `max_flows` and numbered in one series (the
    /// observer tells flows apart by number). One atomic per flow opened and
    /// closed, none per packet. Unset: this stack's own table and numbers.
    pub shared: Option<Arc<StackShare>>,
    /// Per-flow socket buffers. Above 64 KiB the window is scaled (RFC 7323).
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    /// Limit on one dial (through the proxy: connect and handshake).
    pub connect_timeout: Duration,
    /// Relayed flows idle this long are closed. None (the default): like a
    /// direct connection, a quiet flow lives until an end closes it (an idle
    /// SSH session must not be cut); flows are bounded by `max_flows`.
    pub idle_timeout: Option<Duration>,
    /// Packets read from the source before the stack turns to other work.
    pub batch: usize,
    /// An application that stops answering (never completes the handshake,
    /// never acknowledges data, ignores keep-alives) for this long loses its
    /// flow. Keep-alives go out every third of it, so a quiet but live peer
    /// (an idle SSH session) keeps its flow; the TUN side is local or on the
    /// LAN, so the probes are cheap. Without it smoltcp retransmits forever
    /// and such flows, their proxy connections and buffers are never reclaimed.
    pub dead_peer_timeout: Duration,
    /// A flow through which no data moved for one to two of these, with both
    /// rings empty, gives its ring pages back to the kernel (see
    /// [`ring`]): idle connections then cost their state, not their buffers.
    pub release_idle: Duration,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            mtu: 1500,
            read_slot: None,
            segment_offload: false,
            max_flows: 65536,
            shared: None,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: None,
            batch: 64,
            dead_peer_timeout: Duration::from_secs(180),
            release_idle: Duration::from_secs(1),
        }
    }
}

/// See [`StackConfig::shared`].
#[derive(Debug, Default)]
pub struct StackShare {
    /// Live flows of all the stacks.
    pub flows: AtomicUsize,
    /// The last flow number given out.
    pub ids: AtomicU64,
}

/// Counters, readable while the stack runs.
#[derive(Debug, Default)]
pub struct StackStats {
    pub packets_in: AtomicU64,
    pub tcp_opened: AtomicU64,
    pub tcp_refused: AtomicU64,
    /// `tcp_refused` by the answer the application got, indexed by
    /// [`Refusal::index`](super::Refusal::index).
    pub tcp_refused_by: [AtomicU64; super::seam::Refusal::LABELS.len()],
    /// Bytes relayed by the flows that ended: application to proxy, and back.
    /// (Bumped once per flow, with the relay's totals.)
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub tcp_closed: AtomicU64,
    pub tcp_active: AtomicU64,
    pub tcp_over_limit: AtomicU64,
    pub tcp_stray: AtomicU64,
    pub udp_packets: AtomicU64,
    pub other_dropped: AtomicU64,
    pub malformed: AtomicU64,
    pub wakeups: AtomicU64,
    /// Times an idle flow gave its ring pages back.
    pub rings_released: AtomicU64,
    /// Release sweeps run.
    pub sweeps: AtomicU64,
    /// Entries the flow table has room for (it grows with the flows and is
    /// shrunk by the sweep once they are gone).
    pub table_capacity: AtomicU64,
    /// Times the sweep gave the allocator's free memory back.
    pub heap_trims: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
