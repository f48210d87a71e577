//! CONNECT: resolve, check the rules on each address, dial, reply, relay.

use super::session::{refuse, reply_and_relay, Request, SessionLog};
use super::Config;
use crate::net::SocketOpts;
use crate::socks::codec::{unmap, Reply};
use crate::socks::TargetAddr;
use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The SOCKS5 reply code for a failed outgoing connection (RFC 1928 §6).
pub(super) fn reply_for(e: &io::Error) -> Reply {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Reply::ConnectionRefused,
        Some(libc::ENETUNREACH) => Reply::NetUnreachable,
        Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => Reply::HostUnreachable,
        Some(libc::ETIMEDOUT) => Reply::TtlExpired,
        _ if e.kind() == io::ErrorKind::TimedOut => Reply::TtlExpired,
        _ => Reply::GeneralFailure,
    }
}

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
    server_ip: Option<IpAddr>,
    log: &mut SessionLog,
) -> String {
    let addrs = match resolve(cfg, &req.dest).await {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                client,
                req.proto,
                Reply::HostUnreachable,
                format!("cannot resolve: {e}"),
            )
            .await;
        }
    };
    let allowed: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| cfg.rules.dest_allowed(a.ip(), server_ip))
        .collect();
    if allowed.is_empty() {
        log.via = addrs.first().copied();
        return refuse(
            client,
            req.proto,
            Reply::NotAllowed,
            "refused: destination not allowed".into(),
        )
        .await;
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
        let (a, e) = last.unwrap_or_else(|| (req.dest_fallback(), io::Error::other("no address")));
        log.via = Some(a);
        return refuse(
            client,
            req.proto,
            reply_for(&e),
            format!("connect failed: {e}"),
        )
        .await;
    };
    log.via = Some(addr);
    let bound = target.local_addr().unwrap_or(addr);
    // A destination that is one of this host's addresses (on any interface)
    // reaches the host's own services: Linux then uses the destination itself
    // as the source address.
    let is_host = target
        .peer_addr()
        .is_ok_and(|p| unmap(p.ip()) == unmap(bound.ip()));
    if is_host && !cfg.rules.host_address_allowed(addr.ip()) {
        drop(target);
        return refuse(
            client,
            req.proto,
            Reply::NotAllowed,
            "refused: destination is this host".into(),
        )
        .await;
    }
    let reply = req.proto.success(bound);
    reply_and_relay(cfg, client, target, &reply, &early, log, "target").await
}

impl Request {
    fn dest_fallback(&self) -> SocketAddr {
        match &self.dest {
            TargetAddr::Ip(a) => *a,
            TargetAddr::Domain(_, p) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), *p),
        }
    }
}
