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
use super::mmsg::{self, Got, Out, Slots, BATCH, HEAD_ROOM};
use super::reply::{refuse, Proto, Refusal, Request, SessionLog};
use super::rules::is_host_address;
use crate::net::unmap;
use crate::socks::codec;
use crate::socks::TargetAddr;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
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
    let slots = match Slots::new() {
        Ok(s) => s,
        Err(e) => return refuse(control, req.proto, Refusal::UdpBind(e)).await,
    };
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
        slots,
        got: Vec::with_capacity(BATCH),
        q4: Vec::with_capacity(BATCH),
        q6: Vec::with_capacity(BATCH),
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
    mmsg::deepen(&s);
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
    /// Where datagrams wait between receiving and sending, either way
    /// (one direction at a time: the association is one task).
    slots: Slots,
    got: Vec<Got>,
    /// Datagrams to send on `out4` / `out6` (or, for `q4`, back to the
    /// client): the batch being relayed.
    q4: Vec<Out>,
    q6: Vec<Out>,
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
                r = self.relay.readable() => {
                    if r.is_ok() {
                        self.relay_out(log).await;
                    }
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

    /// The client's datagrams waiting on the relay socket, one batch:
    /// each checked, its header taken off, and all sent on with one call
    /// per outgoing socket.
    async fn relay_out(&mut self, log: &mut SessionLog) {
        let (relay, slots, got) = (&self.relay, &mut self.slots, &mut self.got);
        match relay.try_io(Interest::READABLE, || {
            mmsg::recv(relay.as_fd(), slots, 0, got)
        }) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return debug!("udp relay recv: {e}"),
        }
        self.q4.clear();
        self.q6.clear();
        for i in 0..self.got.len() {
            if let Some(out) = self.route(i).await {
                if out.to.is_ipv4() {
                    &mut self.q4
                } else {
                    &mut self.q6
                }
                .push(out);
            }
        }
        for (sock, q) in [(&self.out4, &self.q4), (&self.out6, &self.q6)] {
            if let Some(sock) = sock.as_ref().filter(|_| !q.is_empty()) {
                let (n, bytes) = flush(sock, &self.slots, q, &mut self.dropped).await;
                log.datagrams_up += n;
                log.up += bytes;
                self.last = Instant::now();
            }
        }
    }

    /// The client's datagram `i` of the batch: where it goes (its payload
    /// after the header), or None when it is dropped (and counted).
    async fn route(&mut self, i: usize) -> Option<Out> {
        let Got { len, from } = self.got[i];
        if unmap(from.ip()) != self.client_ip || self.client_port.is_some_and(|p| p != from.port())
        {
            self.dropped += 1;
            return None;
        }
        self.client_port = Some(from.port());
        let h = match codec::parse_udp_header(&self.slots.get(i)[..len]) {
            Ok(h) if h.frag == 0 => h,
            _ => {
                self.dropped += 1;
                return None;
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
            return None;
        };
        let who = super::rules::Subject {
            user: self.user.as_deref(),
            client: self.client_ip,
            cmd: crate::socks::codec::cmd::UDP_ASSOCIATE,
        };
        if let Err(rule) = self.cfg.rules.user_verdict(&who, Some(dest)) {
            debug!(%dest, "udp datagram refused by rule {rule:?}");
            self.dropped += 1;
            return None;
        }
        if let Err(e) = self.out_socket(dest.is_ipv6()).await {
            debug!("udp out bind: {e}");
            self.dropped += 1;
            return None;
        }
        Some(Out {
            slot: i,
            start: h.header_len,
            end: len,
            to: dest,
            counted: len - h.header_len,
        })
    }

    /// The outgoing socket of a family, made on first use.
    async fn out_socket(&mut self, v6: bool) -> io::Result<()> {
        let slot = if v6 { &mut self.out6 } else { &mut self.out4 };
        if slot.is_none() {
            let any: SocketAddr = if v6 {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(any).await?;
            mmsg::deepen(&s);
            *slot = Some(s);
        }
        Ok(())
    }

    /// The remotes' datagrams waiting on the outgoing socket of a family,
    /// one batch: each given a header with its source, in its slot in front
    /// of the payload, and all sent to the client in one call.
    async fn relay_back(&mut self, v6: bool, log: &mut SessionLog) {
        let sock = if v6 { &self.out6 } else { &self.out4 };
        let Some(sock) = sock.as_ref() else { return };
        let (slots, got) = (&mut self.slots, &mut self.got);
        if sock
            .try_io(Interest::READABLE, || {
                mmsg::recv(sock.as_fd(), slots, HEAD_ROOM, got)
            })
            .is_err()
        {
            return;
        }
        let Some(port) = self.client_port else {
            self.dropped += self.got.len() as u64;
            return;
        };
        let client = SocketAddr::new(self.client_ip, port);
        self.q4.clear();
        for i in 0..self.got.len() {
            let Got { len, from } = self.got[i];
            let src = SocketAddr::new(unmap(from.ip()), from.port());
            if !allowed(self.cfg, &mut self.hosts, src.ip(), self.server_ip) {
                self.dropped += 1;
                continue;
            }
            let (h, n) = codec::udp_header_ip(src);
            let start = HEAD_ROOM - n;
            self.slots.get_mut(i)[start..HEAD_ROOM].copy_from_slice(&h[..n]);
            self.q4.push(Out {
                slot: i,
                start,
                end: HEAD_ROOM + len,
                to: client,
                counted: len,
            });
        }
        let (n, bytes) = flush(&self.relay, &self.slots, &self.q4, &mut self.dropped).await;
        log.datagrams_down += n;
        log.down += bytes;
        if n > 0 {
            self.last = Instant::now();
        }
    }
}

/// Send every datagram of `q` on `sock`, as many per call as it takes,
/// waiting while its buffer is full; one the kernel refuses is dropped and
/// counted. The datagrams and payload bytes sent.
async fn flush(sock: &UdpSocket, slots: &Slots, q: &[Out], dropped: &mut u64) -> (u64, u64) {
    let (mut done, mut sent, mut bytes) = (0, 0u64, 0u64);
    while done < q.len() {
        match sock.try_io(Interest::WRITABLE, || {
            mmsg::send(sock.as_fd(), slots, &q[done..])
        }) {
            Ok(k) if k > 0 => {
                bytes += q[done..done + k]
                    .iter()
                    .map(|o| o.counted as u64)
                    .sum::<u64>();
                done += k;
                sent += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sock.writable().await.is_err() {
                    break;
                }
            }
            r => {
                if let Err(e) = r {
                    debug!(to = %q[done].to, "udp send: {e}");
                }
                *dropped += 1;
                done += 1;
            }
        }
    }
    *dropped += (q.len() - done) as u64;
    (sent, bytes)
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
