//! TUN mode: the device, the stack and the upstream wired together.
//!
//! `run` validates everything it can before touching the system (proxy URL,
//! addresses, MTU), creates the device (saying which privilege is missing if
//! that fails), warns if the proxy does not answer (and keeps running: flows
//! fail fast until it does), then runs the stack until SIGINT or SIGTERM.

mod admin;
pub mod config;
pub mod device;
mod dialer;
pub(crate) mod direct;
mod flows;
mod ifstate;
mod queue;
mod reload;
pub mod route;
pub mod stats;
pub mod udp;
mod udp_shard;
mod upstreams;
pub mod uso;
pub mod vnet;
mod workers;

pub use config::TunConfig;
pub use device::{create_detached, DeviceSink, DeviceSource, DeviceSpec, TunDevice};
pub(crate) use ifstate::ip_cmd;
pub use reload::Reload;

use crate::cli::TunArgs;
use crate::dns::{Dns, DnsMode};
use crate::upstream::{self, Upstream};
use anyhow::Context as _;
use dialer::FlowDialer;
use stats::Stats;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use udp::UdpRelay;

/// `sockstun tun`.
pub fn run(args: TunArgs) -> anyhow::Result<()> {
    run_with(args, None)
}

/// `sockstun tun`; with `reload`, SIGHUP builds the upstream group again.
pub fn run_with(args: TunArgs, reload: Option<Reload>) -> anyhow::Result<()> {
    run_until(args, reload, None)
}

/// What stops TUN mode instead of SIGINT and SIGTERM (`sockstun exec`: the
/// program's exit). First polled once the stack runs, so it may also start
/// what needs the stack running.
pub type Until = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// `run_with`; with `until`, that future stops it instead of the signals
/// (which are then left to the caller).
pub fn run_until(
    args: TunArgs,
    reload: Option<Reload>,
    until: Option<Until>,
) -> anyhow::Result<()> {
    if !args.rules_test.is_empty() {
        let route = config::RouteConfig::from_args(&args)?;
        print!(
            "{}",
            route::explain(&route.rules, &args.rules_test).map_err(anyhow::Error::msg)?
        );
        return Ok(());
    }
    let mut cfg = TunConfig::from_args(&args)?;
    let admin = crate::admin::bind(args.ops.admin, args.ops.admin_public, "--admin-public")
        .map_err(anyhow::Error::msg)?;
    fixed_mmap_threshold();
    if let Err(e) = crate::net::raise_fd_limit() {
        warn!("could not raise the descriptor limit: {e}");
    }
    let members = cfg
        .route
        .groups
        .iter_mut()
        .flat_map(|g| g.proxies.iter_mut());
    for proxy in cfg.proxies.iter_mut().chain(members) {
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
    let res = match until {
        None => rt.block_on(run_async_with(cfg, admin, reload)),
        Some(u) => rt.block_on(run_async_until(cfg, admin, reload, u)),
    };
    rt.shutdown_timeout(Duration::from_millis(500));
    res
}

/// Run TUN mode inside a runtime: open the device, wire the upstream, DNS,
/// the UDP table and the stack together, run until SIGINT or SIGTERM; with
/// `admin`, serve /metrics, /flows and /health on it.
pub async fn run_async(cfg: TunConfig, admin: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    run_async_with(cfg, admin, None).await
}

/// `run_async`; with `reload`, SIGHUP replaces the upstream group for new
/// flows (behind a `Switch`, which costs a flow one atomic load).
pub async fn run_async_with(
    cfg: TunConfig,
    admin: Option<std::net::TcpListener>,
    reload: Option<Reload>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let signals = Box::pin(async move {
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: stopping"),
            _ = sigterm.recv() => info!("SIGTERM: stopping"),
        }
    });
    run_async_until(cfg, admin, reload, signals).await
}

/// `run_async_with`, until `until` resolves (polled first once the stack runs).
async fn run_async_until(
    mut cfg: TunConfig,
    admin: Option<std::net::TcpListener>,
    reload: Option<Reload>,
    until: Until,
) -> anyhow::Result<()> {
    let mut dev = open_device(&cfg)?;
    upstreams::share_warm(&mut cfg.proxies, &mut cfg.route.groups, dev.queues);
    let built = upstreams::upstream_of(cfg.proxies, cfg.group, cfg.connect_timeout);
    let mut route = cfg.route;
    let named = upstreams::groups_of(std::mem::take(&mut route.groups), cfg.connect_timeout);
    let every: Vec<_> = std::iter::once(built.health).chain(named.health).collect();
    let health = Arc::new(reload::HealthSwitch::new(Arc::new(upstreams::Healths(
        every,
    ))));
    // With a reload, flows reach the upstream through a `Switch` (one atomic
    // load) that SIGHUP can point elsewhere.
    let switch = reload
        .as_ref()
        .map(|_| Arc::new(upstream::switch::Switch::new(built.upstream.clone())));
    let upstream: Arc<dyn Upstream> = match &switch {
        Some(s) => s.clone(),
        None => built.upstream,
    };
    let dns = dns_service(cfg.dns, &upstream);
    let mut udp_cfg = cfg.udp;
    udp_cfg.mtu = dev.mtu as usize;
    // Each queue keeps a table of its own: the bound is shared out.
    udp_cfg.max_flows = udp_cfg.max_flows.div_ceil(dev.queues);
    let nets: Vec<ipnetwork::IpNetwork> = (cfg.ipv4.map(Into::into).into_iter())
        .chain(cfg.ipv6.map(Into::into))
        .collect();
    let router = Arc::new(route::Router::build(
        route,
        named.groups,
        &nets,
        dns.pool().cloned(),
        cfg.connect_timeout,
    ));
    let reloader = match (reload, switch) {
        (Some(r), Some(switch)) => Some(tokio::spawn(reload::on_sighup(
            switch,
            router.clone(),
            health.clone(),
            r,
            built.probes.into_iter().chain(named.probes).collect(),
            dev.queues,
        ))),
        _ => None,
    };
    let dialer = Arc::new(FlowDialer {
        upstream: upstream.clone(),
        dns: dns.clone(),
        router: router.clone(),
    });
    let flows = admin
        .as_ref()
        .map(|_| Arc::new(flows::Flows::new(dns.clone())));
    let (owners, inboxes) = udp_shard::inboxes(dev.queues);
    let common = Arc::new(workers::Common {
        stack: stack_config(cfg.stack, &dev, cfg.offload),
        udp: udp_cfg,
        dns: dns.clone(),
        upstream,
        router,
        dialer,
        observer: flows
            .clone()
            .map(|f| f as Arc<dyn crate::stack::FlowObserver>),
        owners,
    });
    let device = dev.name.clone();
    let res = serve(&mut dev, common, inboxes, until, |stats, udp| {
        if let (Some(l), Some(flows)) = (admin, flows) {
            let report = admin::TunReport {
                stats,
                udp,
                dns,
                health,
                flows,
                device,
            };
            crate::admin::spawn(l, Arc::new(report)).context("--admin")?;
        }
        Ok(())
    })
    .await;
    if let Some(task) = reloader {
        task.abort();
    }
    let name = dev.name.clone();
    let created = dev.created;
    drop(dev);
    if created {
        info!("removed TUN device {name}");
    }
    res
}

/// Run a stack on every queue of `dev` (the first here, the others on
/// threads of their own) until `until` resolves or a queue fails; `expose`
/// gets their counters and UDP tables once all are built. Every queue is
/// stopped and waited for before this returns.
async fn serve(
    dev: &mut TunDevice,
    common: Arc<workers::Common>,
    inboxes: Vec<udp_shard::Inbox>,
    until: Until,
    expose: impl FnOnce(Stats, Vec<UdpRelay>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut inboxes = inboxes.into_iter();
    let (stack, first) = workers::build(&common, dev.sink(), 0, inboxes.next());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let mut threads = Vec::new();
    let mut parts = vec![first];
    for (i, q) in dev.take_queues().into_iter().enumerate() {
        let (inbox, stop, ended) = (inboxes.next(), stop_rx.clone(), ended_tx.clone());
        match workers::spawn(i + 1, q, common.clone(), inbox, stop, ended) {
            Ok((w, p)) => {
                threads.push(w);
                parts.push(p);
            }
            Err(e) => {
                // The device's changes are undone after this returns: the
                // queues started must be done reading first.
                let _ = stop_tx.send(true);
                threads.into_iter().for_each(|w| drop(w.join()));
                return Err(e);
            }
        }
    }
    let stats = Stats {
        stacks: parts.iter().map(|p| p.stack.clone()).collect(),
        udp: parts.iter().map(|p| p.udp.stats_handle()).collect(),
        device_write_drops: dev.write_drops.clone(),
        device_malformed: dev.malformed.clone(),
        device_super_packets: dev.super_packets.clone(),
    };
    if let Err(e) = expose(stats.clone(), parts.into_iter().map(|p| p.udp).collect()) {
        let _ = stop_tx.send(true);
        threads.into_iter().for_each(|w| drop(w.join()));
        return Err(e);
    }
    let shutdown = async move {
        tokio::select! {
            _ = until => {}
            Some(q) = ended.recv() => warn!("queue {q} of the TUN stopped: stopping"),
        }
        crate::service::stopping();
    };
    crate::service::ready(&format!("device {} up", dev.name));
    let res = stack
        .run(dev.source(), shutdown)
        .await
        .context("reading the TUN device");
    let _ = stop_tx.send(true);
    let joined: Vec<anyhow::Result<()>> = threads.into_iter().map(|w| w.join()).collect();
    stats.log_totals();
    joined.into_iter().fold(res, |acc, r| acc.and(r))
}

/// The device of `cfg`, created or opened (or adopted), logged.
fn open_device(cfg: &TunConfig) -> anyhow::Result<TunDevice> {
    let dev = TunDevice::open(&DeviceSpec {
        name: &cfg.device,
        fd: cfg.fd,
        queue_fds: &cfg.queue_fds,
        ipv4: cfg.ipv4,
        ipv6: cfg.ipv6,
        mtu: cfg.mtu,
        explicit_ipv4: cfg.explicit_ipv4,
        explicit_mtu: cfg.explicit_mtu,
        offload: cfg.offload,
        queues: cfg.queues,
    })?;
    if cfg.explicit_queues && dev.queues < cfg.queues {
        warn!(
            "--queues {}: {} has {} queue(s) open here",
            cfg.queues, dev.name, dev.queues
        );
    }
    info!(
        device = %dev.name,
        created = dev.created,
        mtu = dev.mtu,
        offload = dev.offload,
        queues = dev.queues,
        "TUN device up"
    );
    Ok(dev)
}

/// The stack's settings for the device as it was opened.
fn stack_config(
    mut stack_cfg: crate::stack::StackConfig,
    dev: &TunDevice,
    offload: bool,
) -> crate::stack::StackConfig {
    stack_cfg.mtu = dev.mtu as usize;
    if dev.offload {
        // Headers are on (asked for, or set by whoever opened an adopted
        // descriptor): every read has one, and with offloads a 64 KB segment.
        stack_cfg.read_slot = Some(device::MAX_OFFLOAD_PACKET + vnet::HDR_LEN);
        // --no-offload on such a descriptor turned the offloads off: then
        // smoltcp keeps to the MTU and nothing is cut for it.
        stack_cfg.segment_offload = offload;
    }
    if dev.queues > 1 {
        // One --max-tcp-flows for the device, whichever queue a flow is on,
        // and flow numbers that /flows can tell apart.
        stack_cfg.shared = Some(Arc::default());
    }
    stack_cfg
}

/// The DNS service over `upstream`, logged as configured (with what the
/// upstream cannot carry).
fn dns_service(cfg: config::DnsConfig, upstream: &Arc<dyn Upstream>) -> Arc<Dns> {
    if !upstream.carries_udp() {
        warn!("upstream {upstream} carries TCP only (HTTP CONNECT): UDP through the TUN is dropped and counted; DNS works in --dns virtual and tcp modes");
    }
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
