//! BIND (SOCKS4 and SOCKS5): listen, reply with the listening address, wait
//! (with a deadline) for the expected peer, reply with the peer, relay.

use super::config::Config;
use super::connect::resolve;
use super::reply::{refuse, reply_and_relay, Proto, Refusal, Request, SessionLog};
use super::rules::{is_host_address, route_source};
use crate::relay::RelayStream;
use crate::socks::codec::unmap;
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
) -> String {
    let server_ip = local.map(|l| l.ip());
    // DST.ADDR of a BIND request is the peer expected to connect; 0.0.0.0
    // (or ::) means "anyone". Only the address is checked: clients rarely
    // know the peer's source port.
    let expected: Option<IpAddr> = match &req.dest {
        TargetAddr::Ip(a) if a.ip().is_unspecified() => None,
        TargetAddr::Ip(a) => Some(unmap(a.ip())),
        TargetAddr::Domain(..) => match resolve(cfg, &req.dest).await {
            Ok(v) => v.first().map(|a| unmap(a.ip())),
            Err(e) => return refuse(client, req.proto, Refusal::CannotResolve(e)).await,
        },
    };
    if let Some(ip) = expected {
        if !cfg.rules.dest_allowed(ip, server_ip)
            || (is_host_address(ip) && !cfg.rules.host_address_allowed(ip))
        {
            return refuse(client, req.proto, Refusal::PeerNotAllowed).await;
        }
    }
    let listen_ip = match expected.and_then(route_source).or(server_ip) {
        Some(ip) => unmap(ip),
        None => return refuse(client, req.proto, Refusal::NoLocalAddress).await,
    };
    if req.proto == Proto::V4 && listen_ip.is_ipv6() {
        return refuse(client, req.proto, Refusal::Socks4BindNeedsIpv4).await;
    }
    let listener = match TcpListener::bind((listen_ip, 0)).await {
        Ok(l) => l,
        Err(e) => return refuse(client, req.proto, Refusal::Bind(e)).await,
    };
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return refuse(client, req.proto, Refusal::Bind(e)).await,
    };
    if let Err(e) = client.write_all(&req.proto.success(bound)).await {
        return format!("client gone before first reply: {e}");
    }

    let deadline = tokio::time::sleep(cfg.bind_timeout);
    tokio::pin!(deadline);
    let mut watch_client = true;
    let mut one = [0u8; 1];
    let mut strangers = 0u32;
    let peer = loop {
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
                    break s;
                }
                Err(e) => return refuse(client, req.proto, Refusal::Accept(e)).await,
            },
            r = client.peek(&mut one), if watch_client => match r {
                Ok(0) | Err(_) => return "client closed while waiting for the BIND peer".into(),
                // Early data: kept in the socket until the relay starts.
                Ok(_) => watch_client = false,
            },
            _ = &mut deadline => {
                return refuse(client, req.proto, Refusal::NoBindPeer { waited: cfg.bind_timeout, strangers })
                .await;
            }
        }
    };
    drop(listener);
    let from = log.via.unwrap_or(bound);
    let reply = req.proto.success(from);
    reply_and_relay(cfg, client, peer, &reply, &early, log, "peer").await
}
