//! UDP flows of TUN mode: association table, expiry, reply packets. (issue 4)
//!
//! Every UDP packet read from the TUN comes here as raw IP bytes. DNS to port
//! 53 is answered in-process when DNS is intercepted (`crate::dns`). Any other
//! datagram goes out through the SOCKS5 UDP ASSOCIATE (RFC 1928 §7) of its
//! local endpoint: one association per source address and port, used for
//! every destination (endpoint-independent mapping, "full cone", RFC 4787
//! §4.1), so replies from any remote come back with that remote as source.
//!
//! An association is one task owning its control connection and relay socket.
//! It ends when idle, when the table evicts it (oldest idle first, when
//! `max_flows` is reached), or when the relay task is dropped. A dead control
//! connection is re-established on the next datagram. A failed UDP ASSOCIATE
//! ends the flow and its queue; datagrams are then dropped (and counted) for
//! a backoff that doubles from 1 s to 30 s while the proxy keeps failing.

mod flow;
mod packet;
mod reply;
#[cfg(test)]
mod tests;

pub use packet::{build_udp, parse_udp, BuildError, Datagram, PacketError};

use crate::dns::pool::PoolPin;
use crate::dns::Dns;
use crate::socks::codec;
use crate::socks::TargetAddr;
use crate::stack::{PacketSink, UdpHandler};
use crate::upstream::Upstream;
use flow::{run_flow, Flow};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;
/// Largest UDP payload over IPv4 (65535 - 20 - 8); also the cap towards the relay.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// Idle timeout of an association that only carried DNS (port 53): a query
/// and its answer, nothing follows.
pub const DNS_UDP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a proxy said it has no UDP ASSOCIATE, do not ask again for this long.
const UNSUPPORTED_BACKOFF: Duration = Duration::from_secs(60);
/// Bytes queued towards one live association: room for a burst (the bench
/// lost datagrams at 50k pps with a 64-datagram queue), bounded by bytes so
/// small and large datagrams cost what they weigh.
const FLOW_QUEUE_BYTES: usize = 256 * 1024;
/// Bytes queued towards one association while it is being set up: a proxy
/// that does not answer must not make every flow hold a full queue.
const CONNECTING_QUEUE_BYTES: usize = 16 * 1024;
/// Bytes queued towards all associations together.
const TOTAL_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// What a queued datagram costs beyond its payload (the `Out`, the allocation).
const QUEUE_OVERHEAD: usize = 64;
/// After a failed UDP ASSOCIATE no new one is tried for this long, doubling
/// on each further failure up to `FAILED_BACKOFF_MAX`: a proxy that is down,
/// refuses or rejects our credentials must not get a connection per datagram.
const FAILED_BACKOFF_MIN: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Fake destinations one association remembers for mapping replies back.
const MAX_FAKE_DESTS: usize = 64;
/// IP destinations one association remembers: replies from them are passed
/// through unchanged, never mistaken for replies to a fake destination.
const MAX_IP_DESTS: usize = 1024;

#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// Idle timeout of an association (`--udp-timeout`).
    pub timeout: Duration,
    /// Most associations at once (`--max-udp-flows`).
    pub max_flows: usize,
    /// TUN MTU: the largest packet written back.
    pub mtu: usize,
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub datagrams_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub dns_answered: AtomicU64,
    /// Larger than the path allows (TUN MTU back, 64 KiB out): dropped, never truncated.
    pub dropped_oversize: AtomicU64,
    /// The proxy has no UDP ASSOCIATE.
    pub dropped_unsupported: AtomicU64,
    /// Malformed, full queues, unknown fake address, failed association.
    pub dropped_other: AtomicU64,
    /// Dropped because UDP ASSOCIATE failed and is not retried yet (backoff).
    pub dropped_backoff: AtomicU64,
    /// Dropped because the queue of an association (or all queues) was full.
    pub dropped_queue_full: AtomicU64,
    pub flows_opened: AtomicU64,
    pub flows_evicted: AtomicU64,
}

fn inc(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// Concurrent in-process DNS answers (each may wait on the proxy).
const MAX_DNS_INFLIGHT: usize = 256;

struct Out {
    /// As the application addressed it (a fake address stays fake here).
    dst: SocketAddr,
    target: TargetAddr,
    pin: Option<PoolPin>,
    payload: Vec<u8>,
}

impl Out {
    fn cost(&self) -> usize {
        self.payload.len() + QUEUE_OVERHEAD
    }
}

/// Shared between the table and the task of one association.
#[derive(Default)]
struct FlowState {
    /// Milliseconds since the relay started, at the last datagram either way.
    last_used: AtomicU64,
    /// Bytes in the queue (`Out::cost`).
    queued: AtomicUsize,
    /// Associated: the queue may hold `FLOW_QUEUE_BYTES`, else `CONNECTING_QUEUE_BYTES`.
    live: AtomicBool,
}

struct FlowHandle {
    id: u64,
    /// Unbounded: `FlowState::queued` and `Shared::queued` bound it by bytes.
    tx: mpsc::UnboundedSender<Out>,
    state: Arc<FlowState>,
    /// Dropped with the handle: tells the task it was evicted, even while it
    /// is still setting up its association.
    _evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Table {
    flows: HashMap<SocketAddr, FlowHandle>,
    next_id: u64,
}

struct Shared {
    cfg: UdpConfig,
    dns: Option<Arc<Dns>>,
    upstream: Arc<dyn Upstream>,
    tun: Arc<dyn PacketSink>,
    table: Mutex<Table>,
    stats: Arc<UdpStats>,
    epoch: Instant,
    unsupported_logged: AtomicBool,
    /// `epoch`-relative millisecond until which UDP is not even tried (0: try).
    unsupported_until: AtomicU64,
    /// `epoch`-relative millisecond until which no UDP ASSOCIATE is tried
    /// after a failure (0: try), and the failures in a row behind it.
    failed_until: AtomicU64,
    failed_streak: AtomicU32,
    /// Bytes queued towards all associations.
    queued: AtomicUsize,
    oversize_logged: AtomicBool,
    dns_slots: Arc<tokio::sync::Semaphore>,
    rt: tokio::runtime::Handle,
}

impl Drop for Shared {
    /// The totals, once, when TUN mode stops.
    fn drop(&mut self) {
        let st = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            "udp: {} associations ({} evicted), {} datagrams out, {} in, {} DNS answers; dropped: {} oversize, {} no UDP ASSOCIATE, {} UDP ASSOCIATE failing, {} queue full, {} other",
            get(&st.flows_opened),
            get(&st.flows_evicted),
            get(&st.datagrams_out),
            get(&st.datagrams_in),
            get(&st.dns_answered),
            get(&st.dropped_oversize),
            get(&st.dropped_unsupported),
            get(&st.dropped_backoff),
            get(&st.dropped_queue_full),
            get(&st.dropped_other),
        );
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drop_oversize(&self, what: &str, len: usize) {
        let n = inc(&self.stats.dropped_oversize);
        if !self.oversize_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!("udp: dropped a {len}-byte datagram {what}: larger than the path allows (MTU {}); such drops are counted, not truncated", self.cfg.mtu);
        } else {
            tracing::debug!("udp: dropped oversize datagram {what} ({len} bytes, {n} so far)");
        }
    }

    /// A UDP ASSOCIATE failed: back off. Failures of attempts that ran
    /// while a backoff was already set (many flows trying at once) do not
    /// lengthen it.
    fn mark_failed(&self) -> Duration {
        let now = self.now_ms();
        let until = self.failed_until.load(Ordering::Relaxed);
        if now < until {
            return Duration::from_millis(until - now);
        }
        let streak = self.failed_streak.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = FAILED_BACKOFF_MIN
            .saturating_mul(1 << streak)
            .min(FAILED_BACKOFF_MAX);
        self.failed_until
            .store(now + backoff.as_millis() as u64, Ordering::Relaxed);
        backoff
    }

    fn mark_associated(&self) {
        self.failed_streak.store(0, Ordering::Relaxed);
        self.failed_until.store(0, Ordering::Relaxed);
    }

    /// Take `cost` bytes of queue room for a flow, or None when full.
    fn reserve(&self, st: &FlowState, cost: usize) -> Option<()> {
        let cap = if st.live.load(Ordering::Relaxed) {
            FLOW_QUEUE_BYTES
        } else {
            CONNECTING_QUEUE_BYTES
        };
        if st.queued.fetch_add(cost, Ordering::Relaxed) + cost > cap {
            st.queued.fetch_sub(cost, Ordering::Relaxed);
            return None;
        }
        if self.queued.fetch_add(cost, Ordering::Relaxed) + cost > TOTAL_QUEUE_BYTES {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            st.queued.fetch_sub(cost, Ordering::Relaxed);
            return None;
        }
        Some(())
    }

    fn release(&self, st: &FlowState, cost: usize) {
        st.queued.fetch_sub(cost, Ordering::Relaxed);
        self.queued.fetch_sub(cost, Ordering::Relaxed);
    }

    fn mark_unsupported(&self) {
        self.unsupported_until.store(
            self.now_ms() + UNSUPPORTED_BACKOFF.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.unsupported_logged.swap(true, Ordering::Relaxed) {
            let dns = match self.dns.as_ref().map(|d| d.mode()) {
                Some(m) if m != crate::dns::DnsMode::Udp => format!("DNS still works ({m} mode)"),
                _ => "DNS over UDP fails too (use --dns virtual or tcp)".to_string(),
            };
            tracing::warn!("udp: the upstream proxy does not support UDP ASSOCIATE (reply 0x07): UDP through the TUN is dropped; {dns}");
        }
    }
}

/// The UDP side of TUN mode. Cheap to clone.
#[derive(Clone)]
pub struct UdpRelay {
    shared: Arc<Shared>,
}

impl UdpRelay {
    /// Must be called inside a tokio runtime (flows are spawned onto it).
    pub fn new(
        cfg: UdpConfig,
        dns: Option<Arc<Dns>>,
        upstream: Arc<dyn Upstream>,
        tun: Arc<dyn PacketSink>,
    ) -> UdpRelay {
        UdpRelay {
            shared: Arc::new(Shared {
                cfg,
                dns,
                upstream,
                tun,
                table: Mutex::new(Table::default()),
                stats: Arc::default(),
                epoch: Instant::now(),
                unsupported_logged: AtomicBool::new(false),
                unsupported_until: AtomicU64::new(0),
                failed_until: AtomicU64::new(0),
                failed_streak: AtomicU32::new(0),
                queued: AtomicUsize::new(0),
                oversize_logged: AtomicBool::new(false),
                dns_slots: Arc::new(tokio::sync::Semaphore::new(MAX_DNS_INFLIGHT)),
                rt: tokio::runtime::Handle::current(),
            }),
        }
    }

    pub fn stats(&self) -> &UdpStats {
        &self.shared.stats
    }

    /// The counters, kept readable after the relay is gone.
    pub fn stats_handle(&self) -> Arc<UdpStats> {
        self.shared.stats.clone()
    }

    /// Live associations.
    pub fn flows(&self) -> usize {
        self.shared.table().flows.len()
    }

    /// Take one UDP packet read from the TUN. Never blocks: work that waits
    /// (DNS forwarding, association set-up) runs on spawned tasks.
    pub fn handle_packet(&self, pkt: &[u8]) {
        let sh = &self.shared;
        let d = match parse_udp(pkt) {
            Ok(d) => d,
            Err(e) => {
                inc(&sh.stats.dropped_other);
                tracing::debug!("udp: dropped {} bytes from the TUN: {e}", pkt.len());
                return;
            }
        };
        if let Some(dns) = sh.dns.as_ref().filter(|d| d.intercepts()) {
            if d.dst.port() == 53 {
                self.answer_dns(dns.clone(), d.src, d.dst, d.payload.to_vec());
                return;
            }
        }
        let (target, pin) = match sh.dns.as_ref().and_then(|d| d.pool()) {
            Some(pool) if pool.contains(d.dst.ip()) => match pool.pin(d.dst.ip()) {
                Some((name, pin)) => (TargetAddr::Domain(name, d.dst.port()), Some(pin)),
                None => {
                    inc(&sh.stats.dropped_other);
                    tracing::debug!(
                        "udp: {} -> {}: fake address not assigned (stale DNS answer?)",
                        d.src,
                        d.dst
                    );
                    return;
                }
            },
            _ => (TargetAddr::Ip(d.dst), None),
        };
        let now = sh.now_ms();
        if now < sh.unsupported_until.load(Ordering::Relaxed) {
            inc(&sh.stats.dropped_unsupported);
            return;
        }
        if now < sh.failed_until.load(Ordering::Relaxed) {
            // Associations that are live still carry their datagrams.
            let table = sh.table();
            let live = table
                .flows
                .get(&d.src)
                .is_some_and(|h| h.state.live.load(Ordering::Relaxed));
            if !live {
                inc(&sh.stats.dropped_backoff);
                return;
            }
        }
        if d.payload.len() + codec::udp_header_len(&target) > MAX_UDP_PAYLOAD {
            sh.drop_oversize("towards the proxy", d.payload.len());
            return;
        }
        let out = Out {
            dst: d.dst,
            target,
            pin,
            payload: d.payload.to_vec(),
        };
        self.enqueue(d.src, out, now);
    }

    /// Queue a datagram for the association of `local`, opening one (and
    /// evicting the one idle the longest when the table is full) if needed.
    fn enqueue(&self, local: SocketAddr, mut out: Out, now: u64) {
        let sh = &self.shared;
        let cost = out.cost();
        let mut table = sh.table();
        if let Some(h) = table.flows.get(&local) {
            h.state.last_used.store(now, Ordering::Relaxed);
            if sh.reserve(&h.state, cost).is_none() {
                inc(&sh.stats.dropped_queue_full);
                tracing::debug!("udp: {}: queue full, datagram dropped", local);
                return;
            }
            match h.tx.send(out) {
                Ok(()) => return,
                Err(mpsc::error::SendError(o)) => {
                    // The task ended (idle or no UDP ASSOCIATE) and has not
                    // removed itself yet: start afresh.
                    sh.release(&h.state, cost);
                    out = o;
                    table.flows.remove(&local);
                }
            }
        }
        if table.flows.len() >= sh.cfg.max_flows.max(1) {
            // Bounded: the association idle the longest goes first.
            if let Some(victim) = table
                .flows
                .iter()
                .min_by_key(|(_, h)| h.state.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| *k)
            {
                table.flows.remove(&victim);
                inc(&sh.stats.flows_evicted);
                tracing::debug!(
                    "udp: {victim}: association evicted (--max-udp-flows {} reached)",
                    sh.cfg.max_flows
                );
            }
        }
        let state = Arc::new(FlowState::default());
        state.last_used.store(now, Ordering::Relaxed);
        if sh.reserve(&state, cost).is_none() {
            inc(&sh.stats.dropped_queue_full);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(out);
        let (evict_tx, evict_rx) = oneshot::channel();
        table.next_id += 1;
        let id = table.next_id;
        table.flows.insert(
            local,
            FlowHandle {
                id,
                tx,
                state: state.clone(),
                _evict: evict_tx,
            },
        );
        drop(table);
        inc(&sh.stats.flows_opened);
        let flow = Flow {
            local,
            id,
            rx,
            evicted: evict_rx,
            state,
        };
        sh.rt.spawn(run_flow(sh.clone(), flow));
    }

    fn answer_dns(&self, dns: Arc<Dns>, client: SocketAddr, server: SocketAddr, query: Vec<u8>) {
        let sh = self.shared.clone();
        let Ok(slot) = sh.dns_slots.clone().try_acquire_owned() else {
            inc(&sh.stats.dropped_other);
            tracing::debug!("udp: too many DNS queries in flight, {client} dropped");
            return;
        };
        sh.rt.clone().spawn(async move {
            let hdr = if client.is_ipv4() {
                IPV4_HEADER
            } else {
                IPV6_HEADER
            } + UDP_HEADER;
            let limit = sh.cfg.mtu.saturating_sub(hdr);
            if let Some(resp) = dns.answer(&query, Some(limit)).await {
                match build_udp(server, client, &resp, sh.cfg.mtu) {
                    Ok(p) => {
                        inc(&sh.stats.dns_answered);
                        sh.tun.send(&p);
                    }
                    Err(_) => sh.drop_oversize("DNS answer", resp.len()),
                }
            }
            drop(slot);
        });
    }
}

impl UdpHandler for UdpRelay {
    fn on_packet(&self, packet: &[u8]) {
        self.handle_packet(packet)
    }
}
