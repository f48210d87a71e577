//! Who may start a SOCKS handshake. A connection in its handshake costs a
//! descriptor and a task while sending nothing useful, so a flood of them
//! (one greeting byte, then silence) must not lock real clients out, and a
//! burst of real clients must not be mistaken for one:
//!
//! - handshakes have a budget of their own (`max_total`), apart from the
//!   relaying sessions' (`--max-clients`), so they can never take those;
//! - while the budget is full and every handshake is younger than `stall`
//!   (a live client finishes in a few round trips), the accept loops wait:
//!   newcomers queue in the kernel's listen backlog instead of being refused,
//!   so a burst of real clients is slowed, never dropped;
//! - a handshake that has run for `stall` is stalled. When the budget is
//!   full, a newcomer takes the place of the oldest stalled handshake of the
//!   source that holds the most of them: a per-source share enforced where it
//!   matters, so that a flood from one address pays for itself, while any
//!   number of clients from one address (a NAT, a load test) is served as
//!   long as the budget has room.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host's usual share). A
//! flood thus holds the budget for at most `stall`, after which every
//! newcomer, from anywhere, takes the place of one of its connections.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// A client's address as the budget counts it: IPv4 whole, IPv6 by /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match crate::socks::codec::unmap(ip) {
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

    /// Evict the oldest handshake of `s` if it has run for `stall`.
    fn evict_oldest_of(&mut self, s: Source, now: Instant, stall: Duration) -> bool {
        let Some(&id) = self.by_source.get(&s).and_then(BTreeSet::first) else {
            return false;
        };
        let stalled = self
            .all
            .get(&id)
            .is_some_and(|e| now.saturating_duration_since(e.started) >= stall);
        if stalled {
            if let Some(e) = self.remove(id) {
                // The handshake may have ended meanwhile; then nobody listens.
                let _ = e.evict.send(());
            }
        }
        stalled
    }

    /// Evict the oldest stalled handshake of the heaviest source (when it
    /// holds more than one), else the oldest of all if it is stalled.
    fn evict_for_room(&mut self, now: Instant, stall: Duration) -> bool {
        let heaviest = self
            .by_count
            .last()
            .filter(|&&(n, _)| n > 1)
            .map(|&(_, s)| s);
        if heaviest.is_some_and(|s| self.evict_oldest_of(s, now, stall)) {
            return true;
        }
        let oldest = self.all.first_key_value().map(|(_, e)| e.source);
        oldest.is_some_and(|s| self.evict_oldest_of(s, now, stall))
    }
}

pub struct Admission {
    table: Mutex<Table>,
    /// Told when a handshake ends, for accept loops waiting for room.
    freed: Notify,
    max_total: usize,
    stall: Duration,
}

/// An admitted handshake.
pub struct Admitted {
    pub ticket: Ticket,
    /// Fires when this handshake is evicted in turn.
    pub evicted: oneshot::Receiver<()>,
    /// Whether admitting it evicted a stalled handshake.
    pub evicted_one: bool,
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
    pub fn new(max_total: usize, stall: Duration) -> Arc<Admission> {
        Arc::new(Admission {
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
            max_total: max_total.max(1),
            stall,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// None when a newcomer can be admitted now; else the time at which the
    /// oldest handshake will be stalled (and so evictable).
    fn full_until(&self, now: Instant) -> Option<Instant> {
        let t = self.lock();
        if t.all.len() < self.max_total {
            return None;
        }
        let oldest = t.all.first_key_value().map(|(_, e)| e.started + self.stall);
        oldest.filter(|&at| at > now)
    }

    /// Wait until a newcomer can be admitted: a slot is free or a handshake
    /// has stalled. Call before accepting, so that waiting clients stay in
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

    /// Admit a handshake from `ip`, evicting a stalled one to make room (see
    /// the module's text).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admitted {
        self.admit_at(Source::of(ip), Instant::now())
    }

    fn admit_at(self: &Arc<Self>, source: Source, now: Instant) -> Admitted {
        let mut t = self.lock();
        // `room` found one stalled; if another accept loop took it first,
        // this one runs over the budget by one rather than refusing a client
        // that may well be real.
        let evicted = t.all.len() >= self.max_total && t.evict_for_room(now, self.stall);
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
        Admitted {
            ticket: Ticket {
                adm: self.clone(),
                id,
            },
            evicted: rx,
            evicted_one: evicted,
        }
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

    #[test]
    fn young_handshakes_are_never_evicted_and_a_full_budget_waits() {
        let adm = Admission::new(3, STALL);
        let t0 = Instant::now();
        let mut held: Vec<_> = (0..3).map(|_| adm.admit_at(src("192.0.2.1"), t0)).collect();
        assert!(held.iter().all(|a| !a.evicted_one));
        // Full, all young: wait until the oldest has stalled.
        assert_eq!(adm.full_until(t0), Some(t0 + STALL));
        assert_eq!(adm.full_until(t0 + STALL), None);
        // Young handshakes are never evicted.
        assert!(held.iter_mut().all(|a| a.evicted.try_recv().is_err()));
        drop(held.pop());
        assert_eq!(adm.full_until(t0), None, "a freed slot is room");
    }

    #[test]
    fn a_flooding_source_loses_its_stalled_handshakes_first() {
        let adm = Admission::new(4, STALL);
        let t0 = Instant::now();
        let mut flood: Vec<_> = (0..3).map(|_| adm.admit_at(src("192.0.2.1"), t0)).collect();
        let mut other = adm.admit_at(src("192.0.2.2"), t0);
        // Full; a newcomer from a third address evicts the heaviest source's
        // oldest stalled handshake, not the other client's older one.
        let new = adm.admit_at(src("192.0.2.3"), t0 + STALL);
        assert!(new.evicted_one);
        assert!(
            flood[0].evicted.try_recv().is_ok(),
            "the flood's oldest goes"
        );
        assert!(
            other.evicted.try_recv().is_err(),
            "the lighter source stays"
        );
        assert_eq!(adm.len(), 4);
        // The flood's next connection replaces its own oldest.
        let _f = adm.admit_at(src("192.0.2.1"), t0 + STALL);
        assert!(flood[1].evicted.try_recv().is_ok());
        assert!(other.evicted.try_recv().is_err());
        assert_eq!(adm.len(), 4);
        // Not full: nobody is evicted, whatever their age.
        drop(_f);
        let x = adm.admit_at(src("192.0.2.1"), t0 + STALL * 5);
        assert!(!x.evicted_one);
    }

    #[test]
    fn an_evicted_ticket_frees_nothing_twice() {
        let adm = Admission::new(2, STALL);
        let t0 = Instant::now();
        let mut a = adm.admit_at(src("192.0.2.1"), t0);
        let b = adm.admit_at(src("192.0.2.2"), t0);
        let _c = adm.admit_at(src("192.0.2.3"), t0 + STALL);
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
        let adm = Admission::new(3, STALL);
        let t0 = Instant::now();
        let mut first = adm.admit_at(src("192.0.2.9"), t0);
        let mut a = adm.admit_at(src("2001:db8::1"), t0);
        let _b = adm.admit_at(src("2001:db8::2"), t0);
        let _c = adm.admit_at(src("192.0.2.10"), t0 + STALL);
        assert!(first.evicted.try_recv().is_err());
        assert!(a.evicted.try_recv().is_ok(), "one /64 is one source");
        first = adm.admit_at(src("192.0.2.11"), t0 + STALL);
        assert!(first.evicted.try_recv().is_err());
    }

    #[test]
    fn finished_handshakes_leave_no_residue() {
        let adm = Admission::new(2, STALL);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = std::net::Ipv4Addr::from(0xc000_0200 + (i % 7));
            drop(adm.admit_at(Source(ip.into()), t0));
        }
        let t = adm.lock();
        assert!(t.all.is_empty() && t.by_source.is_empty() && t.by_count.is_empty());
    }
}
