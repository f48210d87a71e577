//! What a group knows about each of its proxies: down (and until when, and
//! why), the measured latency, whether it carries UDP. Passive (every dial's
//! outcome) and active (a probe every `--health-interval`).
//!
//! The state a dial reads is atomics; only a change between up and down
//! takes the lock, and that change is logged once.

use super::seam::{blame, Blame, Error, Upstream};
use crate::socks::TargetAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// First back-off after a failure; it doubles while the proxy keeps failing.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Weight of a new latency sample, in sixteenths (an exponential average).
const EWMA_NEW: u64 = 4;

/// One proxy of a group and its health.
pub struct Member {
    pub up: Arc<dyn Upstream>,
    /// Milliseconds since the group's epoch until which the proxy is down
    /// (0: up).
    down_until: AtomicU64,
    /// Connect-and-handshake latency of the probes, µs (0: not measured).
    latency_us: AtomicU64,
    /// It answered UDP ASSOCIATE with "command not supported": skipped for
    /// UDP until its next successful probe.
    udp_refused: AtomicBool,
    streak: Mutex<u32>,
    epoch: Instant,
    /// Dials and probes that failed through the proxy's fault.
    failures: AtomicU64,
}

/// One proxy as `--admin` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyHealth {
    /// Its URL, without the password.
    pub name: String,
    /// It takes new flows (not in a back-off; a lone proxy: its last dial or
    /// probe did not fail through its fault).
    pub usable: bool,
    /// The probes' latency (an average), if measured.
    pub latency: Option<Duration>,
    /// Dials and probes that failed through the proxy's fault.
    pub failures: u64,
}

/// The proxies behind an upstream and their health (`/metrics`, `/health`).
pub trait Health: Send + Sync + 'static {
    fn proxies(&self) -> Vec<ProxyHealth>;
}

impl Member {
    pub fn new(up: Arc<dyn Upstream>, epoch: Instant) -> Member {
        Member {
            up,
            down_until: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            udp_refused: AtomicBool::new(false),
            streak: Mutex::new(0),
            epoch,
            failures: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1: 0 means "up".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Not in a back-off.
    pub fn usable(&self) -> bool {
        self.now_ms() >= self.down_until.load(Ordering::Relaxed)
    }

    /// When its back-off ends (0: up).
    pub fn down_until(&self) -> u64 {
        self.down_until.load(Ordering::Relaxed)
    }

    pub fn carries_udp(&self) -> bool {
        self.up.carries_udp() && !self.udp_refused.load(Ordering::Relaxed)
    }

    /// The measured latency, if any.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// How `--admin` shows it.
    pub fn health(&self) -> ProxyHealth {
        ProxyHealth {
            name: self.up.to_string(),
            usable: self.usable(),
            latency: self.latency(),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// A dial or probe through it worked.
    pub fn succeeded(&self) {
        if self.down_until.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        if self.down_until.swap(0, Ordering::Relaxed) != 0 {
            *streak = 0;
            info!("proxy {} is back up", self.up);
        }
    }

    /// A dial or probe failed with `e`: if it is the proxy's failure, it is
    /// down for a back-off that doubles while it keeps failing.
    pub fn failed(&self, e: &Error) {
        if blame(e) != Blame::Proxy {
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now_ms();
        let until = self.down_until.load(Ordering::Relaxed);
        if until > now {
            // Flows that were already under way when it went down.
            return;
        }
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << (*streak).min(16))
            .min(BACKOFF_MAX);
        *streak += 1;
        self.down_until
            .store(now + backoff.as_millis() as u64, Ordering::Relaxed);
        match (e, until) {
            (Error::AuthFailed, 0) => warn!(
                "proxy {} refuses our credentials (or offers no method we can use): \
                 flows go to the others, retried in {backoff:?}",
                self.up
            ),
            (_, 0) => warn!(
                "proxy {} is down: {e}; flows go to the others, retried in {backoff:?}",
                self.up
            ),
            _ => debug!(
                "proxy {} still failing: {e}; retried in {backoff:?}",
                self.up
            ),
        }
    }

    /// It has no UDP ASSOCIATE.
    pub fn refused_udp(&self) {
        if !self.udp_refused.swap(true, Ordering::Relaxed) {
            info!(
                "proxy {} has no UDP ASSOCIATE: UDP goes to the others until its next successful probe",
                self.up
            );
        }
    }

    #[cfg(test)]
    pub fn set_latency(&self, l: Duration) {
        self.latency_us
            .store(l.as_micros() as u64, Ordering::Relaxed);
    }

    fn sampled(&self, took: Duration) {
        let us = (took.as_micros() as u64).max(1);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            us
        } else {
            (old * (16 - EWMA_NEW) + us * EWMA_NEW) / 16
        };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// One active probe: connect, greet and authenticate (and a CONNECT to
    /// `target`, if set) within `limit`.
    pub async fn probe(&self, target: Option<&TargetAddr>, limit: Duration) {
        let started = Instant::now();
        let res = tokio::time::timeout(limit, async {
            self.up.probe().await?;
            let took = started.elapsed();
            if let Some(t) = target {
                self.up.connect(t).await?;
            }
            Ok::<_, Error>(took)
        })
        .await
        .unwrap_or(Err(Error::Timeout));
        match res {
            Ok(took) => {
                self.sampled(took);
                self.udp_refused.store(false, Ordering::Relaxed);
                self.succeeded();
            }
            // A health target that refuses is the target's answer: the
            // proxy itself answered.
            Err(e) if blame(&e) != Blame::Proxy => {
                self.sampled(started.elapsed());
                self.succeeded();
                debug!("proxy {}: health target: {e}", self.up);
            }
            Err(e) => self.failed(&e),
        }
    }
}

/// Probe every member every `every`, starting now, for as long as the
/// members live.
pub fn spawn_probes(
    members: &[Arc<Member>],
    every: Duration,
    target: Option<TargetAddr>,
    limit: Duration,
) {
    for m in members {
        let m = Arc::downgrade(m);
        let target = target.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(m) = m.upgrade() else { return };
                m.probe(target.as_ref(), limit).await;
            }
        });
    }
}
