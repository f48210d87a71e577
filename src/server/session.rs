//! One client connection: the handshake under its timeout (or until evicted),
//! a session slot, dispatch to the command, the relay, and the session's
//! single info log line.

use super::admit::Admitted;
use super::config::Config;
use super::handshake::{handshake, PROBE, PROBE_BARE};
use super::metrics::ServerStats;
use super::reply::{close_gently, refuse, Refusal, Relaying, Request, SessionLog};
use super::{bind, connect, udp};
use crate::socks::codec::cmd;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

/// Evicted, stalled, to make room for a newer connection.
const EVICTED: &str = "evicted: handshake stalled while others waited";

/// A client the accept loop admitted to its handshake.
pub(super) struct Accepted {
    pub client: TcpStream,
    pub peer: SocketAddr,
    /// The address of the listener that accepted it.
    pub listener: Option<SocketAddr>,
    pub hs: Admitted,
}

/// One session: the task the accept loop spawns. `live` is dropped when the
/// session has logged its line.
///
/// A held connection costs mostly this task, so its future is kept small
/// (issue 19; `tests::held_session_task_is_small`): not an `async fn`, which
/// would keep every argument twice for the session's whole life, and
/// everything before the relay runs boxed (`setup`), its buffers and timers
/// freed when the relay starts instead of sizing the task.
#[allow(clippy::manual_async_fn)] // deliberate, see above
pub(super) fn handle<L: Send + 'static>(
    cfg: Arc<Config>,
    slots: Arc<Semaphore>,
    stats: Arc<ServerStats>,
    c: Accepted,
    live: L,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let start = Instant::now();
        let peer = c.peer;
        let mut log = SessionLog::new();
        let setup = Box::pin(setup(&cfg, slots, c, &mut log));
        // A relaying session sees the stop itself and returns its byte
        // counts; this catches the others (handshake, dial, BIND wait).
        let mut ready = tokio::select! {
            biased;
            r = setup => r,
            _ = cfg.stopped() => Err("shutdown".to_string()),
        };
        let outcome = match &mut ready {
            Ok(r) => {
                let st = (&mut r.relay).await;
                log.count(&st);
                st.outcome.describe("client", r.other_name)
            }
            Err(outcome) => std::mem::take(outcome),
        };
        // Closes both ends and frees the slot before the log line, as the
        // relay ends.
        drop(ready);
        log_line(&stats, &log, peer, start, outcome);
        drop(live);
    }
}

/// Everything before the relay: the handshake under its timeout (or until
/// evicted), a session slot, the command up to its success reply. `Err`:
/// the session ended, with that outcome.
async fn setup<'a>(
    cfg: &'a Config,
    slots: Arc<Semaphore>,
    c: Accepted,
    log: &mut SessionLog,
) -> Result<Ready<'a>, String> {
    let Accepted {
        mut client,
        peer,
        listener,
        hs: Admitted {
            ticket, evicted, ..
        },
    } = c;
    // A listener on one address accepts on that address: no need to ask
    // each socket (a syscall per connection); on a wildcard, ask.
    let local = listener
        .filter(|l| !l.ip().is_unspecified())
        .or_else(|| client.local_addr().ok());
    let hs = tokio::select! {
        r = tokio::time::timeout(cfg.handshake_timeout, handshake(cfg, &mut client, log)) => {
            r.unwrap_or_else(|_| Err("handshake timeout".to_string()))
        }
        _ = evicted => Err(EVICTED.to_string()),
    };
    drop(ticket);
    let (req, early) = match hs {
        Ok(x) => x,
        Err(why) => {
            close_gently(client).await;
            return Err(why);
        }
    };
    // Only relaying sessions hold a slot: a flood of handshakes cannot take
    // them.
    let Ok(slot) = slots.try_acquire_owned() else {
        return Err(refuse(client, req.proto, Refusal::TooManyClients).await);
    };
    let r = dispatch(cfg, client, early, req, peer, local, log).await?;
    let idle = Some(cfg.idle_timeout);
    Ok(Ready {
        relay: crate::relay::relay_until(r.client, r.other, idle, cfg.stopped()),
        other_name: r.other_name,
        _slot: slot,
    })
}

/// A session past its setup, relaying. Built by `setup` and awaited in
/// place (by reference), so the session's task holds it once.
struct Ready<'a> {
    relay: crate::relay::Relay<TcpStream, TcpStream, super::stop::StopWait<'a>>,
    other_name: &'static str,
    _slot: OwnedSemaphorePermit,
}

/// Count the session and write its log line.
fn log_line(
    stats: &ServerStats,
    log: &SessionLog,
    peer: SocketAddr,
    start: Instant,
    outcome: String,
) {
    stats.session(log.cmd, &outcome, log.up, log.down);
    stats.datagrams(log.datagrams_up, log.datagrams_down);
    stats.spliced(log.spliced_up, log.spliced_down);
    if [PROBE, PROBE_BARE, EVICTED].contains(&outcome.as_str()) {
        debug!(client = %peer, proto = %log.proto, outcome, "session");
        return;
    }
    let dest = log
        .dest
        .as_ref()
        .map_or_else(|| "-".to_string(), |d| d.to_string());
    let via = log.via.map_or_else(|| "-".to_string(), |v| v.to_string());
    // The user name and a domain are the client's bytes: escaped, so a CR/LF
    // cannot forge a log line (the fmt subscriber prints `%` fields raw).
    info!(
        client = %peer,
        proto = %log.proto,
        user = %Escaped(log.user.as_deref().unwrap_or("-")),
        cmd = %log.cmd,
        dest = %Escaped(&dest),
        via = %via,
        up = log.up,
        down = log.down,
        spliced = log.spliced_up + log.spliced_down,
        ms = start.elapsed().as_millis() as u64,
        outcome = %Escaped(&outcome),
        "session"
    );
}

/// Run the command of an admitted request, up to the relay (CONNECT, BIND)
/// or to its end (UDP ASSOCIATE, an `Err` with the outcome).
async fn dispatch(
    cfg: &Config,
    client: TcpStream,
    early: Vec<u8>,
    req: Request,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    log: &mut SessionLog,
) -> Result<Relaying, String> {
    log.cmd = match req.cmd {
        cmd::CONNECT => "connect",
        cmd::BIND => "bind",
        _ => "udp-associate",
    };
    log.dest = Some(req.dest.clone());
    let server_ip = local.map(|l| l.ip());
    match req.cmd {
        cmd::CONNECT => connect::run(cfg, client, early, &req, peer, server_ip, log).await,
        cmd::BIND => bind::run(cfg, client, early, &req, local, log).await,
        _ => Err(udp::run(cfg, client, &req, peer, local, log).await),
    }
}

/// Displays a string with its control characters escaped (`\n`, `\u{1b}`),
/// everything else as is.
pub(crate) struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_debug() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod escaped_tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            Escaped("alice\n2026-01-01 INFO session user=admin\r\u{1b}[2J\u{7f}").to_string(),
            "alice\\n2026-01-01 INFO session user=admin\\r\\u{1b}[2J\\u{7f}"
        );
        assert_eq!(Escaped("bücher.test:80").to_string(), "bücher.test:80");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admit::Admission;
    use std::time::Duration;

    /// A held connection costs mostly its session's task: tokio allocates
    /// the future with 104 bytes of its own, rounded up to 128. Up to 792
    /// bytes of future, the task takes 896 bytes (3.2 KB before issue 19,
    /// when the handshake's buffer and every phase's arguments stayed in it).
    #[tokio::test]
    async fn held_session_task_is_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (c, a) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        let (_c, (client, peer)) = (c.unwrap(), a.unwrap());
        let args =
            match <crate::cli::Cli as clap::Parser>::parse_from(["sockstun", "server"]).command {
                crate::cli::Command::Server(a) => a,
                _ => unreachable!(),
            };
        let cfg = Arc::new(Config::from_args(&args, 1024).unwrap());
        let hs = Admission::new(4, 4, Duration::from_secs(1))
            .admit(peer.ip())
            .unwrap();
        let c = Accepted {
            client,
            peer,
            listener: None,
            hs,
        };
        let slots = Arc::new(Semaphore::new(1));
        let task = handle(cfg, slots, Default::default(), c, ());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 792, "a session's future is {size} bytes");
    }
}
