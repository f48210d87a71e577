//! `sockstun server`: a SOCKS4, SOCKS4a and SOCKS5 server.
//!
//! Each file depends only on those listed before it:
//! - `stop.rs`: the shutdown signal every session awaits;
//! - `rules.rs`: who may connect and where to;
//! - `config.rs`: the validated configuration;
//! - `admit.rs`: the handshake budget (floods of stalled handshakes);
//! - `reply.rs`: what the commands share: the request, typed refusals and the
//!   reply each dialect gets for them, the reply-and-relay tail;
//! - `handshake.rs`: the greeting, authentication and request (the session
//!   puts its timeout on it);
//! - `mmsg.rs`: batched datagram I/O (recvmmsg/sendmmsg) for `udp.rs`;
//! - `connect.rs`, `bind.rs`, `udp.rs`: the three commands;
//! - `session.rs`: one client: handshake, dispatch to its command, log line;
//! - `reload.rs`: SIGHUP puts a new configuration in force for new sessions;
//! - `mod.rs`: listeners, the accept loop and the client limit.

mod admit;
mod bind;
mod config;
mod connect;
mod handshake;
mod metrics;
mod mmsg;
mod reload;
mod reply;
pub mod rules;
mod session;
mod stop;
mod udp;

use anyhow::Context as _;
pub use config::Config;
use metrics::ClientRefusal;
pub use reload::Reload;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 can then both be listened on, each explicitly.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux): set
    // once here, not with a syscall per connection.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    // Up to net.core.somaxconn (4096 by default): a burst of connections
    // waits in the kernel rather than having its SYNs dropped.
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// Run the server until SIGINT/SIGTERM.
pub fn run(args: crate::cli::ServerArgs) -> anyhow::Result<()> {
    run_with(args, None)
}

/// Run the server until SIGINT/SIGTERM; with `reload`, SIGHUP puts the
/// configuration it makes in force for new sessions.
pub fn run_with(args: crate::cli::ServerArgs, reload: Option<Reload>) -> anyhow::Result<()> {
    let fd_limit = crate::net::raise_fd_limit().unwrap_or_else(|e| {
        warn!("could not raise the open-file limit: {e}");
        crate::net::fd_limit()
    });
    let cfg = Arc::new(Config::from_args(&args, fd_limit)?);
    let admin = crate::admin::bind(args.ops.admin, args.ops.admin_public, "--admin-public")
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let r = rt.block_on(serve_with(cfg, admin, reload.map(|r| (r, fd_limit))));
    // Do not wait for name lookups still running on the blocking pool.
    rt.shutdown_timeout(Duration::from_millis(500));
    r
}

/// Bind every listener, then serve until SIGINT/SIGTERM; with `admin`,
/// /metrics on it too.
pub async fn serve(cfg: Arc<Config>, admin: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    serve_with(cfg, admin, None).await
}

/// `serve`, reloading at SIGHUP with `reload` (and the open-file limit).
pub async fn serve_with(
    cfg: Arc<Config>,
    admin: Option<std::net::TcpListener>,
    reload: Option<(Reload, u64)>,
) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for &addr in &cfg.listen {
        let l = bind_listener(addr).with_context(|| format!("listen on {addr}"))?;
        info!(
            "listening on {} (auth {}, max {} clients, {} handshakes)",
            l.local_addr().unwrap_or(addr),
            if cfg.auth_required() {
                "required"
            } else {
                "none"
            },
            cfg.max_clients,
            cfg.max_handshakes,
        );
        listeners.push(l);
    }
    let gate = Arc::new(Gate {
        slots: Arc::new(Semaphore::new(cfg.max_clients)),
        // Refusing over the limit costs a task each; bound those too.
        refusers: Arc::new(Semaphore::new(64)),
        admission: admit::Admission::new(
            cfg.max_handshakes,
            cfg.max_handshakes_per_source,
            STALL.min(cfg.handshake_timeout),
        ),
        evictions: Default::default(),
        live: tokio::sync::watch::Sender::new(Open::default()),
        stats: Default::default(),
    });
    if let Some(l) = admin {
        let report = Arc::new(metrics::ServerReport(gate.stats.clone()));
        crate::admin::spawn(l, report).context("--admin")?;
    }
    let current: reload::Current = Arc::new(arc_swap::ArcSwap::new(cfg.clone()));
    let mut loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, current.clone(), gate.clone())))
        .collect();
    if let Some((r, fd_limit)) = reload {
        loops.push(tokio::spawn(reload::on_sighup(
            current.clone(),
            r,
            fd_limit,
        )));
    }
    crate::service::ready(&format!("listening on {} address(es)", cfg.listen.len()));
    shutdown_signal().await;
    crate::service::stopping();
    let open = gate.live.borrow().now;
    gate.report_evictions(true);
    info!("shutting down: ending {open} open session(s)");
    for l in loops {
        l.abort();
    }
    cfg.stop.set();
    // Every session logs its line (outcome=shutdown, with its byte counts)
    // before the runtime goes; one stuck in a name lookup is not waited for.
    let mut live = gate.live.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(2), live.wait_for(|o| o.now == 0)).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A handshake this old may be evicted when a budget is full: a live client
/// finishes greeting, authentication and request in a few round trips.
const STALL: Duration = Duration::from_secs(1);

/// What the accept loops share: the sessions' slots and the handshake budget.
pub(crate) struct Gate {
    /// One per relaying session, taken once its request is read.
    pub slots: Arc<Semaphore>,
    refusers: Arc<Semaphore>,
    admission: Arc<admit::Admission>,
    evictions: Mutex<Evictions>,
    /// Sessions running (handshake included), so shutdown can wait for them.
    pub live: tokio::sync::watch::Sender<Open>,
    /// Counted once per session or refused client (`--admin`).
    pub stats: Arc<metrics::ServerStats>,
}

/// Sessions open now, and the most open at once since the heap was last
/// trimmed.
#[derive(Default, Clone, Copy)]
pub(crate) struct Open {
    pub now: usize,
    peak: usize,
}

/// Counts a session as live while it exists.
pub(crate) struct Live(pub Arc<Gate>);

impl Live {
    pub fn new(gate: Arc<Gate>) -> Live {
        gate.stats
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gate.live.send_modify(|o| {
            o.now += 1;
            o.peak = o.peak.max(o.now);
        });
        Live(gate)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let stats = &self.0.stats;
        stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut trim = false;
        self.0.live.send_modify(|o| {
            o.now -= 1;
            if crate::mem::trim_due(o.peak, o.now) {
                o.peak = o.now;
                trim = true;
            }
        });
        // After a burst the sessions' buffers are free but kept by the
        // allocator: give them back, once per burst.
        if trim {
            crate::mem::trim_heap();
        }
    }
}

/// Handshakes evicted or refused by the handshake budget, logged as one line
/// at most every 10 s rather than one each (a flood would flood the log too).
#[derive(Default)]
struct Evictions {
    evicted: u64,
    refused: u64,
    /// The source that paid last: where the flood comes from.
    last: Option<admit::Source>,
    since: Option<std::time::Instant>,
}

impl Gate {
    fn budget_paid(&self, source: admit::Source, refused: bool) {
        {
            let mut t = self.evictions.lock().unwrap_or_else(|e| e.into_inner());
            if refused {
                t.refused += 1;
            } else {
                t.evicted += 1;
            }
            t.last = Some(source);
        }
        self.report_evictions(false);
    }

    /// Log what the budget did since the last report: at most every 10 s,
    /// or whatever is left when `now` (at shutdown).
    fn report_evictions(&self, now: bool) {
        let mut t = self.evictions.lock().unwrap_or_else(|e| e.into_inner());
        let at = std::time::Instant::now();
        let due = t
            .since
            .map_or(true, |s| at.duration_since(s) >= Duration::from_secs(10));
        if t.evicted + t.refused == 0 || !(due || now) {
            return;
        }
        warn!(
            "handshake budget full: {} handshake(s) evicted and {} refused since the last report, \
             most recently from {} ({} handshakes running; --max-handshakes, --max-handshakes-per-source)",
            t.evicted,
            t.refused,
            t.last.map_or_else(|| "-".to_string(), |s| s.to_string()),
            self.admission.len()
        );
        t.evicted = 0;
        t.refused = 0;
        t.since = Some(at);
    }
}

async fn accept_loop(l: TcpListener, current: reload::Current, gate: Arc<Gate>) {
    let (mut last_warn, mut quiet) = (None::<std::time::Instant>, 0u64);
    let listener = l.local_addr().ok();
    loop {
        // A full handshake budget with nothing stalled: newcomers wait in
        // the listen backlog (see admit.rs).
        gate.admission.room().await;
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say
                // so once every 10 s, not at every retry.
                let now = std::time::Instant::now();
                if last_warn.map_or(true, |t| now.duration_since(t) >= Duration::from_secs(10)) {
                    warn!(
                        "accept: {e} (retrying every 100 ms; {quiet} more since the last report)"
                    );
                    last_warn = Some(now);
                    quiet = 0;
                } else {
                    quiet += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The configuration in force now (SIGHUP may change it): the
        // session keeps this one to its end.
        let cfg = current.load_full();
        if !cfg.rules.client_allowed(peer.ip()) {
            gate.stats.client_refused(ClientRefusal::NotAllowed);
            info!(client = %peer, outcome = "client not allowed", "session");
            continue;
        }
        if gate.slots.available_permits() == 0 {
            gate.stats.client_refused(ClientRefusal::TooMany);
            refuse_over_limit(&gate, stream, peer);
            continue;
        }
        let hs = match gate.admission.admit(peer.ip()) {
            Ok(hs) => hs,
            Err(source) => {
                debug!(client = %peer, "handshake budget: over its share, closed at once");
                gate.budget_paid(source, true);
                gate.stats.client_refused(ClientRefusal::Budget);
                continue;
            }
        };
        if let Some(source) = hs.evicted_from {
            gate.budget_paid(source, false);
        }
        // Counted before the task runs, so a shutdown right now waits for it.
        let live = Live::new(gate.clone());
        let c = session::Accepted {
            client: stream,
            peer,
            listener,
            hs,
        };
        let (slots, stats) = (gate.slots.clone(), gate.stats.clone());
        tokio::spawn(session::handle(cfg, slots, stats, c, live));
    }
}

/// Every session slot is taken: a well-formed refusal, from a bounded pool.
fn refuse_over_limit(gate: &Gate, stream: TcpStream, peer: SocketAddr) {
    match gate.refusers.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                reply::refuse_busy(stream).await;
                info!(client = %peer, outcome = "refused: too many clients", "session");
                drop(permit);
            });
        }
        Err(_) => debug!(client = %peer, "refused: too many clients (closed at once)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = super::bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
            let to = l.local_addr().unwrap();
            let (c, a) = tokio::join!(tokio::net::TcpStream::connect(to), l.accept());
            let (_c, (a, _)) = (c.unwrap(), a.unwrap());
            assert!(a.nodelay().unwrap(), "Nagle is on for an accepted client");
        });
    }
}
