//! CONNECT: resolve, check the rules on each address, dial, reply, relay.

use super::config::Config;
use super::reply::{refuse, reply_for_relay, who_of, Refusal, Relaying, Request, SessionLog};
use super::rules::Subject;
use crate::net::unmap;
use crate::net::SocketOpts;
use crate::socks::TargetAddr;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Resolve a destination. Names are resolved here, at the server, as the
/// client asked (that is what SOCKS4a and SOCKS5 domain requests are for).
pub(super) async fn resolve(cfg: &Config, dest: &TargetAddr) -> io::Result<Vec<SocketAddr>> {
    match dest {
        TargetAddr::Ip(a) => Ok(vec![*a]),
        TargetAddr::Domain(name, port) => {
            let r = tokio::time::timeout(
                cfg.connect_timeout,
                tokio::net::lookup_host((name.as_str(), *port)),
            )
            .await;
            match r {
                Ok(Ok(it)) => {
                    let v: Vec<SocketAddr> = it.collect();
                    if v.is_empty() {
                        Err(io::Error::new(io::ErrorKind::NotFound, "no address"))
                    } else {
                        Ok(v)
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "name resolution timed out",
                )),
            }
        }
    }
}

pub(super) async fn run(
    cfg: &Config,
    client: TcpStream,
    early: Vec<u8>,
    req: &Request,
    peer: SocketAddr,
    server_ip: Option<IpAddr>,
    log: &mut SessionLog,
) -> Result<Relaying, String> {
    let user = who_of(cfg, log);
    // The address accept() gave: asking the socket again costs a syscall
    // per connection.
    let who = Subject {
        user: user.as_deref(),
        client: peer.ip(),
        cmd: req.cmd,
    };
    match dial(cfg, req, server_ip, &who, log).await {
        Ok((target, bound)) => {
            let reply = req.proto.success(bound);
            reply_for_relay(client, target, &reply, &early, log, "target").await
        }
        Err(why) => Err(refuse(client, req.proto, why).await),
    }
}

/// The connection to the destination, and its local address (the reply's
/// BND.ADDR). `log.via` is the address dialed, or the last one tried.
async fn dial(
    cfg: &Config,
    req: &Request,
    server_ip: Option<IpAddr>,
    who: &Subject<'_>,
    log: &mut SessionLog,
) -> Result<(TcpStream, SocketAddr), Refusal> {
    let addrs = resolve(cfg, &req.dest)
        .await
        .map_err(Refusal::CannotResolve)?;
    let mut by_rule = None;
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| match cfg.rules.user_verdict(who, Some(*a)) {
            Err(rule) => {
                by_rule.get_or_insert_with(|| rule.to_string());
                false
            }
            Ok(()) => cfg.rules.dest_allowed(a.ip(), server_ip),
        })
        .collect();
    if allowed.is_empty() {
        log.via = addrs.first().copied();
        return Err(by_rule.map_or(Refusal::DestNotAllowed, Refusal::Rule));
    }

    let deadline = Instant::now() + cfg.connect_timeout;
    let opts = SocketOpts::default();
    let mut last: Option<(SocketAddr, io::Error)> = None;
    let mut target = None;
    for a in allowed {
        match tokio::time::timeout_at(deadline, opts.connect_tcp(a)).await {
            Ok(Ok(s)) => {
                target = Some((a, s));
                break;
            }
            Ok(Err(e)) => last = Some((a, e)),
            Err(_) => {
                last = Some((
                    a,
                    io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                ));
                break;
            }
        }
    }
    let Some((addr, target)) = target else {
        let (a, e) =
            last.unwrap_or_else(|| (dest_fallback(&req.dest), io::Error::other("no address")));
        log.via = Some(a);
        return Err(Refusal::ConnectFailed(e));
    };
    log.via = Some(addr);
    let bound = target.local_addr().unwrap_or(addr);
    // A destination that is one of this host's addresses (on any interface)
    // reaches the host's own services: Linux then uses the destination itself
    // as the source address.
    // (The peer is `addr`, the address just dialed.)
    let is_host = unmap(addr.ip()) == unmap(bound.ip());
    if is_host && !cfg.rules.host_address_allowed(addr.ip()) {
        return Err(Refusal::DestIsThisHost);
    }
    Ok((target, bound))
}

/// The address a failed dial reports when no address was tried.
fn dest_fallback(dest: &TargetAddr) -> SocketAddr {
    match dest {
        TargetAddr::Ip(a) => *a,
        TargetAddr::Domain(_, p) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), *p),
    }
}
