//! TUN mode: the device, the stack and the upstream wired together.
//!
//! `run` validates everything it can before touching the system (proxy URL,
//! addresses, MTU), creates the device (saying which privilege is missing if
//! that fails), warns if the proxy does not answer (and keeps running: flows
//! fail fast until it does), then runs the stack until SIGINT or SIGTERM.

pub mod device;
mod ifstate;
pub mod udp;
pub mod vnet;

pub use device::{DeviceSpec, TunDevice, TunSink, TunSource};

use crate::cli::TunArgs;
use crate::relay::RelayStream;
use crate::socks::client::{self, Proxy};
use crate::socks::TargetAddr;
use crate::stack::{DialFuture, Dialer, Stack, StackConfig, TunWriter, UdpHandler};
use anyhow::{anyhow, bail, Context as _};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The default dialer: a SOCKS CONNECT to the destination address.
pub struct SocksDialer {
    pub upstream: Arc<Proxy>,
}

impl Dialer for SocksDialer {
    fn dial(&self, _src: SocketAddr, dst: SocketAddr) -> DialFuture {
        let up = self.upstream.clone();
        Box::pin(async move {
            let s = client::connect(&up, &TargetAddr::Ip(dst)).await?;
            Ok(Box::new(s) as Box<dyn RelayStream>)
        })
    }
}

const DEFAULT_IPV4: &str = "198.18.0.1/15";
const DEFAULT_MTU: u16 = 65000;

/// Everything `run` needs, validated.
pub struct TunConfig {
    pub upstream: Proxy,
    pub device: String,
    pub fd: Option<i32>,
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
    /// Used on a device sockstun creates; on an existing device only when
    /// given explicitly (see `DeviceSpec`).
    pub mtu: u16,
    pub explicit_ipv4: bool,
    pub explicit_mtu: bool,
    /// Ask the device for checksum and segmentation offload.
    pub offload: bool,
    pub stack: StackConfig,
}

impl TunConfig {
    pub fn from_args(args: &TunArgs) -> anyhow::Result<TunConfig> {
        // The URL error never echoes the URL: it may hold a password.
        let mut upstream = Proxy::from_url(&args.proxy).map_err(|e| anyhow!("--proxy: {e}"))?;
        upstream.opts.fwmark = args.fwmark;
        upstream.opts.bind_interface = args.bind_interface.clone();
        upstream.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
        upstream.pipeline = args.socks_pipeline;
        let ipv4 = match args.ipv4.as_deref().unwrap_or(DEFAULT_IPV4) {
            "" | "none" => None,
            s => Some(
                s.parse::<Ipv4Network>()
                    .map_err(|e| anyhow!("--ipv4 {s}: {e}"))?,
            ),
        };
        let ipv6 = match &args.ipv6 {
            None => None,
            Some(s) => Some(
                s.parse::<Ipv6Network>()
                    .map_err(|e| anyhow!("--ipv6 {s}: {e}"))?,
            ),
        };
        let mtu = args.mtu.unwrap_or(DEFAULT_MTU);
        // 1280 is the IPv6 minimum (RFC 8200 5); below it v6 cannot work.
        if mtu < 1280 {
            bail!("--mtu {mtu}: at least 1280 is needed (the IPv6 minimum)");
        }
        if args.device.is_empty() || args.device.len() > 15 {
            bail!(
                "--device {:?}: a name of 1 to 15 bytes is needed",
                args.device
            );
        }
        let stack = StackConfig {
            mtu: mtu as usize,
            max_flows: args.max_tcp_flows.max(1),
            connect_timeout: upstream.connect_timeout + Duration::from_secs(1),
            ..StackConfig::default()
        };
        Ok(TunConfig {
            upstream,
            device: args.device.clone(),
            fd: args.fd,
            ipv4,
            ipv6,
            mtu,
            explicit_ipv4: args.ipv4.is_some(),
            explicit_mtu: args.mtu.is_some(),
            offload: !args.no_offload,
            stack,
        })
    }
}

/// `sockstun tun`.
pub fn run(args: TunArgs) -> anyhow::Result<()> {
    let mut cfg = TunConfig::from_args(&args)?;
    fixed_mmap_threshold();
    if let Err(e) = crate::net::raise_fd_limit() {
        warn!("could not raise the descriptor limit: {e}");
    }
    cfg.upstream
        .resolve()
        .with_context(|| format!("resolving the proxy host {:?}", cfg.upstream.host))?;
    info!(
        "upstream {} at {}",
        cfg.upstream,
        cfg.upstream
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // One thread for the stack and every relay: the kernel does the heavy
    // part (TUN, upstream sockets), and each hand-off between threads costs a
    // futex wake-up on the latency path. On 2 cores a multi-threaded runtime
    // gave 10-12 hand-offs per crr connection (docs/performance.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .thread_name("sockstun")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let udp_dns = crate::dns::UdpDnsConfig::from_args(&args, cfg.ipv4, cfg.ipv6)?;
    let res = rt.block_on(run_async(cfg, move |up, dialer, w, mtu| {
        udp_dns.build(up, dialer, w, mtu)
    }));
    rt.shutdown_timeout(Duration::from_millis(500));
    res
}

/// Run TUN mode inside a runtime. `extend` gets the upstream, the default
/// SOCKS dialer, the device's writer and its MTU, and returns the dialer to use (DNS
/// in front of the default) and the UDP handler.
pub async fn run_async(
    cfg: TunConfig,
    extend: impl FnOnce(
        Arc<Proxy>,
        Arc<dyn Dialer>,
        TunWriter,
        usize,
    ) -> (Arc<dyn Dialer>, Arc<dyn UdpHandler>),
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let dev = TunDevice::open(&DeviceSpec {
        name: &cfg.device,
        fd: cfg.fd,
        ipv4: cfg.ipv4,
        ipv6: cfg.ipv6,
        mtu: cfg.mtu,
        explicit_ipv4: cfg.explicit_ipv4,
        explicit_mtu: cfg.explicit_mtu,
        offload: cfg.offload,
    })?;
    info!(
        device = %dev.name,
        created = dev.created,
        mtu = dev.mtu,
        offload = dev.offload,
        "TUN device up"
    );
    let upstream = Arc::new(cfg.upstream);
    tokio::spawn(probe(upstream.clone()));
    let sink: TunWriter = dev.sink();
    let (dialer, udp) = extend(
        upstream.clone(),
        Arc::new(SocksDialer { upstream }),
        sink.clone(),
        dev.mtu as usize,
    );
    let mut stack_cfg = cfg.stack;
    stack_cfg.mtu = dev.mtu as usize;
    if dev.offload {
        // Headers are on (asked for, or set by whoever opened an adopted
        // descriptor): every read has one, and with offloads a 64 KB segment.
        stack_cfg.read_slot = Some(device::MAX_OFFLOAD_PACKET + vnet::HDR_LEN);
        // --no-offload on such a descriptor turned the offloads off: then
        // smoltcp keeps to the MTU and nothing is cut for it.
        stack_cfg.segment_offload = cfg.offload;
    }
    let stack = Stack::new(stack_cfg, dialer, udp, sink);
    let stats = stack.stats();
    let shutdown = async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: stopping"),
            _ = sigterm.recv() => info!("SIGTERM: stopping"),
        }
    };
    let res = stack.run(dev.source(), shutdown).await;
    info!(
        tcp_opened = stats.tcp_opened.load(Ordering::Relaxed),
        tcp_refused = stats.tcp_refused.load(Ordering::Relaxed),
        udp_packets = stats.udp_packets.load(Ordering::Relaxed),
        other_dropped = stats.other_dropped.load(Ordering::Relaxed),
        malformed = stats.malformed.load(Ordering::Relaxed) + dev.malformed.load(Ordering::Relaxed),
        write_drops = dev.write_drops.load(Ordering::Relaxed),
        "stopped"
    );
    let name = dev.name.clone();
    let created = dev.created;
    drop(dev);
    if created {
        info!("removed TUN device {name}");
    }
    res.context("reading the TUN device")
}

/// Large allocations (a relay direction's 64 KiB buffer, kept while its
/// writer lags) are served by mmap and go back to the system when freed.
/// glibc's default threshold rises after the first large free, after which
/// they come from the heap and stay resident after the flow ends: fix it.
/// (The flows' ring buffers are mapped by `stack::ring` directly.)
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// Say early, once, when the proxy does not answer or refuses our
/// credentials; keep running either way. The probe greets and closes
/// cleanly, so the proxy has no error to log.
async fn probe(up: Arc<Proxy>) {
    match tokio::time::timeout(Duration::from_secs(3), client::probe(&up)).await {
        Ok(Ok(())) => info!("upstream {up} answers"),
        Ok(Err(client::DialError::AuthFailed)) => {
            warn!("upstream {up} refuses our credentials (or offers no method we can use); flows will fail")
        }
        Ok(Err(e)) => warn!("upstream {up} unreachable: {e}; flows fail until it answers"),
        Err(_) => warn!("upstream {up} did not answer in 3 s; flows fail until it answers"),
    }
}
