//! Wiring UDP and DNS into TUN mode: validate the `--dns*`, `--udp-timeout`
//! and `--max-udp-flows` options before anything starts, then build the UDP
//! handler and the dialer wrapper the stack uses.

use super::pool::{FakePool, PoolPin};
use super::service::{parse_upstream, Dns, DnsMode, SocksConnector, TcpRoute};
use crate::cli::TunArgs;
use crate::relay::RelayStream;
use crate::socks::client::{self, DialError, Proxy};
use crate::stack::{DialFuture, Dialer, TunWriter, UdpHandler};
use crate::tun::udp::{SocksAssociator, UdpConfig, UdpRelay};
use anyhow::{anyhow, bail};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Validated UDP/DNS options of TUN mode.
pub struct UdpDnsConfig {
    mode: DnsMode,
    upstream: Option<SocketAddr>,
    pool: Option<Arc<FakePool>>,
    udp: UdpConfig,
}

impl UdpDnsConfig {
    /// `tun_v4`/`tun_v6` are the device's own addresses: never handed out.
    pub fn from_args(
        args: &TunArgs,
        tun_v4: Option<Ipv4Network>,
        tun_v6: Option<Ipv6Network>,
    ) -> anyhow::Result<UdpDnsConfig> {
        let mode: DnsMode = args.dns.parse().map_err(|e| anyhow!("--dns: {e}"))?;
        let upstream = match &args.dns_upstream {
            Some(s) => Some(parse_upstream(s).map_err(|e| anyhow!(e))?),
            None => None,
        };
        if mode == DnsMode::Tcp && upstream.is_none() {
            bail!("--dns tcp carries every query to --dns-upstream: set it (e.g. --dns-upstream 1.1.1.1)");
        }
        let pool = if mode == DnsMode::Virtual {
            let p4: Ipv4Network = args
                .dns_pool4
                .parse()
                .map_err(|e| anyhow!("--dns-pool4 {}: {e}", args.dns_pool4))?;
            let p6: Option<Ipv6Network> = match args.dns_pool6.as_str() {
                "" | "none" => None,
                s => Some(s.parse().map_err(|e| anyhow!("--dns-pool6 {s}: {e}"))?),
            };
            let exclude: Vec<IpAddr> = tun_v4
                .map(|n| IpAddr::V4(n.ip()))
                .into_iter()
                .chain(tun_v6.map(|n| IpAddr::V6(n.ip())))
                .collect();
            Some(Arc::new(
                FakePool::new(p4, p6, &exclude).map_err(|e| anyhow!("{e}"))?,
            ))
        } else {
            None
        };
        if args.udp_timeout == 0 {
            bail!("--udp-timeout must be at least 1 second");
        }
        if args.max_udp_flows == 0 {
            bail!("--max-udp-flows must be at least 1");
        }
        Ok(UdpDnsConfig {
            mode,
            upstream,
            pool,
            udp: UdpConfig {
                timeout: Duration::from_secs(args.udp_timeout),
                max_flows: args.max_udp_flows,
                // The device's, known once it is open (`build`).
                mtu: 0,
            },
        })
    }

    /// The dialer for TCP flows (wrapping the stack's default `inner`) and the
    /// UDP handler for a device of `mtu`. Call inside the runtime.
    pub fn build(
        mut self,
        upstream: Arc<Proxy>,
        inner: Arc<dyn Dialer>,
        tun: TunWriter,
        mtu: usize,
    ) -> (Arc<dyn Dialer>, Arc<dyn UdpHandler>) {
        self.udp.mtu = mtu;
        let pool = self
            .pool
            .as_ref()
            .map(|p| format!(", fake pool {}", p.describe()))
            .unwrap_or_default();
        let connector = Arc::new(SocksConnector(upstream.clone()));
        let dns = match Dns::new(self.mode, self.upstream, self.pool, connector) {
            Ok(d) => Arc::new(d),
            // from_args checked what `Dns::new` needs.
            Err(e) => unreachable!("{e}"),
        };
        tracing::info!(
            "dns: {} mode{pool}{}",
            self.mode,
            match self.upstream {
                Some(u) => format!(", upstream {u} over TCP through the proxy"),
                None => String::new(),
            }
        );
        if self.mode == DnsMode::Virtual && upstream.kind == client::ProxyKind::Socks4 {
            tracing::warn!(
                "dns: virtual mode dials fake addresses by name, which a socks4:// upstream cannot carry: \
                 use socks4a:// or socks5://, or --dns tcp"
            );
        }
        let relay = UdpRelay::new(
            self.udp,
            Some(dns.clone()),
            Arc::new(SocksAssociator(upstream.clone())),
            tun,
        );
        let dialer = Arc::new(DnsDialer {
            inner,
            dns,
            upstream,
        });
        (dialer, Arc::new(relay))
    }
}

/// The stack's dialer with DNS in front: port 53 answered in-process while
/// DNS is intercepted, fake-pool addresses dialed by name.
pub struct DnsDialer {
    inner: Arc<dyn Dialer>,
    dns: Arc<Dns>,
    upstream: Arc<Proxy>,
}

/// Size of the in-memory pipe of a DNS-over-TCP flow (one message fits).
const DNS_PIPE: usize = 64 * 1024 + 2;

impl Dialer for DnsDialer {
    fn dial(&self, src: SocketAddr, dst: SocketAddr) -> DialFuture {
        match self.dns.route_tcp(dst) {
            TcpRoute::Direct => self.inner.dial(src, dst),
            TcpRoute::Dns => {
                let (app, ours) = tokio::io::duplex(DNS_PIPE);
                let dns = self.dns.clone();
                tokio::spawn(async move {
                    if let Err(e) = dns.serve_stream(ours).await {
                        tracing::debug!("dns over tcp from {src}: {e}");
                    }
                });
                Box::pin(async move { Ok(Box::new(app) as Box<dyn RelayStream>) })
            }
            TcpRoute::Name(target, pin) => {
                let up = self.upstream.clone();
                Box::pin(async move {
                    tracing::debug!("tcp {src} -> {dst} is {target}: dialing by name");
                    let s = client::connect(&up, &target).await?;
                    Ok(Box::new(Pinned { s, _pin: pin }) as Box<dyn RelayStream>)
                })
            }
            TcpRoute::Unknown => {
                tracing::debug!(
                    "tcp {src} -> {dst}: fake address not assigned (stale DNS answer?)"
                );
                Box::pin(async { Err(DialError::HostUnreachable) })
            }
        }
    }
}

/// A connection dialed by name, holding its fake address for as long as it lives.
struct Pinned {
    s: client::ProxyStream,
    _pin: PoolPin,
}

impl AsyncRead for Pinned {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pinned {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.s).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.s).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.s).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.s.is_write_vectored()
    }
}

impl RelayStream for Pinned {
    fn reset(&mut self) {
        self.s.reset()
    }
}
