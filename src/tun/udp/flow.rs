//! The task of one association: takes its local endpoint's datagrams from
//! the table's queue, opens the UDP ASSOCIATE when the first one comes (and
//! again after the control connection died), sends them to the relay, and
//! writes the relay's replies back to the TUN with the source the
//! application expects (`reply::reply_source`).

use super::fast::{send_parts_async, FastPath, Prefix};
use super::packet::{build_udp_in_place, same_family, BuildError, IPV6_HEADER, UDP_HEADER};
use super::reply::{reply_source, FakeDest};
use super::shared::{
    inc, Backoff, FlowHandle, FlowState, Key, Out, Shared, WayKey, DNS_UDP_TIMEOUT, MAX_FAKE_DESTS,
    MAX_IP_DESTS,
};
use crate::socks::{codec, TargetAddr};
use crate::upstream;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

/// Bytes kept free before a reply in `Assoc::buf`: the largest IP + UDP
/// header, written there so the reply becomes its TUN packet in place.
const ROOM: usize = IPV6_HEADER + UDP_HEADER;
/// Replies taken from the socket per wake-up, at most, before the task
/// looks at its queue again.
const REPLY_BATCH: usize = 64;

/// The socket of a live association and the proxy's relay address (None:
/// a direct one, whose datagrams go to their destinations unframed).
struct Live {
    relay: Option<SocketAddr>,
    /// Shared with the stack task's fast path while live.
    socket: Arc<UdpSocket>,
    /// An IPv6 socket that also carries IPv4 (direct: both families).
    dual: bool,
    /// A direct socket's port, known as sockstun's own while it lives (a
    /// datagram of it that comes back through the TUN is a loop).
    _mark: Option<crate::tun::direct::PortMark>,
}

/// What the task of one association gets from the table.
pub(super) struct Flow {
    pub local: SocketAddr,
    /// The way (part of the table's key): through a proxy, or direct.
    pub way: WayKey,
    /// The upstream that associates (`--proxy`'s or a group's; unused direct).
    pub upstream: Arc<dyn upstream::Upstream>,
    pub backoff: Arc<Backoff>,
    pub id: u64,
    pub rx: mpsc::UnboundedReceiver<Out>,
    pub evicted: oneshot::Receiver<()>,
    pub state: Arc<FlowState>,
}

/// Gives the queue room of the datagrams still queued back when the task
/// ends, however it ends.
/// When the task ends, also by a panic: its queued bytes are given back and
/// its handle leaves the table (a handle left behind would keep taking
/// datagrams, on the stack task's fast path too, that nobody relays).
struct QueueGuard {
    sh: Arc<Shared>,
    state: Arc<FlowState>,
    key: Key,
    id: u64,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let left = self.state.queued.swap(0, Ordering::Relaxed);
        self.sh.queued.fetch_sub(left, Ordering::Relaxed);
        let mut t = self.sh.table();
        if t.flows.get(&self.key).is_some_and(|h| h.id == self.id) {
            t.flows.remove(&self.key);
        }
    }
}

enum Ev {
    Out(Option<Out>),
    In(io::Result<(usize, SocketAddr)>),
    Ctrl(io::Result<usize>),
    Idle,
}

/// One association's state, owned by its task.
struct Assoc {
    sh: Arc<Shared>,
    local: SocketAddr,
    /// Its entry in the table (the key, and the id that tells a successor
    /// under the same key apart).
    key: Key,
    id: u64,
    /// Sent from this host (a `direct` rule), not through a proxy.
    direct: bool,
    upstream: Arc<dyn upstream::Upstream>,
    backoff: Arc<Backoff>,
    /// The rule of the first datagram, for the log line.
    rule: Option<Arc<str>>,
    state: Arc<FlowState>,
    /// Both Some while associated; the control connection is apart so both
    /// can be awaited at once.
    live: Option<Live>,
    control: Option<TcpStream>,
    fakes: Vec<FakeDest>,
    /// Unmapped, as the proxy's replies are compared.
    ip_dsts: HashSet<SocketAddr>,
    dns_only: bool,
    /// For the log line: the first destination and how many others (up to a cap).
    first_dst: Option<TargetAddr>,
    other_dsts: Vec<TargetAddr>,
    /// `ROOM`, then room for the largest SOCKS header (domain: 3 + 1 + 1 +
    /// 255 + 2) and an MTU's worth of payload, plus one byte to tell a
    /// datagram that did not fit.
    buf: Vec<u8>,
    /// Fires at the idle deadline as it was when armed; re-armed from
    /// `FlowState::last_used` (datagrams the stack task sent count too).
    idle: Pin<Box<Sleep>>,
    /// The proxy of the last association, for the log line.
    via: Option<Arc<str>>,
}

pub(super) async fn run_flow(sh: Arc<Shared>, flow: Flow) {
    let Flow {
        local,
        way,
        upstream,
        backoff,
        id,
        mut rx,
        mut evicted,
        state,
    } = flow;
    let guard = QueueGuard {
        sh: sh.clone(),
        state: state.clone(),
        key: (local, way.clone()),
        id,
    };
    let started = Instant::now();
    let mut a = Assoc {
        buf: vec![0u8; ROOM + sh.cfg.mtu + 263],
        idle: Box::pin(tokio::time::sleep(sh.cfg.timeout.min(DNS_UDP_TIMEOUT))),
        sh: sh.clone(),
        local,
        key: (local, way.clone()),
        id,
        direct: way == WayKey::Direct,
        upstream,
        backoff,
        rule: None,
        state,
        live: None,
        control: None,
        fakes: Vec::new(),
        ip_dsts: HashSet::new(),
        dns_only: true,
        first_dst: None,
        other_dsts: Vec::new(),
        via: None,
    };
    let outcome: String = loop {
        match a.next_event(&mut rx, &mut evicted).await {
            Ev::Idle if a.idle_passed() => break "idle".into(),
            Ev::Idle => {}
            Ev::Out(None) => break "evicted".into(),
            Ev::Ctrl(Ok(n)) if n > 0 => {} // nothing is expected; ignore
            Ev::Ctrl(r) => a.control_ended(r),
            Ev::Out(Some(o)) => {
                if let Err(end) = a.send(o, &mut rx, &mut evicted).await {
                    break end;
                }
            }
            Ev::In(Err(e)) => {
                // ICMP errors from the relay (port unreachable) land here.
                tracing::debug!("udp {local}: relay socket: {e}");
            }
            Ev::In(Ok((n, from))) => {
                a.reply(n, from);
                a.drain_replies();
            }
        }
    };
    drop(guard);
    a.log(started, &outcome);
}

impl Assoc {
    async fn next_event(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Out>,
        evicted: &mut oneshot::Receiver<()>,
    ) -> Ev {
        let (live, buf, control) = (&self.live, &mut self.buf[ROOM..], &mut self.control);
        let recv = async {
            match live {
                Some(l) => l.socket.recv_from(buf).await,
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
        tokio::select! {
            _ = evicted => Ev::Out(None),
            o = rx.recv() => Ev::Out(o),
            r = recv => Ev::In(r),
            c = ctrl => Ev::Ctrl(c),
            _ = self.idle.as_mut() => Ev::Idle,
        }
    }

    /// Whether the association has been idle for its timeout; if not, the
    /// timer is re-armed for when it will have been.
    fn idle_passed(&mut self) -> bool {
        let idle = if self.dns_only {
            self.sh.cfg.timeout.min(DNS_UDP_TIMEOUT)
        } else {
            self.sh.cfg.timeout
        };
        let last = self.state.last_used.load(Ordering::Relaxed);
        let deadline = self.sh.epoch + Duration::from_millis(last) + idle;
        if Instant::now() >= deadline {
            return true;
        }
        self.idle.as_mut().reset(deadline);
        false
    }

    /// Its entry in the table, if it is still this task's.
    fn with_handle(&self, f: impl FnOnce(&mut FlowHandle)) {
        let mut t = self.sh.table();
        if let Some(h) = t.flows.get_mut(&self.key).filter(|h| h.id == self.id) {
            f(h);
        }
    }

    /// Live: the stack task may send on the socket itself (`fast.rs`).
    fn open_fast_path(&self) {
        if let Some(l) = &self.live {
            let socket = l.socket.clone();
            self.with_handle(|h| h.fast = Some(FastPath::new(socket)));
        }
    }

    /// The replies that queued up behind the one just read, without going
    /// back through the select (and its timer and futures) for each.
    fn drain_replies(&mut self) {
        for _ in 0..REPLY_BATCH {
            let Some(l) = &self.live else { return };
            match l.socket.try_recv_from(&mut self.buf[ROOM..]) {
                Ok((n, from)) => self.reply(n, from),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("udp {}: relay socket: {e}", self.local);
                    return;
                }
            }
        }
    }

    fn control_ended(&mut self, r: io::Result<usize>) {
        let local = self.local;
        tracing::debug!(
            "udp {local}: control connection ended ({r:?}); re-established on the next datagram"
        );
        self.live = None;
        self.control = None;
        self.state.live.store(false, Ordering::Relaxed);
        self.with_handle(|h| h.fast = None);
    }

    /// Remember where a datagram goes: replies are matched against it.
    fn note_destination(&mut self, o: &mut Out) {
        if o.dst.port() != 53 {
            self.dns_only = false;
        }
        match &o.target {
            TargetAddr::Ip(a) => {
                let a = SocketAddr::new(crate::net::unmap(a.ip()), a.port());
                if self.ip_dsts.len() >= MAX_IP_DESTS && !self.ip_dsts.contains(&a) {
                    if let Some(old) = self.ip_dsts.iter().next().copied() {
                        self.ip_dsts.remove(&old);
                    }
                }
                self.ip_dsts.insert(a);
            }
            TargetAddr::Domain(name, port) => {
                if !self.fakes.iter().any(|f| f.fake == o.dst) {
                    if self.fakes.len() >= MAX_FAKE_DESTS {
                        self.fakes.remove(0);
                    }
                    self.fakes.push(FakeDest {
                        fake: o.dst,
                        name: name.clone(),
                        port: *port,
                        resolved: None,
                        _pin: o.pin.take(),
                    });
                }
            }
        }
    }

    /// Open the association. Err ends the task with that outcome.
    async fn associate(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Out>,
        evicted: &mut oneshot::Receiver<()>,
    ) -> Result<(), String> {
        let (sh, local) = (&self.sh, self.local);
        if self.direct {
            return self.open_direct();
        }
        // Evicted while the proxy is still answering: give the slot up at once.
        let assoc = tokio::select! {
            a = self.upstream.associate() => a,
            _ = evicted => return Err("evicted".into()),
        };
        match assoc {
            Ok(upstream::Associated { assoc: a, via }) => {
                tracing::debug!("udp {local}: associated through {via}, relay {}", a.relay);
                // Replies come from the relay only (anything else was
                // dropped): connected, the kernel filters them, and a
                // datagram is header and payload sent as they lie.
                if let Err(e) = a.socket.connect(a.relay).await {
                    inc(&sh.stats.dropped_other);
                    return Err(format!("UDP relay {}: {e}", a.relay));
                }
                self.state.set_via(via.clone());
                self.via = Some(via);
                sh.mark_associated(&self.backoff);
                self.state.live.store(true, Ordering::Relaxed);
                self.live = Some(Live {
                    relay: Some(a.relay),
                    socket: Arc::new(a.socket),
                    dual: false,
                    _mark: None,
                });
                self.control = Some(a.control);
                self.open_fast_path();
                Ok(())
            }
            Err(upstream::Error::CommandNotSupported) => {
                inc(&sh.stats.dropped_unsupported);
                sh.mark_unsupported(&self.backoff);
                Err("proxy has no UDP ASSOCIATE".into())
            }
            Err(e) => {
                // The task ends and its queue goes with it: what arrives
                // during the backoff is dropped up front.
                let backoff = sh.mark_failed(&self.backoff);
                inc(&sh.stats.dropped_backoff);
                let mut n = 0;
                while rx.try_recv().is_ok() {
                    inc(&sh.stats.dropped_backoff);
                    n += 1;
                }
                tracing::debug!("udp {local}: UDP ASSOCIATE failed: {e}; {n} queued datagrams dropped, none tried for {backoff:?}");
                Err(format!("UDP ASSOCIATE failed: {e}"))
            }
        }
    }

    /// A datagram from the application, towards the relay (associating
    /// first if needed). Err ends the task with that outcome. Its queue room
    /// is given back once it is sent: until then the stack task's fast path
    /// must not overtake it.
    async fn send(
        &mut self,
        mut o: Out,
        rx: &mut mpsc::UnboundedReceiver<Out>,
        evicted: &mut oneshot::Receiver<()>,
    ) -> Result<(), String> {
        self.note_destination(&mut o);
        if self.rule.is_none() {
            self.rule = o.rule.take();
        }
        if self.live.is_none() {
            self.associate(rx, evicted).await?;
        }
        let sent = self.send_out(&o).await;
        self.sh.release(&self.state, o.cost());
        let sh = &self.sh;
        match sent {
            Ok(prefix) => {
                self.state.count(true, o.payload.len());
                inc(&sh.stats.datagrams_out);
                self.with_handle(|h| {
                    if let Some(f) = &mut h.fast {
                        f.learn(o.dst, &o.target, &prefix);
                    }
                });
                match &self.first_dst {
                    None => {
                        let name = match &o.target {
                            TargetAddr::Domain(n, _) => Some(n.clone()),
                            TargetAddr::Ip(_) => None,
                        };
                        let _ = self.state.first.set((o.dst, name));
                        self.first_dst = Some(o.target);
                    }
                    Some(f) if *f != o.target && self.other_dsts.len() < MAX_FAKE_DESTS => {
                        if !self.other_dsts.contains(&o.target) {
                            self.other_dsts.push(o.target);
                        }
                    }
                    Some(_) => {}
                }
            }
            Err(e) => {
                inc(&sh.stats.dropped_other);
                tracing::debug!("udp {}: send to {}: {e}", self.local, o.target);
            }
        }
        Ok(())
    }

    /// `o` out of the association's socket: to the proxy's relay behind the
    /// RFC 1928 §7 header, or (direct) straight to its destination. Returns
    /// what went before it and where, for the fast path to do the same.
    async fn send_out(&mut self, o: &Out) -> io::Result<Prefix> {
        let prefix = match self.live.as_ref().map(|l| l.relay) {
            None => return Err(io::ErrorKind::NotConnected.into()),
            Some(Some(_)) => {
                let mut header = Vec::with_capacity(codec::udp_header_len(&o.target));
                codec::encode_udp_header(&o.target, &mut header).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "address not encodable")
                })?;
                Prefix {
                    header: header.into(),
                    to: None,
                }
            }
            Some(None) => Prefix {
                header: Box::default(),
                to: Some(self.direct_dest(o).await?),
            },
        };
        let Some(l) = &self.live else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        send_parts_async(&l.socket, &prefix, &o.payload).await?;
        Ok(prefix)
    }

    /// A direct association: one socket of this host for every destination.
    fn open_direct(&mut self) -> Result<(), String> {
        let Some(router) = &self.sh.router else {
            return Err("no direct way without rules".into());
        };
        let socket = router
            .direct()
            .udp_socket()
            .map_err(|e| format!("direct UDP socket: {e}"))?;
        let local = socket
            .local_addr()
            .map_err(|e| format!("direct UDP socket: {e}"))?;
        let dual = local.is_ipv6();
        let mark = router.direct().mark(crate::rules::Proto::Udp, local.port());
        let via: Arc<str> = Arc::from("direct");
        self.state.set_via(via.clone());
        self.via = Some(via);
        self.state.live.store(true, Ordering::Relaxed);
        self.live = Some(Live {
            relay: None,
            socket: Arc::new(socket),
            dual,
            _mark: Some(mark),
        });
        self.open_fast_path();
        Ok(())
    }

    /// Where `o` goes from a direct socket; a name (a fake address) goes to
    /// the address this host resolves it to, learnt once per association.
    async fn direct_dest(&mut self, o: &Out) -> io::Result<SocketAddr> {
        let dest = match &o.target {
            TargetAddr::Ip(a) => *a,
            TargetAddr::Domain(_, port) => {
                let known = self.fakes.iter().find(|f| f.fake == o.dst);
                match known.and_then(|f| f.resolved) {
                    Some(ip) => SocketAddr::new(ip, *port),
                    None => self.resolve_direct(o).await?,
                }
            }
        };
        Ok(match dest {
            SocketAddr::V4(a) if self.live.as_ref().is_some_and(|l| l.dual) => {
                SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())
            }
            d => d,
        })
    }

    async fn resolve_direct(&mut self, o: &Out) -> io::Result<SocketAddr> {
        let router = self.sh.router.clone();
        let direct = router.as_ref().map(|r| r.direct());
        let addrs = match direct {
            Some(d) => d.addresses(&o.target).await,
            None => return Err(io::ErrorKind::Unsupported.into()),
        };
        let first = match addrs.as_deref().map(|a| a.first()) {
            Ok(Some(a)) => *a,
            // Not kept waiting for an address: on this open socket, a reply
            // from anyone on that port would be taken for the name's.
            Ok(None) | Err(_) => {
                self.fakes.retain(|f| f.fake != o.dst);
                return Err(match addrs {
                    Err(e) => io::Error::other(e.to_string()),
                    Ok(_) => io::ErrorKind::NotFound.into(),
                });
            }
        };
        if let Some(f) = self.fakes.iter_mut().find(|f| f.fake == o.dst) {
            f.resolved = Some(crate::net::unmap(first.ip()));
        }
        Ok(first)
    }

    /// `n` bytes from `from` at `buf[ROOM..]`: a reply to pass back to the
    /// application.
    fn reply(&mut self, n: usize, from: SocketAddr) {
        let Some(l) = &self.live else { return };
        let sh = &self.sh;
        let Some(relay) = l.relay else {
            // Direct: the datagram itself, from its sender.
            let hdr = codec::UdpHeader {
                frag: 0,
                addr: TargetAddr::Ip(from),
                header_len: 0,
            };
            return self.pass_back(hdr, n);
        };
        if crate::net::unmap(from.ip()) != crate::net::unmap(relay.ip())
            || from.port() != relay.port()
        {
            inc(&sh.stats.dropped_other);
            return;
        }
        match codec::parse_udp_header(&self.buf[ROOM..ROOM + n]) {
            Ok(h) if h.frag == 0 => self.pass_back(h, n),
            _ => {
                // RFC 1928 §7: fragments we do not reassemble are dropped.
                inc(&sh.stats.dropped_other);
            }
        }
    }

    /// The `n` bytes at `buf[ROOM..]` after `hdr`, back to the application
    /// with the source it expects: the IP and UDP headers are written just
    /// before the payload, over the SOCKS header and `ROOM`.
    fn pass_back(&mut self, hdr: codec::UdpHeader, n: usize) {
        let (sh, local) = (&self.sh, self.local);
        let payload_len = n - hdr.header_len;
        if ROOM + n == self.buf.len() {
            sh.drop_oversize("from the proxy", payload_len);
            return;
        }
        if matches!(self.key.1, WayKey::DnsMux(_)) {
            return self.pass_back_answer(hdr, n);
        }
        let Some(src) = reply_source(&hdr.addr, &mut self.fakes, &self.ip_dsts, local) else {
            inc(&sh.stats.dropped_other);
            tracing::debug!("udp {local}: reply from {} dropped: no name it answers for, or several names on that port wait for an address", hdr.addr);
            return;
        };
        self.state.last_used.store(sh.now_ms(), Ordering::Relaxed);
        let payload = ROOM + hdr.header_len..ROOM + n;
        match build_udp_in_place(&mut self.buf, payload, src, local, sh.cfg.mtu) {
            Ok(p) => {
                self.state.count(false, payload_len);
                inc(&sh.stats.datagrams_in);
                sh.tun.send(&self.buf[p]);
            }
            Err(BuildError::TooBig) => sh.drop_oversize("from the proxy", payload_len),
            Err(BuildError::FamilyMismatch) => {
                inc(&sh.stats.dropped_other);
            }
        }
    }

    /// A DNS answer on the shared association (`dnsmux.rs`): to whoever
    /// asked, with their id, from the server they asked.
    fn pass_back_answer(&mut self, hdr: codec::UdpHeader, n: usize) {
        let sh = &self.sh;
        let payload = ROOM + hdr.header_len..ROOM + n;
        let asked = match (&hdr.addr, payload.len() >= 12) {
            (TargetAddr::Ip(from), true) => {
                sh.dns_mux
                    .answer(&self.buf[payload.clone()], *from, &self.key.1)
            }
            _ => None,
        };
        let Some(asked) = asked else {
            inc(&sh.stats.dropped_other);
            tracing::debug!(
                "udp: DNS answer from {} dropped: not to a query of ours",
                hdr.addr
            );
            return;
        };
        self.buf[payload.start..payload.start + 2].copy_from_slice(&asked.id.to_be_bytes());
        let src = same_family(asked.server, asked.client);
        match build_udp_in_place(&mut self.buf, payload, src, asked.client, sh.cfg.mtu) {
            Ok(p) => {
                self.state.count(false, n - hdr.header_len);
                inc(&sh.stats.datagrams_in);
                sh.tun.send(&self.buf[p]);
            }
            Err(BuildError::TooBig) => sh.drop_oversize("from the proxy", n - hdr.header_len),
            Err(BuildError::FamilyMismatch) => {
                inc(&sh.stats.dropped_other);
            }
        }
    }

    fn log(&self, started: Instant, outcome: &str) {
        let to = match (&self.first_dst, self.other_dsts.len()) {
            (None, _) => "-".to_string(),
            (Some(f), 0) => f.to_string(),
            (Some(f), n) => format!("{f} (+{n} more)"),
        };
        let via = self.via.as_deref().unwrap_or("-");
        // The shared DNS association has no endpoint of its own to name.
        let from = match self.key.1 {
            WayKey::DnsMux(_) => "dns queries (shared)".to_string(),
            _ => self.local.to_string(),
        };
        let st = &self.state;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            rule = self.rule.as_deref(),
            "udp {from} -> {to} via {via}: {} datagrams ({} bytes) out, {} ({} bytes) in, {:.1}s, {outcome}",
            get(&st.n_out),
            get(&st.b_out),
            get(&st.n_in),
            get(&st.b_in),
            started.elapsed().as_secs_f64()
        );
    }
}
