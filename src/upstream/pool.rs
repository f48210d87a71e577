//! A warm pool (`--warm N`): connections to one proxy opened ahead of need,
//! each ready for its request (a SOCKS5 connection connected, greeted and
//! authenticated), so a new flow pays one round trip to the proxy (its
//! request) instead of three.
//!
//! - A background task keeps `size` connections ready (opened concurrently;
//!   after a failure one at a time, with a growing pause, so a proxy that is
//!   down is not hammered).
//! - A connection older than `lifetime` is closed and replaced: a proxy
//!   gives a client a limited time to finish its handshake (`sockstun
//!   server` 10 s, dante's `timeout.negotiate` 30 s, microsocks none), and
//!   a pooled connection is a handshake left half-way.
//! - The pool refills only while flows come: once nothing asked for a
//!   connection for `keep_warm`, it lets the last ones expire and stays
//!   empty (no churn towards the proxy from an idle desktop) until the next
//!   flow.
//!
//! What a connection is and how one is opened is the caller's (`T`, the
//! opener given to `Pool::new`); `Slots` is the bookkeeping alone, pure, so
//! that it can be tested without sockets or clocks.

use super::seam::BoxFuture;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

/// How a pool is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections kept ready (0: no pool).
    pub size: usize,
    /// A ready connection is closed this long after it began to open.
    pub lifetime: Duration,
    /// The pool is refilled while a flow asked for a connection within this.
    pub keep_warm: Duration,
}

/// 7 s: under the shortest handshake timeout of the servers we know
/// (`sockstun server --handshake-timeout`, 10 s; dante 30 s; microsocks
/// none) with 3 s to spare for the request's way to the proxy and the
/// clocks' start (ours starts before the TCP connect, the server's at its
/// accept).
pub const LIFETIME: Duration = Duration::from_secs(7);

/// 5 minutes: a desktop's browsing comes in bursts minutes apart; past
/// that, an idle pool costs the proxy a connection every few seconds for
/// nothing.
pub const KEEP_WARM: Duration = Duration::from_secs(300);

/// The longest pause between tries to open a connection after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl PoolConfig {
    /// `size` connections with the default lifetime and warm period.
    pub fn new(size: usize) -> PoolConfig {
        PoolConfig {
            size,
            lifetime: LIFETIME,
            keep_warm: KEEP_WARM,
        }
    }
}

/// The pool's bookkeeping: the ready connections (oldest first) and the
/// ones being opened.
pub struct Slots<T> {
    cfg: PoolConfig,
    /// Ready connections and when each began to open, oldest first.
    ready: VecDeque<(Instant, T)>,
    /// Connections being opened.
    opening: usize,
    /// The last time a flow asked for a connection.
    demand: Instant,
    /// Failed opens in a row.
    failures: u32,
    /// No open is started before this (after a failure).
    retry_at: Option<Instant>,
}

impl<T> Slots<T> {
    pub fn new(cfg: PoolConfig, now: Instant) -> Slots<T> {
        Slots {
            cfg,
            ready: VecDeque::new(),
            opening: 0,
            demand: now,
            failures: 0,
            retry_at: None,
        }
    }

    /// Connections ready now.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    fn fresh(&self, born: Instant, now: Instant) -> bool {
        now < born + self.cfg.lifetime
    }

    fn warm(&self, now: Instant) -> bool {
        now < self.demand + self.cfg.keep_warm
    }

    /// A flow asks for a connection: the oldest one still within its
    /// lifetime, if any. Expired ones met on the way are dropped.
    pub fn take(&mut self, now: Instant) -> Option<T> {
        self.demand = now;
        while let Some((born, t)) = self.ready.pop_front() {
            if self.fresh(born, now) {
                return Some(t);
            }
        }
        None
    }

    /// The connections past their lifetime, taken out (to be closed).
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while self
            .ready
            .front()
            .is_some_and(|(b, _)| !self.fresh(*b, now))
        {
            out.extend(self.ready.pop_front().map(|(_, t)| t));
        }
        out
    }

    /// Every ready connection, taken out: one was found dead, the others
    /// (older, or opened the same way) are suspect.
    pub fn flush(&mut self) -> Vec<T> {
        self.ready.drain(..).map(|(_, t)| t).collect()
    }

    /// How many opens to start now (counted as opening from here).
    pub fn to_open(&mut self, now: Instant) -> usize {
        if !self.warm(now) || self.retry_at.is_some_and(|r| now < r) {
            return 0;
        }
        let have = self.ready.len() + self.opening;
        let mut n = self.cfg.size.saturating_sub(have);
        if self.failures > 0 {
            // One try at a time until the proxy answers again.
            n = n.min(1usize.saturating_sub(self.opening));
        }
        self.opening += n;
        n
    }

    /// An open begun at `born` gave `t`; given back when the pool has no
    /// room left for it or it is already too old (the caller closes it).
    pub fn opened(&mut self, born: Instant, t: T, now: Instant) -> Result<(), T> {
        self.opening = self.opening.saturating_sub(1);
        self.failures = 0;
        self.retry_at = None;
        if self.ready.len() >= self.cfg.size || !self.fresh(born, now) {
            return Err(t);
        }
        // Kept oldest first: opens finish out of order.
        let at = self.ready.partition_point(|(b, _)| *b <= born);
        self.ready.insert(at, (born, t));
        Ok(())
    }

    /// An open failed: the next try waits 1 s, then 2, 4... up to 30 s.
    pub fn failed(&mut self, now: Instant) {
        self.opening = self.opening.saturating_sub(1);
        self.failures = self.failures.saturating_add(1);
        let pause = Duration::from_secs(1u64 << (self.failures - 1).min(5)).min(MAX_BACKOFF);
        self.retry_at = Some(now + pause);
    }

    /// When the keeper must look again without being told: the oldest
    /// connection's expiry, the end of a pause after failures, or the end
    /// of the warm period when connections are missing. None: only when
    /// told (a take, an open done).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let expiry = self.ready.front().map(|(b, _)| *b + self.cfg.lifetime);
        let retry = self.retry_at.filter(|r| *r > now && self.warm(now));
        [expiry, retry].into_iter().flatten().min()
    }
}

/// What the keeper task and the flows share.
struct Shared<T> {
    slots: Mutex<Slots<T>>,
    wake: Notify,
    /// The pool's owner is gone: the keeper stops.
    closed: AtomicBool,
    /// The proxy, for log lines (no password).
    name: Arc<str>,
}

impl<T> Shared<T> {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens one connection, ready for its request.
pub type Opener<T, E> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, E>> + Send + Sync>;

/// A warm pool of `T`, refilled by a task of its own, which ends when the
/// pool is dropped (its connections are closed then).
pub struct Pool<T: Send + 'static> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + 'static> Pool<T> {
    /// Start keeping `cfg.size` connections opened by `open`. Needs a tokio
    /// runtime.
    pub fn new<E: fmt::Display + Send + 'static>(
        cfg: PoolConfig,
        name: Arc<str>,
        open: Opener<T, E>,
    ) -> Pool<T> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(Slots::new(cfg, Instant::now())),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            name,
        });
        tokio::spawn(keep(shared.clone(), open));
        Pool { shared }
    }

    /// A ready connection for a new flow, if one is there and `alive` says
    /// it is still open (a proxy that closed it since shows it at once).
    /// The keeper is told to open its replacement.
    pub fn take(&self, alive: impl Fn(&T) -> bool) -> Option<T> {
        let now = Instant::now();
        let mut dead = Vec::new();
        let got = {
            let mut s = self.shared.slots();
            loop {
                match s.take(now) {
                    Some(t) if !alive(&t) => dead.push(t),
                    other => break other,
                }
            }
        };
        if !dead.is_empty() {
            debug!(
                "pool {}: {} ready connection(s) closed by the proxy",
                self.shared.name,
                dead.len()
            );
        }
        self.shared.wake.notify_one();
        got
    }

    /// Close every ready connection (one turned out dead on first use) and
    /// open new ones.
    pub fn flush(&self) {
        let old = self.shared.slots().flush();
        debug!(
            "pool {}: {} ready connection(s) dropped",
            self.shared.name,
            old.len()
        );
        drop(old);
        self.shared.wake.notify_one();
    }

    /// Connections ready now.
    pub fn ready(&self) -> usize {
        self.shared.slots().ready()
    }
}

impl<T: Send + 'static> Drop for Pool<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        drop(self.shared.slots().flush());
        self.shared.wake.notify_one();
    }
}

/// The keeper: close what expired, start the opens `Slots` asks for, sleep
/// until told or until the next expiry.
async fn keep<T: Send + 'static, E: fmt::Display + Send + 'static>(
    shared: Arc<Shared<T>>,
    open: Opener<T, E>,
) {
    while !shared.closed.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (expired, n, wake) = {
            let mut s = shared.slots();
            let expired = s.expire(now);
            let n = s.to_open(now);
            (expired, n, s.next_wake(now))
        };
        if !expired.is_empty() {
            debug!(
                "pool {}: {} connection(s) reached their lifetime",
                shared.name,
                expired.len()
            );
        }
        drop(expired);
        for _ in 0..n {
            tokio::spawn(open_one(shared.clone(), open.clone()));
        }
        match wake {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, shared.wake.notified()).await;
            }
            None => shared.wake.notified().await,
        }
    }
}

/// Open one connection and put it in the pool.
async fn open_one<T: Send + 'static, E: fmt::Display>(shared: Arc<Shared<T>>, open: Opener<T, E>) {
    let born = Instant::now();
    let r = open().await;
    let now = Instant::now();
    let mut s = shared.slots();
    match r {
        Ok(t) if !shared.closed.load(Ordering::Relaxed) => match s.opened(born, t, now) {
            Ok(()) => debug!("pool {}: {} ready", shared.name, s.ready()),
            Err(extra) => {
                drop(s);
                drop(extra);
            }
        },
        Ok(_) => {}
        Err(e) => {
            s.failed(now);
            debug!("pool {}: could not open a connection: {e}", shared.name);
        }
    }
    shared.wake.notify_one();
}

/// A pool for each thread that takes connections (each queue of the TUN runs
/// its flows on a thread and runtime of its own): a connection is opened,
/// watched and taken by one runtime. Were one pool shared, a flow on another
/// queue would wake the pool's thread at every take and readiness (on 2
/// cores, crr through 2 queues lost a fifth of its connections/s to that).
/// The first thread's pool starts with this; another's at its first take.
pub struct Pools<T: Send + 'static, E> {
    cfg: PoolConfig,
    name: Arc<str>,
    open: Opener<T, E>,
    /// Few (one per queue): a scan under a lock taken once per take.
    by_thread: Mutex<Vec<(std::thread::ThreadId, Arc<Pool<T>>)>>,
}

impl<T: Send + 'static, E: fmt::Display + Send + 'static> Pools<T, E> {
    /// Needs a tokio runtime, as every thread that takes does.
    pub fn new(cfg: PoolConfig, name: Arc<str>, open: Opener<T, E>) -> Pools<T, E> {
        let p = Pools {
            cfg,
            name,
            open,
            by_thread: Mutex::default(),
        };
        p.here();
        p
    }

    /// This thread's pool, started now if it has none.
    pub fn here(&self) -> Arc<Pool<T>> {
        let me = std::thread::current().id();
        let mut all = self
            .by_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, p)) = all.iter().find(|(t, _)| *t == me) {
            return p.clone();
        }
        let p = Arc::new(Pool::new(self.cfg, self.name.clone(), self.open.clone()));
        all.push((me, p.clone()));
        p
    }

    /// Connections ready now, in every thread's pool.
    pub fn ready(&self) -> usize {
        let all = self
            .by_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.iter().map(|(_, p)| p.ready()).sum()
    }
}

#[cfg(test)]
mod tests;
