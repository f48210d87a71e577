//! BIND (SOCKS4 and SOCKS5): listen, reply with the listening address, wait
//! (with a deadline) for the expected peer, reply with the peer, relay.

use super::config::Config;
use super::connect::resolve;
use super::reply::{refuse, reply_for_relay, Proto, Refusal, Relaying, Request, SessionLog};
use super::rules::{is_host_address, route_source};
use crate::net::unmap;
use crate::relay::RelayStream;
use crate::socks::TargetAddr;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

pub(super) async fn run(
    cfg: &Config,
    mut client: TcpStream,
    early: Vec<u8>,
    req: &Request,
    local: Option<SocketAddr>,
    log: &mut SessionLog,
) -> Result<Relaying, String> {
    let user = super::reply::who_of(cfg, log);
    let who = super::rules::Subject {
        user: user.as_deref(),
        client: client
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip()),
        cmd: req.cmd,
    };
    let (listener, bound, expected) = match listen(cfg, req, local.map(|l| l.ip()), &who).await {
        Ok(x) => x,
        Err(why) => return Err(refuse(client, req.proto, why).await),
    };
    if let Err(e) = client.write_all(&req.proto.success(bound)).await {
        return Err(format!("client gone before first reply: {e}"));
    }
    let peer = match wait_for_peer(cfg, &mut client, &listener, expected, log).await {
        Ok(peer) => peer,
        Err(NoPeer::Refused(why)) => return Err(refuse(client, req.proto, why).await),
        Err(NoPeer::ClientClosed) => {
            return Err("client closed while waiting for the BIND peer".into());
        }
    };
    drop(listener);
    let from = log.via.unwrap_or(bound);
    let reply = req.proto.success(from);
    reply_for_relay(client, peer, &reply, &early, log, "peer").await
}

/// The listener for the peer, its address (the first reply's), and the
/// peer's address when the request names one.
async fn listen(
    cfg: &Config,
    req: &Request,
    server_ip: Option<IpAddr>,
    who: &super::rules::Subject<'_>,
) -> Result<(TcpListener, SocketAddr, Option<IpAddr>), Refusal> {
    // DST.ADDR of a BIND request is the peer expected to connect; 0.0.0.0
    // (or ::) means "anyone". Only the address is checked: clients rarely
    // know the peer's source port.
    let expected: Option<IpAddr> = match &req.dest {
        TargetAddr::Ip(a) if a.ip().is_unspecified() => None,
        TargetAddr::Ip(a) => Some(unmap(a.ip())),
        TargetAddr::Domain(..) => {
            let v = resolve(cfg, &req.dest)
                .await
                .map_err(Refusal::CannotResolve)?;
            v.first().map(|a| unmap(a.ip()))
        }
    };
    // The peer's port is not known: a rule naming ports does not match.
    let peer = expected.map(|ip| SocketAddr::new(ip, 0));
    if let Err(rule) = cfg.rules.user_verdict(who, peer) {
        return Err(Refusal::Rule(rule.to_string()));
    }
    if let Some(ip) = expected {
        if !cfg.rules.dest_allowed(ip, server_ip)
            || (is_host_address(ip) && !cfg.rules.host_address_allowed(ip))
        {
            return Err(Refusal::PeerNotAllowed);
        }
    }
    let listen_ip = match expected.and_then(route_source).or(server_ip) {
        Some(ip) => unmap(ip),
        None => return Err(Refusal::NoLocalAddress),
    };
    if req.proto == Proto::V4 && listen_ip.is_ipv6() {
        return Err(Refusal::Socks4BindNeedsIpv4);
    }
    let listener = TcpListener::bind((listen_ip, 0))
        .await
        .map_err(Refusal::Bind)?;
    let bound = listener.local_addr().map_err(Refusal::Bind)?;
    Ok((listener, bound, expected))
}

/// Why the wait for the BIND peer ended without one.
enum NoPeer {
    /// Answered with the refusal.
    Refused(Refusal),
    /// The client left first: nobody to answer.
    ClientClosed,
}

/// Accept the expected peer (anyone when `expected` is None) before the BIND
/// deadline, resetting the others; `log.via` is the peer's address.
async fn wait_for_peer(
    cfg: &Config,
    client: &mut TcpStream,
    listener: &TcpListener,
    expected: Option<IpAddr>,
    log: &mut SessionLog,
) -> Result<TcpStream, NoPeer> {
    let deadline = tokio::time::sleep(cfg.bind_timeout);
    tokio::pin!(deadline);
    let mut watch_client = true;
    let mut one = [0u8; 1];
    let mut strangers = 0u32;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((mut s, from)) => {
                    if expected.is_some_and(|e| e != unmap(from.ip())) {
                        strangers += 1;
                        debug!(%from, ?expected, "BIND: refusing unexpected peer");
                        s.reset();
                        continue;
                    }
                    let _ = s.set_nodelay(true);
                    log.via = Some(from);
                    return Ok(s);
                }
                Err(e) => return Err(NoPeer::Refused(Refusal::Accept(e))),
            },
            r = client.peek(&mut one), if watch_client => match r {
                Ok(0) | Err(_) => return Err(NoPeer::ClientClosed),
                // Early data: kept in the socket until the relay starts.
                Ok(_) => watch_client = false,
            },
            _ = &mut deadline => {
                let waited = cfg.bind_timeout;
                return Err(NoPeer::Refused(Refusal::NoBindPeer { waited, strangers }));
            }
        }
    }
}
