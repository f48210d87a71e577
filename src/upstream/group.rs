//! Several proxies as one upstream (`--proxy` given more than once): a
//! policy orders the healthy ones for each new flow, and a dial that fails
//! through one proxy is tried through the next before the application's SYN
//! is answered (connect before accept hides the retry), all within the
//! connect timeout. The target's own answer (refused, unreachable) is not
//! retried: another proxy would hear the same.

use super::health::{spawn_probes, Health, Member, ProxyHealth};
use super::seam::{blame, Associated, Blame, BoxFuture, Connected, Error, Upstream};
use crate::socks::TargetAddr;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// How a group picks the proxy of a new flow among its healthy members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The first healthy proxy, in the order given.
    Failover,
    /// Healthy proxies take turns.
    RoundRobin,
    /// The same destination host always goes through the same healthy proxy
    /// (rendezvous hashing: when one goes down, only its hosts move).
    Hash,
    /// The healthy proxy with the lowest probe latency, kept until another
    /// is clearly faster.
    Fastest,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "failover" => Ok(Policy::Failover),
            "round-robin" => Ok(Policy::RoundRobin),
            "hash" => Ok(Policy::Hash),
            "fastest" => Ok(Policy::Fastest),
            _ => Err(format!(
                "unknown policy {s:?} (expected failover, round-robin, hash or fastest)"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Failover => "failover",
            Policy::RoundRobin => "round-robin",
            Policy::Hash => "hash",
            Policy::Fastest => "fastest",
        })
    }
}

/// `fastest` moves to another proxy only when it is faster by more than
/// this fraction (in sixteenths), so that two close proxies do not flap.
const FASTER_BY: u128 = 4;

pub struct Group {
    members: Vec<Arc<Member>>,
    policy: Policy,
    /// Round-robin's turn.
    turn: AtomicUsize,
    /// `fastest`'s current pick.
    pick: AtomicUsize,
    /// All tries of one dial together.
    budget: Duration,
}

impl Group {
    /// `budget` bounds one dial, retries included (`--connect-timeout`).
    pub fn new(ups: Vec<Arc<dyn Upstream>>, policy: Policy, budget: Duration) -> Group {
        let epoch = Instant::now();
        Group {
            members: ups
                .into_iter()
                .map(|u| Arc::new(Member::new(u, epoch)))
                .collect(),
            policy,
            turn: AtomicUsize::new(0),
            pick: AtomicUsize::new(0),
            budget,
        }
    }

    /// The members, in the order given.
    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// Probe every member now, then every `every` (each probe within
    /// `limit`; with `target`, a CONNECT to it too).
    pub async fn start_probes(&self, every: Duration, target: Option<TargetAddr>, limit: Duration) {
        let first = self.members.iter().map(|m| m.probe(target.as_ref(), limit));
        futures_join_all(first).await;
        for m in &self.members {
            match (m.usable(), m.latency()) {
                (true, Some(l)) => tracing::info!("proxy {} answers ({l:?})", m.up),
                (true, None) => tracing::info!("proxy {} answers", m.up),
                (false, _) => {} // said by Member::failed
            }
        }
        spawn_probes(&self.members, every, target, limit);
    }

    /// The members to try for a new flow, in order: the usable ones by the
    /// policy; when none is usable, all of them, soonest back first (a
    /// flow is better tried than refused outright).
    fn order(&self, target: Option<&TargetAddr>, udp: bool) -> Vec<usize> {
        let fits = |i: &usize| !udp || self.members[*i].carries_udp();
        let mut good: Vec<usize> = (0..self.members.len())
            .filter(|i| fits(i) && self.members[*i].usable())
            .collect();
        if good.is_empty() {
            let mut all: Vec<usize> = (0..self.members.len()).filter(fits).collect();
            all.sort_by_key(|i| self.members[*i].down_until());
            return all;
        }
        match self.policy {
            Policy::Failover => {}
            Policy::RoundRobin => {
                let n = good.len();
                good.rotate_left(self.turn.fetch_add(1, Ordering::Relaxed) % n);
            }
            Policy::Hash => {
                let host = target.map(host_key).unwrap_or_default();
                good.sort_by_key(|i| std::cmp::Reverse(self.score(&host, *i)));
            }
            Policy::Fastest => {
                let pick = self.fastest(&good);
                good.sort_by_key(|i| (*i != pick, self.members[*i].latency()));
            }
        }
        good
    }

    /// Rendezvous hashing: each (host, proxy) pair gets a score; the host
    /// goes to the proxy that scores highest among those usable.
    fn score(&self, host: &str, i: usize) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        host.hash(&mut h);
        self.members[i].up.to_string().hash(&mut h);
        h.finish()
    }

    /// `fastest`'s pick among `good`: the current one, unless it is not
    /// usable or another is faster by more than `FASTER_BY`/16.
    fn fastest(&self, good: &[usize]) -> usize {
        let lat = |i: usize| self.members[i].latency().unwrap_or(Duration::MAX);
        let best = good.iter().copied().min_by_key(|i| lat(*i)).unwrap_or(0);
        let cur = self.pick.load(Ordering::Relaxed);
        let keep = good.contains(&cur)
            && lat(cur) != Duration::MAX
            && lat(best).as_micros() * (16 + FASTER_BY) >= lat(cur).as_micros() * 16;
        let pick = if keep { cur } else { best };
        if pick != cur {
            self.pick.store(pick, Ordering::Relaxed);
            debug!("fastest proxy now {}", self.members[pick].up);
        }
        pick
    }
}

/// What `hash` keys on: the destination host (not the port), a name in
/// lower case.
fn host_key(t: &TargetAddr) -> String {
    match t {
        TargetAddr::Ip(a) => crate::net::unmap(a.ip()).to_string(),
        TargetAddr::Domain(d, _) => d.to_ascii_lowercase(),
    }
}

/// Await every future (few: one per member).
async fn futures_join_all<F: std::future::Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let mut set: Vec<_> = fs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

impl Health for Group {
    fn proxies(&self) -> Vec<ProxyHealth> {
        self.members.iter().map(|m| m.health()).collect()
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group ({}) of", self.policy)?;
        for (i, m) in self.members.iter().enumerate() {
            write!(f, "{} {}", if i == 0 { "" } else { "," }, m.up)?;
        }
        Ok(())
    }
}

impl Upstream for Group {
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.budget;
            let mut last = None;
            for i in self.order(Some(target), false) {
                let m = &self.members[i];
                let res = tokio::time::timeout_at(deadline, m.up.connect(target))
                    .await
                    .unwrap_or(Err(Error::Timeout));
                match res {
                    Ok(c) => {
                        m.succeeded();
                        return Ok(c);
                    }
                    Err(e) => {
                        m.failed(&e);
                        if blame(&e) == Blame::Target {
                            return Err(e);
                        }
                        debug!("{target} through {}: {e}; trying the next proxy", m.up);
                        last = Some(e);
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                    }
                }
            }
            Err(last.unwrap_or(Error::Timeout))
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.budget;
            let mut last = None;
            for i in self.order(None, true) {
                let m = &self.members[i];
                let res = tokio::time::timeout_at(deadline, m.up.associate())
                    .await
                    .unwrap_or(Err(Error::Timeout));
                match res {
                    Ok(a) => {
                        m.succeeded();
                        return Ok(a);
                    }
                    Err(Error::CommandNotSupported) => {
                        m.refused_udp();
                        last = Some(Error::CommandNotSupported);
                    }
                    Err(e) => {
                        m.failed(&e);
                        debug!("UDP ASSOCIATE through {}: {e}; trying the next proxy", m.up);
                        last = Some(e);
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            Err(last.unwrap_or(Error::CommandNotSupported))
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let mut last = Error::General;
            for m in &self.members {
                match m.up.probe().await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }

    fn carries_names(&self) -> bool {
        self.members.iter().all(|m| m.up.carries_names())
    }

    fn carries_udp(&self) -> bool {
        self.members.iter().any(|m| m.up.carries_udp())
    }
}

#[cfg(test)]
mod tests;
