//! The `direct` way: a flow dialed from this host itself, its sockets made
//! with the proxy sockets' options (`--fwmark`, `--bind-interface`) so that
//! policy routing keeps them out of the TUN as it keeps the proxy's. A fake
//! (virtual DNS) address has no real one behind it yet: its name is resolved
//! on the host (`dns::host`), the one case where a name is not resolved at
//! the proxy; that is logged at info.

use crate::dns::host::{HostResolver, ResolveError};
use crate::net::SocketOpts;
use crate::socks::codec::Reply;
use crate::socks::TargetAddr;
use crate::stack::{DialFailed, Refusal, Unreachable};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

pub struct Direct {
    opts: SocketOpts,
    resolver: HostResolver,
    timeout: Duration,
    ports: Arc<OwnPorts>,
}

/// The local ports of sockstun's own direct sockets: TCP ones while they
/// connect, UDP ones while they live. A new flow from one of them, coming
/// in through the TUN, is such a socket routed back into the TUN (a loop),
/// told apart from an application of this host that has the TUN's address
/// too. One bit per port, no lock.
pub struct OwnPorts([AtomicU64; 1024]);

impl OwnPorts {
    fn new() -> OwnPorts {
        OwnPorts(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn bit(port: u16) -> (usize, u64) {
        ((port >> 6) as usize, 1 << (port & 63))
    }

    fn set(&self, port: u16, on: bool) {
        let (i, b) = OwnPorts::bit(port);
        if on {
            self.0[i].fetch_or(b, Ordering::Relaxed);
        } else {
            self.0[i].fetch_and(!b, Ordering::Relaxed);
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        let (i, b) = OwnPorts::bit(port);
        self.0[i].load(Ordering::Relaxed) & b != 0
    }
}

/// A port marked in `OwnPorts` until dropped.
pub struct PortMark {
    ports: Arc<OwnPorts>,
    port: u16,
}

impl Drop for PortMark {
    fn drop(&mut self) {
        self.ports.set(self.port, false);
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

fn resolve_failed(name: &str, e: ResolveError) -> DialFailed {
    if matches!(e, ResolveError::Loop(_) | ResolveError::NoServer) {
        tracing::warn!("direct: cannot resolve {name} on this host: {e}");
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
            ports: Arc::new(OwnPorts::new()),
        }
    }

    pub fn own_ports(&self) -> &OwnPorts {
        &self.ports
    }

    /// Mark `port` as one of ours until the mark is dropped.
    pub fn mark(&self, port: u16) -> PortMark {
        self.ports.set(port, true);
        PortMark {
            ports: self.ports.clone(),
            port,
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
        let _mark = self.mark(sock.local_addr()?.port());
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
                    .map_err(|e| resolve_failed(name, e))?;
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
