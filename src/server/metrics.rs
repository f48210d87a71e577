//! What `--admin` shows of server mode: sessions open, sessions by command
//! and outcome, authentication failures, bytes, refused clients. Each
//! session is counted once, where it logs its line; nothing per packet.

use crate::admin::{FlowInfo, Report, Scrape};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const CMDS: [&str; 4] = ["none", "connect", "bind", "udp-associate"];
const OUTCOMES: [&str; 4] = ["relayed", "refused", "failed", "shutdown"];
/// Clients closed before any handshake: not in --allow-client, every session
/// slot taken, over their share of the handshake budget.
pub(crate) const CLIENT_REFUSALS: [&str; 3] =
    ["not_allowed", "too_many_clients", "handshake_budget"];

#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    /// Sessions running (handshake included).
    pub open: AtomicU64,
    sessions: [[AtomicU64; OUTCOMES.len()]; CMDS.len()],
    auth_failures: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    spliced_up: AtomicU64,
    spliced_down: AtomicU64,
    datagrams_up: AtomicU64,
    datagrams_down: AtomicU64,
    pub clients_refused: [AtomicU64; CLIENT_REFUSALS.len()],
}

/// The admin's index of a client refusal.
pub(crate) enum ClientRefusal {
    NotAllowed = 0,
    TooMany = 1,
    Budget = 2,
}

impl ServerStats {
    pub(crate) fn client_refused(&self, why: ClientRefusal) {
        self.clients_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// One session ended: its command (as logged), outcome and bytes.
    pub(crate) fn session(&self, cmd: &str, outcome: &str, up: u64, down: u64) {
        let c = CMDS.iter().position(|x| *x == cmd).unwrap_or(0);
        let o = if outcome == "shutdown" {
            3
        } else if outcome.starts_with("refused") {
            1
        } else if c == 0 {
            // No request was read: the handshake failed.
            2
        } else {
            0
        };
        if outcome == "refused: authentication failed" {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.sessions[c][o].fetch_add(1, Ordering::Relaxed);
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }
}

impl ServerStats {
    /// One session's UDP datagrams (UDP ASSOCIATE), counted when it ends
    /// like its bytes.
    pub(crate) fn datagrams(&self, up: u64, down: u64) {
        if up + down > 0 {
            self.datagrams_up.fetch_add(up, Ordering::Relaxed);
            self.datagrams_down.fetch_add(down, Ordering::Relaxed);
        }
    }

    /// The part of one session's bytes that went by splice, counted when it
    /// ends like its bytes.
    pub(crate) fn spliced(&self, up: u64, down: u64) {
        if up + down > 0 {
            self.spliced_up.fetch_add(up, Ordering::Relaxed);
            self.spliced_down.fetch_add(down, Ordering::Relaxed);
        }
    }
}

pub(crate) struct ServerReport(pub Arc<ServerStats>);

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Report for ServerReport {
    fn metrics(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let st = &self.0;
        m.gauge(
            "sessions_open",
            "Client connections being served (handshake included).",
            get(&st.open) as f64,
        )?;
        let mut by = Vec::new();
        for (c, cmd) in CMDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                by.push((*cmd, *outcome, get(&st.sessions[c][o])));
            }
        }
        m.counters2(
            "sessions",
            "Sessions ended, by command (none: no request was read) and outcome.",
            ("command", "outcome"),
            &by,
        )?;
        m.counter(
            "auth_failures",
            "Clients whose username/password was refused.",
            get(&st.auth_failures),
        )?;
        m.counters(
            "bytes",
            "Bytes relayed: up (client to destination), down (back).",
            "direction",
            &[("up", get(&st.bytes_up)), ("down", get(&st.bytes_down))],
        )?;
        m.counters(
            "spliced_bytes",
            "Of the bytes relayed, those moved by splice(2) inside the kernel, never copied through user space.",
            "direction",
            &[
                ("up", get(&st.spliced_up)),
                ("down", get(&st.spliced_down)),
            ],
        )?;
        m.counters(
            "udp_datagrams",
            "UDP datagrams relayed by UDP ASSOCIATE: up (client to destination), down (back).",
            "direction",
            &[
                ("up", get(&st.datagrams_up)),
                ("down", get(&st.datagrams_down)),
            ],
        )?;
        let refused: Vec<(&str, u64)> = CLIENT_REFUSALS
            .iter()
            .zip(&st.clients_refused)
            .map(|(l, c)| (*l, get(c)))
            .collect();
        m.counters(
            "clients_refused",
            "Connections closed before any handshake, by reason.",
            "reason",
            &refused,
        )
    }

    fn flows(&self) -> Vec<FlowInfo> {
        Vec::new()
    }

    fn healthy(&self) -> bool {
        true
    }
}
