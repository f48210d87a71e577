//! The userspace TCP/IP stack of TUN mode: smoltcp behind a demultiplexer.
//!
//! # Data path
//! A [`PacketSource`] (the TUN device, or memory in tests) yields batches of IP
//! packets. Each one is classified by its headers ([`wire::classify`]):
//! - TCP: looked up by its 4-tuple ([`FlowKey`]). Every flow owns a one-socket
//!   `SocketSet`; the single shared smoltcp `Interface` is polled with just that
//!   set and a device that yields just that packet, so the cost of a packet does
//!   not depend on how many flows are open (smoltcp walks every socket of the set
//!   it is given). A SYN for an unknown tuple creates the flow: a listening socket
//!   with the SYN-ACK held back (`pause_synack`) while the [`Dialer`] connects
//!   through the proxy; then the handshake completes, or the SYN is answered with
//!   a RST (refused) or an ICMP/ICMPv6 unreachable (net/host unreachable, not
//!   allowed). Other packets for unknown tuples get smoltcp's RST.
//! - UDP: handed, raw, to the [`UdpHandler`]; it answers through the
//!   [`Arc<dyn PacketSink>`] (a cloneable [`PacketSink`]).
//! - Anything else (ICMP echo included: answering pings for every address would
//!   claim reachability the proxy cannot vouch for) is dropped and counted.
//!
//! # Threading
//! One task (the "stack task") owns the `Interface`, the flow table and the timer
//! queue, and is the only one that polls smoltcp. Each flow's socket sits behind
//! its own mutex, shared with the flow's relay task through a [`TunStream`], which
//! reads and writes the socket's ring buffers directly and then asks the stack
//! task (once, deduplicated) to poll that flow. The stack task sleeps until a
//! packet, a request, or the earliest smoltcp `poll_at` of any flow.
//!
//! # Seams
//! The stack knows IP and TCP, not proxies or DNS; whoever builds it (TUN
//! mode) plugs in:
//! - [`PacketSource`] / [`PacketSink`] ([`phy`]): where packets come from and
//!   go to (the device, or memory in tests); a sink is shared, from any thread.
//! - [`Dialer`]: how a new TCP flow reaches its destination, and the
//!   [`Refusal`] the application gets when it cannot.
//! - [`UdpHandler`]: receives every inbound UDP packet (whole IPv4/IPv6 packet).

mod engine;
pub mod flow;
mod oneshot;
pub mod phy;
mod reclaim;
pub mod ring;
pub mod wire;

pub use flow::TunStream;
pub use phy::{PacketBatch, PacketSink, PacketSource};
pub use wire::{FlowKey, Unreachable};

use crate::relay::RelayStream;
use engine::Engine;
use flow::{Cmd, FlowShared};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::info;

pub type DialFuture =
    Pin<Box<dyn Future<Output = Result<Box<dyn RelayStream>, DialFailed>> + Send>>;

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

/// Counters, readable while the stack runs.
#[derive(Debug, Default)]
pub struct StackStats {
    pub packets_in: AtomicU64,
    pub tcp_opened: AtomicU64,
    pub tcp_refused: AtomicU64,
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

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The stack: build with [`Stack::new`], then [`Stack::run`] it on a tokio
/// runtime.
pub struct Stack {
    cfg: StackConfig,
    dialer: Arc<dyn Dialer>,
    udp: Arc<dyn UdpHandler>,
    sink: Arc<dyn PacketSink>,
    stats: Arc<StackStats>,
}

impl Stack {
    pub fn new(
        cfg: StackConfig,
        dialer: Arc<dyn Dialer>,
        udp: Arc<dyn UdpHandler>,
        sink: Arc<dyn PacketSink>,
    ) -> Stack {
        Stack {
            cfg,
            dialer,
            udp,
            sink,
            stats: Arc::new(StackStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<StackStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` completes or the source fails. On shutdown every
    /// open flow is reset, so applications learn at once.
    pub async fn run<S: PacketSource>(
        self,
        mut source: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
        let mut eng = Engine::new(self, cmd_tx);
        let slot = eng.cfg.read_slot.unwrap_or(0).max(eng.cfg.mtu).max(1280);
        let mut batch = PacketBatch::new(slot, eng.cfg.batch.max(1));
        let epoch = tokio::time::Instant::now();
        eng.epoch = epoch.into_std();
        tokio::pin!(shutdown);
        // One timer, re-armed only when the earliest deadline moves.
        let sleep = tokio::time::sleep_until(epoch);
        tokio::pin!(sleep);
        let mut armed: Option<i64> = None;
        enum Ev {
            Stop,
            Packets(io::Result<()>),
            Cmd(Option<Cmd>),
            Timer,
        }
        loop {
            let next = eng.timers.keys().next().map(|(t, _)| *t);
            let next = match (next, eng.sweep_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(t) = next {
                if armed != Some(t) {
                    sleep
                        .as_mut()
                        .reset(epoch + Duration::from_micros(t.max(0) as u64));
                    armed = Some(t);
                }
            }
            batch.clear();
            let ev = tokio::select! {
                _ = &mut shutdown => Ev::Stop,
                r = std::future::poll_fn(|cx| source.poll_recv(cx, &mut batch)) => Ev::Packets(r),
                c = cmd_rx.recv() => Ev::Cmd(c),
                _ = &mut sleep, if next.is_some() => Ev::Timer,
            };
            bump(&eng.stats.wakeups);
            eng.tick();
            let ingested = matches!(ev, Ev::Packets(Ok(())));
            match ev {
                Ev::Stop => break,
                Ev::Packets(r) => {
                    r?;
                    for i in 0..batch.len() {
                        eng.packet(batch.get_mut(i));
                    }
                }
                Ev::Cmd(Some(c)) => eng.command(c),
                Ev::Cmd(None) => {}
                Ev::Timer => armed = None,
            }
            // Let the flow tasks this batch woke run before the egress: a
            // request then goes upstream before our ACK of it goes to the
            // TUN, and the ACK carries the window their reads reopened (one
            // packet, not an ACK and then a window update), and the UDP
            // relays drain their queues. Interleaved A/B through dante: crr
            // +2-5 % connections/s, udp at 50,000/s answered 39,000 -> 44,000.
            if ingested {
                tokio::task::yield_now().await;
            }
            // Whatever woke us, also take the requests and timers that are
            // due, so a busy device cannot starve the relays or the timers.
            for _ in 0..1024 {
                match cmd_rx.try_recv() {
                    Ok(c) => eng.command(c),
                    Err(_) => break,
                }
            }
            // Handling a full batch can take a while: timers and the egress
            // below see the time as it is now.
            eng.tick();
            eng.fire_timers();
            eng.settle_touched();
            eng.sweep();
        }
        eng.tick();
        eng.shutdown();
        Ok(())
    }
}

/// One flow's life outside the stack task: dial, report, relay, log.
async fn flow_task(
    shared: Arc<FlowShared>,
    dial: DialFuture,
    connect_timeout: Duration,
    idle: Option<Duration>,
) {
    let (key, id) = (shared.key, shared.id);
    let started = std::time::Instant::now();
    let res = match tokio::time::timeout(connect_timeout, dial).await {
        Ok(r) => r,
        // As a proxy that timed out answers: the host did not answer.
        Err(_) => Err(DialFailed::new(
            Refusal::Unreachable(Unreachable::Host),
            "timed out",
        )),
    };
    match res {
        Ok(far) => {
            let _ = shared.cmds.send(Cmd::Dialed(key, id, Ok(())));
            let tun = TunStream::new(shared);
            let st = crate::relay::relay(tun, far, idle).await;
            info!(
                src = %key.src, dst = %key.dst,
                up = st.a_to_b, down = st.b_to_a,
                ms = started.elapsed().as_millis() as u64,
                "tcp flow {}", st.outcome.describe("app", "proxy")
            );
        }
        Err(e) => {
            let refusal = e.answer;
            let _ = shared.cmds.send(Cmd::Dialed(key, id, Err(refusal)));
            let answer = match refusal {
                Refusal::Reset => "RST".to_string(),
                Refusal::Unreachable(u) => format!("ICMP {u:?} unreachable"),
            };
            info!(
                src = %key.src, dst = %key.dst,
                ms = started.elapsed().as_millis() as u64,
                "tcp flow refused: {e} (answered with {answer})"
            );
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; the seed feeds smoltcp's initial
    // sequence numbers, which must not be predictable (RFC 6528).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests;
