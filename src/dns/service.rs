//! Answering DNS queries caught on the TUN (UDP and TCP, port 53), by mode:
//! `virtual` answers A/AAAA from the fake pool and forwards the rest over
//! DNS-over-TCP through the proxy; `tcp` forwards everything that way; `udp`
//! does not intercept (queries travel through UDP ASSOCIATE, the queries of
//! every endpoint sharing one association: TUN mode's UDP table does that).

use super::message::{self, Answer, Query, Rcode, CLASS_IN, HEADER_LEN, TYPE_A, TYPE_AAAA};
use super::pool::{FakePool, PoolPin};
use super::stats::DnsStats;
use crate::socks::TargetAddr;
use crate::upstream::{Stream, Upstream};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// TTL of fake answers: short, so a recycled address is not cached for long.
pub const FAKE_TTL: u32 = 5;
/// How long a forwarded query may take, proxy connection included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle DNS-over-TCP client connection is closed after this (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 1035 §4.2.1: without EDNS a UDP answer is at most 512 bytes.
pub const UDP_PLAIN_LIMIT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    Virtual,
    Tcp,
    Udp,
}

impl std::str::FromStr for DnsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "virtual" => Ok(DnsMode::Virtual),
            "tcp" => Ok(DnsMode::Tcp),
            "udp" => Ok(DnsMode::Udp),
            _ => Err(format!(
                "unknown DNS mode {s:?} (expected virtual, tcp or udp)"
            )),
        }
    }
}

impl fmt::Display for DnsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DnsMode::Virtual => "virtual",
            DnsMode::Tcp => "tcp",
            DnsMode::Udp => "udp",
        })
    }
}

/// Parse `--dns-upstream`: ADDR or ADDR:PORT (port 53 by default; IPv6 as [ADDR]:PORT).
pub fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?}: expected ADDR or ADDR:PORT"))
}

/// Where a TCP flow from the TUN goes, as far as DNS is concerned.
pub enum TcpRoute {
    /// Port 53 while DNS is intercepted: serve it with `Dns::serve_stream`.
    Dns,
    /// A fake address: dial this name; the pin keeps the address assigned.
    Name(TargetAddr, PoolPin),
    /// A fake address nobody holds (expired or never handed out): refuse.
    Unknown,
    /// Anything else: dial the address as it is.
    Direct,
}

pub struct Dns {
    mode: DnsMode,
    resolver: Option<SocketAddr>,
    pool: Option<Arc<FakePool>>,
    proxy: Arc<dyn Upstream>,
    /// Connections to the upstream kept after an answer (RFC 7766 §6.2.1:
    /// reuse them), so a query need not pay for a new proxy connection; each
    /// with the thread it was used on, the only one that takes it again (a
    /// connection is watched by that thread's runtime: the queues of a
    /// multi-queue TUN each run their own).
    idle: std::sync::Mutex<Vec<(Stream, tokio::time::Instant, std::thread::ThreadId)>>,
    stats: DnsStats,
}

/// Kept upstream connections, at most, and for how long.
const MAX_IDLE_UPSTREAM: usize = 4;
const IDLE_UPSTREAM_KEEP: Duration = Duration::from_secs(10);
/// How long a query waits on a kept connection before it is given up for a
/// fresh one: a kept connection that went silent (proxy or server dropped it
/// without a FIN) must not eat the whole `FORWARD_TIMEOUT`.
const KEPT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);

impl Dns {
    /// `pool` must be Some in virtual mode; `resolver` must be Some in tcp mode.
    pub fn new(
        mode: DnsMode,
        resolver: Option<SocketAddr>,
        pool: Option<Arc<FakePool>>,
        proxy: Arc<dyn Upstream>,
    ) -> Result<Dns, String> {
        match mode {
            DnsMode::Tcp if resolver.is_none() => {
                return Err("--dns tcp needs --dns-upstream ADDR".into())
            }
            DnsMode::Virtual if pool.is_none() => {
                return Err("--dns virtual needs a fake pool".into())
            }
            _ => {}
        }
        let pool = if mode == DnsMode::Virtual { pool } else { None };
        Ok(Dns {
            idle: std::sync::Mutex::new(Vec::new()),
            stats: DnsStats::default(),
            mode,
            resolver,
            pool,
            proxy,
        })
    }

    pub fn mode(&self) -> DnsMode {
        self.mode
    }

    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    pub fn pool(&self) -> Option<&Arc<FakePool>> {
        self.pool.as_ref()
    }

    /// Whether queries to port 53 are answered here rather than relayed.
    pub fn intercepts(&self) -> bool {
        self.mode != DnsMode::Udp
    }

    /// Route a new TCP flow from the TUN to `dst`.
    pub fn route_tcp(&self, dst: SocketAddr) -> TcpRoute {
        if self.intercepts() && dst.port() == 53 {
            return TcpRoute::Dns;
        }
        if let Some(pool) = &self.pool {
            if pool.contains(dst.ip()) {
                return match pool.pin(dst.ip()) {
                    Some((name, pin)) => TcpRoute::Name(TargetAddr::Domain(name, dst.port()), pin),
                    None => TcpRoute::Unknown,
                };
            }
        }
        TcpRoute::Direct
    }

    /// The answer to one query, or None to drop it. `udp_limit` is the size
    /// a UDP answer may have (None over TCP); a longer one is replaced by a
    /// truncated answer (TC, RFC 1035 §4.1.1) so the client retries over TCP.
    pub async fn answer(&self, msg: &[u8], udp_limit: Option<usize>) -> Option<Vec<u8>> {
        let resp = self.answer_uncounted(msg, udp_limit).await;
        if let Some(r) = &resp {
            self.stats.answer(r);
        }
        resp
    }

    async fn answer_uncounted(&self, msg: &[u8], udp_limit: Option<usize>) -> Option<Vec<u8>> {
        let q = match Query::parse(msg) {
            Ok(q) => q,
            Err(e) => {
                self.stats.query(None);
                tracing::debug!("dns: {e}, {} bytes", msg.len());
                return message::error_response(msg, e);
            }
        };
        self.stats.query(Some(q.qtype));
        let resp = match self.mode {
            DnsMode::Virtual => self.answer_virtual(&q, msg).await,
            DnsMode::Tcp | DnsMode::Udp => self.forward_or_fail(&q, msg).await,
        };
        match udp_limit {
            Some(lim) if resp.len() > lim.min(edns_udp_size(msg).unwrap_or(UDP_PLAIN_LIMIT)) => {
                let mut t = q.respond_empty(Rcode::NoError);
                t[2] |= 0x02; // TC
                Some(t)
            }
            _ => Some(resp),
        }
    }

    async fn answer_virtual(&self, q: &Query, msg: &[u8]) -> Vec<u8> {
        let is_addr = q.qclass == CLASS_IN && (q.qtype == TYPE_A || q.qtype == TYPE_AAAA);
        if !is_addr {
            if self.resolver.is_some() {
                return self.forward_or_fail(q, msg).await;
            }
            // No upstream for other types: a correct empty answer (NODATA).
            tracing::debug!(
                "dns: {} type {} answered empty (no --dns-upstream)",
                q.name,
                q.qtype
            );
            return q.respond_empty(Rcode::NoError);
        }
        let Some(pool) = &self.pool else {
            return q.respond_empty(Rcode::ServFail);
        };
        let Some(host) = q.name.to_hostname() else {
            // Not a name a proxy could resolve.
            tracing::debug!("dns: refusing unusable name {}", q.name);
            return q.respond_empty(Rcode::Refused);
        };
        let v6 = q.qtype == TYPE_AAAA;
        if v6 && !pool.has_v6() {
            return q.respond_empty(Rcode::NoError);
        }
        match pool.assign(&host, v6) {
            Some(IpAddr::V4(a)) => q.respond_addr(Answer::V4(a), FAKE_TTL),
            Some(IpAddr::V6(a)) => q.respond_addr(Answer::V6(a), FAKE_TTL),
            None => {
                tracing::warn!("dns: fake pool exhausted (every address in use by a flow), {host} not answered");
                q.respond_empty(Rcode::ServFail)
            }
        }
    }

    async fn forward_or_fail(&self, q: &Query, msg: &[u8]) -> Vec<u8> {
        let Some(up) = self.resolver else {
            return q.respond_empty(Rcode::ServFail);
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, self.forward(up, msg)).await {
            Ok(Ok(mut r)) if r.len() >= HEADER_LEN && r[2] & 0x80 != 0 => {
                message::set_id(&mut r, q.id);
                r
            }
            Ok(Ok(_)) => {
                tracing::debug!("dns: {} via {up}: not a DNS response", q.name);
                q.respond_empty(Rcode::ServFail)
            }
            Ok(Err(e)) => {
                tracing::debug!("dns: {} via {up}: {e}", q.name);
                q.respond_empty(Rcode::ServFail)
            }
            Err(_) => {
                tracing::debug!("dns: {} via {up}: timed out", q.name);
                q.respond_empty(Rcode::ServFail)
            }
        }
    }

    /// One query over DNS-over-TCP (RFC 7766) through the proxy, on a kept
    /// connection if there is one (retried once on a fresh one when it fails
    /// or stays silent for `KEPT_UPSTREAM_TIMEOUT`: the server may have
    /// closed it meanwhile, or the path may have lost it).
    async fn forward(&self, up: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
        let len = u16::try_from(msg.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        let mut out = Vec::with_capacity(2 + msg.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(msg);
        if let Some(s) = self.take_idle() {
            match tokio::time::timeout(KEPT_UPSTREAM_TIMEOUT, self.exchange(s, &out)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => tracing::debug!("dns: kept connection to {up}: {e}; trying a new one"),
                Err(_) => tracing::debug!(
                    "dns: kept connection to {up} silent for {KEPT_UPSTREAM_TIMEOUT:?}; trying a new one"
                ),
            }
        }
        let s = self
            .proxy
            .connect(&TargetAddr::Ip(up))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .stream;
        self.exchange(s, &out).await
    }

    async fn exchange(&self, mut s: Stream, framed: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(framed).await?;
        s.flush().await?;
        let r = read_framed(&mut s)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed"))?;
        // Only a connection that just completed an exchange is kept: a
        // cancelled one (timeout) may still have an answer in flight.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since, _)| since.elapsed() < IDLE_UPSTREAM_KEEP);
        if idle.len() < MAX_IDLE_UPSTREAM {
            let here = std::thread::current().id();
            idle.push((s, tokio::time::Instant::now(), here));
        }
        Ok(r)
    }

    fn take_idle(&self) -> Option<Stream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, since, _)| since.elapsed() < IDLE_UPSTREAM_KEEP);
        let here = std::thread::current().id();
        let at = idle.iter().rposition(|(_, _, t)| *t == here)?;
        Some(idle.swap_remove(at).0)
    }

    /// Serve DNS-over-TCP (RFC 7766 §8: two-byte length prefix) on a stream
    /// from the TUN until the client closes it or stays idle.
    pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
    ) -> io::Result<()> {
        loop {
            let msg = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_framed(&mut s)).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(e)) => return Err(e),
            };
            let Some(resp) = self.answer(&msg, None).await else {
                continue;
            };
            let mut out = Vec::with_capacity(2 + resp.len());
            out.extend_from_slice(&(resp.len() as u16).to_be_bytes());
            out.extend_from_slice(&resp);
            s.write_all(&out).await?;
            s.flush().await?;
        }
        let _ = s.shutdown().await;
        Ok(())
    }
}

/// Read one length-prefixed message; None on a clean EOF before it.
async fn read_framed<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    s.read_exact(&mut len[1..]).await?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

/// The UDP payload size an EDNS query advertises (RFC 6891 §6.2.3), if its
/// only additional record is an OPT right after the question.
pub fn edns_udp_size(msg: &[u8]) -> Option<usize> {
    let counts = msg.get(6..12)?;
    if counts[..4] != [0, 0, 0, 0] || counts[4..] == [0, 0] {
        return None;
    }
    // Skip the question: its name (labels only; a pointer ends it) and 4 bytes.
    let mut pos = HEADER_LEN;
    loop {
        let l = *msg.get(pos)? as usize;
        if l == 0 {
            pos += 1;
            break;
        }
        if l & 0xC0 == 0xC0 {
            pos += 2;
            break;
        }
        pos += 1 + l;
    }
    pos += 4;
    // OPT: root name, TYPE 41, CLASS = payload size.
    let opt = msg.get(pos..pos + 5)?;
    (opt[0] == 0 && opt[1..3] == [0, 41])
        .then(|| (u16::from_be_bytes([opt[3], opt[4]]) as usize).max(UDP_PLAIN_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::message::tests::query;
    use crate::upstream::{self, BoxFuture};
    use std::sync::Mutex;

    /// A connector that answers DNS-over-TCP in memory with a canned TXT-ish
    /// response and records what was dialed.
    struct FakeUpstream {
        dialed: Mutex<Vec<TargetAddr>>,
        fail: bool,
        /// Serve every query of a connection, not just the first.
        keep: bool,
        /// After the first answer keep the connection open but never answer.
        silent: bool,
    }

    impl fmt::Display for FakeUpstream {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fake")
        }
    }

    impl Upstream for FakeUpstream {
        fn connect<'a>(
            &'a self,
            target: &'a TargetAddr,
        ) -> BoxFuture<'a, Result<upstream::Connected, upstream::Error>> {
            self.dialed.lock().unwrap().push(target.clone());
            let (fail, keep, silent) = (self.fail, self.keep, self.silent);
            Box::pin(async move {
                if fail {
                    return Err(upstream::Error::Refused);
                }
                let (a, mut b) = tokio::io::duplex(4096);
                tokio::spawn(async move {
                    while let Ok(Some(q)) = read_framed(&mut b).await {
                        let q = Query::parse(&q).unwrap();
                        // Upstream answers with a different id: the caller restores it.
                        let mut r = q.respond_empty(Rcode::NxDomain);
                        r[0] = 0xAA;
                        if q.name.to_string().starts_with("big") {
                            // A long answer: padding stands in for records.
                            r.resize(1000, 0);
                        }
                        let mut out = (r.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&r);
                        b.write_all(&out).await.unwrap();
                        if silent {
                            // Swallow what follows until the client goes.
                            let mut sink = [0u8; 512];
                            while matches!(b.read(&mut sink).await, Ok(n) if n > 0) {}
                            break;
                        }
                        if !keep {
                            break;
                        }
                    }
                });
                Ok(upstream::Connected {
                    stream: Box::new(a),
                    via: "fake".into(),
                })
            })
        }

        fn associate(&self) -> BoxFuture<'_, Result<upstream::Associated, upstream::Error>> {
            Box::pin(async { Err(upstream::Error::CommandNotSupported) })
        }

        fn probe(&self) -> BoxFuture<'_, Result<(), upstream::Error>> {
            Box::pin(async { Ok(()) })
        }

        fn carries_names(&self) -> bool {
            true
        }

        fn carries_udp(&self) -> bool {
            false
        }
    }

    fn dns(mode: DnsMode, upstream: Option<&str>, fail: bool) -> (Dns, Arc<FakeUpstream>) {
        dns_with(mode, upstream, fail, false)
    }

    fn dns_with(
        mode: DnsMode,
        upstream: Option<&str>,
        fail: bool,
        keep: bool,
    ) -> (Dns, Arc<FakeUpstream>) {
        dns_full(mode, upstream, fail, keep, false)
    }

    fn dns_full(
        mode: DnsMode,
        upstream: Option<&str>,
        fail: bool,
        keep: bool,
        silent: bool,
    ) -> (Dns, Arc<FakeUpstream>) {
        let up = Arc::new(FakeUpstream {
            dialed: Mutex::new(Vec::new()),
            fail,
            keep,
            silent,
        });
        let pool = Arc::new(
            FakePool::new(
                "198.19.0.0/16".parse().unwrap(),
                Some("fc00:5::/96".parse().unwrap()),
                &[],
            )
            .unwrap(),
        );
        let d = Dns::new(
            mode,
            upstream.map(|u| parse_resolver(u).unwrap()),
            Some(pool),
            up.clone(),
        )
        .unwrap();
        (d, up)
    }

    fn rcode(r: &[u8]) -> u8 {
        r[3] & 0xF
    }

    #[tokio::test]
    async fn virtual_a_and_aaaa_from_pool() {
        let (d, up) = dns(DnsMode::Virtual, None, false);
        let r = d
            .answer(&query(1, "web.test", TYPE_A), Some(1500))
            .await
            .unwrap();
        assert_eq!(rcode(&r), 0);
        assert_eq!(&r[r.len() - 4..], &[198, 19, 0, 1]);
        let r6 = d
            .answer(&query(2, "web.test", TYPE_AAAA), Some(1500))
            .await
            .unwrap();
        assert_eq!(
            &r6[r6.len() - 16..],
            &"fc00:5::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert!(
            up.dialed.lock().unwrap().is_empty(),
            "A/AAAA must never leave"
        );
        match d.route_tcp("198.19.0.1:80".parse().unwrap()) {
            TcpRoute::Name(t, _pin) => assert_eq!(t, TargetAddr::Domain("web.test".into(), 80)),
            _ => panic!("pool address not routed by name"),
        }
        assert!(matches!(
            d.route_tcp("198.19.9.9:80".parse().unwrap()),
            TcpRoute::Unknown
        ));
        assert!(matches!(
            d.route_tcp("203.0.113.2:53".parse().unwrap()),
            TcpRoute::Dns
        ));
        assert!(matches!(
            d.route_tcp("203.0.113.2:80".parse().unwrap()),
            TcpRoute::Direct
        ));
    }

    #[tokio::test]
    async fn virtual_other_types() {
        let (d, up) = dns(DnsMode::Virtual, None, false);
        let r = d
            .answer(&query(3, "web.test", 15), Some(1500))
            .await
            .unwrap();
        assert_eq!(rcode(&r), 0);
        assert_eq!(&r[6..8], &[0, 0], "NODATA without upstream");
        assert!(up.dialed.lock().unwrap().is_empty());

        let (d, up) = dns(DnsMode::Virtual, Some("203.0.113.2"), false);
        let r = d
            .answer(&query(0x1234, "web.test", 16), Some(1500))
            .await
            .unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(rcode(&r), 3, "upstream's answer passed through");
        assert_eq!(
            *up.dialed.lock().unwrap(),
            vec![TargetAddr::Ip("203.0.113.2:53".parse().unwrap())]
        );
    }

    #[tokio::test]
    async fn tcp_mode_forwards_everything_and_fails_cleanly() {
        let (d, up) = dns(DnsMode::Tcp, Some("[2001:db8:2::2]:5353"), false);
        let r = d.answer(&query(5, "web.test", TYPE_A), None).await.unwrap();
        assert_eq!(rcode(&r), 3);
        assert_eq!(up.dialed.lock().unwrap().len(), 1);
        let (d, _) = dns(DnsMode::Tcp, Some("203.0.113.2"), true);
        let r = d.answer(&query(6, "web.test", TYPE_A), None).await.unwrap();
        assert_eq!(rcode(&r), 2, "SERVFAIL when the proxy refuses");
        assert!(Dns::new(DnsMode::Tcp, None, None, up).is_err());
    }

    #[tokio::test]
    async fn upstream_connections_are_reused() {
        // A server that keeps the connection: one dial for three queries.
        let (d, up) = dns_with(DnsMode::Tcp, Some("203.0.113.2"), false, true);
        for id in 1..=3u16 {
            let r = d
                .answer(&query(id, "web.test", TYPE_A), None)
                .await
                .unwrap();
            assert_eq!(&r[..2], &id.to_be_bytes());
            assert_eq!(rcode(&r), 3);
        }
        assert_eq!(up.dialed.lock().unwrap().len(), 1);
        // A server that closes after each answer: the kept connection fails,
        // the query is retried on a new one and still answered.
        let (d, up) = dns_with(DnsMode::Tcp, Some("203.0.113.2"), false, false);
        for id in 1..=3u16 {
            let r = d
                .answer(&query(id, "web.test", TYPE_A), None)
                .await
                .unwrap();
            assert_eq!(rcode(&r), 3, "query {id}");
        }
        assert_eq!(up.dialed.lock().unwrap().len(), 3);
    }

    /// A kept connection that went silent costs about a second, then the
    /// query is answered on a fresh one: not SERVFAIL after FORWARD_TIMEOUT.
    #[tokio::test(start_paused = true)]
    async fn silent_kept_connection_is_given_up_quickly() {
        let (d, up) = dns_full(DnsMode::Tcp, Some("203.0.113.2"), false, true, true);
        let r = d.answer(&query(1, "web.test", TYPE_A), None).await.unwrap();
        assert_eq!(rcode(&r), 3);
        let t = tokio::time::Instant::now();
        let r = d.answer(&query(2, "web.test", TYPE_A), None).await.unwrap();
        assert_eq!(&r[..2], &2u16.to_be_bytes());
        assert_eq!(rcode(&r), 3, "answered on a fresh connection, not SERVFAIL");
        assert!(t.elapsed() < FORWARD_TIMEOUT / 2, "took {:?}", t.elapsed());
        assert_eq!(up.dialed.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn long_udp_answers_are_truncated() {
        let (d, _) = dns(DnsMode::Tcp, Some("203.0.113.2"), false);
        // With EDNS (4096) a 1000-byte answer fits; over TCP anything fits.
        let r = d
            .answer(&query(1, "big.test", 16), Some(1472))
            .await
            .unwrap();
        assert_eq!(r.len(), 1000);
        let r = d.answer(&query(1, "big.test", 16), None).await.unwrap();
        assert_eq!(r.len(), 1000);
        // Without EDNS the limit is 512 (RFC 1035 §4.2.1): TC, no answers.
        let mut plain = query(2, "big.test", 16);
        plain[11] = 0;
        plain.truncate(plain.len() - 11);
        let r = d.answer(&plain, Some(1472)).await.unwrap();
        assert!(r.len() <= 512);
        assert_eq!(&r[..2], &[0, 2]);
        assert_ne!(r[2] & 0x02, 0, "TC set");
        // The path limit applies too.
        let r = d
            .answer(&query(3, "big.test", 16), Some(600))
            .await
            .unwrap();
        assert_ne!(r[2] & 0x02, 0, "TC set");
    }

    #[tokio::test]
    async fn malformed_gets_formerr_or_nothing() {
        let (d, _) = dns(DnsMode::Virtual, None, false);
        assert_eq!(d.answer(&[1, 2, 3], Some(512)).await, None);
        let r = d
            .answer(&query(7, "web.test", TYPE_A)[..14], Some(512))
            .await
            .unwrap();
        assert_eq!(rcode(&r), 1);
    }

    #[tokio::test]
    async fn serves_dns_over_tcp_streams() {
        let (d, _) = dns(DnsMode::Virtual, None, false);
        let (mut c, s) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { d.serve_stream(s).await });
        for (id, name) in [(1u16, "a.test"), (2, "b.test")] {
            let q = query(id, name, TYPE_A);
            let mut out = (q.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&q);
            c.write_all(&out).await.unwrap();
            let r = read_framed(&mut c).await.unwrap().unwrap();
            assert_eq!(&r[..2], &id.to_be_bytes());
            assert_eq!(r[r.len() - 1], id as u8);
        }
        drop(c);
        server.await.unwrap().unwrap();
    }

    #[test]
    fn edns_size() {
        assert_eq!(edns_udp_size(&query(1, "web.test", TYPE_A)), Some(4096));
        let mut plain = query(1, "web.test", TYPE_A);
        plain[11] = 0;
        assert_eq!(edns_udp_size(&plain), None);
        assert_eq!("virtual".parse::<DnsMode>(), Ok(DnsMode::Virtual));
        assert!("doh".parse::<DnsMode>().is_err());
        assert_eq!(parse_resolver("[::1]:5353").unwrap().port(), 5353);
        assert!(parse_resolver("x").is_err());
    }
}
