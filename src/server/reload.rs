//! SIGHUP: a new configuration for new sessions. Users, rules and timeouts
//! change; the listeners and the budgets sized at start do not (a change to
//! them is logged as needing a restart). Sessions already open keep the
//! configuration they started with; one that does not validate is refused
//! and the one in force kept.

use super::config::Config;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tracing::{info, warn};

/// Makes a new validated configuration (the config file read again, the
/// command line's flags still over it), given the open-file limit.
pub type Reload = Box<dyn Fn(u64) -> anyhow::Result<Config> + Send + Sync>;

/// The configuration new sessions get: one atomic load per connection.
pub(super) type Current = Arc<ArcSwap<Config>>;

/// Reload at every SIGHUP until the task is aborted.
pub(super) async fn on_sighup(current: Current, reload: Reload, fd_limit: u64) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("no SIGHUP handler, no reload: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match reload(fd_limit) {
            Ok(new) => apply(&current, new),
            Err(e) => {
                warn!("SIGHUP: the new configuration is not valid, keeping the one in force: {e:#}")
            }
        }
    }
}

/// Put `new` in force for new sessions, with what cannot change while
/// running kept as it is.
fn apply(current: &Current, mut new: Config) {
    let old = current.load();
    new.stop = old.stop.clone();
    let mut restart = Vec::new();
    if new.listen != old.listen {
        restart.push("listen");
        new.listen = old.listen.clone();
    }
    for (name, n, o) in [
        ("max-clients", &mut new.max_clients, old.max_clients),
        (
            "max-handshakes",
            &mut new.max_handshakes,
            old.max_handshakes,
        ),
        (
            "max-handshakes-per-source",
            &mut new.max_handshakes_per_source,
            old.max_handshakes_per_source,
        ),
    ] {
        if *n != o {
            restart.push(name);
            *n = o;
        }
    }
    if !restart.is_empty() {
        warn!(
            "SIGHUP: {} changed: kept as it is until a restart",
            restart.join(", ")
        );
    }
    info!(
        "SIGHUP: configuration reloaded: {} user(s), {} rule(s); open sessions go on as they started",
        new.user_count(),
        new.rules.user_rule_count()
    );
    current.store(Arc::new(new));
}
