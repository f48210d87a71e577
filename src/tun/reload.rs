//! SIGHUP in TUN mode: the upstream group (proxies, policy, health probes)
//! is built again from the config file and put in force for new flows, TCP,
//! UDP and DNS alike, with the rules (--rule, --rules-file read again,
//! --default-action); flows already open keep the proxy they have. A
//! configuration that does not validate, or a proxy name that does not
//! resolve, keeps the group in force. Other settings (device, DNS, limits)
//! take effect at restart.

use super::config::TunConfig;
use super::route::Router;
use super::upstreams::{groups_of, share_warm, upstream_of, Built, BuiltGroups, Healths};
use crate::rules::Rules;
use crate::upstream::health::{Health, ProxyHealth};
use crate::upstream::switch::Switch;
use anyhow::Context as _;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Makes a new validated configuration (the config file read again, the
/// command line's flags still over it).
pub type Reload = Box<dyn Fn() -> anyhow::Result<TunConfig> + Send + Sync>;

/// Reload at every SIGHUP until the task is aborted. `probes`: the health
/// probes of the group in force, stopped when it is replaced.
pub(super) async fn on_sighup(
    switch: Arc<Switch>,
    router: Arc<Router>,
    health: Arc<HealthSwitch>,
    reload: Reload,
    mut probes: Vec<JoinHandle<()>>,
    queues: usize,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("no SIGHUP handler, no reload: {e}");
            return;
        }
    };
    let reload = Arc::new(reload);
    while hup.recv().await.is_some() {
        match new_upstream(&reload, queues).await {
            Ok((b, rules, named)) => {
                info!(
                    "SIGHUP: {} rule(s), default action {}, in force for new flows",
                    rules.len(),
                    rules.default_action()
                );
                router.replace(rules, named.groups);
                let up = b.upstream;
                let old = switch.replace(up.clone());
                let every = std::iter::once(b.health).chain(named.health).collect();
                health.replace(Arc::new(Healths(every)));
                let new_probes = b.probes.into_iter().chain(named.probes).collect();
                for h in std::mem::replace(&mut probes, new_probes) {
                    h.abort();
                }
                info!("SIGHUP: upstream {up} in force for new flows (was {old}); open flows keep theirs");
            }
            Err(e) => warn!(
                "SIGHUP: the new configuration is not valid, keeping upstream {switch}: {e:#}"
            ),
        }
    }
    for h in probes {
        h.abort();
    }
}

async fn new_upstream(
    reload: &Arc<Reload>,
    queues: usize,
) -> anyhow::Result<(Built, Rules, BuiltGroups)> {
    let reload = reload.clone();
    // Reading the files (a rules file of thousands of lines, indexed) and
    // resolving a proxy's host name block: not on the stack's thread.
    let (cfg, proxies, named) = tokio::task::spawn_blocking(move || {
        let mut cfg = reload()?;
        let mut proxies = std::mem::take(&mut cfg.proxies);
        let mut named = std::mem::take(&mut cfg.route.groups);
        let members = named.iter_mut().flat_map(|g| g.proxies.iter_mut());
        for p in proxies.iter_mut().chain(members) {
            p.resolve()
                .with_context(|| format!("resolving the proxy host {:?}", p.host))?;
        }
        share_warm(&mut proxies, &mut named, queues);
        anyhow::Ok((cfg, proxies, named))
    })
    .await??;
    let built = upstream_of(proxies, cfg.group, cfg.connect_timeout);
    let groups = groups_of(named, cfg.connect_timeout);
    Ok((built, cfg.route.rules, groups))
}

/// The health the admin endpoint reads: that of the upstream in force,
/// replaced with it at a reload (read at scrape time only).
pub struct HealthSwitch(std::sync::RwLock<Arc<dyn Health>>);

impl HealthSwitch {
    pub fn new(h: Arc<dyn Health>) -> HealthSwitch {
        HealthSwitch(std::sync::RwLock::new(h))
    }

    fn replace(&self, h: Arc<dyn Health>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = h;
    }
}

impl Health for HealthSwitch {
    fn proxies(&self) -> Vec<ProxyHealth> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).proxies()
    }
}
