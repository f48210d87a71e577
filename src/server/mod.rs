//! `sockstun server`: a SOCKS4, SOCKS4a and SOCKS5 server.
//!
//! - `mod.rs`: configuration, listeners, the accept loop and the client limit;
//! - `admit.rs`: the handshake budget (floods of stalled handshakes);
//! - `stop.rs`: the shutdown signal every session awaits;
//! - `session.rs`: one client: handshake, authentication, dispatch, log line;
//! - `rules.rs`: who may connect and where to;
//! - `connect.rs`, `bind.rs`, `udp.rs`: the three commands.

mod admit;
mod bind;
mod connect;
pub mod rules;
mod session;
mod stop;
mod udp;

use crate::cli::ServerArgs;
use anyhow::{bail, Context as _};
use rules::Rules;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// The validated configuration of a server.
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// User name → password. Not `Debug`: never log a password.
    users: HashMap<String, Vec<u8>>,
    pub rules: Rules,
    /// Relaying sessions (after the handshake).
    pub max_clients: usize,
    /// Connections in their handshake, and one source's share of them
    /// (admit.rs).
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub bind_timeout: Duration,
    /// Set once at SIGINT/SIGTERM: every session ends and logs its line.
    stop: stop::Stop,
}

/// Descriptors kept aside for listeners, logs, name lookups, the runtime and
/// the pool of tasks that refuse clients over the limit (64).
const FD_RESERVE: u64 = 128;

/// The default number of relaying sessions for `fd_limit` descriptors: a
/// CONNECT session holds two (client and destination), a handshake one, and
/// handshakes get a quarter of the sessions' count: 2C + C/4 = 9C/4. (A UDP
/// association holds up to four, a BIND three while it waits: a server full
/// of those meets the descriptor limit first, and accept backs off.)
fn default_clients(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(FD_RESERVE) * 4 / 9).max(16) as usize
}

impl Config {
    /// `fd_limit`: the open-file limit in force, which sizes the defaults.
    pub fn from_args(args: &ServerArgs, fd_limit: u64) -> anyhow::Result<Config> {
        let mut users = HashMap::new();
        for u in &args.users {
            let (name, pass) = parse_user(u).context("--user")?;
            users.insert(name, pass);
        }
        if let Some(path) = &args.users_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--users-file {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                let (name, pass) = parse_user(line)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))?;
                users.insert(name, pass);
            }
        }
        let rules = Rules::new(&args.allow_client, &args.allow_dest, &args.deny_dest)
            .map_err(anyhow::Error::msg)?;
        if args.listen.is_empty() {
            bail!("no --listen address");
        }
        let max_clients = args
            .max_clients
            .unwrap_or_else(|| default_clients(fd_limit));
        let max_handshakes = args.max_handshakes.unwrap_or((max_clients / 4).max(16));
        // Half: when the budget is full, one address never holds more than
        // the rest of the world.
        let per_source = args
            .max_handshakes_per_source
            .unwrap_or((max_handshakes / 2).max(1));
        let need = 2 * max_clients as u64 + max_handshakes as u64 + FD_RESERVE;
        if need > fd_limit {
            warn!(
                "--max-clients {max_clients} and --max-handshakes {max_handshakes} need about {need} \
                 descriptors; the limit is {fd_limit}: past it, accept waits for descriptors to free"
            );
        }
        for (flag, v) in [
            ("--max-clients", max_clients),
            ("--max-handshakes", max_handshakes),
            ("--max-handshakes-per-source", per_source),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        // Safe by default: an open proxy on a reachable address is the most
        // common SOCKS misconfiguration.
        for l in &args.listen {
            if !crate::socks::codec::unmap(l.ip()).is_loopback()
                && users.is_empty()
                && !rules.restricts_clients()
            {
                bail!(
                    "refusing to listen on {l} without authentication or client restriction: anyone who can \
                     reach it could use it as an open proxy. Add --user NAME:PASSWORD (or --users-file FILE), \
                     or restrict clients with --allow-client CIDR. To run an open proxy on purpose, say so: \
                     --allow-client 0.0.0.0/0 --allow-client ::/0"
                );
            }
        }
        Ok(Config {
            listen: args.listen.clone(),
            users,
            rules,
            max_clients,
            max_handshakes,
            max_handshakes_per_source: per_source,
            handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
            bind_timeout: Duration::from_secs(args.bind_timeout.max(1)),
            stop: stop::Stop::default(),
        })
    }

    /// Completes once the server is shutting down.
    pub fn stopped(&self) -> stop::StopWait<'_> {
        self.stop.wait()
    }

    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Check credentials in time independent of where the password differs.
    fn check_password(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(p) => {
                let mut diff = u8::from(p.len() != password.len());
                for (a, b) in p.iter().zip(password.iter()) {
                    diff |= a ^ b;
                }
                diff == 0
            }
            None => false,
        }
    }
}

fn parse_user(s: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let Some((name, pass)) = s.split_once(':') else {
        bail!("expected NAME:PASSWORD");
    };
    if name.is_empty() || name.len() > 255 || pass.len() > 255 {
        bail!("user name must be 1 to 255 bytes, password at most 255 (RFC 1929)");
    }
    Ok((name.to_string(), pass.as_bytes().to_vec()))
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 can then both be listened on, each explicitly.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    // Up to net.core.somaxconn (4096 by default): a burst of connections
    // waits in the kernel rather than having its SYNs dropped.
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// Run the server until SIGINT/SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let fd_limit = crate::net::raise_fd_limit().unwrap_or_else(|e| {
        warn!("could not raise the open-file limit: {e}");
        crate::net::fd_limit()
    });
    let cfg = Arc::new(Config::from_args(&args, fd_limit)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let r = rt.block_on(serve(cfg));
    // Do not wait for name lookups still running on the blocking pool.
    rt.shutdown_timeout(Duration::from_millis(500));
    r
}

/// Bind every listener, then serve until SIGINT/SIGTERM.
pub async fn serve(cfg: Arc<Config>) -> anyhow::Result<()> {
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
    });
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, cfg.clone(), gate.clone())))
        .collect();
    shutdown_signal().await;
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
        gate.live.send_modify(|o| {
            o.now += 1;
            o.peak = o.peak.max(o.now);
        });
        Live(gate)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
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

async fn accept_loop(l: TcpListener, cfg: Arc<Config>, gate: Arc<Gate>) {
    let (mut last_warn, mut quiet) = (None::<std::time::Instant>, 0u64);
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
        if !cfg.rules.client_allowed(peer.ip()) {
            info!(client = %peer, outcome = "client not allowed", "session");
            continue;
        }
        let _ = stream.set_nodelay(true);
        if gate.slots.available_permits() == 0 {
            refuse_over_limit(&gate, stream, peer);
            continue;
        }
        let hs = match gate.admission.admit(peer.ip()) {
            Ok(hs) => hs,
            Err(source) => {
                debug!(client = %peer, "handshake budget: over its share, closed at once");
                gate.budget_paid(source, true);
                continue;
            }
        };
        if let Some(source) = hs.evicted_from {
            gate.budget_paid(source, false);
        }
        // Counted before the task runs, so a shutdown right now waits for it.
        let live = Live::new(gate.clone());
        let cfg = cfg.clone();
        tokio::spawn(async move { session::handle(cfg, live, stream, peer, hs).await });
    }
}

/// Every session slot is taken: a well-formed refusal, from a bounded pool.
fn refuse_over_limit(gate: &Gate, stream: TcpStream, peer: SocketAddr) {
    match gate.refusers.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                refuse_busy(stream).await;
                info!(client = %peer, outcome = "refused: too many clients", "session");
                drop(permit);
            });
        }
        Err(_) => debug!(client = %peer, "refused: too many clients (closed at once)"),
    }
}

/// Over the client limit: answer the first message with a well-formed
/// refusal (SOCKS5: no acceptable method; SOCKS4: rejected) and close.
async fn refuse_busy(mut s: TcpStream) {
    use crate::socks::codec::{encode_method_choice, encode_socks4_reply, method, Reply};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = [0u8; 1];
    let ver = tokio::time::timeout(Duration::from_secs(1), s.read(&mut first)).await;
    let reply: &[u8] = match (ver, first[0]) {
        (Ok(Ok(1)), 5) => &encode_method_choice(method::NO_ACCEPTABLE),
        (Ok(Ok(1)), 4) => &encode_socks4_reply(
            Reply::GeneralFailure.socks4(),
            std::net::SocketAddrV4::new(0.into(), 0),
        ),
        _ => &[],
    };
    let _ = s.write_all(reply).await;
    session::close_gently(s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServerArgs {
        let mut v = vec!["sockstun", "server"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Server(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn open_proxy_refused_unless_asked_for() {
        let e = Config::from_args(&args(&["--listen", "0.0.0.0:1080"]), 1024)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--allow-client 0.0.0.0/0"), "{e}");
        assert!(Config::from_args(&args(&["--listen", "[::]:1080"]), 1024).is_err());
        assert!(
            Config::from_args(&args(&[]), 1024).is_ok(),
            "loopback default must start"
        );
        assert!(Config::from_args(&args(&["--listen", "[::1]:1080"]), 1024).is_ok());
        assert!(
            Config::from_args(&args(&["--listen", "0.0.0.0:1080", "--user", "a:b"]), 1024).is_ok()
        );
        assert!(Config::from_args(
            &args(&["--listen", "0.0.0.0:1080", "--allow-client", "10.0.0.0/8"]),
            1024
        )
        .is_ok());
    }

    #[test]
    fn users_and_passwords() {
        let f = std::env::temp_dir().join(format!("sockstun-users-{}", std::process::id()));
        std::fs::write(
            &f,
            "# comment\n\n  # indented comment\nerin:pa:ss\r\nfrank:\n",
        )
        .unwrap();
        let c = Config::from_args(
            &args(&[
                "--user",
                "alice:s3cret",
                "--users-file",
                f.to_str().unwrap(),
            ]),
            1024,
        )
        .unwrap();
        let _ = std::fs::remove_file(&f);
        assert!(c.auth_required());
        assert!(c.check_password("alice", b"s3cret"));
        assert!(!c.check_password("alice", b"s3cre"));
        assert!(!c.check_password("alice", b"s3cret!"));
        assert!(!c.check_password("alice", b""));
        assert!(
            c.check_password("erin", b"pa:ss"),
            "a password may contain ':'"
        );
        assert!(c.check_password("frank", b""));
        assert!(!c.check_password("nobody", b""));
        for bad in ["nocolon", ":nouser"] {
            assert!(
                Config::from_args(&args(&["--user", bad]), 1024).is_err(),
                "{bad}"
            );
        }
        assert!(Config::from_args(&args(&["--allow-dest", "not-a-cidr"]), 1024).is_err());
        assert!(Config::from_args(&args(&["--max-clients", "0"]), 1024).is_err());
        assert!(Config::from_args(&args(&["--max-handshakes", "0"]), 1024).is_err());
    }

    #[test]
    fn budgets_follow_the_descriptor_limit() {
        let c = Config::from_args(&args(&[]), 20_000).unwrap();
        assert_eq!((c.max_clients, c.max_handshakes), (8832, 2208));
        assert_eq!(c.max_handshakes_per_source, 1104);
        // Sessions (2 descriptors), handshakes (1) and the reserve fit.
        assert!(2 * c.max_clients + c.max_handshakes + FD_RESERVE as usize <= 20_000);
        // A quarter of the sessions given, as --help says.
        let c = Config::from_args(&args(&["--max-clients", "0x400"]), 1024).unwrap();
        assert_eq!((c.max_clients, c.max_handshakes), (1024, 256));
        assert_eq!(default_clients(0), 16);
    }
}
