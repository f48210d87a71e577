//! UDP ASSOCIATE (RFC 1928 §7).
//!
//! One association = one relay socket, bound to the address the client
//! reached the server on (so BND.ADDR is never 0.0.0.0), plus outgoing sockets
//! (one per address family, made on first use). Datagrams are accepted only
//! from the control connection's client IP, and from the first source port
//! seen. DST.ADDR:DST.PORT of the request is not used to lock the port: behind
//! a NAT the client cannot know the port its datagrams will come from, and
//! RFC 1928 §7 only says the server MAY use it to limit access. Replies from any remote are relayed
//! back (endpoint-independent mapping and filtering: "full cone"), except from
//! destinations the rules refuse. FRAG != 0 is dropped (no reassembly).
//! The association ends with its control connection or after the idle timeout.

use super::config::Config;
use super::reply::{refuse, Proto, Refusal, Request, SessionLog};
use super::rules::is_host_address;
use crate::net::unmap;
use crate::socks::codec;
use crate::socks::TargetAddr;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Duration, Instant};
use tracing::debug;

/// Name → address cache per association, so a client sending many datagrams
/// to one name does not resolve it for each. Failures are cached too (for a
/// shorter time): each lookup may block the association for up to
/// `LOOKUP_TIMEOUT`, and a name that does not resolve must not do that to
/// every datagram.
const NAME_TTL: Duration = Duration::from_secs(60);
const NAME_FAIL_TTL: Duration = Duration::from_secs(10);
const NAME_CACHE_MAX: usize = 256;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

async fn readable(s: Option<&UdpSocket>) -> io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn run(
    cfg: &Config,
    mut control: TcpStream,
    req: &Request,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    log: &mut SessionLog,
) -> String {
    let Some(local) = local else {
        return refuse(control, req.proto, Refusal::NoLocalAddress).await;
    };
    let (relay, bound) = match relay_socket(local.ip()).await {
        Ok(x) => x,
        Err(e) => return refuse(control, req.proto, Refusal::UdpBind(e)).await,
    };
    log.via = Some(bound);
    if let Err(e) = control.write_all(&Proto::V5.success(bound)).await {
        return format!("client gone before reply: {e}");
    }
    let mut a = Association {
        cfg,
        user: super::reply::who_of(cfg, log),
        relay,
        client_ip: unmap(peer.ip()),
        client_port: None,
        server_ip: Some(local.ip()),
        out4: None,
        out6: None,
        buf: vec![0u8; 65536],
        out: Vec::with_capacity(65536 + 262),
        names: NameCache::default(),
        hosts: HashMap::new(),
        dropped: 0,
        last: Instant::now(),
    };
    let why = a.serve(&mut control, log).await;
    if a.dropped > 0 {
        format!("{why} ({} datagrams dropped)", a.dropped)
    } else {
        why
    }
}

/// The relay socket, on the address the client reached the server on, and
/// its address (BND.ADDR:BND.PORT).
async fn relay_socket(ip: IpAddr) -> io::Result<(UdpSocket, SocketAddr)> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let bound = s.local_addr()?;
    Ok((s, bound))
}

/// One association's state. The bytes relayed go straight into the log line
/// (`SessionLog`), so a shutdown that drops the future mid-way still reports
/// them.
struct Association<'a> {
    cfg: &'a Config,
    /// The authenticated user, for the per-user rules.
    user: Option<String>,
    relay: UdpSocket,
    client_ip: IpAddr,
    /// The client's source port, from its first datagram.
    client_port: Option<u16>,
    server_ip: Option<IpAddr>,
    /// Outgoing sockets, made on first use.
    out4: Option<UdpSocket>,
    out6: Option<UdpSocket>,
    buf: Vec<u8>,
    out: Vec<u8>,
    names: NameCache,
    hosts: HashMap<IpAddr, bool>,
    dropped: u64,
    /// The last datagram relayed, either way (the idle timeout's start).
    last: Instant,
}

impl Association<'_> {
    /// Relay until the control connection ends, the association idles out
    /// or the server stops; returns why.
    async fn serve(&mut self, control: &mut TcpStream, log: &mut SessionLog) -> String {
        let cfg = self.cfg;
        let idle = cfg.idle_timeout;
        let sleep = tokio::time::sleep(idle);
        tokio::pin!(sleep);
        let stop = cfg.stopped();
        tokio::pin!(stop);
        let mut ctl = [0u8; 256];
        loop {
            tokio::select! {
                _ = &mut stop => return "shutdown".to_string(),
                r = control.read(&mut ctl) => match r {
                    Ok(0) => return "control connection closed".to_string(),
                    Err(e) => return format!("control connection error: {e}"),
                    Ok(_) => {}
                },
                r = self.relay.recv_from(&mut self.buf) => match r {
                    Ok((n, src)) => self.forward(n, src, log).await,
                    Err(e) => debug!("udp relay recv: {e}"),
                },
                r = readable(self.out4.as_ref()) => {
                    if r.is_ok() {
                        self.relay_back(false, log).await;
                    }
                },
                r = readable(self.out6.as_ref()) => {
                    if r.is_ok() {
                        self.relay_back(true, log).await;
                    }
                },
                _ = &mut sleep => {
                    let deadline = self.last + idle;
                    if deadline <= Instant::now() {
                        return "idle timeout".to_string();
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }

    /// The client's datagram of `n` bytes in `buf`: checked, its header
    /// taken off, sent to its destination.
    async fn forward(&mut self, n: usize, src: SocketAddr, log: &mut SessionLog) {
        if unmap(src.ip()) != self.client_ip || self.client_port.is_some_and(|p| p != src.port()) {
            self.dropped += 1;
            return;
        }
        self.client_port = Some(src.port());
        let h = match codec::parse_udp_header(&self.buf[..n]) {
            Ok(h) if h.frag == 0 => h,
            _ => {
                self.dropped += 1;
                return;
            }
        };
        let dest = match &h.addr {
            TargetAddr::Ip(a) => Some(SocketAddr::new(unmap(a.ip()), a.port())),
            TargetAddr::Domain(name, port) => self.names.get(name, *port, lookup).await,
        };
        let Some(dest) =
            dest.filter(|d| allowed(self.cfg, &mut self.hosts, d.ip(), self.server_ip))
        else {
            self.dropped += 1;
            return;
        };
        let who = super::rules::Subject {
            user: self.user.as_deref(),
            client: self.client_ip,
            cmd: crate::socks::codec::cmd::UDP_ASSOCIATE,
        };
        if let Err(rule) = self.cfg.rules.user_verdict(&who, Some(dest)) {
            debug!(%dest, "udp datagram refused by rule {rule:?}");
            self.dropped += 1;
            return;
        }
        let slot = if dest.is_ipv4() {
            &mut self.out4
        } else {
            &mut self.out6
        };
        if slot.is_none() {
            let any: SocketAddr = if dest.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            match UdpSocket::bind(any).await {
                Ok(s) => *slot = Some(s),
                Err(e) => {
                    debug!("udp out bind: {e}");
                    self.dropped += 1;
                    return;
                }
            }
        }
        let Some(sock) = slot.as_ref() else { return };
        match sock.send_to(&self.buf[h.header_len..n], dest).await {
            Ok(m) => {
                log.up += m as u64;
                log.datagrams_up += 1;
                self.last = Instant::now();
            }
            Err(e) => {
                debug!(%dest, "udp send: {e}");
                self.dropped += 1;
            }
        }
    }

    /// A remote's datagram, on the outgoing socket of its family: given a
    /// header with its source and sent to the client.
    async fn relay_back(&mut self, v6: bool, log: &mut SessionLog) {
        let sock = if v6 { &self.out6 } else { &self.out4 };
        let Some(sock) = sock.as_ref() else { return };
        let (n, src) = match sock.try_recv_from(&mut self.buf) {
            Ok(x) => x,
            Err(_) => return,
        };
        let src = SocketAddr::new(unmap(src.ip()), src.port());
        let Some(port) = self.client_port else {
            self.dropped += 1;
            return;
        };
        if !allowed(self.cfg, &mut self.hosts, src.ip(), self.server_ip) {
            self.dropped += 1;
            return;
        }
        self.out.clear();
        let _ = codec::encode_udp_header(&TargetAddr::Ip(src), &mut self.out);
        self.out.extend_from_slice(&self.buf[..n]);
        match self
            .relay
            .send_to(&self.out, SocketAddr::new(self.client_ip, port))
            .await
        {
            Ok(_) => {
                log.down += n as u64;
                log.datagrams_down += 1;
                self.last = Instant::now();
            }
            Err(e) => {
                debug!("udp send to client: {e}");
                self.dropped += 1;
            }
        }
    }
}

/// The rules, plus: one of this host's own addresses (any interface) only
/// with `--allow-dest`. Whether an address is the host's is cached per
/// association: the check costs a socket.
fn allowed(
    cfg: &Config,
    hosts: &mut HashMap<IpAddr, bool>,
    ip: IpAddr,
    server_ip: Option<IpAddr>,
) -> bool {
    if !cfg.rules.dest_allowed(ip, server_ip) {
        return false;
    }
    if hosts.len() >= NAME_CACHE_MAX {
        hosts.clear();
    }
    let host = *hosts.entry(ip).or_insert_with(|| is_host_address(ip));
    !host || cfg.rules.host_address_allowed(ip)
}

async fn lookup(name: String, port: u16) -> Option<IpAddr> {
    let mut it = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .ok()?
        .ok()?;
    it.next().map(|a| unmap(a.ip()))
}

#[derive(Default)]
struct NameCache {
    /// The address, or None for a failed lookup, and when it was looked up.
    map: HashMap<String, (Option<IpAddr>, Instant)>,
}

impl NameCache {
    async fn get<F, Fut>(&mut self, name: &str, port: u16, lookup: F) -> Option<SocketAddr>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: std::future::Future<Output = Option<IpAddr>>,
    {
        let now = Instant::now();
        if let Some((ip, t)) = self.map.get(name) {
            let ttl = if ip.is_some() {
                NAME_TTL
            } else {
                NAME_FAIL_TTL
            };
            if now.duration_since(*t) < ttl {
                return ip.map(|ip| SocketAddr::new(ip, port));
            }
        }
        let ip = lookup(name.to_string(), port).await;
        if self.map.len() >= NAME_CACHE_MAX {
            self.map.clear();
        }
        self.map.insert(name.to_string(), (ip, Instant::now()));
        ip.map(|ip| SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn failed_lookups_are_cached_for_a_while() {
        let calls = Cell::new(0);
        let mut c = NameCache::default();
        let fail = |_: String, _: u16| {
            calls.set(calls.get() + 1);
            async { None }
        };
        assert_eq!(c.get("nx.test", 53, fail).await, None);
        assert_eq!(c.get("nx.test", 53, fail).await, None);
        assert_eq!(calls.get(), 1, "a failing name was looked up again at once");
        tokio::time::advance(NAME_FAIL_TTL).await;
        assert_eq!(c.get("nx.test", 53, fail).await, None);
        assert_eq!(calls.get(), 2, "a failure is cached for a short time only");

        let ok = |_: String, _: u16| {
            calls.set(calls.get() + 1);
            async { Some(IpAddr::from([203, 0, 113, 10])) }
        };
        let want = Some("203.0.113.10:7".parse().unwrap());
        assert_eq!(c.get("web.test", 7, ok).await, want);
        tokio::time::advance(NAME_FAIL_TTL).await;
        assert_eq!(c.get("web.test", 7, ok).await, want);
        assert_eq!(calls.get(), 3);
    }
}
