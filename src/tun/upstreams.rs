//! The upstream TUN mode dials through, built from the configured proxies:
//! one proxy as it is, or a group with its health probes. Used at start
//! and by a reload.

use super::config::{GroupConfig, NamedGroup};
use super::route::Groups;
use crate::upstream::group::Group;
use crate::upstream::health::{Health, ProxyHealth};
use crate::upstream::watched::Watched;
use crate::upstream::{self, Upstream};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// What `upstream_of` builds.
pub(crate) struct Built {
    pub upstream: Arc<dyn Upstream>,
    pub health: Arc<dyn Health>,
    /// The group's health probes.
    pub probes: Option<tokio::task::JoinHandle<()>>,
}

/// One proxy as it is (checked once at start, its health as its last dial
/// says), or a group of them with its health probes (and their task).
pub(crate) fn upstream_of(
    proxies: Vec<crate::proxy::Proxy>,
    group: GroupConfig,
    budget: Duration,
) -> Built {
    let mut ups: Vec<Arc<dyn Upstream>> = proxies.into_iter().map(upstream::for_proxy).collect();
    let Some(every) = group.health_interval else {
        let up = Arc::new(Watched::new(ups.remove(0)));
        tokio::spawn(probe(up.clone()));
        return Built {
            upstream: up.clone(),
            health: up,
            probes: None,
        };
    };
    let g = Arc::new(Group::new(ups, group.policy, budget));
    info!("upstream {g}, probed every {every:?}");
    let probing = g.clone();
    let probes = tokio::spawn(async move {
        probing
            .start_probes(every, group.health_target, budget)
            .await
    });
    Built {
        upstream: g.clone(),
        health: g,
        probes: Some(probes),
    }
}

/// The named groups (`--group`), each built as `--proxy`'s is.
pub(crate) struct BuiltGroups {
    pub groups: Groups,
    pub health: Vec<Arc<dyn Health>>,
    pub probes: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) fn groups_of(named: Vec<NamedGroup>, budget: Duration) -> BuiltGroups {
    let mut out = BuiltGroups {
        groups: Groups::new(),
        health: Vec::new(),
        probes: Vec::new(),
    };
    for n in named {
        info!("group {}: {} proxy(ies)", n.name, n.proxies.len());
        let b = upstream_of(n.proxies, n.group, budget);
        out.groups.insert(n.name, b.upstream);
        out.health.push(b.health);
        out.probes.extend(b.probes);
    }
    out
}

/// Several upstreams' health as one list (the admin endpoint shows every
/// proxy, of `--proxy` and of each `--group`).
pub(crate) struct Healths(pub Vec<Arc<dyn Health>>);

impl Health for Healths {
    fn proxies(&self) -> Vec<ProxyHealth> {
        self.0.iter().flat_map(|h| h.proxies()).collect()
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

/// `--warm` is for the device: each queue's thread keeps a pool of its own
/// (`upstream::pool::Pools`), so each gets its share, at least one.
pub(crate) fn share_warm(
    proxies: &mut [crate::proxy::Proxy],
    named: &mut [NamedGroup],
    queues: usize,
) {
    let members = named.iter_mut().flat_map(|g| g.proxies.iter_mut());
    for p in proxies.iter_mut().chain(members) {
        p.warm = p.warm.div_ceil(queues.max(1));
    }
}
