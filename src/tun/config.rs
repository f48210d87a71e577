//! The options of TUN mode, validated in one place before anything touches
//! the system: a bad value is an error naming its flag.

use super::udp::UdpConfig;
use crate::cli::TunArgs;
use crate::dns::pool::FakePool;
use crate::dns::service::parse_resolver;
use crate::dns::DnsMode;
use crate::net::SocketOpts;
use crate::proxy::Proxy;
use crate::rules::{parse_file, parse_rule, Action, Rule, Rules};
use crate::socks::TargetAddr;
use crate::stack::StackConfig;
use crate::upstream::group::Policy;
use anyhow::{anyhow, bail};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_IPV4: &str = "198.18.0.1/15";
const DEFAULT_MTU: u16 = 65000;

/// Everything `run` needs, validated.
pub struct TunConfig {
    /// The proxies, in the order given, host names not yet resolved.
    pub proxies: Vec<Proxy>,
    pub group: GroupConfig,
    /// One dial through the proxies, retries included (`--connect-timeout`).
    pub connect_timeout: Duration,
    pub device: String,
    pub fd: Option<i32>,
    /// With `fd`: the descriptors of the device's other queues.
    pub queue_fds: Vec<i32>,
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
    /// Used on a device sockstun creates; on an existing device only when
    /// given explicitly (see `DeviceSpec`).
    pub mtu: u16,
    pub explicit_ipv4: bool,
    pub explicit_mtu: bool,
    /// Ask the device for checksum and segmentation offload.
    pub offload: bool,
    /// Queues to open (a multi-queue device when more than 1).
    pub queues: usize,
    /// `queues` was given, not the default.
    pub explicit_queues: bool,
    pub stack: StackConfig,
    pub dns: DnsConfig,
    /// `mtu` is the device's, known once it is open.
    pub udp: UdpConfig,
    pub route: RouteConfig,
}

/// Which way each flow goes (`--rule`, `--rules-file`, `--default-action`)
/// and how the direct way resolves names (`--direct-dns`).
pub struct RouteConfig {
    pub rules: Rules,
    /// Empty: the nameservers of /etc/resolv.conf, read when TUN mode starts.
    pub direct_dns: Vec<SocketAddr>,
    /// The proxy sockets' options, which direct sockets get too.
    pub opts: SocketOpts,
    pub groups: Vec<NamedGroup>,
}

impl RouteConfig {
    pub fn from_args(args: &TunArgs) -> anyhow::Result<RouteConfig> {
        let default: Action = args
            .default_action
            .parse()
            .map_err(|e| anyhow!("--default-action: {e}"))?;
        let mut rules = Vec::with_capacity(args.rule.len());
        for text in &args.rule {
            let (matches, action) =
                parse_rule(text).map_err(|e| anyhow!("--rule {text:?}: {e}"))?;
            let mut rule = Rule {
                matches,
                action,
                origin: Arc::from(""),
            };
            // A rule given as a flag is named by its text, as written back.
            rule.origin = Arc::from(rule.to_string());
            rules.push(rule);
        }
        if let Some(path) = &args.rules_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow!("--rules-file {}: {e}", path.display()))?;
            let label = path.display().to_string();
            rules.extend(parse_file(&label, &text).map_err(|e| anyhow!("--rules-file {e}"))?);
        }
        let direct_dns = args
            .direct_dns
            .iter()
            .map(|s| parse_resolver(s).map_err(|e| anyhow!("--direct-dns {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let groups = named_groups(args)?;
        let rules = Rules::new(rules, default);
        if let Some(g) = rules
            .groups()
            .find(|g| !groups.iter().any(|n| n.name == **g))
        {
            bail!("proxy:{g}: no --group {g} (--group {g}=URL names its proxies)");
        }
        Ok(RouteConfig {
            rules,
            direct_dns,
            opts: SocketOpts {
                fwmark: args.fwmark,
                bind_interface: args.bind_interface.clone(),
            },
            groups,
        })
    }
}

/// A proxy URL as `args` configure every proxy socket. The URL error never
/// echoes the URL: it may hold a password.
fn proxy_of(url: &str, args: &TunArgs, what: &str) -> anyhow::Result<Proxy> {
    let mut proxy = Proxy::from_url(url).map_err(|e| anyhow!("{what}: {e}"))?;
    proxy.opts.fwmark = args.fwmark;
    proxy.opts.bind_interface = args.bind_interface.clone();
    proxy.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    proxy.pipeline = args.socks_pipeline;
    proxy.learn_pipeline = !args.socks_pipeline && !args.no_socks_pipeline;
    proxy.warm = args.warm;
    Ok(proxy)
}

/// A `--group`: its name, its proxies in failover order, and how they are
/// used (--proxy-policy and --health-* as for --proxy's).
pub struct NamedGroup {
    pub name: Arc<str>,
    pub proxies: Vec<Proxy>,
    pub group: GroupConfig,
}

/// The `--group NAME=URL` flags, gathered by name in the order first given.
fn named_groups(args: &TunArgs) -> anyhow::Result<Vec<NamedGroup>> {
    let mut out: Vec<NamedGroup> = Vec::new();
    for (i, g) in args.group.iter().enumerate() {
        let Some((name, url)) = g.split_once('=') else {
            bail!("--group (the {}.): expected NAME=URL", i + 1);
        };
        // The text is not echoed: a forgotten `NAME=` leaves a URL here,
        // password and all.
        let name = crate::rules::group_name(name).map_err(|_| {
            anyhow!(
                "--group (the {}.): the name before '=' is letters, digits, - and _",
                i + 1
            )
        })?;
        let proxy = proxy_of(url, args, &format!("--group {name}"))?;
        match out.iter_mut().find(|n| n.name == name) {
            Some(n) => n.proxies.push(proxy),
            None => out.push(NamedGroup {
                name,
                proxies: vec![proxy],
                group: GroupConfig::from_args(args)?,
            }),
        }
    }
    for n in &mut out {
        // As for --proxy: several members are probed unless told otherwise.
        if args.health_interval.is_none() && n.proxies.len() > 1 {
            n.group.health_interval = Some(DEFAULT_HEALTH_INTERVAL);
        }
    }
    Ok(out)
}

/// How several proxies are used (`--proxy-policy`, `--health-*`).
pub struct GroupConfig {
    pub policy: Policy,
    /// None: no probes (one proxy, no --health-interval).
    pub health_interval: Option<Duration>,
    pub health_target: Option<TargetAddr>,
}

impl GroupConfig {
    fn from_args(args: &TunArgs) -> anyhow::Result<GroupConfig> {
        let policy: Policy = args
            .proxy_policy
            .parse()
            .map_err(|e| anyhow!("--proxy-policy: {e}"))?;
        let health_interval = match args.health_interval {
            Some(0) => bail!("--health-interval must be at least 1 second"),
            Some(s) => Some(Duration::from_secs(s)),
            None if args.proxy.len() > 1 => Some(DEFAULT_HEALTH_INTERVAL),
            None => None,
        };
        let health_target = match &args.health_target {
            None => None,
            Some(t) => {
                Some(TargetAddr::parse(t).map_err(|e| anyhow!("--health-target {t:?}: {e}"))?)
            }
        };
        if health_target.is_some() && health_interval.is_none() {
            bail!("--health-target needs --health-interval with a single --proxy");
        }
        Ok(GroupConfig {
            policy,
            health_interval,
            health_target,
        })
    }
}

const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// Validated DNS options.
pub struct DnsConfig {
    pub mode: DnsMode,
    /// `--dns-upstream`: the resolver queries are forwarded to, through the proxy.
    pub resolver: Option<SocketAddr>,
    pub pool: Option<Arc<FakePool>>,
}

impl TunConfig {
    pub fn from_args(args: &TunArgs) -> anyhow::Result<TunConfig> {
        // The URL error never echoes the URL: it may hold a password.
        let connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
        let mut proxies = Vec::with_capacity(args.proxy.len());
        for (i, url) in args.proxy.iter().enumerate() {
            let what = match args.proxy.len() {
                1 => "--proxy".to_string(),
                _ => format!("--proxy (the {}.)", i + 1),
            };
            proxies.push(proxy_of(url, args, &what)?);
        }
        let group = GroupConfig::from_args(args)?;
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
            connect_timeout: connect_timeout + Duration::from_secs(1),
            ..StackConfig::default()
        };
        let dns = DnsConfig::from_args(args, ipv4, ipv6)?;
        if args.udp_timeout == 0 {
            bail!("--udp-timeout must be at least 1 second");
        }
        if args.max_udp_flows == 0 {
            bail!("--max-udp-flows must be at least 1");
        }
        let udp = UdpConfig {
            timeout: Duration::from_secs(args.udp_timeout),
            max_flows: args.max_udp_flows,
            mtu: 0,
        };
        Ok(TunConfig {
            proxies,
            group,
            connect_timeout,
            device: args.device.clone(),
            fd: args.fd,
            queue_fds: args.queue_fds.clone(),
            ipv4,
            ipv6,
            mtu,
            explicit_ipv4: args.ipv4.is_some(),
            explicit_mtu: args.mtu.is_some(),
            offload: !args.no_offload,
            queues: queues_of(args)?,
            explicit_queues: args.queues.is_some(),
            stack,
            dns,
            udp,
            route: RouteConfig::from_args(args)?,
        })
    }
}

/// The kernel's limit on the queues of one TUN (MAX_TAP_QUEUES).
pub const MAX_QUEUES: usize = 256;

/// Past 8, a queue more adds a thread, a stack and their memory for flows
/// that the ones there already carry at line rate.
const DEFAULT_MAX_QUEUES: usize = 8;

/// `--queues`, or one per two CPUs this process may run on (its affinity
/// and cgroup quota counted), at least 1, at most 8. Adopted descriptors
/// are a queue each.
///
/// Half, not all: a flow through the TUN costs the machine's kernel about
/// as much again as it costs sockstun (the application's TCP and our
/// upstream socket's), and on the machine itself the applications need
/// CPUs too. Measured on 2 CPUs (docs/performance.md, "Multi-queue"): 2
/// queues carried no more bytes than 1 and 15-26 % fewer new connections
/// per second, each thread waiting for a CPU the other work held.
fn queues_of(args: &TunArgs) -> anyhow::Result<usize> {
    let adopted = args.fd.map(|_| 1 + args.queue_fds.len());
    match (args.queues, adopted) {
        (Some(0), _) => bail!("--queues must be at least 1"),
        (Some(n), _) if n > MAX_QUEUES => {
            bail!("--queues {n}: a TUN has at most {MAX_QUEUES} queues")
        }
        (Some(n), Some(a)) if n != a => {
            bail!("--queues {n} with --fd: an adopted descriptor is one queue")
        }
        (_, Some(a)) => Ok(a),
        (Some(n), None) => Ok(n),
        (None, None) => Ok(
            (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2)
                .clamp(1, DEFAULT_MAX_QUEUES),
        ),
    }
}

impl DnsConfig {
    /// `tun_v4`/`tun_v6` are the device's own addresses: never handed out.
    fn from_args(
        args: &TunArgs,
        tun_v4: Option<Ipv4Network>,
        tun_v6: Option<Ipv6Network>,
    ) -> anyhow::Result<DnsConfig> {
        let mode: DnsMode = args.dns.parse().map_err(|e| anyhow!("--dns: {e}"))?;
        let resolver = match &args.dns_upstream {
            Some(s) => Some(parse_resolver(s).map_err(|e| anyhow!("--dns-upstream {e}"))?),
            None => None,
        };
        if mode == DnsMode::Tcp && resolver.is_none() {
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
        Ok(DnsConfig {
            mode,
            resolver,
            pool,
        })
    }
}
