//! What the table and the association tasks share: settings, counters,
//! the queues' byte budgets, the backoffs, and the table itself.

use super::dnsmux::DnsMux;
use super::fast::FastPath;
use crate::dns::pool::PoolPin;
use crate::dns::Dns;
use crate::socks::TargetAddr;
use crate::stack::PacketSink;
use crate::tun::route::{Router, Way};
use crate::upstream::Upstream;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Largest UDP payload over IPv4 (65535 - 20 - 8); also the cap towards the relay.
pub(super) const MAX_UDP_PAYLOAD: usize = 65_507;
/// Idle timeout of an association that only carried DNS (port 53): a query
/// and its answer, nothing follows.
pub const DNS_UDP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a proxy said it has no UDP ASSOCIATE, do not ask again for this long.
pub(super) const UNSUPPORTED_BACKOFF: Duration = Duration::from_secs(60);
/// Bytes queued towards one live association: room for a burst (the bench
/// lost datagrams at 50k pps with a 64-datagram queue), bounded by bytes so
/// small and large datagrams cost what they weigh.
pub(super) const FLOW_QUEUE_BYTES: usize = 256 * 1024;
/// Bytes queued towards one association while it is being set up: a proxy
/// that does not answer must not make every flow hold a full queue.
pub(super) const CONNECTING_QUEUE_BYTES: usize = 16 * 1024;
/// Bytes queued towards all associations together.
pub(super) const TOTAL_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// What a queued datagram costs beyond its payload (the `Out`, the allocation).
pub(super) const QUEUE_OVERHEAD: usize = 64;
/// After a failed UDP ASSOCIATE no new one is tried for this long, doubling
/// on each further failure up to `FAILED_BACKOFF_MAX`: a proxy that is down,
/// refuses or rejects our credentials must not get a connection per datagram.
pub(super) const FAILED_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub(super) const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Fake destinations one association remembers for mapping replies back.
pub(super) const MAX_FAKE_DESTS: usize = 64;
/// IP destinations one association remembers: replies from them are passed
/// through unchanged, never mistaken for replies to a fake destination.
pub(super) const MAX_IP_DESTS: usize = 1024;

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
    /// Refused by a `block` rule (answered with ICMP port unreachable).
    pub blocked: AtomicU64,
    pub flows_opened: AtomicU64,
    pub flows_evicted: AtomicU64,
}

pub(super) fn inc(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// Concurrent in-process DNS answers (each may wait on the proxy).
pub(super) const MAX_DNS_INFLIGHT: usize = 256;

pub(super) struct Out {
    /// As the application addressed it (a fake address stays fake here).
    pub(super) dst: SocketAddr,
    pub(super) target: TargetAddr,
    pub(super) pin: Option<Arc<PoolPin>>,
    pub(super) payload: Vec<u8>,
    /// The rule that chose the way (None without rules), for the log line.
    pub(super) rule: Option<Arc<str>>,
}

impl Out {
    pub(super) fn cost(&self) -> usize {
        self.payload.len() + QUEUE_OVERHEAD
    }
}

/// Shared between the table and the task of one association; `/flows`
/// reads it at scrape time (`UdpRelay::snapshot`).
#[derive(Default)]
pub(super) struct FlowState {
    /// Milliseconds since the relay started, when the association was opened.
    pub(super) opened_ms: u64,
    /// Datagrams and payload bytes relayed: out (to the proxy), in (back).
    pub(super) n_out: AtomicU64,
    pub(super) b_out: AtomicU64,
    pub(super) n_in: AtomicU64,
    pub(super) b_in: AtomicU64,
    /// The first destination relayed to, as the application addressed it,
    /// and the name behind it when that is a fake address. Set once.
    pub(super) first: OnceLock<(SocketAddr, Option<String>)>,
    /// The proxy of the current association; locked once per UDP ASSOCIATE
    /// and per scrape, never per datagram.
    pub(super) via: Mutex<Option<Arc<str>>>,
    /// Milliseconds since the relay started, at the last datagram either way.
    pub(super) last_used: AtomicU64,
    /// Bytes in the queue (`Out::cost`).
    pub(super) queued: AtomicUsize,
    /// Associated: the queue may hold `FLOW_QUEUE_BYTES`, else `CONNECTING_QUEUE_BYTES`.
    pub(super) live: AtomicBool,
}

impl FlowState {
    pub(super) fn via(&self) -> Option<Arc<str>> {
        self.via.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_via(&self, via: Arc<str>) {
        *self.via.lock().unwrap_or_else(|p| p.into_inner()) = Some(via);
    }

    /// One datagram of `len` payload bytes relayed (`out`: to the proxy).
    pub(super) fn count(&self, out: bool, len: usize) {
        let (n, b) = if out {
            (&self.n_out, &self.b_out)
        } else {
            (&self.n_in, &self.b_in)
        };
        n.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(len as u64, Ordering::Relaxed);
    }
}

pub(super) struct FlowHandle {
    pub(super) id: u64,
    /// Unbounded: `FlowState::queued` and `Shared::queued` bound it by bytes.
    pub(super) tx: mpsc::UnboundedSender<Out>,
    pub(super) state: Arc<FlowState>,
    /// Dropped with the handle: tells the task it was evicted, even while it
    /// is still setting up its association.
    pub(super) _evict: oneshot::Sender<()>,
    /// Set by the task while its association is live (`fast.rs`).
    pub(super) fast: Option<FastPath>,
}

/// Which way an association goes: through `--proxy`'s upstream (None) or a
/// named group's, or direct.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum WayKey {
    Proxy(Option<Arc<str>>),
    Direct,
    /// The association DNS queries of every endpoint share on that proxy
    /// way (`dnsmux.rs`).
    DnsMux(Option<Arc<str>>),
}

/// An association's key: the application's endpoint, and its way (one
/// endpoint may have several: rules choose per destination).
pub(super) type Key = (SocketAddr, WayKey);

/// A pair's way: when it was decided (ms since the epoch), the name behind a
/// fake destination then, and the way.
pub(super) type KnownWay = (u64, Option<Box<str>>, Way);

/// Ways remembered, valid for the router's `generation`.
#[derive(Default)]
pub(super) struct WayCache {
    pub(super) generation: u64,
    /// (source, destination) -> its way.
    pub(super) ways: HashMap<(SocketAddr, SocketAddr), KnownWay>,
}

/// One upstream's UDP ASSOCIATE state: the backoffs after it failed or said
/// it has none (each upstream its own: one failing group must not stop
/// another's datagrams).
#[derive(Default)]
pub(super) struct Backoff {
    pub(super) unsupported_logged: AtomicBool,
    /// `epoch`-relative millisecond until which UDP is not even tried (0: try).
    pub(super) unsupported_until: AtomicU64,
    /// `epoch`-relative millisecond until which no UDP ASSOCIATE is tried
    /// after a failure (0: try), and the failures in a row behind it.
    pub(super) failed_until: AtomicU64,
    pub(super) failed_streak: AtomicU32,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) flows: HashMap<Key, FlowHandle>,
    pub(super) next_id: u64,
}

pub(super) struct Shared {
    pub(super) cfg: UdpConfig,
    pub(super) dns: Option<Arc<Dns>>,
    pub(super) upstream: Arc<dyn Upstream>,
    /// The rules; None: everything through the upstream.
    pub(super) router: Option<Arc<Router>>,
    pub(super) tun: Arc<dyn PacketSink>,
    pub(super) table: Mutex<Table>,
    pub(super) stats: Arc<UdpStats>,
    pub(super) epoch: Instant,
    /// `--proxy`'s backoffs, and each named group's (made on first use).
    pub(super) backoff: Arc<Backoff>,
    pub(super) group_backoffs: Mutex<HashMap<Arc<str>, Arc<Backoff>>>,
    /// Bytes queued towards all associations.
    pub(super) queued: AtomicUsize,
    pub(super) oversize_logged: AtomicBool,
    /// (source, destination) pairs whose block was logged (once per flow;
    /// forgotten all at once when full).
    pub(super) blocked_logged: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
    /// The ways of recent (source, destination) pairs (`UdpRelay::way_of`).
    pub(super) ways: Mutex<WayCache>,
    pub(super) dns_slots: Arc<tokio::sync::Semaphore>,
    /// Who asked the DNS queries that share an association.
    pub(super) dns_mux: DnsMux,
    /// The names behind fake destinations, so that a datagram does not lock
    /// the device-wide fake pool.
    pub(super) names: Mutex<super::names::Names>,
    pub(super) rt: tokio::runtime::Handle,
}

impl Drop for Shared {
    /// The totals, once, when TUN mode stops.
    fn drop(&mut self) {
        let st = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            "udp: {} associations ({} evicted), {} datagrams out, {} in, {} DNS answers; dropped: {} oversize, {} no UDP ASSOCIATE, {} UDP ASSOCIATE failing, {} queue full, {} blocked, {} other",
            get(&st.flows_opened),
            get(&st.flows_evicted),
            get(&st.datagrams_out),
            get(&st.datagrams_in),
            get(&st.dns_answered),
            get(&st.dropped_oversize),
            get(&st.dropped_unsupported),
            get(&st.dropped_backoff),
            get(&st.dropped_queue_full),
            get(&st.blocked),
            get(&st.dropped_other),
        );
    }
}

impl Shared {
    pub(super) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn names(&self) -> MutexGuard<'_, super::names::Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn drop_oversize(&self, what: &str, len: usize) {
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
    /// The backoffs of the way `group` names (None: `--proxy`'s).
    pub(super) fn backoff_of(&self, group: Option<&Arc<str>>) -> Arc<Backoff> {
        match group {
            None => self.backoff.clone(),
            Some(g) => {
                let mut m = self
                    .group_backoffs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                m.entry(g.clone()).or_default().clone()
            }
        }
    }

    pub(super) fn mark_failed(&self, b: &Backoff) -> Duration {
        let now = self.now_ms();
        let until = b.failed_until.load(Ordering::Relaxed);
        if now < until {
            return Duration::from_millis(until - now);
        }
        let streak = b.failed_streak.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = FAILED_BACKOFF_MIN
            .saturating_mul(1 << streak)
            .min(FAILED_BACKOFF_MAX);
        b.failed_until
            .store(now + backoff.as_millis() as u64, Ordering::Relaxed);
        backoff
    }

    pub(super) fn mark_associated(&self, b: &Backoff) {
        b.failed_streak.store(0, Ordering::Relaxed);
        b.failed_until.store(0, Ordering::Relaxed);
    }

    /// Take `cost` bytes of queue room for a flow, or None when full.
    pub(super) fn reserve(&self, st: &FlowState, cost: usize) -> Option<()> {
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

    pub(super) fn release(&self, st: &FlowState, cost: usize) {
        st.queued.fetch_sub(cost, Ordering::Relaxed);
        self.queued.fetch_sub(cost, Ordering::Relaxed);
    }

    pub(super) fn mark_unsupported(&self, b: &Backoff) {
        b.unsupported_until.store(
            self.now_ms() + UNSUPPORTED_BACKOFF.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !b.unsupported_logged.swap(true, Ordering::Relaxed) {
            let dns = match self.dns.as_ref().map(|d| d.mode()) {
                Some(m) if m != crate::dns::DnsMode::Udp => format!("DNS still works ({m} mode)"),
                _ => "DNS over UDP fails too (use --dns virtual or tcp)".to_string(),
            };
            tracing::warn!("udp: the upstream proxy does not support UDP ASSOCIATE (reply 0x07): UDP through the TUN is dropped; {dns}");
        }
    }
}
