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
//!   [`TunWriter`] (a cloneable [`PacketSink`]).
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
//! # Seams (kept stable for the UDP/DNS code)
//! - [`Dialer`]: how a new TCP flow reaches its destination. The default, in
//!   `crate::tun`, is a SOCKS CONNECT to the destination address; a wrapper can
//!   answer some destinations in-process (DNS over TCP to port 53) or dial others
//!   by name (fake-pool addresses).
//! - [`UdpHandler`]: receives every inbound UDP packet (whole IPv4/IPv6 packet).
//! - [`TunWriter`]: writes whole IP packets back to the device, from any thread.

mod device;
pub mod flow;
pub mod mem;
mod reclaim;
pub mod ring;
pub mod wire;

pub use flow::TunStream;
pub use wire::{FlowKey, Unreachable};

use crate::relay::RelayStream;
use crate::socks::client::DialError;
use flow::{Cmd, FlowShared};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint, Ipv4Address, Ipv6Address};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info};

/// Where the stack writes IP packets (towards the applications). Sending never
/// blocks: a packet that does not fit is dropped (TCP retransmits), so one slow
/// consumer cannot stall the stack.
pub trait PacketSink: Send + Sync + 'static {
    fn send(&self, packet: &[u8]);

    /// Send a TCP packet from the stack when segment offload is on (see
    /// `StackConfig::segment_offload`): its TCP checksum is not filled in
    /// and its payload may be larger than `mss`, the largest segment the
    /// application accepts. A sink with offload has the kernel finish the
    /// checksum and cut the segments; this default computes the checksum in
    /// software and sends the packet whole.
    fn send_tcp(&self, packet: &mut [u8], mss: u16) {
        let _ = mss;
        wire::fill_tcp_checksum(packet);
        self.send(packet)
    }
}

/// The cloneable handle that writes raw IP packets into the TUN.
pub type TunWriter = Arc<dyn PacketSink>;

/// Where the stack reads IP packets from (the applications).
pub trait PacketSource: Send + 'static {
    /// Wait until at least one packet is available, then read as many as are
    /// ready and fit into `batch` (which the caller has cleared).
    fn poll_recv(&mut self, cx: &mut Context<'_>, batch: &mut PacketBatch) -> Poll<io::Result<()>>;
}

/// A set of received packets packed one after another into one buffer, reused
/// for every read: no allocation per packet. Each read gets a full `slot`
/// (the MTU) of room, but only the bytes it returned stay taken, so a burst of
/// small packets (ACKs) fills the batch by count while a large MTU costs a
/// bounded buffer rather than `count` MTUs.
pub struct PacketBatch {
    buf: Vec<u8>,
    slot: usize,
    count: usize,
    /// Where the next packet goes.
    end: usize,
    /// (start, len) of each packet.
    pkts: Vec<(usize, usize)>,
}

impl PacketBatch {
    /// Room for at least `count` packets of `slot` bytes, but at most
    /// `MAX_BYTES` unless four full-size packets need more: at MTU 65000 a
    /// batch of 64 full slots would be 4 MB of buffer.
    pub fn new(slot: usize, count: usize) -> PacketBatch {
        const MAX_BYTES: usize = 256 * 1024;
        let slot = slot.max(1);
        let count = count.max(1);
        let bytes = (slot * count).min(MAX_BYTES.max(slot * 4));
        PacketBatch {
            buf: vec![0; bytes.max(slot)],
            slot,
            count,
            end: 0,
            pkts: Vec::with_capacity(count),
        }
    }
    pub fn clear(&mut self) {
        self.pkts.clear();
        self.end = 0;
    }
    pub fn len(&self) -> usize {
        self.pkts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.pkts.len() >= self.count || self.end + self.slot > self.buf.len()
    }
    /// Room for the next packet (a whole slot); `None` when full.
    pub fn slot_mut(&mut self) -> Option<&mut [u8]> {
        if self.pkts.len() >= self.count {
            return None;
        }
        self.buf.get_mut(self.end..self.end + self.slot)
    }
    /// Keep the first `len` bytes of the room `slot_mut` returned.
    pub fn commit(&mut self, len: usize) {
        self.commit_after(0, len);
    }
    /// Keep bytes `skip..len` of the room `slot_mut` returned as the packet
    /// (a device header before it stays in the buffer, unseen).
    pub fn commit_after(&mut self, skip: usize, len: usize) {
        let len = len.min(self.slot);
        let skip = skip.min(len);
        self.pkts.push((self.end + skip, len - skip));
        self.end += len;
    }
    pub fn get(&self, i: usize) -> &[u8] {
        let (at, len) = self.pkts[i];
        &self.buf[at..at + len]
    }
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let (at, len) = self.pkts[i];
        &mut self.buf[at..at + len]
    }
}

pub type DialFuture = Pin<Box<dyn Future<Output = Result<Box<dyn RelayStream>, DialError>> + Send>>;

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

/// The UDP handler until UDP is relayed: drop and count.
#[derive(Default)]
pub struct DropUdp {
    pub dropped: AtomicU64,
}

impl UdpHandler for DropUdp {
    fn on_packet(&self, _packet: &[u8]) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the TUN side is told that a dial failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A RST: the application sees "Connection refused".
    Reset,
    /// An ICMP/ICMPv6 destination unreachable: "No route to host" / "Network is
    /// unreachable" / "Permission denied", and Happy Eyeballs moves on.
    Unreachable(Unreachable),
}

impl From<&DialError> for Refusal {
    fn from(e: &DialError) -> Refusal {
        match e {
            DialError::NetUnreachable => Refusal::Unreachable(Unreachable::Net),
            DialError::HostUnreachable | DialError::TtlExpired | DialError::Timeout => {
                Refusal::Unreachable(Unreachable::Host)
            }
            DialError::NotAllowed => Refusal::Unreachable(Unreachable::Prohibited),
            // Refused, and every failure of the proxy itself: fail fast and
            // plainly rather than leave the application waiting.
            _ => Refusal::Reset,
        }
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
    /// Limit on one dial (SOCKS connect and handshake).
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

/// How long a flow whose relay has ended may wait for the application to
/// finish the close before the stack drops it anyway.
const LINGER: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(30);

/// The delayed-ACK time of flows with segment offload: none (see `Engine::tcp`).
const OFFLOAD_ACK_DELAY: Option<smoltcp::time::Duration> = None;

/// The smallest application MSS worth segmentation offload (RFC 9293's
/// IPv4 default).
const MIN_GSO_MSS: u16 = 536;

/// Ring mappings kept for reuse: enough for bursts of short connections, few
/// enough that their resident first pages do not matter.
const RING_POOL: usize = 32;

enum Phase {
    /// The proxy is being asked; the SYN (copied) for the refusal answer.
    Dialing {
        syn: Box<[u8]>,
    },
    Open,
}

struct Flow {
    shared: Arc<FlowShared>,
    phase: Phase,
    /// The flow's entry in the timer queue.
    timer: Option<(i64, u64)>,
    touched: bool,
    linger_until: Option<SInstant>,
    /// The application's MSS, when smoltcp was shown a larger one and the
    /// sink must cut its segments (segment offload).
    gso_mss: Option<u16>,
    /// The application's initial sequence number, and the end of the
    /// furthest data it sent (see `Engine::tcp`).
    rx_isn: Option<u32>,
    rx_end: u32,
    /// `FlowShared::moved` when the flow was last settled.
    seen_moved: u64,
    /// Its rings may hold resident pages: it is on the engine's `resident` list.
    resident: bool,
    /// Data moved since the last release sweep.
    busy: bool,
}

/// The stack: build with [`Stack::new`], then [`Stack::run`] it on a tokio
/// runtime.
pub struct Stack {
    cfg: StackConfig,
    dialer: Arc<dyn Dialer>,
    udp: Arc<dyn UdpHandler>,
    sink: TunWriter,
    stats: Arc<StackStats>,
}

impl Stack {
    pub fn new(
        cfg: StackConfig,
        dialer: Arc<dyn Dialer>,
        udp: Arc<dyn UdpHandler>,
        sink: TunWriter,
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

struct Engine {
    cfg: StackConfig,
    dialer: Arc<dyn Dialer>,
    udp: Arc<dyn UdpHandler>,
    sink: TunWriter,
    stats: Arc<StackStats>,
    iface: Interface,
    flows: HashMap<FlowKey, Flow>,
    /// (deadline in µs since `epoch`, flow id) → flow.
    timers: BTreeMap<(i64, u64), FlowKey>,
    touched: Vec<FlowKey>,
    /// Always empty: a packet polled against it is answered as smoltcp answers
    /// a segment for no socket (RST, RFC 9293 3.10.7.1).
    scratch: SocketSet<'static>,
    txbuf: Vec<u8>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    next_id: u64,
    epoch: std::time::Instant,
    /// Flows whose rings may hold resident pages, with their ids.
    resident: Vec<(FlowKey, u64)>,
    now: SInstant,
    /// Most flows open at once since the heap was last trimmed.
    peak_flows: usize,
    /// The next release sweep (µs since `epoch`); armed only while `resident`
    /// or the pool is not empty, so a quiet stack never wakes for it.
    sweep_at: Option<i64>,
    pool: Arc<ring::RingPool>,
    /// smoltcp's MTU (see `Engine::new`).
    smtu: usize,
    /// With segment offload, the device MTU our SYNs advertise.
    syn_mtu: Option<usize>,
}

impl Engine {
    fn new(s: Stack, cmd_tx: mpsc::UnboundedSender<Cmd>) -> Engine {
        // smoltcp's MTU: the device's, or with segment offload the largest IP
        // packet, cut to the application's MSS by the sink.
        let mtu = if s.cfg.segment_offload {
            65535
        } else {
            s.cfg.mtu
        };
        let sink = s.sink.clone();
        let mut txbuf = vec![0u8; mtu];
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random_seed();
        let epoch = std::time::Instant::now();
        let syn_mtu = s.cfg.segment_offload.then_some(s.cfg.mtu);
        // smoltcp keeps the capabilities it is shown here (checksums
        // included), so this device must be configured like the later ones.
        let mut iface = {
            let mut dev = device::OneShot {
                rx: None,
                sink: &*sink,
                txbuf: &mut txbuf,
                mtu,
                gso: None,
                syn_mtu,
            };
            Interface::new(config, &mut dev, SInstant::from_micros(0))
        };
        // Accept every destination: the flow table decides what is ours.
        iface.set_any_ip(true);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(Ipv4Address::new(0, 0, 0, 1).into(), 0));
            let _ = addrs.push(IpCidr::new(
                Ipv6Address::new(0, 0, 0, 0, 0, 0, 0, 1).into(),
                0,
            ));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(0, 0, 0, 1));
        let _ = iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Address::new(0, 0, 0, 0, 0, 0, 0, 1));
        let pool = Arc::new(ring::RingPool::new(
            ring::rx_ring_len(s.cfg.rx_buffer),
            s.cfg.tx_buffer,
            RING_POOL,
        ));
        Engine {
            cfg: s.cfg,
            dialer: s.dialer,
            udp: s.udp,
            sink,
            stats: s.stats,
            iface,
            flows: HashMap::new(),
            timers: BTreeMap::new(),
            touched: Vec::new(),
            scratch: SocketSet::new(Vec::new()),
            txbuf,
            cmd_tx,
            next_id: 0,
            epoch,
            resident: Vec::new(),
            now: SInstant::from_micros(0),
            peak_flows: 0,
            sweep_at: None,
            pool,
            smtu: mtu,
            syn_mtu,
        }
    }

    /// The time of the current wake-up: read when the loop wakes and again
    /// before timers and egress, not per packet and per flow (that was 2 % of
    /// a short connection's cost).
    fn now(&self) -> SInstant {
        self.now
    }

    fn tick(&mut self) {
        self.now = SInstant::from_micros(self.epoch.elapsed().as_micros() as i64);
    }

    fn packet(&mut self, pkt: &mut [u8]) {
        bump(&self.stats.packets_in);
        match wire::classify(pkt) {
            wire::Class::Tcp {
                key,
                syn,
                ack,
                rst,
                seq,
                len,
            } => self.tcp(pkt, key, syn && !ack, rst, (seq, len)),
            wire::Class::Udp => {
                bump(&self.stats.udp_packets);
                self.udp.on_packet(pkt);
            }
            wire::Class::Other => bump(&self.stats.other_dropped),
            wire::Class::Malformed => bump(&self.stats.malformed),
        }
    }

    fn tcp(&mut self, pkt: &mut [u8], key: FlowKey, syn: bool, rst: bool, seg: (u32, u32)) {
        let now = self.now();
        // With segmentation offload smoltcp may send segments as large as it
        // likes and the sink cuts them to the application's MSS: smoltcp is
        // shown the largest MSS, the real one is kept for the sink.
        let real_mss = if syn && self.cfg.segment_offload {
            // An MSS at or below the minimum is left alone: segments that
            // small are not worth cutting (and options could outgrow them).
            match wire::replace_mss(pkt, u16::MAX) {
                Some(m) if m < MIN_GSO_MSS => {
                    wire::replace_mss(pkt, m);
                    None
                }
                m => m,
            }
        } else {
            None
        };
        let pkt = &*pkt;
        // One hash of the key per packet on the common path (an existing
        // flow); only a new flow looks it up again after `open`.
        let flow = match self.flows.get_mut(&key) {
            Some(flow) => flow,
            None => {
                if rst {
                    return;
                }
                if !syn || !self.open(key, pkt) {
                    bump(&self.stats.tcp_stray);
                    self.answer_stray(pkt);
                    return;
                }
                let Some(flow) = self.flows.get_mut(&key) else {
                    return;
                };
                flow
            }
        };
        // Track how far the application's data reaches in sequence space:
        // segments beyond a gap sit in the receive ring without showing in
        // `recv_queue`, and such a ring must not be released. The first SYN
        // fixes the ISN and the MSS; a later SYN with another ISN is dropped
        // by smoltcp and must not move them either.
        let (seq, len) = seg;
        if syn {
            if flow.rx_isn.is_none() {
                flow.rx_isn = Some(seq);
                flow.rx_end = seq.wrapping_add(1).wrapping_add(len);
                flow.gso_mss = real_mss;
                if real_mss.is_some() {
                    // smoltcp acknowledges at once only after more than its
                    // idea of the peer's MSS is unacknowledged, and that is
                    // now 64 KB: a sender limited by its window (slow start,
                    // our first window of 64 KB) would wait out the 10 ms
                    // delayed-ACK timer each round (200 KB uploads took 12 ms
                    // instead of 1). So every segment is acknowledged at once:
                    // with TSO a segment is up to 64 KB, so that is still few
                    // acknowledgements, and a 1 ms delay measured worse (4 ms).
                    let mut set = flow.shared.lock();
                    set.get_mut::<tcp::Socket>(flow.shared.handle)
                        .set_ack_delay(OFFLOAD_ACK_DELAY);
                }
            }
        } else if len > 0 {
            let end = seq.wrapping_add(len);
            // Only as far as a receive window reaches: smoltcp drops the rest,
            // and a wild sequence number must not wrap the comparison.
            let in_window =
                flow.rx_isn.is_some() && end.wrapping_sub(flow.rx_end) <= self.cfg.rx_buffer as u32;
            if in_window && seq_after(end, flow.rx_end) {
                flow.rx_end = end;
            }
        }
        {
            let mut set = flow.shared.lock();
            let mut dev = device::OneShot {
                rx: Some(pkt),
                sink: &*self.sink,
                txbuf: &mut self.txbuf,
                mtu: self.smtu,
                gso: flow.gso_mss,
                syn_mtu: self.syn_mtu,
            };
            self.iface.poll_ingress_single(now, &mut dev, &mut set);
            // Received data, or sent data still unacknowledged (a flow that
            // left the sweep's list with a full transmit ring comes back).
            let sock = set.get::<tcp::Socket>(flow.shared.handle);
            let data = sock.recv_queue() > 0 || sock.send_queue() > 0;
            drop(set);
            if data {
                note_data(flow, key, &mut self.resident);
            }
        }
        if !flow.touched {
            flow.touched = true;
            self.touched.push(key);
        }
    }

    /// Let smoltcp answer a segment that belongs to no flow (RST).
    fn answer_stray(&mut self, pkt: &[u8]) {
        let now = self.now();
        let mut dev = device::OneShot {
            rx: Some(pkt),
            sink: &*self.sink,
            txbuf: &mut self.txbuf,
            mtu: self.smtu,
            gso: None,
            syn_mtu: self.syn_mtu,
        };
        self.iface
            .poll_ingress_single(now, &mut dev, &mut self.scratch);
    }

    /// A SYN for a new tuple: listen for exactly it, hold the SYN-ACK, dial.
    fn open(&mut self, key: FlowKey, syn: &[u8]) -> bool {
        if self.flows.len() >= self.cfg.max_flows {
            bump(&self.stats.tcp_over_limit);
            debug!(src = %key.src, dst = %key.dst, "tcp flow limit reached, refusing");
            return false;
        }
        let (mut mem, reused) = match self.pool.take() {
            Ok(m) => m,
            Err(e) => {
                debug!(src = %key.src, dst = %key.dst, "no memory for the flow's buffers: {e}");
                return false;
            }
        };
        // SAFETY: a mapping from the pool comes from a dropped FlowShared,
        // which dropped its socket first; the socket built on these lives in
        // `set`, which `FlowShared::drop` drops before giving `mem` back.
        let (rx, tx) = unsafe { mem.slices() };
        let mut sock = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        sock.set_nagle_enabled(false);
        sock.set_congestion_control(tcp::CongestionControl::Cubic);
        sock.set_keep_alive(Some((self.cfg.dead_peer_timeout / 3).into()));
        sock.set_timeout(Some(self.cfg.dead_peer_timeout.into()));
        sock.pause_synack(true);
        let ep = IpListenEndpoint {
            addr: Some(key.dst.ip().into()),
            port: key.dst.port(),
        };
        if sock.listen(ep).is_err() {
            return false;
        }
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        self.next_id += 1;
        let id = self.next_id;
        let shared = Arc::new(FlowShared {
            key,
            id,
            set: Mutex::new(set),
            handle,
            queued: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            cmds: self.cmd_tx.clone(),
            mem: Some(mem),
            pool: self.pool.clone(),
            moved: AtomicU64::new(0),
            app_read: AtomicU64::new(0),
        });
        self.flows.insert(
            key,
            Flow {
                shared: shared.clone(),
                phase: Phase::Dialing { syn: syn.into() },
                timer: None,
                touched: false,
                linger_until: None,
                resident: reused,
                busy: false,
                gso_mss: None,
                rx_isn: None,
                rx_end: 0,
                seen_moved: 0,
            },
        );
        if reused {
            // An earlier flow's pages may be resident: let the sweep see it.
            self.resident.push((key, id));
        }
        bump(&self.stats.tcp_opened);
        self.peak_flows = self.peak_flows.max(self.flows.len());
        self.stats
            .tcp_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
        self.stats
            .table_capacity
            .store(self.flows.capacity() as u64, Ordering::Relaxed);
        let dial = self.dialer.dial(key.src, key.dst);
        let (ct, idle) = (self.cfg.connect_timeout, self.cfg.idle_timeout);
        tokio::spawn(flow_task(shared, dial, ct, idle));
        true
    }

    fn command(&mut self, c: Cmd) {
        match c {
            // The sweep that follows every wake-up arms itself.
            Cmd::Pooled => {}
            Cmd::Poll(key, id) => {
                if let Some(flow) = self.flows.get_mut(&key) {
                    if flow.shared.id == id {
                        flow.shared.queued.store(false, Ordering::Release);
                        if !flow.touched {
                            flow.touched = true;
                            self.touched.push(key);
                        }
                    }
                }
            }
            Cmd::Dialed(key, id, res) => {
                let Some(flow) = self.flows.get_mut(&key) else {
                    return;
                };
                if flow.shared.id != id {
                    return;
                }
                match res {
                    Ok(()) => {
                        flow.phase = Phase::Open;
                        flow.shared
                            .lock()
                            .get_mut::<tcp::Socket>(flow.shared.handle)
                            .pause_synack(false);
                        if !flow.touched {
                            flow.touched = true;
                            self.touched.push(key);
                        }
                    }
                    Err(refusal) => {
                        bump(&self.stats.tcp_refused);
                        let Some(flow) = self.remove(&key) else {
                            return;
                        };
                        if let Phase::Dialing { syn } = &flow.phase {
                            match refusal {
                                Refusal::Reset => self.answer_stray(syn),
                                Refusal::Unreachable(why) => {
                                    let q = &syn[..wire::quote_len(syn)];
                                    if let Some(p) = wire::icmp_unreachable(q, why) {
                                        self.sink.send(&p);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let flow = self.flows.remove(key)?;
        if let Some(t) = flow.timer {
            self.timers.remove(&t);
        }
        // Wake a relay still waiting on it: it reads a reset or end of file.
        {
            let mut set = flow.shared.lock();
            let sock = set.get_mut::<tcp::Socket>(flow.shared.handle);
            if !matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) {
                sock.abort();
            }
        }
        self.stats
            .tcp_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
        bump(&self.stats.tcp_closed);
        Some(flow)
    }

    fn fire_timers(&mut self) {
        let now = self.now().total_micros();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(flow) = self.flows.get_mut(&key) {
                flow.timer = None;
                if !flow.touched {
                    flow.touched = true;
                    self.touched.push(key);
                }
            }
        }
    }

    fn settle_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for key in touched.drain(..) {
            self.settle(key);
        }
        self.touched = touched;
    }

    /// After a flow's packets or requests: send what it has to send, reclaim
    /// it if it is done, and schedule its next timer.
    fn settle(&mut self, key: FlowKey) {
        let now = self.now();
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.touched = false;
        let shared = flow.shared.clone();
        let dialing = matches!(flow.phase, Phase::Dialing { .. });
        let detached = shared.detached.load(Ordering::Acquire);
        if detached && flow.linger_until.is_none() {
            flow.linger_until = Some(now + LINGER);
        }
        let linger_over = flow.linger_until.is_some_and(|t| now >= t);
        let (state, next) = {
            let mut set = shared.lock();
            if linger_over {
                set.get_mut::<tcp::Socket>(shared.handle).abort();
            }
            let mut dev = device::OneShot {
                rx: None,
                sink: &*self.sink,
                txbuf: &mut self.txbuf,
                mtu: self.smtu,
                gso: flow.gso_mss,
                syn_mtu: self.syn_mtu,
            };
            // While dialing there is nothing to send (the SYN-ACK is held) and
            // poll_at would say "now" for the held SYN-ACK: no timer then.
            if !dialing || linger_over {
                while self.iface.poll_egress(now, &mut dev, &mut set)
                    != smoltcp::iface::PollResult::None
                {}
            }
            let sock = set.get::<tcp::Socket>(shared.handle);
            let state = sock.state();
            // Data queued, or moved by the relay since last time (a ring the
            // relay just drained has pages to give back too).
            let moved = shared.moved.load(Ordering::Relaxed);
            if sock.recv_queue() > 0 || sock.send_queue() > 0 || moved != flow.seen_moved {
                flow.seen_moved = moved;
                note_data(flow, key, &mut self.resident);
            }
            let next = if dialing {
                None
            } else {
                self.iface.poll_at(now, &set)
            };
            (state, next)
        };
        // TIME-WAIT needs no socket here: a late retransmitted FIN gets a RST
        // from the scratch set, which the application ignores after close.
        // LISTEN means the peer reset a half-open flow (RFC 9293 3.10.7.4).
        if matches!(
            state,
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
        ) || linger_over
        {
            self.remove(&key);
            return;
        }
        let mut next = next;
        if let Some(l) = flow.linger_until {
            next = Some(next.map_or(l, |n| n.min(l)));
        }
        // Never schedule in the past: a socket that keeps saying "now" after
        // we drained it would otherwise spin the loop.
        let next = next.map(|n| n.max(now + smoltcp::time::Duration::from_millis(1)));
        let want = next.map(|n| (n.total_micros(), shared.id));
        if want != flow.timer {
            if let Some(old) = flow.timer.take() {
                self.timers.remove(&old);
            }
            if let Some(w) = want {
                self.timers.insert(w, key);
                flow.timer = Some(w);
            }
        }
    }

    fn shutdown(&mut self) {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        let now = self.now();
        for key in keys {
            if let Some(flow) = self.flows.get(&key) {
                let shared = flow.shared.clone();
                let mut set = shared.lock();
                set.get_mut::<tcp::Socket>(shared.handle).abort();
                let mut dev = device::OneShot {
                    rx: None,
                    sink: &*self.sink,
                    txbuf: &mut self.txbuf,
                    mtu: self.smtu,
                    gso: None,
                    syn_mtu: self.syn_mtu,
                };
                let _ = self.iface.poll_egress(now, &mut dev, &mut set);
            }
            self.remove(&key);
        }
    }
}

/// `a` is later than `b` in sequence space (RFC 9293 3.4, modulo 2^32).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Data sits in (or just went through) the flow's rings: keep it from being
/// released at the next sweep, and put it on the list the sweep walks.
fn note_data(flow: &mut Flow, key: FlowKey, resident: &mut Vec<(FlowKey, u64)>) {
    flow.busy = true;
    if !flow.resident {
        flow.resident = true;
        resident.push((key, flow.shared.id));
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
        Err(_) => Err(DialError::Timeout),
    };
    match res {
        Ok(upstream) => {
            let _ = shared.cmds.send(Cmd::Dialed(key, id, Ok(())));
            let tun = TunStream::new(shared);
            let st = crate::relay::relay(tun, upstream, idle).await;
            info!(
                src = %key.src, dst = %key.dst,
                up = st.a_to_b, down = st.b_to_a,
                ms = started.elapsed().as_millis() as u64,
                "tcp flow {}", st.outcome.describe("app", "proxy")
            );
        }
        Err(e) => {
            let refusal = Refusal::from(&e);
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
