//! Who may start a SOCKS handshake. A connection in its handshake costs a
//! descriptor and a task while sending nothing useful, so a flood of them
//! (one greeting byte, then silence, at any rate) must not lock real clients
//! out, and a burst of real clients must not be mistaken for one.
//!
//! - Handshakes have a budget of their own (`max_total`), apart from the
//!   relaying sessions' (`--max-clients`), so they can never take those.
//! - While the budget has room, everyone is admitted.
//! - When it is full and one source holds more than its share
//!   (`max_per_source`), that source pays: a newcomer from elsewhere takes
//!   the place of its oldest handshake, young or not, and a newcomer from the
//!   source itself takes the place of its oldest stalled one (running for
//!   `stall`; a live client finishes in a few round trips) or is closed at
//!   once. A flood thus competes only with itself, at any rate.
//! - When it is full and nobody is over their share, the accept loops wait:
//!   newcomers queue in the kernel's listen backlog (a burst of real clients
//!   from many addresses is slowed, never refused) until a slot frees or a
//!   handshake stalls; then the newcomer takes the place of the oldest
//!   stalled handshake of the source holding the most.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host's usual share).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// A client's address as the budget counts it: IPv4 whole, IPv6 by /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(_) => write!(f, "{}/64", self.0),
            IpAddr::V4(_) => write!(f, "{}", self.0),
        }
    }
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match crate::net::unmap(ip) {
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(net.into()))
            }
            v4 => Source(v4),
        }
    }
}

struct Entry {
    source: Source,
    started: Instant,
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// By admission order: the smallest id is the oldest handshake.
    all: BTreeMap<u64, Entry>,
    by_source: HashMap<Source, BTreeSet<u64>>,
    /// (handshakes held, source), so the heaviest source is the last.
    by_count: BTreeSet<(usize, Source)>,
}

impl Table {
    fn count(&self, s: Source) -> usize {
        self.by_source.get(&s).map_or(0, BTreeSet::len)
    }

    fn insert(&mut self, id: u64, e: Entry) {
        let s = e.source;
        let n = self.count(s);
        self.by_count.remove(&(n, s));
        self.by_count.insert((n + 1, s));
        self.by_source.entry(s).or_default().insert(id);
        self.all.insert(id, e);
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.all.remove(&id)?;
        let s = e.source;
        let n = self.count(s);
        self.by_count.remove(&(n, s));
        if n > 1 {
            self.by_count.insert((n - 1, s));
        }
        if let Some(ids) = self.by_source.get_mut(&s) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&s);
            }
        }
        Some(e)
    }

    /// Evict the oldest handshake of `s` if it has run for `min_age`.
    fn evict_oldest_of(&mut self, s: Source, now: Instant, min_age: Duration) -> bool {
        let Some(&id) = self.by_source.get(&s).and_then(BTreeSet::first) else {
            return false;
        };
        let stalled = self
            .all
            .get(&id)
            .is_some_and(|e| now.saturating_duration_since(e.started) >= min_age);
        if stalled {
            if let Some(e) = self.remove(id) {
                // The handshake may have ended meanwhile; then nobody listens.
                let _ = e.evict.send(());
            }
        }
        stalled
    }

    /// (handshakes held, source) of the source holding the most.
    fn heaviest(&self) -> (usize, Source) {
        self.by_count
            .last()
            .copied()
            .unwrap_or((0, Source(IpAddr::from([0, 0, 0, 0]))))
    }

    /// Evict the oldest stalled handshake of the heaviest source (when it
    /// holds more than one), else the oldest of all if it is stalled.
    fn evict_for_room(&mut self, now: Instant, stall: Duration) -> Option<Source> {
        let (n, heavy) = self.heaviest();
        if n > 1 && self.evict_oldest_of(heavy, now, stall) {
            return Some(heavy);
        }
        let oldest = self.all.first_key_value().map(|(_, e)| e.source)?;
        self.evict_oldest_of(oldest, now, stall).then_some(oldest)
    }
}

pub struct Admission {
    table: Mutex<Table>,
    /// Told when a handshake ends, for accept loops waiting for room.
    freed: Notify,
    max_total: usize,
    max_per_source: usize,
    stall: Duration,
}

/// An admitted handshake.
pub struct Admitted {
    pub ticket: Ticket,
    /// Fires when this handshake is evicted in turn.
    pub evicted: oneshot::Receiver<()>,
    /// The source of the handshake whose place it took, if any.
    pub evicted_from: Option<Source>,
}

/// A running handshake's slot, given back on drop.
pub struct Ticket {
    adm: Arc<Admission>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let removed = self.adm.lock().remove(self.id).is_some();
        if removed {
            self.adm.freed.notify_waiters();
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize, stall: Duration) -> Arc<Admission> {
        Arc::new(Admission {
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            stall,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// None when a newcomer can be accepted now; else the time at which the
    /// oldest handshake will be stalled (and so evictable).
    fn full_until(&self, now: Instant) -> Option<Instant> {
        let t = self.lock();
        if t.all.len() < self.max_total || t.heaviest().0 > self.max_per_source {
            return None;
        }
        let oldest = t.all.first_key_value().map(|(_, e)| e.started + self.stall);
        oldest.filter(|&at| at > now)
    }

    /// Wait until a newcomer can be accepted: a slot is free, a source is
    /// over its share, or a handshake has stalled. Call before accepting, so that waiting clients stay in
    /// the kernel's backlog rather than in this process.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between wakes us.
            freed.as_mut().enable();
            let Some(at) = self.full_until(Instant::now()) else {
                return;
            };
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(at.into()) => {}
            }
        }
    }

    /// Admit a handshake from `ip`, evicting another to make room, or refuse
    /// it (None: close it at once), as the module's text says.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Source> {
        self.admit_at(Source::of(ip), Instant::now())
    }

    fn admit_at(self: &Arc<Self>, source: Source, now: Instant) -> Result<Admitted, Source> {
        let mut t = self.lock();
        let mut evicted = None;
        if t.all.len() >= self.max_total {
            let (n, heavy) = t.heaviest();
            if n > self.max_per_source {
                let min_age = if heavy == source {
                    self.stall
                } else {
                    Duration::ZERO
                };
                if !t.evict_oldest_of(heavy, now, min_age) {
                    return Err(source);
                }
                evicted = Some(heavy);
            } else if let Some(s) = t.evict_for_room(now, self.stall) {
                evicted = Some(s);
            }
            // Else `room` saw a stalled one that another accept loop took
            // first: this one runs over the budget by one rather than
            // refusing a client that may well be real.
        }
        let id = t.next;
        t.next += 1;
        let (tx, rx) = oneshot::channel();
        t.insert(
            id,
            Entry {
                source,
                started: now,
                evict: tx,
            },
        );
        drop(t);
        Ok(Admitted {
            ticket: Ticket {
                adm: self.clone(),
                id,
            },
            evicted: rx,
            evicted_from: evicted,
        })
    }

    /// Handshakes running now.
    pub fn len(&self) -> usize {
        self.lock().all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(1);

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    fn admit(adm: &Arc<Admission>, s: &str, at: Instant) -> Admitted {
        adm.admit_at(src(s), at).expect("admitted")
    }

    #[test]
    fn nobody_over_their_share_waits_and_young_handshakes_stay() {
        let adm = Admission::new(4, 2, STALL);
        let t0 = Instant::now();
        let mut held: Vec<_> = ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|s| admit(&adm, s, t0))
            .collect();
        assert!(held.iter().all(|a| a.evicted_from.is_none()));
        // Full, nobody over 2, all young: wait until the oldest has stalled.
        assert_eq!(adm.full_until(t0), Some(t0 + STALL));
        assert_eq!(adm.full_until(t0 + STALL), None);
        // Then the heaviest source's oldest stalled one makes room.
        let new = admit(&adm, "192.0.2.9", t0 + STALL);
        assert_eq!(new.evicted_from, Some(src("192.0.2.1")));
        assert!(held[0].evicted.try_recv().is_ok());
        assert!(held[2].evicted.try_recv().is_err());
        drop(held.pop());
        assert_eq!(adm.full_until(t0), None, "a freed slot is room");
    }

    #[test]
    fn a_source_over_its_share_pays_at_once_at_any_rate() {
        let adm = Admission::new(4, 2, STALL);
        let t0 = Instant::now();
        let mut flood: Vec<_> = (0..4).map(|_| admit(&adm, "192.0.2.1", t0)).collect();
        // Full and one source over its share: no waiting.
        assert_eq!(adm.full_until(t0), None);
        // Its own young newcomer is refused...
        assert_eq!(
            adm.admit_at(src("192.0.2.1"), t0).err(),
            Some(src("192.0.2.1"))
        );
        // ...a newcomer from elsewhere takes the place of its oldest, young.
        let other = admit(&adm, "192.0.2.2", t0);
        assert_eq!(other.evicted_from, Some(src("192.0.2.1")));
        assert!(flood[0].evicted.try_recv().is_ok());
        // Once stalled, its own newcomer replaces its own oldest.
        let again = admit(&adm, "192.0.2.1", t0 + STALL);
        assert_eq!(again.evicted_from, Some(src("192.0.2.1")));
        assert!(flood[1].evicted.try_recv().is_ok());
        assert_eq!(adm.len(), 4);
    }

    #[test]
    fn an_evicted_ticket_frees_nothing_twice() {
        let adm = Admission::new(2, 2, STALL);
        let t0 = Instant::now();
        let mut a = admit(&adm, "192.0.2.1", t0);
        let b = admit(&adm, "192.0.2.2", t0);
        let _c = admit(&adm, "192.0.2.3", t0 + STALL);
        assert!(a.evicted.try_recv().is_ok());
        drop(a);
        assert_eq!(adm.len(), 2);
        drop(b);
        assert_eq!(adm.len(), 1);
    }

    #[test]
    fn ipv6_sources_count_by_64() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("::ffff:192.0.2.1"), src("192.0.2.1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        let adm = Admission::new(3, 1, STALL);
        let t0 = Instant::now();
        let _v4 = admit(&adm, "192.0.2.9", t0);
        let mut a = admit(&adm, "2001:db8::1", t0);
        let _b = admit(&adm, "2001:db8::2", t0);
        // The /64 holds 2 > 1: a newcomer from elsewhere evicts it at once.
        let c = admit(&adm, "192.0.2.10", t0);
        assert_eq!(c.evicted_from, Some(src("2001:db8::7")));
        assert!(a.evicted.try_recv().is_ok(), "one /64 is one source");
    }

    #[test]
    fn finished_handshakes_leave_no_residue() {
        let adm = Admission::new(2, 1, STALL);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = std::net::Ipv4Addr::from(0xc000_0200 + (i % 7));
            drop(adm.admit_at(Source(ip.into()), t0));
        }
        let t = adm.lock();
        assert!(t.all.is_empty() && t.by_source.is_empty() && t.by_count.is_empty());
    }
}
