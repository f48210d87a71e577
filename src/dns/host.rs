//! Resolving a name on the host, for a flow that a rule sends `direct` to a
//! fake address: the one case where a name is resolved outside the proxy
//! (logged at info by the caller). Queries go over UDP with the proxy
//! sockets' options (`--fwmark`, `--bind-interface`) so they leave by the
//! same way as every socket of sockstun's; an answer inside the virtual-DNS
//! pool means the resolver asked is sockstun itself, and is refused as a loop.

use super::message::{build_query, parse_addresses, TYPE_A, TYPE_AAAA};
use super::pool::FakePool;
use crate::net::SocketOpts;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names kept; past it, expired entries go, then all (a flood of distinct
/// names must not grow memory).
const CACHE_MAX: usize = 4096;
/// Bounds on how long an answer is kept, whatever its TTL says.
const TTL_MIN: Duration = Duration::from_secs(5);
const TTL_MAX: Duration = Duration::from_secs(300);
/// RCODE 3 (RFC 1035 §4.1.1).
const NXDOMAIN: u8 = 3;

#[derive(Debug)]
pub enum ResolveError {
    /// No resolver configured (none in resolv.conf, no --direct-dns).
    NoServer,
    /// The name does not exist (NXDOMAIN) or has no address.
    NotFound,
    /// No resolver answered in time.
    Timeout,
    /// The resolver answered with a virtual-DNS address: it is sockstun's
    /// own DNS (the host's resolver points into the TUN).
    Loop(SocketAddr),
    Io(io::Error),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::NoServer => write!(f, "no resolver on the host (set --direct-dns)"),
            ResolveError::NotFound => write!(f, "no address for the name"),
            ResolveError::Timeout => write!(f, "the host's resolver did not answer"),
            ResolveError::Loop(s) => write!(
                f,
                "resolver {s} is sockstun's own virtual DNS (it answered with a fake address): \
                 set --direct-dns to a real resolver"
            ),
            ResolveError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// An answer kept: the addresses, or (empty) a name that has none or that no
/// resolver could give, kept `FAILED_FOR` so a flow's every datagram does
/// not ask again.
struct Cached {
    addrs: Arc<[IpAddr]>,
    until: Instant,
}

/// How long a failure (no such name, no answer) is remembered.
const FAILED_FOR: Duration = Duration::from_secs(5);

/// A stub resolver over the resolvers of the host (or `--direct-dns`).
pub struct HostResolver {
    servers: Vec<SocketAddr>,
    opts: SocketOpts,
    pool: Option<Arc<FakePool>>,
    timeout: Duration,
    cache: Mutex<HashMap<Box<str>, Cached>>,
    ids: AtomicU64,
    seed: std::collections::hash_map::RandomState,
}

impl HostResolver {
    pub fn new(
        servers: Vec<SocketAddr>,
        opts: SocketOpts,
        pool: Option<Arc<FakePool>>,
        timeout: Duration,
    ) -> HostResolver {
        HostResolver {
            servers,
            opts,
            pool,
            timeout,
            cache: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
            seed: Default::default(),
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// A query id an off-path sender cannot guess (RFC 5452 §9.2), without
    /// a random-number crate: a keyed hash (std's SipHash with a random key)
    /// of a counter.
    fn next_id(&self) -> u16 {
        let mut h = self.seed.build_hasher();
        h.write_u64(self.ids.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// The addresses of `name`, IPv4 first, from the cache or the resolvers
    /// in order (each asked for A and AAAA at once).
    pub async fn resolve(&self, name: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(name).filter(|c| c.until > now) {
                return match c.addrs.is_empty() {
                    true => Err(ResolveError::NotFound),
                    false => Ok(c.addrs.clone()),
                };
            }
        }
        if self.servers.is_empty() {
            return Err(ResolveError::NoServer);
        }
        let mut last = ResolveError::Timeout;
        for &server in &self.servers {
            let (a, aaaa) = tokio::join!(
                self.ask(server, name, TYPE_A),
                self.ask(server, name, TYPE_AAAA)
            );
            let (addrs, ttl) = match (a, aaaa) {
                // The name does not exist: another resolver would say the
                // same, and need not hear the name.
                (Err(ResolveError::NotFound), _) | (_, Err(ResolveError::NotFound)) => {
                    self.remember(name, Arc::from(Vec::new()), now + FAILED_FOR);
                    return Err(ResolveError::NotFound);
                }
                (Ok((mut v4, t4)), Ok((v6, t6))) => {
                    // A side with no address has no TTL to go by.
                    let ttl = match (v4.is_empty(), v6.is_empty()) {
                        (false, false) => t4.min(t6),
                        (true, _) => t6,
                        (_, true) => t4,
                    };
                    v4.extend(v6);
                    (v4, ttl)
                }
                (Ok(r), Err(_)) | (Err(_), Ok(r)) => r,
                (Err(e), Err(_)) => {
                    last = e;
                    continue;
                }
            };
            if let Some(pool) = &self.pool {
                if addrs.iter().any(|a| pool.contains(*a)) {
                    return Err(ResolveError::Loop(server));
                }
            }
            if addrs.is_empty() {
                self.remember(name, Arc::from(Vec::new()), now + FAILED_FOR);
                return Err(ResolveError::NotFound);
            }
            let addrs: Arc<[IpAddr]> = addrs.into();
            let keep = Duration::from_secs(ttl.into()).clamp(TTL_MIN, TTL_MAX);
            self.remember(name, addrs.clone(), now + keep);
            return Ok(addrs);
        }
        if matches!(last, ResolveError::Timeout) {
            self.remember(name, Arc::from(Vec::new()), now + FAILED_FOR);
        }
        Err(last)
    }

    fn remember(&self, name: &str, addrs: Arc<[IpAddr]>, until: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(name.into(), Cached { addrs, until });
    }

    /// One query to one resolver: the addresses (possibly none, NODATA) and
    /// their smallest TTL. NXDOMAIN is `NotFound`; silence is `Timeout`.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &str,
        qtype: u16,
    ) -> Result<(Vec<IpAddr>, u32), ResolveError> {
        let id = self.next_id();
        let query = build_query(id, name, qtype).ok_or(ResolveError::NotFound)?;
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = self.opts.udp_socket(local).map_err(ResolveError::Io)?;
        sock.connect(server).await.map_err(ResolveError::Io)?;
        sock.send(&query).await.map_err(ResolveError::Io)?;
        let mut buf = [0u8; 1500];
        let read = async {
            loop {
                let n = sock.recv(&mut buf).await?;
                // Not the answer to this query (another id, garbage): keep
                // waiting for the one that is.
                if let Ok(a) = parse_addresses(&buf[..n], id, qtype) {
                    return Ok::<_, io::Error>(a);
                }
            }
        };
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(ResolveError::Timeout),
            Ok(Err(e)) => Err(ResolveError::Io(e)),
            Ok(Ok(a)) if a.rcode == NXDOMAIN => Err(ResolveError::NotFound),
            Ok(Ok(a)) if a.rcode != 0 => Err(ResolveError::Timeout),
            Ok(Ok(a)) => Ok((a.addrs, a.ttl)),
        }
    }
}

/// The `nameserver` lines of a resolv.conf (port 53), in order.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) has no SocketAddr form here.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# x\nsearch lan\nnameserver 192.0.2.53\nnameserver  2001:db8::53 \noptions ndots:1\nnameserver fe80::1%eth0\n";
        assert_eq!(
            resolv_conf_servers(t),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }

    /// Against a resolver on loopback: the answer is read and cached, a
    /// fake-pool answer is a loop, a silent resolver a timeout.
    #[tokio::test]
    async fn answers_cache_loops_and_silence() {
        use super::super::message::{Answer, Query};
        let srv = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = srv.local_addr().unwrap();
        let answers = Arc::new(AtomicU64::new(0));
        let n = answers.clone();
        tokio::spawn(async move {
            let mut b = [0u8; 512];
            while let Ok((len, from)) = srv.recv_from(&mut b).await {
                let q = Query::parse(&b[..len]).unwrap();
                n.fetch_add(1, Ordering::Relaxed);
                let name = q.name.to_hostname().unwrap();
                let last = if name.starts_with("loop") { 9 } else { 5 };
                let resp = match q.qtype {
                    TYPE_A => q.respond_addr(Answer::V4(Ipv4Addr::new(198, 51, 100, last)), 60),
                    _ => q.respond_empty(super::super::message::Rcode::NoError),
                };
                let _ = srv.send_to(&resp, from).await;
            }
        });
        let pool = FakePool::new("198.51.100.8/30".parse().unwrap(), None, &[]).unwrap();
        let r = HostResolver::new(
            vec![addr],
            SocketOpts::default(),
            Some(Arc::new(pool)),
            Duration::from_secs(2),
        );
        let a = r.resolve("web.test").await.unwrap();
        assert_eq!(&a[..], &[IpAddr::from([198, 51, 100, 5])]);
        let asked = answers.load(Ordering::Relaxed);
        assert_eq!(asked, 2, "A and AAAA");
        r.resolve("web.test").await.unwrap();
        assert_eq!(answers.load(Ordering::Relaxed), asked, "cached");
        let e = r.resolve("loop.test").await.unwrap_err();
        assert!(matches!(e, ResolveError::Loop(s) if s == addr), "{e}");
        // Nothing listens here: the query times out (or is refused at once).
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = HostResolver::new(
            vec![silent.local_addr().unwrap()],
            SocketOpts::default(),
            None,
            Duration::from_millis(200),
        );
        assert!(matches!(
            r.resolve("x.test").await,
            Err(ResolveError::Timeout)
        ));
    }
}
