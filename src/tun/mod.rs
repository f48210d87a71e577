//! TUN mode: the device, the stack and the upstream wired together.
//!
//! `run` validates everything it can before touching the system (proxy URL,
//! addresses, MTU), creates the device (saying which privilege is missing if
//! that fails), warns if the proxy does not answer (and keeps running: flows
//! fail fast until it does), then runs the stack until SIGINT or SIGTERM.

pub mod config;
pub mod device;
mod dialer;
mod ifstate;
pub mod stats;
pub mod udp;
pub mod vnet;

pub use config::TunConfig;
pub use device::{DeviceSink, DeviceSource, DeviceSpec, TunDevice};

use crate::cli::TunArgs;
use crate::dns::{Dns, DnsMode};
use crate::stack::{PacketSink, Stack};
use crate::upstream::{self, Upstream};
use anyhow::Context as _;
use dialer::FlowDialer;
use stats::Stats;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use udp::UdpRelay;
use upstream::group::Group;

/// `sockstun tun`.
pub fn run(args: TunArgs) -> anyhow::Result<()> {
    let mut cfg = TunConfig::from_args(&args)?;
    fixed_mmap_threshold();
    if let Err(e) = crate::net::raise_fd_limit() {
        warn!("could not raise the descriptor limit: {e}");
    }
    for proxy in &mut cfg.proxies {
        proxy
            .resolve()
            .with_context(|| format!("resolving the proxy host {:?}", proxy.host))?;
        info!(
            "upstream {} at {}",
            proxy,
            proxy
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // One thread for the stack and every relay: the kernel does the heavy
    // part (TUN, upstream sockets), and each hand-off between threads costs a
    // futex wake-up on the latency path. On 2 cores a multi-threaded runtime
    // gave 10-12 hand-offs per crr connection (docs/performance.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .thread_name("sockstun")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let res = rt.block_on(run_async(cfg));
    rt.shutdown_timeout(Duration::from_millis(500));
    res
}

/// Run TUN mode inside a runtime: open the device, wire the upstream, DNS,
/// the UDP table and the stack together, run until SIGINT or SIGTERM.
pub async fn run_async(cfg: TunConfig) -> anyhow::Result<()> {
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
    let upstream = upstream_of(cfg.proxies, cfg.group, cfg.connect_timeout);
    if !upstream.carries_udp() {
        warn!("upstream {upstream} carries TCP only (HTTP CONNECT): UDP through the TUN is dropped and counted; DNS works in --dns virtual and tcp modes");
    }
    let sink: Arc<dyn PacketSink> = dev.sink();
    let dns = dns_service(cfg.dns, &upstream);
    let mut udp_cfg = cfg.udp;
    udp_cfg.mtu = dev.mtu as usize;
    let udp = UdpRelay::new(udp_cfg, Some(dns.clone()), upstream.clone(), sink.clone());
    let dialer = Arc::new(FlowDialer { upstream, dns });
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
    let udp_stats = udp.stats_handle();
    let stack = Stack::new(stack_cfg, dialer, Arc::new(udp), sink);
    let stats = Stats {
        stack: stack.stats(),
        udp: udp_stats,
        device_write_drops: dev.write_drops.clone(),
        device_malformed: dev.malformed.clone(),
    };
    let shutdown = async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: stopping"),
            _ = sigterm.recv() => info!("SIGTERM: stopping"),
        }
        crate::service::stopping();
    };
    crate::service::ready(&format!("device {} up", dev.name));
    let res = stack.run(dev.source(), shutdown).await;
    stats.log_totals();
    let name = dev.name.clone();
    let created = dev.created;
    drop(dev);
    if created {
        info!("removed TUN device {name}");
    }
    res.context("reading the TUN device")
}

/// One proxy as it is (checked once at start), or a group of them with its
/// health probes.
fn upstream_of(
    proxies: Vec<crate::proxy::Proxy>,
    group: config::GroupConfig,
    budget: Duration,
) -> Arc<dyn Upstream> {
    let mut ups: Vec<Arc<dyn Upstream>> = proxies.into_iter().map(upstream::for_proxy).collect();
    let Some(every) = group.health_interval else {
        let up = ups.remove(0);
        tokio::spawn(probe(up.clone()));
        return up;
    };
    let g = Arc::new(Group::new(ups, group.policy, budget));
    info!("upstream {g}, probed every {every:?}");
    let probing = g.clone();
    tokio::spawn(async move {
        probing
            .start_probes(every, group.health_target, budget)
            .await
    });
    g
}

/// The DNS service over `upstream`, logged as configured.
fn dns_service(cfg: config::DnsConfig, upstream: &Arc<dyn Upstream>) -> Arc<Dns> {
    let pool = cfg
        .pool
        .as_ref()
        .map(|p| format!(", fake pool {}", p.describe()))
        .unwrap_or_default();
    info!(
        "dns: {} mode{pool}{}",
        cfg.mode,
        match cfg.resolver {
            Some(u) => format!(", upstream {u} over TCP through the proxy"),
            None => String::new(),
        }
    );
    if cfg.mode == DnsMode::Virtual && !upstream.carries_names() {
        warn!(
            "dns: virtual mode dials fake addresses by name, which a socks4:// upstream cannot carry: \
             use socks4a:// or socks5://, or --dns tcp"
        );
    }
    match Dns::new(cfg.mode, cfg.resolver, cfg.pool, upstream.clone()) {
        Ok(d) => Arc::new(d),
        // TunConfig::from_args checked what `Dns::new` needs.
        Err(e) => unreachable!("{e}"),
    }
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
async fn probe(up: Arc<dyn Upstream>) {
    match tokio::time::timeout(Duration::from_secs(3), up.probe()).await {
        Ok(Ok(())) => info!("upstream {up} answers"),
        Ok(Err(upstream::Error::AuthFailed)) => {
            warn!("upstream {up} refuses our credentials (or offers no method we can use); flows will fail")
        }
        Ok(Err(e)) => warn!("upstream {up} unreachable: {e}; flows fail until it answers"),
        Err(_) => warn!("upstream {up} did not answer in 3 s; flows fail until it answers"),
    }
}
