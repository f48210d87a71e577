//! One client connection: the handshake under its timeout (or until evicted),
//! a session slot, dispatch to the command, and the session's single info log
//! line.

use super::admit::Admitted;
use super::config::Config;
use super::handshake::{handshake, PROBE, PROBE_BARE};
use super::metrics::ServerStats;
use super::reply::{close_gently, refuse, Refusal, Request, SessionLog};
use super::{bind, connect, udp};
use crate::socks::codec::cmd;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tracing::{debug, info};

/// Evicted, stalled, to make room for a newer connection.
const EVICTED: &str = "evicted: handshake stalled while others waited";

pub(super) async fn handle(
    cfg: Arc<Config>,
    slots: Arc<Semaphore>,
    stats: &ServerStats,
    mut client: TcpStream,
    peer: SocketAddr,
    listener: Option<SocketAddr>,
    hs: Admitted,
) {
    let start = Instant::now();
    // A listener on one address accepts on that address: no need to ask
    // each socket (a syscall per connection); on a wildcard, ask.
    let local = listener
        .filter(|l| !l.ip().is_unspecified())
        .or_else(|| client.local_addr().ok());
    let mut log = SessionLog {
        proto: "-",
        user: None,
        cmd: "-",
        dest: None,
        via: None,
        up: 0,
        down: 0,
        spliced_up: 0,
        spliced_down: 0,
        datagrams_up: 0,
        datagrams_down: 0,
    };
    let body = async {
        let Admitted {
            ticket, evicted, ..
        } = hs;
        let hs = tokio::select! {
            r = tokio::time::timeout(cfg.handshake_timeout, handshake(&cfg, &mut client, &mut log)) => {
                r.unwrap_or_else(|_| Err("handshake timeout".to_string()))
            }
            _ = evicted => Err(EVICTED.to_string()),
        };
        drop(ticket);
        match hs {
            Err(why) => {
                close_gently(client).await;
                why
            }
            Ok((req, early)) => match slots.try_acquire_owned() {
                // Only relaying sessions hold a slot: a flood of handshakes
                // cannot take them.
                Err(_) => refuse(client, req.proto, Refusal::TooManyClients).await,
                Ok(_slot) => dispatch(&cfg, client, early, req, peer, local, &mut log).await,
            },
        }
    };
    // A relaying session sees the stop itself and returns its byte counts;
    // this catches the others (handshake, dial, BIND wait).
    let outcome = tokio::select! {
        biased;
        o = body => o,
        _ = cfg.stopped() => "shutdown".to_string(),
    };
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

/// Run the command of an admitted request; returns the outcome.
async fn dispatch(
    cfg: &Config,
    client: TcpStream,
    early: Vec<u8>,
    req: Request,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    log: &mut SessionLog,
) -> String {
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
        _ => udp::run(cfg, client, &req, peer, local, log).await,
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
