//! Who may start a SOCKS handshake. A connection in its handshake costs a
//! descriptor and a task while sending nothing useful, so a flood of them
//! (one greeting byte, then silence) must not lock real clients out:
//!
//! - handshakes have a budget of their own (`max_total`), apart from the
//!   relaying sessions' (`--max-clients`), so they cannot fill it;
//! - one source address may hold at most `max_per_source` of them;
//! - when either budget is full, the oldest handshake that has been running
//!   for at least `stall` (a live client finishes in a few round trips) is
//!   evicted to make room; when none is that old, the newcomer is refused.
//!
//! A flood from one address thus keeps at most `max_per_source` slots and
//! loses them to its own next connections; clients from elsewhere always find
//! room, and a client behind the flooding address gets in once the flood's
//! handshakes are `stall` old.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why a newcomer was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address already holds `max_per_source` handshakes, none stalled.
    SourceFull,
    /// `max_total` handshakes are running, none stalled.
    Full,
}

struct Entry {
    source: IpAddr,
    started: Instant,
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// By admission order: the smallest id is the oldest handshake.
    all: BTreeMap<u64, Entry>,
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.all.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&e.source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&e.source);
            }
        }
        Some(e)
    }

    /// Evict `id` if it has been running for `stall`; true if it was.
    fn evict_if_stalled(&mut self, id: u64, now: Instant, stall: Duration) -> bool {
        let old = self
            .all
            .get(&id)
            .is_some_and(|e| now.saturating_duration_since(e.started) >= stall);
        if old {
            if let Some(e) = self.remove(id) {
                // The handshake may have ended meanwhile; then nobody listens.
                let _ = e.evict.send(());
            }
        }
        old
    }
}

pub struct Admission {
    table: Mutex<Table>,
    max_total: usize,
    max_per_source: usize,
    stall: Duration,
}

/// A running handshake's slot, given back on drop.
pub struct Ticket {
    adm: Arc<Admission>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.adm.lock().remove(self.id);
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_source: usize, stall: Duration) -> Arc<Admission> {
        Arc::new(Admission {
            table: Mutex::new(Table::default()),
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            stall,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit a handshake from `source`, evicting a stalled one if a budget is
    /// full. The receiver fires when this handshake is evicted in turn.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
    ) -> Result<(Ticket, oneshot::Receiver<()>), Refused> {
        self.admit_at(source, Instant::now())
    }

    fn admit_at(
        self: &Arc<Self>,
        source: IpAddr,
        now: Instant,
    ) -> Result<(Ticket, oneshot::Receiver<()>), Refused> {
        let mut t = self.lock();
        let oldest_of_source = t
            .by_source
            .get(&source)
            .filter(|ids| ids.len() >= self.max_per_source)
            .and_then(|ids| ids.first().copied());
        if let Some(id) = oldest_of_source {
            if !t.evict_if_stalled(id, now, self.stall) {
                return Err(Refused::SourceFull);
            }
        }
        if t.all.len() >= self.max_total {
            let oldest = t.all.keys().next().copied();
            if !oldest.is_some_and(|id| t.evict_if_stalled(id, now, self.stall)) {
                return Err(Refused::Full);
            }
        }
        let id = t.next;
        t.next += 1;
        let (tx, rx) = oneshot::channel();
        t.all.insert(
            id,
            Entry {
                source,
                started: now,
                evict: tx,
            },
        );
        t.by_source.entry(source).or_default().insert(id);
        drop(t);
        Ok((
            Ticket {
                adm: self.clone(),
                id,
            },
            rx,
        ))
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flooding_source_keeps_only_its_share() {
        let adm = Admission::new(8, 3, STALL);
        let t0 = Instant::now();
        let flood: Vec<_> = (0..3)
            .map(|_| adm.admit_at(ip("192.0.2.1"), t0).unwrap())
            .collect();
        // Young handshakes are not evicted: the newcomer from that source is refused.
        assert_eq!(
            adm.admit_at(ip("192.0.2.1"), t0 + STALL / 2).err(),
            Some(Refused::SourceFull)
        );
        // Others still get in.
        let other = adm.admit_at(ip("192.0.2.2"), t0).unwrap();
        assert_eq!(adm.len(), 4);
        // Once stalled, the source's oldest makes room for its next one.
        let mut flood = flood;
        let (_t, _rx) = adm.admit_at(ip("192.0.2.1"), t0 + STALL).unwrap();
        assert!(
            flood[0].1.try_recv().is_ok(),
            "the oldest of the source is told"
        );
        assert!(flood[1].1.try_recv().is_err());
        assert_eq!(adm.len(), 4);
        drop(other);
        assert_eq!(adm.len(), 3);
    }

    #[test]
    fn a_full_budget_evicts_the_oldest_stalled_handshake() {
        let adm = Admission::new(3, 3, STALL);
        let t0 = Instant::now();
        let mut a = adm.admit_at(ip("192.0.2.1"), t0).unwrap();
        let b = adm.admit_at(ip("192.0.2.2"), t0 + STALL / 2).unwrap();
        let _c = adm.admit_at(ip("192.0.2.3"), t0 + STALL / 2).unwrap();
        assert_eq!(
            adm.admit_at(ip("192.0.2.4"), t0 + STALL / 2).err(),
            Some(Refused::Full)
        );
        let _d = adm.admit_at(ip("192.0.2.4"), t0 + STALL).unwrap();
        assert!(a.1.try_recv().is_ok());
        assert_eq!(adm.len(), 3);
        // The evicted ticket's drop must not free someone else's slot.
        drop(a);
        assert_eq!(adm.len(), 3);
        drop(b);
        assert_eq!(adm.len(), 2);
    }

    #[test]
    fn finished_handshakes_give_their_slot_back() {
        let adm = Admission::new(2, 1, STALL);
        let t0 = Instant::now();
        for _ in 0..1000 {
            let t = adm.admit_at(ip("2001:db8::1"), t0).unwrap();
            drop(t);
        }
        assert_eq!(adm.len(), 0);
        assert!(adm.lock().by_source.is_empty(), "no per-source residue");
    }
}
