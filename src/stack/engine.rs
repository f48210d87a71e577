//! The stack task's state and work: ingress (a packet from the source into
//! its flow), egress (what smoltcp sends back), flow set-up and teardown, timers.

use super::config::{bump, StackConfig, StackStats};
use super::flow::flow_task;
use super::flow::{Cmd, FlowShared};
use super::oneshot;
use super::phy::PacketSink;
use super::ring;
use super::seam::{Dialer, FlowObserver, Refusal, UdpHandler};
use super::wire::{self, FlowKey};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint, Ipv4Address, Ipv6Address};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tracing::debug;

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

pub(super) enum Phase {
    /// The proxy is being asked; the SYN (copied) for the refusal answer.
    Dialing {
        syn: Box<[u8]>,
    },
    Open,
}

pub(super) struct Flow {
    pub(super) shared: Arc<FlowShared>,
    pub(super) phase: Phase,
    /// The flow's entry in the timer queue.
    pub(super) timer: Option<(i64, u64)>,
    pub(super) touched: bool,
    pub(super) linger_until: Option<SInstant>,
    /// The application's MSS, when smoltcp was shown a larger one and the
    /// sink must cut its segments (segment offload).
    pub(super) gso_mss: Option<u16>,
    /// The application's initial sequence number, and the end of the
    /// furthest data it sent (see `Engine::tcp`).
    pub(super) rx_isn: Option<u32>,
    pub(super) rx_end: u32,
    /// `FlowShared::moved` when the flow was last settled.
    pub(super) seen_moved: u64,
    /// Its rings may hold resident pages: it is on the engine's `resident` list.
    pub(super) resident: bool,
    /// Data moved since the last release sweep.
    pub(super) busy: bool,
}

pub(super) struct Engine {
    pub(super) cfg: StackConfig,
    pub(super) dialer: Arc<dyn Dialer>,
    pub(super) udp: Arc<dyn UdpHandler>,
    pub(super) sink: Arc<dyn PacketSink>,
    pub(super) stats: Arc<StackStats>,
    pub(super) iface: Interface,
    pub(super) flows: HashMap<FlowKey, Flow>,
    /// (deadline in µs since `epoch`, flow id) → flow.
    pub(super) timers: BTreeMap<(i64, u64), FlowKey>,
    pub(super) touched: Vec<FlowKey>,
    /// Always empty: a packet polled against it is answered as smoltcp answers
    /// a segment for no socket (RST, RFC 9293 3.10.7.1).
    pub(super) scratch: SocketSet<'static>,
    pub(super) txbuf: Vec<u8>,
    pub(super) cmd_tx: mpsc::UnboundedSender<Cmd>,
    pub(super) next_id: u64,
    pub(super) epoch: std::time::Instant,
    /// Flows whose rings may hold resident pages, with their ids.
    pub(super) resident: Vec<(FlowKey, u64)>,
    pub(super) now: SInstant,
    /// Most flows open at once since the heap was last trimmed.
    pub(super) peak_flows: usize,
    /// The next release sweep (µs since `epoch`); armed only while `resident`
    /// or the pool is not empty, so a quiet stack never wakes for it.
    pub(super) sweep_at: Option<i64>,
    pub(super) pool: Arc<ring::RingPool>,
    /// smoltcp's MTU (see `Engine::new`).
    pub(super) smtu: usize,
    /// With segment offload, the device MTU our SYNs advertise.
    pub(super) syn_mtu: Option<usize>,
    pub(super) observer: Option<Arc<dyn FlowObserver>>,
}

impl Engine {
    pub(super) fn new(
        cfg: StackConfig,
        dialer: Arc<dyn Dialer>,
        udp: Arc<dyn UdpHandler>,
        sink: Arc<dyn PacketSink>,
        stats: Arc<StackStats>,
        cmd_tx: mpsc::UnboundedSender<Cmd>,
    ) -> Engine {
        // smoltcp's MTU: the device's, or with segment offload the largest IP
        // packet, cut to the application's MSS by the sink.
        let mtu = if cfg.segment_offload { 65535 } else { cfg.mtu };
        let mut txbuf = vec![0u8; mtu];
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random_seed();
        let epoch = std::time::Instant::now();
        let syn_mtu = cfg.segment_offload.then_some(cfg.mtu);
        // smoltcp keeps the capabilities it is shown here (checksums
        // included), so this device must be configured like the later ones.
        let mut iface = {
            let mut dev = oneshot::OneShot {
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
            ring::rx_ring_len(cfg.rx_buffer),
            cfg.tx_buffer,
            RING_POOL,
        ));
        Engine {
            cfg,
            dialer,
            udp,
            sink,
            stats,
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
            observer: None,
        }
    }

    /// The time of the current wake-up: read when the loop wakes and again
    /// before timers and egress, not per packet and per flow (that was 2 % of
    /// a short connection's cost).
    pub(super) fn now(&self) -> SInstant {
        self.now
    }

    pub(super) fn tick(&mut self) {
        self.now = SInstant::from_micros(self.epoch.elapsed().as_micros() as i64);
    }

    pub(super) fn packet(&mut self, pkt: &mut [u8]) {
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

    pub(super) fn tcp(
        &mut self,
        pkt: &mut [u8],
        key: FlowKey,
        syn: bool,
        rst: bool,
        seg: (u32, u32),
    ) {
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
        track_rx(flow, syn, seg, real_mss, self.cfg.rx_buffer);
        {
            let mut set = flow.shared.lock();
            let mut dev = oneshot::OneShot {
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
    pub(super) fn answer_stray(&mut self, pkt: &[u8]) {
        let now = self.now();
        let mut dev = oneshot::OneShot {
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
    /// Room for one more flow under `max_flows`, taken (given back by
    /// `unadmit`, or by `remove` once the flow is in the table).
    fn admit(&self) -> bool {
        match &self.cfg.shared {
            Some(s) if s.flows.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_flows => {
                s.flows.fetch_sub(1, Ordering::Relaxed);
                false
            }
            Some(_) => true,
            None => self.flows.len() < self.cfg.max_flows,
        }
    }

    fn unadmit(&self) {
        if let Some(s) = &self.cfg.shared {
            s.flows.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn open(&mut self, key: FlowKey, syn: &[u8]) -> bool {
        if !self.admit() {
            bump(&self.stats.tcp_over_limit);
            debug!(src = %key.src, dst = %key.dst, "tcp flow limit reached, refusing");
            return false;
        }
        let (mut mem, reused) = match self.pool.take() {
            Ok(m) => m,
            Err(e) => {
                self.unadmit();
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
            self.unadmit();
            return false;
        }
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        let id = match &self.cfg.shared {
            Some(s) => s.ids.fetch_add(1, Ordering::Relaxed) + 1,
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
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
        let ctx = (self.stats.clone(), self.observer.clone());
        tokio::spawn(flow_task(shared, dial, (ct, idle), ctx));
        true
    }

    pub(super) fn command(&mut self, c: Cmd) {
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
                        bump(&self.stats.tcp_refused_by[refusal.index()]);
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

    pub(super) fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let flow = self.flows.remove(key)?;
        self.unadmit();
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

    pub(super) fn fire_timers(&mut self) {
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

    pub(super) fn settle_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for key in touched.drain(..) {
            self.settle(key);
        }
        self.touched = touched;
    }

    /// After a flow's packets or requests: send what it has to send, reclaim
    /// it if it is done, and schedule its next timer.
    pub(super) fn settle(&mut self, key: FlowKey) {
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
            let mut dev = oneshot::OneShot {
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

    pub(super) fn shutdown(&mut self) {
        let keys: Vec<FlowKey> = self.flows.keys().copied().collect();
        let now = self.now();
        for key in keys {
            if let Some(flow) = self.flows.get(&key) {
                let shared = flow.shared.clone();
                let mut set = shared.lock();
                set.get_mut::<tcp::Socket>(shared.handle).abort();
                let mut dev = oneshot::OneShot {
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

/// Track how far the application's data reaches in sequence space:
/// segments beyond a gap sit in the receive ring without showing in
/// `recv_queue`, and such a ring must not be released. The first SYN
/// fixes the ISN and the MSS; a later SYN with another ISN is dropped
/// by smoltcp and must not move them either.
#[inline]
fn track_rx(flow: &mut Flow, syn: bool, seg: (u32, u32), real_mss: Option<u16>, rx_buffer: usize) {
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
        let in_window = flow.rx_isn.is_some() && end.wrapping_sub(flow.rx_end) <= rx_buffer as u32;
        if in_window && seq_after(end, flow.rx_end) {
            flow.rx_end = end;
        }
    }
}

/// `a` is later than `b` in sequence space (RFC 9293 3.4, modulo 2^32).
pub(super) fn seq_after(a: u32, b: u32) -> bool {
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
