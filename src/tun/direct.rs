//! The `direct` way: a flow dialed from this host itself, its sockets made
//! with the proxy sockets' options (`--fwmark`, `--bind-interface`) so that
//! policy routing keeps them out of the TUN as it keeps the proxy's. A fake
//! (virtual DNS) address has no real one behind it yet: its name is resolved
//! on the host (`dns::host`), the one case where a name is not resolved at
//! the proxy; that is logged at info.

use crate::dns::host::{HostResolver, ResolveError};
use crate::net::SocketOpts;
use crate::rules::Proto;
use crate::socks::codec::Reply;
use crate::socks::TargetAddr;
use crate::stack::{DialFailed, Refusal, Unreachable};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

pub struct Direct {
    opts: SocketOpts,
    resolver: HostResolver,
    timeout: Duration,
    ports: Arc<OwnPorts>,
    warned: AtomicBool,
}

/// The local ports of sockstun's own direct sockets, per protocol: TCP ones
/// while they connect, UDP ones while they live. A new flow of that
/// protocol from one of them, coming in through the TUN, is such a socket
/// routed back into the TUN (a loop), told apart from an application of
/// this host that has the TUN's address too. Counted, so two sockets on one
/// port number (a v4 and a v6 one) do not clear each other's mark. Touched
/// when a direct socket opens or closes, and asked only for flows from the
/// TUN's own address.
#[derive(Default)]
pub struct OwnPorts(Mutex<HashMap<(Proto, u16), u32>>);

impl OwnPorts {
    fn set(&self, key: (Proto, u16), on: bool) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if on {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.contains_key(&(proto, port))
    }
}

/// A port marked in `OwnPorts` until dropped.
pub struct PortMark {
    ports: Arc<OwnPorts>,
    key: (Proto, u16),
}

impl Drop for PortMark {
    fn drop(&mut self) {
        self.ports.set(self.key, false);
    }
}

/// What a failed direct connect tells the application, from its errno: as a
/// connection without sockstun would have failed.
fn connect_failed(e: io::Error) -> DialFailed {
    let answer = match Reply::for_connect_error(&e) {
        Reply::ConnectionRefused => Refusal::Reset,
        Reply::NetUnreachable => Refusal::Unreachable(Unreachable::Net),
        Reply::HostUnreachable | Reply::TtlExpired => Refusal::Unreachable(Unreachable::Host),
        _ => Refusal::Reset,
    };
    DialFailed::new(answer, format!("direct: {e}"))
}

/// A failure to resolve `name` on the host; a misconfiguration (no resolver,
/// or the resolver is sockstun itself) is warned of once.
fn resolve_failed(name: &str, e: ResolveError, warned: &AtomicBool) -> DialFailed {
    if matches!(e, ResolveError::Loop(_) | ResolveError::NoServer)
        && !warned.swap(true, Ordering::Relaxed)
    {
        tracing::warn!("direct: cannot resolve {name} on this host: {e} (said once)");
    }
    DialFailed::new(
        Refusal::Unreachable(Unreachable::Host),
        format!("direct: resolving {name} on this host: {e}"),
    )
}

impl Direct {
    pub fn new(opts: SocketOpts, resolver: HostResolver, timeout: Duration) -> Direct {
        Direct {
            opts,
            resolver,
            timeout,
            ports: Arc::default(),
            warned: AtomicBool::new(false),
        }
    }

    pub fn own_ports(&self) -> &OwnPorts {
        &self.ports
    }

    /// Mark `port` of `proto` as one of ours until the mark is dropped.
    pub fn mark(&self, proto: Proto, port: u16) -> PortMark {
        self.ports.set((proto, port), true);
        PortMark {
            ports: self.ports.clone(),
            key: (proto, port),
        }
    }

    /// One TCP connect from this host, its local port marked as ours while
    /// it connects (bound first, so the port is known before the SYN).
    async fn connect_one(&self, a: SocketAddr) -> io::Result<TcpStream> {
        let sock = self.opts.tcp_socket(a)?;
        let any: SocketAddr = match a {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        sock.bind(any)?;
        let _mark = self.mark(Proto::Tcp, sock.local_addr()?.port());
        sock.connect(a).await
    }

    pub fn resolver(&self) -> &HostResolver {
        &self.resolver
    }

    /// The addresses of `target`: itself, or its name's on this host.
    pub async fn addresses(&self, target: &TargetAddr) -> Result<Vec<SocketAddr>, DialFailed> {
        match target {
            TargetAddr::Ip(a) => Ok(vec![*a]),
            TargetAddr::Domain(name, port) => {
                let ips: Arc<[IpAddr]> = self
                    .resolver
                    .resolve(name)
                    .await
                    .map_err(|e| resolve_failed(name, e, &self.warned))?;
                tracing::info!(
                    "direct: {name} resolved on this host (not at the proxy): {}",
                    ips.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect())
            }
        }
    }

    /// A TCP connection to `target` from this host, within the connect
    /// timeout; each address in turn (IPv4 first) until one answers.
    pub async fn connect(&self, target: &TargetAddr) -> Result<TcpStream, DialFailed> {
        let attempt = async {
            let mut last = None;
            for a in self.addresses(target).await? {
                match self.connect_one(a).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(connect_failed(
                last.unwrap_or_else(|| io::ErrorKind::NotFound.into()),
            ))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(DialFailed::new(
                Refusal::Unreachable(Unreachable::Host),
                "direct: connect timed out",
            )),
        }
    }

    /// A UDP socket for direct datagrams of both families: IPv6 with
    /// IPV6_V6ONLY off (an IPv4 destination is sent as ::ffff:a.b.c.d), or
    /// IPv4 alone where the host has no IPv6.
    pub fn udp_socket(&self) -> io::Result<UdpSocket> {
        match self.opts.udp_socket_dual((Ipv6Addr::UNSPECIFIED, 0).into()) {
            Ok(s) => Ok(s),
            Err(_) => self
                .opts
                .udp_socket((std::net::Ipv4Addr::UNSPECIFIED, 0).into()),
        }
    }
}
