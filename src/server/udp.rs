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
use crate::socks::codec::{self, unmap};
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
    let server_ip = Some(local.ip());
    let relay_sock = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
        Ok(s) => s,
        Err(e) => return refuse(control, req.proto, Refusal::UdpBind(e)).await,
    };
    let bound = match relay_sock.local_addr() {
        Ok(a) => a,
        Err(e) => return refuse(control, req.proto, Refusal::UdpBind(e)).await,
    };
    log.via = Some(bound);
    let client_ip = unmap(peer.ip());
    let mut client_port: Option<u16> = None;
    if let Err(e) = control.write_all(&Proto::V5.success(bound)).await {
        return format!("client gone before reply: {e}");
    }

    let mut out4: Option<UdpSocket> = None;
    let mut out6: Option<UdpSocket> = None;
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536 + 262);
    let mut ctl = [0u8; 256];
    let mut names = NameCache::default();
    let mut hosts: HashMap<IpAddr, bool> = HashMap::new();
    // Bytes go straight into the log line, so a shutdown that drops this
    // future mid-way still reports them.
    let mut dropped = 0u64;
    let idle = cfg.idle_timeout;
    let mut last = Instant::now();
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);

    let stop = cfg.stopped();
    tokio::pin!(stop);
    let why = loop {
        tokio::select! {
            _ = &mut stop => break "shutdown".to_string(),
            r = control.read(&mut ctl) => match r {
                Ok(0) => break "control connection closed".to_string(),
                Err(e) => break format!("control connection error: {e}"),
                Ok(_) => {}
            },
            r = relay_sock.recv_from(&mut buf) => {
                let (n, src) = match r {
                    Ok(x) => x,
                    Err(e) => { debug!("udp relay recv: {e}"); continue; }
                };
                if unmap(src.ip()) != client_ip || client_port.is_some_and(|p| p != src.port()) {
                    dropped += 1;
                    continue;
                }
                client_port = Some(src.port());
                let h = match codec::parse_udp_header(&buf[..n]) {
                    Ok(h) if h.frag == 0 => h,
                    _ => { dropped += 1; continue; }
                };
                let dest = match &h.addr {
                    TargetAddr::Ip(a) => Some(SocketAddr::new(unmap(a.ip()), a.port())),
                    TargetAddr::Domain(name, port) => names.get(name, *port, lookup).await,
                };
                let Some(dest) = dest.filter(|d| allowed(cfg, &mut hosts, d.ip(), server_ip)) else {
                    dropped += 1;
                    continue;
                };
                let slot = if dest.is_ipv4() { &mut out4 } else { &mut out6 };
                if slot.is_none() {
                    let any: SocketAddr = if dest.is_ipv4() {
                        (Ipv4Addr::UNSPECIFIED, 0).into()
                    } else {
                        (Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    match UdpSocket::bind(any).await {
                        Ok(s) => *slot = Some(s),
                        Err(e) => { debug!("udp out bind: {e}"); dropped += 1; continue; }
                    }
                }
                let Some(sock) = slot.as_ref() else { continue };
                match sock.send_to(&buf[h.header_len..n], dest).await {
                    Ok(m) => { log.up += m as u64; last = Instant::now(); }
                    Err(e) => { debug!(%dest, "udp send: {e}"); dropped += 1; }
                }
            },
            r = readable(out4.as_ref()) => {
                if r.is_ok() {
                    if let Some(s) = out4.as_ref() {
                        relay_back(cfg, &mut hosts, s, &relay_sock, client_ip, client_port, server_ip, &mut buf, &mut out,
                                   &mut log.down, &mut dropped, &mut last).await;
                    }
                }
            },
            r = readable(out6.as_ref()) => {
                if r.is_ok() {
                    if let Some(s) = out6.as_ref() {
                        relay_back(cfg, &mut hosts, s, &relay_sock, client_ip, client_port, server_ip, &mut buf, &mut out,
                                   &mut log.down, &mut dropped, &mut last).await;
                    }
                }
            },
            _ = &mut sleep => {
                let deadline = last + idle;
                if deadline <= Instant::now() {
                    break "idle timeout".to_string();
                }
                sleep.as_mut().reset(deadline);
            }
        }
    };
    if dropped > 0 {
        format!("{why} ({dropped} datagrams dropped)")
    } else {
        why
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_back(
    cfg: &Config,
    hosts: &mut HashMap<IpAddr, bool>,
    from_sock: &UdpSocket,
    relay_sock: &UdpSocket,
    client_ip: IpAddr,
    client_port: Option<u16>,
    server_ip: Option<IpAddr>,
    buf: &mut [u8],
    out: &mut Vec<u8>,
    received: &mut u64,
    dropped: &mut u64,
    last: &mut Instant,
) {
    let (n, src) = match from_sock.try_recv_from(buf) {
        Ok(x) => x,
        Err(_) => return,
    };
    let src = SocketAddr::new(unmap(src.ip()), src.port());
    let Some(port) = client_port else {
        *dropped += 1;
        return;
    };
    if !allowed(cfg, hosts, src.ip(), server_ip) {
        *dropped += 1;
        return;
    }
    out.clear();
    let _ = codec::encode_udp_header(&TargetAddr::Ip(src), out);
    out.extend_from_slice(&buf[..n]);
    match relay_sock
        .send_to(out, SocketAddr::new(client_ip, port))
        .await
    {
        Ok(_) => {
            *received += n as u64;
            *last = Instant::now();
        }
        Err(e) => {
            debug!("udp send to client: {e}");
            *dropped += 1;
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
