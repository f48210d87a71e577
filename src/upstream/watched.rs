//! A lone proxy (one `--proxy`, no `--health-interval`: no group, no probes)
//! with its health as its last dial or probe says, for `--admin`: it
//! forwards everything and records each outcome (two relaxed stores per
//! dial, nothing per packet).

use super::health::{Health, ProxyHealth};
use super::seam::{blame, Associated, Blame, BoxFuture, Connected, Error, Upstream};
use crate::socks::TargetAddr;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct Watched {
    inner: Arc<dyn Upstream>,
    /// The last dial or probe failed through the proxy's fault.
    failing: AtomicBool,
    failures: AtomicU64,
}

impl Watched {
    pub fn new(inner: Arc<dyn Upstream>) -> Watched {
        Watched {
            inner,
            failing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        }
    }

    fn record<T>(&self, r: &Result<T, Error>) {
        match r {
            Err(e) if blame(e) == Blame::Proxy => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.failing.store(true, Ordering::Relaxed);
            }
            // Worked, or the target's (or the proxy's rules') answer: the
            // proxy itself answered.
            _ => self.failing.store(false, Ordering::Relaxed),
        }
    }
}

impl Health for Watched {
    fn proxies(&self) -> Vec<ProxyHealth> {
        vec![ProxyHealth {
            name: self.inner.to_string(),
            usable: !self.failing.load(Ordering::Relaxed),
            latency: None,
            failures: self.failures.load(Ordering::Relaxed),
        }]
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Upstream for Watched {
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        Box::pin(async move {
            let r = self.inner.connect(target).await;
            self.record(&r);
            r
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        Box::pin(async move {
            let r = self.inner.associate().await;
            self.record(&r);
            r
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let r = self.inner.probe().await;
            self.record(&r);
            r
        })
    }

    fn carries_names(&self) -> bool {
        self.inner.carries_names()
    }

    fn carries_udp(&self) -> bool {
        self.inner.carries_udp()
    }
}
