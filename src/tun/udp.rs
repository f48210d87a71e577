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

use crate::dns::pool::PoolPin;
use crate::dns::Dns;
use crate::socks::codec;
use crate::socks::TargetAddr;
use crate::stack::{TunWriter, UdpHandler};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
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

// ---------------------------------------------------------------------------
// IP/UDP packets

/// One UDP datagram read from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Not a well-formed IPv4/IPv6 packet with a UDP header.
    Malformed,
    /// Another protocol, or IPv6 extension headers before UDP.
    NotUdp,
    /// An IPv4 fragment: ports are only in the first, and we do not reassemble.
    Fragment,
    /// Bad IP header or UDP checksum, or destination port 0 (RFC 768).
    Invalid,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketError::Malformed => "malformed packet",
            PacketError::NotUdp => "not UDP",
            PacketError::Fragment => "IPv4 fragment",
            PacketError::Invalid => "bad checksum or port",
        })
    }
}

impl std::error::Error for PacketError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The packet would exceed the MTU: dropped, never truncated.
    TooBig,
    /// Source and destination of different families.
    FamilyMismatch,
}

/// Parse a UDP packet read from the TUN, checksums verified.
pub fn parse_udp(pkt: &[u8]) -> Result<Datagram<'_>, PacketError> {
    let caps = ChecksumCapabilities::default();
    let (src, dst, payload) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt).map_err(|_| PacketError::Malformed)?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(PacketError::Fragment);
            }
            let repr = Ipv4Repr::parse(&ip, &caps).map_err(|_| PacketError::Invalid)?;
            if repr.next_header != IpProtocol::Udp {
                return Err(PacketError::NotUdp);
            }
            (
                IpAddr::V4(repr.src_addr),
                IpAddr::V4(repr.dst_addr),
                ip.payload(),
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(pkt).map_err(|_| PacketError::Malformed)?;
            let repr = Ipv6Repr::parse(&ip).map_err(|_| PacketError::Malformed)?;
            if repr.next_header != IpProtocol::Udp {
                return Err(PacketError::NotUdp);
            }
            (
                IpAddr::V6(repr.src_addr),
                IpAddr::V6(repr.dst_addr),
                ip.payload(),
            )
        }
        _ => return Err(PacketError::Malformed),
    };
    let udp = UdpPacket::new_checked(payload).map_err(|_| PacketError::Malformed)?;
    let repr = UdpRepr::parse(&udp, &IpAddress::from(src), &IpAddress::from(dst), &caps)
        .map_err(|_| PacketError::Invalid)?;
    Ok(Datagram {
        src: SocketAddr::new(src, repr.src_port),
        dst: SocketAddr::new(dst, repr.dst_port),
        payload: udp.payload(),
    })
}

/// Build an IP/UDP packet with valid checksums, at most `mtu` bytes long.
pub fn build_udp(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    mtu: usize,
) -> Result<Vec<u8>, BuildError> {
    let caps = ChecksumCapabilities::default();
    let udp_len = UDP_HEADER + payload.len();
    let hdr = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => IPV4_HEADER,
        (IpAddr::V6(_), IpAddr::V6(_)) => IPV6_HEADER,
        _ => return Err(BuildError::FamilyMismatch),
    };
    // IPv4 total length and the UDP length field are both 16 bits.
    if hdr + udp_len > mtu || hdr + udp_len > u16::MAX as usize {
        return Err(BuildError::TooBig);
    }
    let mut buf = vec![0u8; hdr + udp_len];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut buf[..])),
        _ => return Err(BuildError::FamilyMismatch),
    }
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut buf[hdr..]),
        &IpAddress::from(src.ip()),
        &IpAddress::from(dst.ip()),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &caps,
    );
    Ok(buf)
}

/// A reply source in the family of the local endpoint it goes to: IPv4-mapped
/// IPv6 becomes IPv4, IPv4 towards an IPv6 endpoint becomes IPv4-mapped.
fn same_family(src: SocketAddr, local: SocketAddr) -> SocketAddr {
    let ip = match (codec::unmap(src.ip()), local.ip()) {
        (IpAddr::V4(a), IpAddr::V6(_)) => IpAddr::V6(a.to_ipv6_mapped()),
        (ip, _) => ip,
    };
    SocketAddr::new(ip, src.port())
}

// ---------------------------------------------------------------------------
// Seams: the TUN writer and the SOCKS5 UDP ASSOCIATE dialer

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A live UDP ASSOCIATE: the control connection that keeps it alive, the
/// relay address datagrams go to (never 0.0.0.0 / ::), our socket.
pub struct Association {
    pub control: TcpStream,
    pub relay: SocketAddr,
    pub socket: UdpSocket,
}

#[derive(Debug)]
pub enum AssociateError {
    /// The proxy answered "command not supported" (0x07).
    Unsupported,
    /// Anything else (proxy down, refused, auth): the flow ends with its
    /// queue, and no association is tried for a while (exponential backoff).
    Failed(String),
}

/// Opens UDP ASSOCIATE associations at the upstream proxy.
pub trait Associator: Send + Sync + 'static {
    fn associate(&self) -> BoxFuture<'_, Result<Association, AssociateError>>;
}

/// UDP ASSOCIATE at the configured upstream (`crate::socks::client`).
pub struct SocksAssociator(pub Arc<crate::socks::client::Proxy>);

impl Associator for SocksAssociator {
    fn associate(&self) -> BoxFuture<'_, Result<Association, AssociateError>> {
        use crate::socks::client::{udp_associate, DialError};
        Box::pin(async move {
            match udp_associate(&self.0).await {
                Ok(a) => Ok(Association {
                    control: a.control,
                    relay: a.relay,
                    socket: a.socket,
                }),
                Err(DialError::CommandNotSupported) => Err(AssociateError::Unsupported),
                Err(e) => Err(AssociateError::Failed(e.to_string())),
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The association table

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
    associator: Arc<dyn Associator>,
    tun: TunWriter,
    table: Mutex<Table>,
    stats: UdpStats,
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
        associator: Arc<dyn Associator>,
        tun: TunWriter,
    ) -> UdpRelay {
        UdpRelay {
            shared: Arc::new(Shared {
                cfg,
                dns,
                associator,
                tun,
                table: Mutex::new(Table::default()),
                stats: UdpStats::default(),
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
        let mut out = Out {
            dst: d.dst,
            target,
            pin,
            payload: d.payload.to_vec(),
        };
        let cost = out.cost();
        let mut table = sh.table();
        if let Some(h) = table.flows.get(&d.src) {
            h.state.last_used.store(now, Ordering::Relaxed);
            if sh.reserve(&h.state, cost).is_none() {
                inc(&sh.stats.dropped_queue_full);
                tracing::debug!("udp: {}: queue full, datagram dropped", d.src);
                return;
            }
            match h.tx.send(out) {
                Ok(()) => return,
                Err(mpsc::error::SendError(o)) => {
                    // The task ended (idle or no UDP ASSOCIATE) and has not
                    // removed itself yet: start afresh.
                    sh.release(&h.state, cost);
                    out = o;
                    table.flows.remove(&d.src);
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
            d.src,
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
            local: d.src,
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

/// A fake destination an association sent to, kept pinned while it lives.
struct FakeDest {
    fake: SocketAddr,
    name: String,
    port: u16,
    /// The address the proxy resolved the name to, once a reply told us.
    resolved: Option<IpAddr>,
    _pin: Option<PoolPin>,
}

/// The relay socket of a live association and the relay's address.
struct Live {
    relay: SocketAddr,
    socket: UdpSocket,
}

/// What the task of one association gets from the table.
struct Flow {
    local: SocketAddr,
    id: u64,
    rx: mpsc::UnboundedReceiver<Out>,
    evicted: oneshot::Receiver<()>,
    state: Arc<FlowState>,
}

/// Gives the queue room of the datagrams still queued back when the task
/// ends, however it ends.
struct QueueGuard {
    sh: Arc<Shared>,
    state: Arc<FlowState>,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let left = self.state.queued.swap(0, Ordering::Relaxed);
        self.sh.queued.fetch_sub(left, Ordering::Relaxed);
    }
}

async fn run_flow(sh: Arc<Shared>, flow: Flow) {
    let Flow {
        local,
        id,
        mut rx,
        mut evicted,
        state,
    } = flow;
    let _guard = QueueGuard {
        sh: sh.clone(),
        state: state.clone(),
    };
    let started = Instant::now();
    // Both Some while associated; the control connection is apart so both can be awaited at once.
    let mut live: Option<Live> = None;
    let mut control: Option<TcpStream> = None;
    let mut fakes: Vec<FakeDest> = Vec::new();
    // Unmapped, as the proxy's replies are compared.
    let mut ip_dsts: HashSet<SocketAddr> = HashSet::new();
    let mut dns_only = true;
    let (mut n_out, mut b_out, mut n_in, mut b_in) = (0u64, 0u64, 0u64, 0u64);
    // For the log line: the first destination and how many others (up to a cap).
    let mut first_dst: Option<TargetAddr> = None;
    let mut other_dsts: Vec<TargetAddr> = Vec::new();
    // Room for the largest SOCKS header (domain: 3 + 1 + 1 + 255 + 2) and an
    // MTU's worth of payload, plus one byte to tell a datagram that did not fit.
    let mut buf = vec![0u8; sh.cfg.mtu + 263];
    let mut pkt = Vec::with_capacity(sh.cfg.mtu + 263);
    let mut last_activity = Instant::now();
    let outcome: String = loop {
        let idle = if dns_only {
            sh.cfg.timeout.min(DNS_UDP_TIMEOUT)
        } else {
            sh.cfg.timeout
        };
        let recv = async {
            match &live {
                Some(l) => l.socket.recv_from(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        let mut probe = [0u8; 64];
        let ctrl = async {
            match control.as_mut() {
                Some(c) => c.read(&mut probe).await,
                None => std::future::pending().await,
            }
        };
        enum Ev {
            Out(Option<Out>),
            In(io::Result<(usize, SocketAddr)>),
            Ctrl(io::Result<usize>),
            Idle,
        }
        let ev = tokio::select! {
            _ = &mut evicted => Ev::Out(None),
            o = rx.recv() => Ev::Out(o),
            r = recv => Ev::In(r),
            c = ctrl => Ev::Ctrl(c),
            _ = tokio::time::sleep_until(last_activity + idle) => Ev::Idle,
        };
        match ev {
            Ev::Idle => break "idle".into(),
            Ev::Out(None) => break "evicted".into(),
            Ev::Ctrl(Ok(n)) if n > 0 => {} // nothing is expected; ignore
            Ev::Ctrl(r) => {
                tracing::debug!("udp {local}: control connection ended ({r:?}); re-established on the next datagram");
                live = None;
                control = None;
                state.live.store(false, Ordering::Relaxed);
            }
            Ev::Out(Some(o)) => {
                sh.release(&state, o.cost());
                last_activity = Instant::now();
                if o.dst.port() != 53 {
                    dns_only = false;
                }
                if let TargetAddr::Ip(a) = &o.target {
                    let a = SocketAddr::new(codec::unmap(a.ip()), a.port());
                    if ip_dsts.len() >= MAX_IP_DESTS && !ip_dsts.contains(&a) {
                        if let Some(old) = ip_dsts.iter().next().copied() {
                            ip_dsts.remove(&old);
                        }
                    }
                    ip_dsts.insert(a);
                }
                if let TargetAddr::Domain(name, port) = &o.target {
                    if !fakes.iter().any(|f| f.fake == o.dst) {
                        if fakes.len() >= MAX_FAKE_DESTS {
                            fakes.remove(0);
                        }
                        fakes.push(FakeDest {
                            fake: o.dst,
                            name: name.clone(),
                            port: *port,
                            resolved: None,
                            _pin: o.pin,
                        });
                    }
                }
                if live.is_none() {
                    // Evicted while the proxy is still answering: give the slot up at once.
                    let assoc = tokio::select! {
                        a = sh.associator.associate() => a,
                        _ = &mut evicted => break "evicted".into(),
                    };
                    match assoc {
                        Ok(a) => {
                            tracing::debug!("udp {local}: associated, relay {}", a.relay);
                            sh.mark_associated();
                            state.live.store(true, Ordering::Relaxed);
                            live = Some(Live {
                                relay: a.relay,
                                socket: a.socket,
                            });
                            control = Some(a.control);
                        }
                        Err(AssociateError::Unsupported) => {
                            inc(&sh.stats.dropped_unsupported);
                            sh.mark_unsupported();
                            break "proxy has no UDP ASSOCIATE".into();
                        }
                        Err(AssociateError::Failed(e)) => {
                            // The task ends and its queue goes with it: what
                            // arrives during the backoff is dropped up front.
                            let backoff = sh.mark_failed();
                            inc(&sh.stats.dropped_backoff);
                            let mut n = 0;
                            while rx.try_recv().is_ok() {
                                inc(&sh.stats.dropped_backoff);
                                n += 1;
                            }
                            tracing::debug!("udp {local}: UDP ASSOCIATE failed: {e}; {n} queued datagrams dropped, none tried for {backoff:?}");
                            break format!("UDP ASSOCIATE failed: {e}");
                        }
                    }
                }
                let Some(l) = &live else { continue };
                pkt.clear();
                if codec::encode_udp_header(&o.target, &mut pkt).is_err() {
                    inc(&sh.stats.dropped_other);
                    continue;
                }
                pkt.extend_from_slice(&o.payload);
                match l.socket.send_to(&pkt, l.relay).await {
                    Ok(_) => {
                        n_out += 1;
                        b_out += o.payload.len() as u64;
                        inc(&sh.stats.datagrams_out);
                        match &first_dst {
                            None => first_dst = Some(o.target),
                            Some(f) if *f != o.target && other_dsts.len() < MAX_FAKE_DESTS => {
                                if !other_dsts.contains(&o.target) {
                                    other_dsts.push(o.target);
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    Err(e) => {
                        inc(&sh.stats.dropped_other);
                        tracing::debug!("udp {local}: send to relay {}: {e}", l.relay);
                    }
                }
            }
            Ev::In(Err(e)) => {
                // ICMP errors from the relay (port unreachable) land here.
                tracing::debug!("udp {local}: relay socket: {e}");
            }
            Ev::In(Ok((n, from))) => {
                let Some(l) = &live else { continue };
                if codec::unmap(from.ip()) != codec::unmap(l.relay.ip())
                    || from.port() != l.relay.port()
                {
                    inc(&sh.stats.dropped_other);
                    continue;
                }
                let hdr = match codec::parse_udp_header(&buf[..n]) {
                    Ok(h) if h.frag == 0 => h,
                    _ => {
                        // RFC 1928 §7: fragments we do not reassemble are dropped.
                        inc(&sh.stats.dropped_other);
                        continue;
                    }
                };
                let payload_len = n - hdr.header_len;
                if n == buf.len() {
                    sh.drop_oversize("from the proxy", payload_len);
                    continue;
                }
                let Some(src) = reply_source(&hdr.addr, &mut fakes, &ip_dsts, local) else {
                    inc(&sh.stats.dropped_other);
                    tracing::debug!("udp {local}: reply from {} dropped: no name it answers for, or several names on that port wait for an address", hdr.addr);
                    continue;
                };
                last_activity = Instant::now();
                state.last_used.store(sh.now_ms(), Ordering::Relaxed);
                match build_udp(src, local, &buf[hdr.header_len..n], sh.cfg.mtu) {
                    Ok(p) => {
                        n_in += 1;
                        b_in += payload_len as u64;
                        inc(&sh.stats.datagrams_in);
                        sh.tun.send(&p);
                    }
                    Err(BuildError::TooBig) => sh.drop_oversize("from the proxy", payload_len),
                    Err(BuildError::FamilyMismatch) => {
                        inc(&sh.stats.dropped_other);
                    }
                }
            }
        }
    };
    {
        let mut t = sh.table();
        if t.flows.get(&local).is_some_and(|h| h.id == id) {
            t.flows.remove(&local);
        }
    }
    let to = match (&first_dst, other_dsts.len()) {
        (None, _) => "-".to_string(),
        (Some(f), 0) => f.to_string(),
        (Some(f), n) => format!("{f} (+{n} more)"),
    };
    tracing::info!(
        "udp {local} -> {to}: {n_out} datagrams ({b_out} bytes) out, {n_in} ({b_in} bytes) in, {:.1}s, {outcome}",
        started.elapsed().as_secs_f64()
    );
}

/// The source address a reply must carry so the application recognises it
/// (a connected socket drops anything else), None to drop it.
///
/// A reply naming a domain comes from the fake address of that name. A reply
/// naming an address (the proxy resolved the name) comes from:
/// - that address, if the endpoint sent to it by address;
/// - the fake address whose name the proxy resolved to it, learnt from an
///   earlier reply;
/// - the one fake destination on that port still without a learnt address
///   (and it is learnt now); when several wait, which one the reply is for
///   cannot be told, and the reply is dropped rather than given a wrong source;
/// - else the address itself (full cone: a remote the endpoint never sent to).
fn reply_source(
    from: &TargetAddr,
    fakes: &mut [FakeDest],
    ip_dsts: &HashSet<SocketAddr>,
    local: SocketAddr,
) -> Option<SocketAddr> {
    match from {
        TargetAddr::Domain(name, port) => fakes
            .iter()
            .rev()
            .find(|f| f.port == *port && f.name.eq_ignore_ascii_case(name))
            .map(|f| f.fake),
        TargetAddr::Ip(a) => {
            let a = SocketAddr::new(codec::unmap(a.ip()), a.port());
            let src = if ip_dsts.contains(&a) {
                a
            } else if let Some(f) = fakes
                .iter()
                .rev()
                .find(|f| f.port == a.port() && f.resolved == Some(a.ip()))
            {
                f.fake
            } else {
                let mut waiting = fakes
                    .iter_mut()
                    .filter(|f| f.port == a.port() && f.resolved.is_none());
                match (waiting.next(), waiting.next()) {
                    (None, _) => a,
                    (Some(f), None) => {
                        f.resolved = Some(a.ip());
                        f.fake
                    }
                    (Some(_), Some(_)) => return None,
                }
            };
            Some(same_family(src, local))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn build_then_parse_v4_and_v6() {
        for (src, dst) in [
            ("203.0.113.2:7", "198.18.0.1:40000"),
            ("[2001:db8:2::2]:7", "[fc00:1::1]:40000"),
        ] {
            let p = build_udp(sa(src), sa(dst), b"hello", 1500).unwrap();
            let d = parse_udp(&p).unwrap();
            assert_eq!((d.src, d.dst, d.payload), (sa(src), sa(dst), &b"hello"[..]));
        }
    }

    #[test]
    fn checksums_are_verified() {
        let mut p = build_udp(sa("203.0.113.2:7"), sa("198.18.0.1:9"), b"hello", 1500).unwrap();
        // RFC 768: the checksum is not 0 (0 means "none" over IPv4).
        assert_ne!(&p[26..28], &[0, 0]);
        let last = p.len() - 1;
        p[last] ^= 1;
        assert_eq!(parse_udp(&p), Err(PacketError::Invalid));
        let mut p6 =
            build_udp(sa("[2001:db8::1]:7"), sa("[2001:db8::2]:9"), b"hello", 1500).unwrap();
        let last = p6.len() - 1;
        p6[last] ^= 1;
        assert_eq!(parse_udp(&p6), Err(PacketError::Invalid));
        // IPv4 header checksum.
        let mut p = build_udp(sa("203.0.113.2:7"), sa("198.18.0.1:9"), b"x", 1500).unwrap();
        p[8] ^= 1;
        assert_eq!(parse_udp(&p), Err(PacketError::Invalid));
    }

    #[test]
    fn never_truncates() {
        let payload = vec![7u8; 1472];
        assert!(build_udp(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &payload, 1500).is_ok());
        let payload = vec![7u8; 1473];
        assert_eq!(
            build_udp(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &payload, 1500),
            Err(BuildError::TooBig)
        );
        let payload = vec![7u8; 1453];
        assert_eq!(
            build_udp(sa("[::1]:1"), sa("[::2]:2"), &payload, 1500),
            Err(BuildError::TooBig)
        );
        assert_eq!(
            build_udp(sa("1.2.3.4:1"), sa("[::2]:2"), b"", 1500),
            Err(BuildError::FamilyMismatch)
        );
    }

    #[test]
    fn rejects_what_is_not_plain_udp() {
        let mut p = build_udp(sa("203.0.113.2:7"), sa("198.18.0.1:9"), b"hello", 1500).unwrap();
        assert_eq!(parse_udp(&p[..10]), Err(PacketError::Malformed));
        assert_eq!(parse_udp(&p[..24]), Err(PacketError::Malformed));
        assert_eq!(parse_udp(&[]), Err(PacketError::Malformed));
        // More-fragments flag.
        p[6] |= 0x20;
        assert_eq!(parse_udp(&p), Err(PacketError::Fragment));
        // TCP.
        let mut t = build_udp(sa("[::1]:7"), sa("[::2]:9"), b"x", 1500).unwrap();
        t[6] = 6;
        assert_eq!(parse_udp(&t), Err(PacketError::NotUdp));
        // Port 0 destination (RFC 768 allows only the source to be 0).
        let z = build_udp(sa("1.2.3.4:7"), sa("5.6.7.8:0"), b"x", 1500).unwrap();
        assert_eq!(parse_udp(&z), Err(PacketError::Invalid));
        // Fuzz: truncations and bit flips never panic.
        let base = build_udp(
            sa("[2001:db8::1]:7"),
            sa("[2001:db8::2]:9"),
            b"hello world",
            1500,
        )
        .unwrap();
        for i in 0..base.len() {
            let _ = parse_udp(&base[..i]);
            for bit in 0..8 {
                let mut m = base.clone();
                m[i] ^= 1 << bit;
                let _ = parse_udp(&m);
            }
        }
    }

    fn fake(fake: &str, name: &str, port: u16) -> FakeDest {
        FakeDest {
            fake: sa(fake),
            name: name.into(),
            port,
            resolved: None,
            _pin: None,
        }
    }

    #[test]
    fn reply_sources() {
        let local = sa("198.18.0.1:5000");
        let none = HashSet::new();
        let mut fakes = vec![fake("198.19.0.1:7", "echo.test", 7)];
        // A name the application reached through a fake address.
        assert_eq!(
            reply_source(
                &TargetAddr::Domain("Echo.Test".into(), 7),
                &mut fakes,
                &none,
                local
            ),
            Some(sa("198.19.0.1:7"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Domain("other.test".into(), 7),
                &mut fakes,
                &none,
                local
            ),
            None
        );
        // The resolved address of that name, on the same port.
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.2:7")),
                &mut fakes,
                &none,
                local
            ),
            Some(sa("198.19.0.1:7"))
        );
        // Any other remote: as it is (full cone), mapped into the endpoint's family.
        assert_eq!(
            reply_source(&TargetAddr::Ip(sa("203.0.113.9:9")), &mut [], &none, local),
            Some(sa("203.0.113.9:9"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("[::ffff:203.0.113.9]:9")),
                &mut [],
                &none,
                local
            ),
            Some(sa("203.0.113.9:9"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.9:9")),
                &mut [],
                &none,
                sa("[fc00::1]:5")
            ),
            Some(sa("[::ffff:203.0.113.9]:9"))
        );
    }

    /// Two names on one port: each reply keeps the source of its own name.
    #[test]
    fn reply_sources_two_names_same_port() {
        let local = sa("198.18.0.1:5000");
        let none = HashSet::new();
        let (ip1, ip2) = (
            TargetAddr::Ip(sa("203.0.113.1:3478")),
            TargetAddr::Ip(sa("203.0.113.2:3478")),
        );
        // stun1 first, its reply, then stun2.
        let mut fakes = vec![fake("198.19.0.1:3478", "stun1.test", 3478)];
        assert_eq!(
            reply_source(&ip1, &mut fakes, &none, local),
            Some(sa("198.19.0.1:3478"))
        );
        fakes.push(fake("198.19.0.2:3478", "stun2.test", 3478));
        assert_eq!(
            reply_source(&ip2, &mut fakes, &none, local),
            Some(sa("198.19.0.2:3478"))
        );
        // stun1 again: not the most recent fake destination on that port.
        assert_eq!(
            reply_source(&ip1, &mut fakes, &none, local),
            Some(sa("198.19.0.1:3478"))
        );
        assert_eq!(
            reply_source(&ip2, &mut fakes, &none, local),
            Some(sa("198.19.0.2:3478"))
        );
        // Both sent before any reply: which name 203.0.113.1 answers for
        // cannot be told, so it is dropped rather than mislabelled.
        let mut fakes = vec![
            fake("198.19.0.1:3478", "stun1.test", 3478),
            fake("198.19.0.2:3478", "stun2.test", 3478),
        ];
        assert_eq!(reply_source(&ip1, &mut fakes, &none, local), None);
        // A name's reply naming the domain is always unambiguous.
        assert_eq!(
            reply_source(
                &TargetAddr::Domain("stun1.test".into(), 3478),
                &mut fakes,
                &none,
                local
            ),
            Some(sa("198.19.0.1:3478"))
        );
    }

    /// An address the application sent to by IP keeps its own source even
    /// when a name on the same port waits for replies.
    #[test]
    fn reply_sources_ip_destination_passes_through() {
        let local = sa("198.18.0.1:5000");
        let ip_dsts: HashSet<SocketAddr> = [sa("203.0.113.9:3478")].into();
        let mut fakes = vec![fake("198.19.0.1:3478", "stun.test", 3478)];
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.9:3478")),
                &mut fakes,
                &ip_dsts,
                local
            ),
            Some(sa("203.0.113.9:3478"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("[::ffff:203.0.113.9]:3478")),
                &mut fakes,
                &ip_dsts,
                local
            ),
            Some(sa("203.0.113.9:3478"))
        );
        // The name's own reply still maps to its fake address.
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.5:3478")),
                &mut fakes,
                &ip_dsts,
                local
            ),
            Some(sa("198.19.0.1:3478"))
        );
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use crate::dns::pool::FakePool;
    use crate::dns::service::{BoxStream, Connector};
    use crate::dns::DnsMode;
    use crate::stack::PacketSink;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A SOCKS5 UDP relay in memory: echoes each datagram back from its
    /// destination, or answers "BIG" with 2000 bytes.
    struct FakeProxy {
        associations: AtomicUsize,
        unsupported: bool,
        /// Fail fast (refused, auth rejected).
        fail: AtomicBool,
        /// Never answer (blackholed).
        hang: bool,
        controls: Mutex<Vec<TcpStream>>,
    }

    impl Associator for FakeProxy {
        fn associate(&self) -> BoxFuture<'_, Result<Association, AssociateError>> {
            Box::pin(async move {
                self.associations.fetch_add(1, Ordering::SeqCst);
                if self.unsupported {
                    return Err(AssociateError::Unsupported);
                }
                if self.fail.load(Ordering::SeqCst) {
                    return Err(AssociateError::Failed("refused".into()));
                }
                if self.hang {
                    std::future::pending::<()>().await;
                }
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let control = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
                let (server_side, _) = l.accept().await.unwrap();
                self.controls.lock().unwrap().push(server_side);
                let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let relay_addr = relay.local_addr().unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 70000];
                    while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                        let Ok(h) = codec::parse_udp_header(&buf[..n]) else {
                            continue;
                        };
                        let mut out = Vec::new();
                        codec::encode_udp_header(&h.addr, &mut out).unwrap();
                        if &buf[h.header_len..n] == b"BIG" {
                            out.extend_from_slice(&[b'x'; 2000]);
                        } else {
                            out.extend_from_slice(&buf[h.header_len..n]);
                        }
                        let _ = relay.send_to(&out, from).await;
                    }
                });
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                Ok(Association {
                    control,
                    relay: relay_addr,
                    socket,
                })
            })
        }
    }

    #[derive(Default)]
    struct Capture {
        pkts: Mutex<Vec<Vec<u8>>>,
    }

    impl PacketSink for Capture {
        fn send(&self, pkt: &[u8]) {
            self.pkts.lock().unwrap().push(pkt.to_vec());
        }
    }

    impl Capture {
        /// Wait for `n` packets in all; returns them parsed as (src, dst, payload).
        async fn wait(&self, n: usize) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
            for _ in 0..200 {
                if self.pkts.lock().unwrap().len() >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.pkts
                .lock()
                .unwrap()
                .iter()
                .map(|p| {
                    let d = parse_udp(p).expect("valid packet with valid checksums");
                    (d.src, d.dst, d.payload.to_vec())
                })
                .collect()
        }
    }

    struct NoConnect;
    impl Connector for NoConnect {
        fn connect(
            &self,
            _t: TargetAddr,
        ) -> crate::dns::service::BoxFuture<'_, io::Result<BoxStream>> {
            Box::pin(async { Err(io::Error::other("no")) })
        }
    }

    fn relay(max: usize, unsupported: bool, dns: bool) -> (UdpRelay, Arc<FakeProxy>, Arc<Capture>) {
        relay_with(max, unsupported, dns, false, false)
    }

    fn relay_with(
        max: usize,
        unsupported: bool,
        dns: bool,
        fail: bool,
        hang: bool,
    ) -> (UdpRelay, Arc<FakeProxy>, Arc<Capture>) {
        let proxy = Arc::new(FakeProxy {
            associations: AtomicUsize::new(0),
            unsupported,
            fail: AtomicBool::new(fail),
            hang,
            controls: Mutex::new(Vec::new()),
        });
        let cap = Arc::new(Capture::default());
        let dns = dns.then(|| {
            let pool =
                Arc::new(FakePool::new("198.19.0.0/16".parse().unwrap(), None, &[]).unwrap());
            Arc::new(Dns::new(DnsMode::Virtual, None, Some(pool), Arc::new(NoConnect)).unwrap())
        });
        let cfg = UdpConfig {
            timeout: Duration::from_secs(60),
            max_flows: max,
            mtu: 1500,
        };
        (
            UdpRelay::new(cfg, dns, proxy.clone(), cap.clone()),
            proxy,
            cap,
        )
    }

    fn pkt(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        build_udp(sa(src), sa(dst), payload, 1500).unwrap()
    }

    #[tokio::test]
    async fn full_cone_one_association_many_remotes() {
        let (r, proxy, cap) = relay(16, false, false);
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"one"));
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.3:9", b"two"));
        let got = cap.wait(2).await;
        assert_eq!(got.len(), 2);
        assert!(got.contains(&(sa("203.0.113.2:7"), sa("198.18.0.1:5000"), b"one".to_vec())));
        assert!(got.contains(&(sa("203.0.113.3:9"), sa("198.18.0.1:5000"), b"two".to_vec())));
        assert_eq!(proxy.associations.load(Ordering::SeqCst), 1);
        assert_eq!(r.flows(), 1);
        // IPv6 endpoint: its own association.
        r.handle_packet(&pkt("[fc00:1::1]:5000", "[2001:db8:2::2]:7", b"six"));
        let got = cap.wait(3).await;
        assert!(got.contains(&(
            sa("[2001:db8:2::2]:7"),
            sa("[fc00:1::1]:5000"),
            b"six".to_vec()
        )));
        assert_eq!(proxy.associations.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bounded_oldest_idle_evicted() {
        let (r, _proxy, cap) = relay(3, false, false);
        for i in 0..10 {
            r.handle_packet(&pkt(
                &format!("198.18.0.1:{}", 6000 + i),
                "203.0.113.2:7",
                b"x",
            ));
            assert!(r.flows() <= 3);
            cap.wait(i + 1).await;
        }
        assert_eq!(r.stats().flows_evicted.load(Ordering::Relaxed), 7);
        assert_eq!(r.stats().flows_opened.load(Ordering::Relaxed), 10);
        // The three most recent survive.
        let t = r.shared.table();
        for i in 7..10 {
            assert!(t
                .flows
                .contains_key(&sa(&format!("198.18.0.1:{}", 6000 + i))));
        }
    }

    #[tokio::test]
    async fn dead_control_connection_is_reestablished() {
        let (r, proxy, cap) = relay(16, false, false);
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
        cap.wait(1).await;
        // The proxy closes the control connection: the association is gone.
        proxy.controls.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"b"));
        let got = cap.wait(2).await;
        assert_eq!(got.len(), 2);
        assert_eq!(proxy.associations.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_udp_associate_is_remembered() {
        let (r, proxy, cap) = relay(16, true, true);
        for p in 0..5 {
            r.handle_packet(&pkt(
                &format!("198.18.0.1:{}", 5000 + p),
                "203.0.113.2:7",
                b"a",
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            proxy.associations.load(Ordering::SeqCst),
            1,
            "asked once, then backed off"
        );
        assert_eq!(r.stats().dropped_unsupported.load(Ordering::Relaxed), 5);
        // DNS still answered.
        let q = crate::dns::message::tests::query(1, "web.test", 1);
        r.handle_packet(&pkt("198.18.0.1:5353", "203.0.113.2:53", &q));
        let got = cap.wait(1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, sa("203.0.113.2:53"));
        assert_eq!(&got[0].2[got[0].2.len() - 4..], &[198, 19, 0, 1]);
    }

    #[tokio::test]
    async fn fake_destination_goes_by_name_and_replies_from_fake() {
        let (r, _proxy, cap) = relay(16, false, true);
        let q = crate::dns::message::tests::query(1, "echo.test", 1);
        r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q));
        cap.wait(1).await;
        r.handle_packet(&pkt("198.18.0.1:5000", "198.19.0.1:7", b"hi"));
        let got = cap.wait(2).await;
        // The fake proxy echoes with the header it got: a domain; the reply comes from the fake address.
        assert_eq!(
            got[1],
            (sa("198.19.0.1:7"), sa("198.18.0.1:5000"), b"hi".to_vec())
        );
        // An address no answer handed out is dropped.
        r.handle_packet(&pkt("198.18.0.1:5000", "198.19.3.3:7", b"hi"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cap.wait(2).await.len(), 2);
    }

    #[tokio::test]
    async fn oversize_reply_dropped_and_counted() {
        let (r, _proxy, cap) = relay(16, false, false);
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"BIG"));
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"small"));
        let got = cap.wait(1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, b"small");
        assert_eq!(r.stats().dropped_oversize.load(Ordering::Relaxed), 1);
    }

    /// A minimal SOCKS5 server for UDP ASSOCIATE: replies `rep` with BND 0.0.0.0:`port`.
    async fn socks5_udp_server(rep: u8, port: u16) -> SocketAddr {
        use tokio::io::AsyncWriteExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut b = [0u8; 3];
            c.read_exact(&mut b).await.unwrap();
            c.write_all(&[5, 0]).await.unwrap();
            let mut req = [0u8; 10];
            c.read_exact(&mut req).await.unwrap();
            assert_eq!(req[1], 3, "UDP ASSOCIATE");
            let p = port.to_be_bytes();
            c.write_all(&[5, rep, 0, 1, 0, 0, 0, 0, p[0], p[1]])
                .await
                .unwrap();
            // Hold the control connection open until the client closes it.
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest).await;
        });
        addr
    }

    #[tokio::test]
    async fn socks_associator_fixes_unspecified_relay_and_maps_0x07() {
        let addr = socks5_udp_server(0, 4242).await;
        let up = crate::socks::client::Proxy::from_url(&format!("socks5://{addr}")).unwrap();
        let a = SocksAssociator(Arc::new(up)).associate().await.unwrap();
        // BND.ADDR 0.0.0.0: the relay is at the proxy's own address.
        assert_eq!(a.relay, sa("127.0.0.1:4242"));

        let addr = socks5_udp_server(7, 0).await;
        let up = crate::socks::client::Proxy::from_url(&format!("socks5://{addr}")).unwrap();
        match SocksAssociator(Arc::new(up)).associate().await {
            Err(AssociateError::Unsupported) => {}
            Err(e) => panic!("0x07 not recognised: {e:?}"),
            Ok(_) => panic!("0x07 accepted"),
        }
    }

    /// An association that only carried DNS expires sooner than others.
    #[tokio::test(start_paused = true)]
    async fn dns_only_associations_expire_sooner() {
        let (r, _proxy, cap) = relay(16, false, false);
        r.handle_packet(&pkt("198.18.0.1:5353", "203.0.113.2:53", b"q"));
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"x"));
        assert_eq!(cap.wait(2).await.len(), 2);
        assert_eq!(r.flows(), 2);
        tokio::time::sleep(DNS_UDP_TIMEOUT + Duration::from_secs(1)).await;
        assert_eq!(
            r.flows(),
            1,
            "the DNS-only association outlived {DNS_UDP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(r.flows(), 0, "the idle association outlived --udp-timeout");
    }

    #[tokio::test]
    async fn malformed_packets_dropped() {
        let (r, proxy, cap) = relay(16, false, true);
        r.handle_packet(&[0x45, 0, 0]);
        r.handle_packet(&[]);
        let mut bad = pkt("198.18.0.1:5000", "203.0.113.2:7", b"a");
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        r.handle_packet(&bad);
        // A malformed DNS query gets FORMERR, a runt nothing.
        let q = crate::dns::message::tests::query(9, "web.test", 1);
        r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q[..14]));
        r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q[..3]));
        let got = cap.wait(1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2[3] & 0xF, 1);
        assert_eq!(proxy.associations.load(Ordering::SeqCst), 0);
        assert_eq!(r.stats().dropped_other.load(Ordering::Relaxed), 3);
    }

    /// Let spawned tasks run (paused clock: only a little time passes).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A proxy that refuses: one attempt, then datagrams are dropped and
    /// counted until the backoff (1 s, then 2 s, ...) ends; not a TCP
    /// connection per datagram.
    #[tokio::test(start_paused = true)]
    async fn failed_associate_backs_off() {
        let (r, proxy, cap) = relay_with(16, false, false, true, false);
        let attempts = || proxy.associations.load(Ordering::SeqCst);
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
        settle().await;
        assert_eq!(attempts(), 1);
        assert_eq!(r.flows(), 0, "the failed flow ended");
        for i in 0..50 {
            r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
            r.handle_packet(&pkt(
                &format!("198.18.0.1:{}", 6000 + i),
                "203.0.113.2:7",
                b"a",
            ));
            settle().await;
        }
        assert_eq!(attempts(), 1, "a new UDP ASSOCIATE per datagram");
        assert_eq!(r.flows(), 0);
        assert_eq!(r.stats().dropped_backoff.load(Ordering::Relaxed), 101);
        // After the first backoff one more attempt, then twice as long.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
        settle().await;
        assert_eq!(attempts(), 2);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
        settle().await;
        assert_eq!(attempts(), 2, "the second backoff is longer");
        // The proxy is back: the next attempt after the backoff succeeds,
        // and a success resets the backoff.
        proxy.fail.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"ok"));
        let got = cap.wait(1).await;
        assert_eq!(got[0].2, b"ok");
        assert_eq!(attempts(), 3);
        assert_eq!(r.shared.failed_until.load(Ordering::Relaxed), 0);
    }

    /// A blackholed proxy: the queue of a flow that is still associating
    /// holds a few datagrams by bytes, not 64 of any size.
    #[tokio::test]
    async fn connecting_queue_is_bounded_by_bytes() {
        let (r, proxy, _cap) = relay_with(16, false, false, false, true);
        let big = vec![1u8; 1400];
        for _ in 0..200 {
            r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", &big));
        }
        settle().await;
        assert_eq!(proxy.associations.load(Ordering::SeqCst), 1);
        let queued = r.shared.queued.load(Ordering::Relaxed);
        assert!(queued <= CONNECTING_QUEUE_BYTES, "{queued} bytes queued");
        let kept = CONNECTING_QUEUE_BYTES / (1400 + QUEUE_OVERHEAD);
        assert_eq!(
            r.stats().dropped_queue_full.load(Ordering::Relaxed),
            200 - kept as u64
        );
        // Evicting the flow gives its queue room back.
        r.shared.table().flows.clear();
        for _ in 0..200 {
            if r.shared.queued.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(r.shared.queued.load(Ordering::Relaxed), 0);
    }

    /// A burst towards a live association is queued, not dropped at 64.
    #[tokio::test]
    async fn burst_to_live_association_is_queued() {
        let (r, _proxy, cap) = relay(16, false, false);
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"first"));
        cap.wait(1).await;
        // handle_packet never yields: the flow task sees the burst only after it.
        for _ in 0..1000 {
            r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", &[2u8; 100]));
        }
        assert_eq!(r.stats().dropped_queue_full.load(Ordering::Relaxed), 0);
        for _ in 0..400 {
            if r.stats().datagrams_out.load(Ordering::Relaxed) == 1001 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(r.stats().datagrams_out.load(Ordering::Relaxed), 1001);
        assert_eq!(r.shared.queued.load(Ordering::Relaxed), 0);
    }
}
