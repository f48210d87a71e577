//! The way of each new flow (a TCP flow at its SYN, UDP per datagram): the
//! rules in force (replaced at SIGHUP), and the direct way they may choose.
//! With no rules and the default `proxy`, asking costs one atomic load.

use super::config::RouteConfig;
use super::direct::Direct;
use crate::dns::host::{resolv_conf_servers, HostResolver};
use crate::dns::pool::FakePool;
use crate::rules::{parse_target, Action, Proto, Query, Rules};
use crate::socks::TargetAddr;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use ipnetwork::IpNetwork;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RESOLV_CONF: &str = "/etc/resolv.conf";
/// How long one resolver may take to answer a direct flow's name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The way chosen for a flow and the rule that chose it, for its log line
/// (None when no rule is configured).
#[derive(Clone)]
pub struct Way {
    pub action: Action,
    /// The named group's upstream for `proxy:GROUP` (None: `--proxy`'s).
    pub upstream: Option<Arc<dyn Upstream>>,
    pub rule: Option<Arc<str>>,
}

impl Way {
    /// Through `--proxy`, no rule to tell.
    pub fn plain() -> Way {
        Way {
            action: Action::Proxy(None),
            upstream: None,
            rule: None,
        }
    }
}

/// The named groups (`--group`), by name.
pub type Groups = HashMap<Arc<str>, Arc<dyn Upstream>>;

/// What is replaced together at SIGHUP: the rules and the groups they name.
struct State {
    rules: Rules,
    groups: Groups,
}

pub struct Router {
    state: ArcSwap<State>,
    /// Counts the replacements, so a cache of decisions knows it is stale.
    generation: AtomicU64,
    direct: Direct,
    /// The TUN's own addresses. A flow from one of them, from the port of
    /// one of sockstun's direct sockets, is that socket come back through
    /// the TUN (nothing keeps it out: no --fwmark rule, no
    /// --bind-interface); it is refused, so the loop ends at once.
    own: Vec<IpAddr>,
    loop_warned: AtomicBool,
    default_label: Arc<str>,
    loop_label: Arc<str>,
}

impl Router {
    pub fn new(rules: Rules, groups: Groups, direct: Direct, own: Vec<IpAddr>) -> Router {
        Router {
            state: ArcSwap::from_pointee(State { rules, groups }),
            generation: AtomicU64::new(0),
            direct,
            own,
            loop_warned: AtomicBool::new(false),
            default_label: Arc::from("default"),
            loop_label: Arc::from("direct loop guard"),
        }
    }

    pub fn direct(&self) -> &Direct {
        &self.direct
    }

    /// Put `rules` and the `groups` they name in force for new flows.
    pub fn replace(&self, rules: Rules, groups: Groups) {
        self.state.store(Arc::new(State { rules, groups }));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever the rules in force do.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// No rules, everything through `--proxy`: nothing to decide.
    pub fn is_plain(&self) -> bool {
        self.state.load().rules.is_plain()
    }

    /// The named groups in force.
    pub fn groups(&self) -> Vec<Arc<dyn Upstream>> {
        self.state.load().groups.values().cloned().collect()
    }

    /// The way of a flow from `src` to `target` (a name when the destination
    /// is a virtual-DNS address).
    pub fn way(&self, src: SocketAddr, target: &TargetAddr, proto: Proto) -> Way {
        let state = self.state.load();
        if state.rules.is_plain() {
            return Way::plain();
        }
        if self.own.contains(&crate::net::unmap(src.ip()))
            && self.direct.own_ports().contains(proto, src.port())
        {
            self.warn_loop(proto, target, src);
            return Way {
                action: Action::Block,
                upstream: None,
                rule: Some(self.loop_label.clone()),
            };
        }
        let (name, dst, port) = match target {
            TargetAddr::Ip(a) => (None, Some(a.ip()), a.port()),
            TargetAddr::Domain(n, p) => (Some(n.as_str()), None, *p),
        };
        let d = state.rules.decide(&Query {
            name,
            dst,
            port: Some(port),
            proto,
            src: Some(src.ip()),
        });
        let rule = Some(
            d.rule
                .map_or_else(|| self.default_label.clone(), |r| r.origin.clone()),
        );
        // Validation saw every group a rule names; one missing here (it
        // cannot be) would fall back to --proxy's.
        let upstream = match d.action {
            Action::Proxy(Some(g)) => state.groups.get(g).cloned(),
            _ => None,
        };
        Way {
            action: d.action.clone(),
            upstream,
            rule,
        }
    }

    fn warn_loop(&self, proto: Proto, target: &TargetAddr, src: SocketAddr) {
        if !self.loop_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a direct {proto} flow to {target} came back into the TUN from its own address {}: \
                 sockstun's direct sockets are routed into the TUN. Give sockstun --fwmark N with a \
                 policy rule that exempts the mark (scripts/route-up --fwmark N), or \
                 --bind-interface; such flows are refused (logged once)",
                src.ip()
            );
        }
    }
}

impl Router {
    /// The router of `cfg`, for a TUN with addresses `nets`: the direct
    /// way resolves with --direct-dns, or the host's resolvers (those inside
    /// the TUN's networks left out: they are sockstun's own virtual DNS).
    pub fn build(
        cfg: RouteConfig,
        groups: Groups,
        nets: &[IpNetwork],
        pool: Option<Arc<FakePool>>,
        timeout: Duration,
    ) -> Router {
        let rules = &cfg.rules;
        let mut servers = cfg.direct_dns.clone();
        if servers.is_empty() && rules.can_go_direct() {
            let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
            for s in resolv_conf_servers(&text) {
                if nets.iter().any(|n| n.contains(s.ip())) {
                    tracing::info!("direct: resolver {s} of {RESOLV_CONF} is the TUN's own DNS: not used for direct names");
                } else {
                    servers.push(s);
                }
            }
        }
        if !rules.is_plain() {
            let names = match (rules.can_go_direct(), servers.is_empty()) {
                (false, _) => String::new(),
                (true, true) => format!(
                    "; no resolver for direct names (none in {RESOLV_CONF}): set --direct-dns"
                ),
                (true, false) => format!(
                    "; names of direct flows resolved on this host by {}",
                    servers
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            tracing::info!(
                "rules: {} rule(s), default action {}{names}",
                rules.len(),
                rules.default_action()
            );
            if rules.can_go_direct()
                && cfg.opts.fwmark.is_none()
                && cfg.opts.bind_interface.is_none()
            {
                tracing::info!(
                    "direct flows leave by the main routing table (no --fwmark, no --bind-interface): \
                     fine for a gateway; where this host's own traffic is routed into the TUN they \
                     would come back, and are refused"
                );
            }
        }
        let resolver = HostResolver::new(servers, cfg.opts.clone(), pool, RESOLVE_TIMEOUT);
        let own = nets.iter().map(|n| n.ip()).collect();
        Router::new(
            cfg.rules,
            groups,
            Direct::new(cfg.opts, resolver, timeout),
            own,
        )
    }
}

/// `--rules-test`: the way each destination gets, for TCP and UDP, one line
/// each. A name is taken as the virtual DNS hands it out (its address is
/// not known, so `cidr:` rules do not match it); an address as itself.
pub fn explain(rules: &Rules, dests: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} rule(s), default action {}",
        rules.len(),
        rules.default_action()
    );
    for d in dests {
        let t = parse_target(d).map_err(|e| format!("--rules-test {d:?}: {e}"))?;
        for proto in [Proto::Tcp, Proto::Udp] {
            let q = Query {
                name: t.name.as_deref(),
                dst: t.addr,
                port: t.port,
                proto,
                src: None,
            };
            let dec = rules.decide(&q);
            let why = match dec.rule {
                Some(r) => match r.to_string() {
                    text if *r.origin == *text => format!("rule {text}"),
                    text => format!("rule {}: {text}", r.origin),
                },
                None => "no rule matches: the default".to_string(),
            };
            let _ = writeln!(out, "{d} {proto} => {}  ({why})", dec.action);
        }
    }
    Ok(out)
}
