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

mod dnsmux;
mod fast;
mod flow;
mod names;
mod packet;
mod reply;
mod shared;
mod snapshot;
#[cfg(test)]
mod tests;

pub use packet::{build_udp, parse_udp, BuildError, Datagram, PacketError};
pub use shared::{UdpConfig, UdpStats, DNS_UDP_TIMEOUT};
pub use snapshot::UdpFlowInfo;

use packet::{IPV4_HEADER, IPV6_HEADER, UDP_HEADER};
use shared::{
    inc, Backoff, FlowHandle, FlowState, Key, Out, Shared, Table, WayKey, MAX_DNS_INFLIGHT,
    MAX_UDP_PAYLOAD,
};

use super::route::{Router, Way};
use crate::dns::Dns;
use crate::rules::{Action, Proto};
use crate::socks::codec;
use crate::socks::TargetAddr;
use crate::stack::wire::{icmp_unreachable, quote_len};
use crate::stack::{PacketSink, UdpHandler, Unreachable};
use crate::upstream::Upstream;
use flow::{run_flow, Flow};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// (source, destination) pairs of blocked datagrams remembered, so each
/// blocked flow is logged once.
const MAX_BLOCKED_LOGGED: usize = 4096;

/// (source, destination) pairs whose way is remembered, and for how long.
const MAX_WAYS: usize = 4096;
const WAY_TTL_MS: u64 = 10_000;

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
        router: Option<Arc<Router>>,
        tun: Arc<dyn PacketSink>,
    ) -> UdpRelay {
        UdpRelay {
            shared: Arc::new(Shared {
                cfg,
                dns,
                upstream,
                router,
                tun,
                table: Mutex::new(Table::default()),
                stats: Arc::default(),
                epoch: Instant::now(),
                backoff: Arc::default(),
                group_backoffs: Mutex::default(),
                queued: AtomicUsize::new(0),
                oversize_logged: AtomicBool::new(false),
                blocked_logged: Mutex::default(),
                ways: Mutex::default(),
                dns_slots: Arc::new(tokio::sync::Semaphore::new(MAX_DNS_INFLIGHT)),
                dns_mux: Default::default(),
                names: Mutex::default(),
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

    /// The live associations, oldest first, for `/flows`: one lock of the
    /// table per call, the counters read as they are.
    pub fn snapshot(&self) -> Vec<UdpFlowInfo> {
        let sh = &self.shared;
        let now = sh.now_ms();
        let table = sh.table();
        let mut v: Vec<(u64, UdpFlowInfo)> = table
            .flows
            .iter()
            .map(|((local, _), h)| (h.id, UdpFlowInfo::of(*local, &h.state, now)))
            .collect();
        drop(table);
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, f)| f).collect()
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
        let now = sh.now_ms();
        let (target, pin) = match sh.dns.as_ref().and_then(|d| d.pool()) {
            Some(pool) if pool.contains(d.dst.ip()) => {
                match sh.names().get(pool, d.dst.ip(), now) {
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
                }
            }
            _ => (TargetAddr::Ip(d.dst), None),
        };
        let way = match &sh.router {
            Some(r) if !r.is_plain() => self.way_of(r, d.src, d.dst, &target),
            _ => Way::plain(),
        };
        let key = match way.action {
            Action::Block => return self.block(pkt, (d.src, d.dst), &target, way.rule),
            Action::Direct if !self.fits(d.payload.len()) => return,
            Action::Direct => (d.src, WayKey::Direct),
            Action::Proxy(group) => {
                let key = match &target {
                    TargetAddr::Ip(_) if d.dst.port() == 53 && dnsmux::is_query(d.payload) => {
                        (dnsmux::MUX_LOCAL, WayKey::DnsMux(group))
                    }
                    _ => (d.src, WayKey::Proxy(group)),
                };
                let admitted = match &key.1 {
                    WayKey::Proxy(Some(g)) | WayKey::DnsMux(Some(g)) => {
                        self.proxy_admits(&key, now, &sh.backoff_of(Some(g)))
                    }
                    _ => self.proxy_admits(&key, now, &sh.backoff),
                };
                if !admitted || !self.fits(d.payload.len() + codec::udp_header_len(&target)) {
                    return;
                }
                key
            }
        };
        let out = Out {
            dst: d.dst,
            target,
            pin,
            // Filled only if it is queued.
            payload: Vec::new(),
            rule: way.rule,
        };
        match key.1 {
            WayKey::DnsMux(g) => self.enqueue_query(g, out, &d, now, way.upstream),
            _ => {
                self.enqueue(key, out, d.payload, now, way.upstream);
            }
        }
    }

    /// A DNS query onto the association its way's queries share, with an id
    /// of ours in place of the asker's (`dnsmux.rs`); onto the asker's own
    /// association when too many queries wait.
    fn enqueue_query(
        &self,
        group: Option<Arc<str>>,
        out: Out,
        d: &Datagram<'_>,
        now: u64,
        upstream: Option<Arc<dyn Upstream>>,
    ) {
        let way = WayKey::DnsMux(group.clone());
        let id = u16::from_be_bytes([d.payload[0], d.payload[1]]);
        // A query (`is_query` parsed it): it has its one question.
        let question = crate::dns::message::question_key(d.payload).unwrap_or_default();
        if self.shared.dns_mux.take_silent(&way, now) {
            // Its relay stopped answering while the control connection
            // stays up: a new UDP ASSOCIATE for the next queries.
            let gone = self
                .shared
                .table()
                .flows
                .remove(&(dnsmux::MUX_LOCAL, way.clone()));
            if gone.is_some() {
                tracing::info!(
                    "udp: the shared DNS association left {} queries unanswered in a row: replaced",
                    dnsmux::SILENT_LIMIT
                );
            }
        }
        let Some(ours) = self
            .shared
            .dns_mux
            .ask(d.src, d.dst, (id, question), &way, now)
        else {
            let own = (d.src, WayKey::Proxy(group));
            self.enqueue(own, out, d.payload, now, upstream);
            return;
        };
        let mut query = d.payload.to_vec();
        query[..2].copy_from_slice(&ours.to_be_bytes());
        if !self.enqueue((dnsmux::MUX_LOCAL, way), out, &query, now, upstream) {
            // Dropped (a full queue): its id is free again at once.
            self.shared.dns_mux.forget(ours);
        }
    }

    /// The way of a datagram from `src` to `dst`: remembered per pair for a
    /// while, so a datagram costs one lookup rather than the rules' (with
    /// 10,000 rules, microseconds: the bench's UDP row lost a third).
    /// Forgotten when the rules change, after `WAY_TTL_MS` (a fake address
    /// may come to stand for another name), or all at once when full.
    fn way_of(&self, r: &Router, src: SocketAddr, dst: SocketAddr, target: &TargetAddr) -> Way {
        let sh = &self.shared;
        let now = sh.now_ms();
        let mut c = sh.ways.lock().unwrap_or_else(|p| p.into_inner());
        let gen = r.generation();
        if c.generation != gen || c.ways.len() >= MAX_WAYS {
            c.ways.clear();
            c.generation = gen;
        }
        // A fake address stands for one name at a time, but may come to
        // stand for another: the way is the name's, so the name must match.
        let name = match target {
            TargetAddr::Domain(n, _) => Some(n.as_str()),
            TargetAddr::Ip(_) => None,
        };
        match c.ways.get(&(src, dst)) {
            Some((at, n, w)) if now.saturating_sub(*at) < WAY_TTL_MS && n.as_deref() == name => {
                w.clone()
            }
            _ => {
                let w = r.way(src, target, Proto::Udp);
                let n = name.map(Box::from);
                c.ways.insert((src, dst), (now, n, w.clone()));
                w
            }
        }
    }

    /// Whether a datagram of `len` bytes may be sent (else dropped, counted).
    fn fits(&self, len: usize) -> bool {
        if len > MAX_UDP_PAYLOAD {
            self.shared.drop_oversize("towards the proxy", len);
            return false;
        }
        true
    }

    /// Whether the proxy is tried for a datagram of `local` now: not while it
    /// is known to have no UDP ASSOCIATE, nor during the backoff after a
    /// failed one (unless the endpoint's association is live).
    fn proxy_admits(&self, key: &Key, now: u64, b: &Backoff) -> bool {
        let sh = &self.shared;
        if now < b.unsupported_until.load(Ordering::Relaxed) {
            inc(&sh.stats.dropped_unsupported);
            return false;
        }
        if now < b.failed_until.load(Ordering::Relaxed) {
            // Associations that are live still carry their datagrams.
            let table = sh.table();
            let live = table
                .flows
                .get(key)
                .is_some_and(|h| h.state.live.load(Ordering::Relaxed));
            if !live {
                inc(&sh.stats.dropped_backoff);
                return false;
            }
        }
        true
    }

    /// A `block` rule: ICMP port unreachable back to the application, as a
    /// host with nothing on that port answers; logged once per flow.
    fn block(
        &self,
        pkt: &[u8],
        (src, dst): (SocketAddr, SocketAddr),
        target: &TargetAddr,
        rule: Option<Arc<str>>,
    ) {
        let sh = &self.shared;
        inc(&sh.stats.blocked);
        if let Some(icmp) = icmp_unreachable(&pkt[..quote_len(pkt)], Unreachable::Port) {
            sh.tun.send(&icmp);
        }
        let first = {
            let mut seen = sh.blocked_logged.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= MAX_BLOCKED_LOGGED {
                seen.clear();
            }
            seen.insert((src, dst))
        };
        if first {
            tracing::info!(
                src = %src, dst = %dst, rule = rule.as_deref(),
                "udp {src} -> {target} blocked (answered with ICMP port unreachable)"
            );
        }
    }

    /// Send a datagram through the association of `local` from here when it
    /// is live, knows the destination and has nothing queued (order is kept);
    /// else queue it for the association's task, opening one (and evicting
    /// the one idle the longest when the table is full) if needed.
    fn enqueue(
        &self,
        key: Key,
        mut out: Out,
        payload: &[u8],
        now: u64,
        group: Option<Arc<dyn Upstream>>,
    ) -> bool {
        let sh = &self.shared;
        let local = key.0;
        let mut table = sh.table();
        if let Some(h) = table.flows.get(&key) {
            h.state.last_used.store(now, Ordering::Relaxed);
            if self.sent_fast(h, &out, payload) {
                return true;
            }
        }
        out.payload = payload.to_vec();
        let cost = out.cost();
        if let Some(h) = table.flows.get(&key) {
            if sh.reserve(&h.state, cost).is_none() {
                inc(&sh.stats.dropped_queue_full);
                tracing::debug!("udp: {}: queue full, datagram dropped", local);
                return false;
            }
            match h.tx.send(out) {
                Ok(()) => return true,
                Err(mpsc::error::SendError(o)) => {
                    // The task ended (idle or no UDP ASSOCIATE) and has not
                    // removed itself yet: start afresh.
                    sh.release(&h.state, cost);
                    out = o;
                    table.flows.remove(&key);
                }
            }
        }
        if table.flows.len() >= sh.cfg.max_flows.max(1) {
            // Bounded: the association idle the longest goes first.
            if let Some(victim) = table
                .flows
                .iter()
                .min_by_key(|(_, h)| h.state.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            {
                table.flows.remove(&victim);
                inc(&sh.stats.flows_evicted);
                tracing::debug!(
                    "udp: {}: association evicted (--max-udp-flows {} reached)",
                    victim.0,
                    sh.cfg.max_flows
                );
            }
        }
        let state = Arc::new(FlowState {
            opened_ms: now,
            ..FlowState::default()
        });
        state.last_used.store(now, Ordering::Relaxed);
        if sh.reserve(&state, cost).is_none() {
            inc(&sh.stats.dropped_queue_full);
            return false;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(out);
        let (evict_tx, evict_rx) = oneshot::channel();
        table.next_id += 1;
        let id = table.next_id;
        table.flows.insert(
            key.clone(),
            FlowHandle {
                id,
                tx,
                state: state.clone(),
                _evict: evict_tx,
                fast: None,
            },
        );
        drop(table);
        inc(&sh.stats.flows_opened);
        let backoff = match &key.1 {
            WayKey::Proxy(g) | WayKey::DnsMux(g) => sh.backoff_of(g.as_ref()),
            WayKey::Direct => sh.backoff.clone(),
        };
        let flow = Flow {
            local,
            upstream: group.unwrap_or_else(|| sh.upstream.clone()),
            backoff,
            way: key.1,
            id,
            rx,
            evicted: evict_rx,
            state,
        };
        sh.rt.spawn(run_flow(sh.clone(), flow));
        true
    }

    /// Whether the datagram was dealt with on the fast path (`fast.rs`):
    /// sent, or failed as the task's send would have (dropped, counted).
    /// Not while anything is queued: it would overtake it.
    fn sent_fast(&self, h: &FlowHandle, out: &Out, payload: &[u8]) -> bool {
        let sh = &self.shared;
        let Some(f) = &h.fast else { return false };
        if h.state.queued.load(Ordering::Relaxed) != 0 {
            return false;
        }
        match f.try_send(out.dst, &out.target, payload) {
            None => false,
            Some(Ok(_)) => {
                h.state.count(true, payload.len());
                inc(&sh.stats.datagrams_out);
                true
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Some(Err(e)) => {
                inc(&sh.stats.dropped_other);
                tracing::debug!("udp: send to {}: {e}", out.target);
                true
            }
        }
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
