//! The names behind fake (virtual DNS) destinations, remembered by one UDP
//! table. The fake pool is shared by every queue of the device and locked
//! per lookup; a datagram to a fake address (QUIC to a name, say) would take
//! that lock twice (pin, unpin) on every datagram, from every queue. Here a
//! table keeps the name and a pin of the address for a while after its last
//! datagram: later datagrams find them under the table's own lock.
//!
//! A pinned address is never given to another name, so a remembered entry
//! stays true for as long as it is kept; an association that sends to the
//! address holds a clone of the pin, so forgetting an entry never unpins an
//! address in use.

use crate::dns::pool::{FakePool, PoolPin};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// An entry unused this long is forgotten (its pin dropped, unless an
/// association holds it).
const KEEP_MS: u64 = 30_000;

/// At most this many fake destinations are remembered; past it, the ones
/// idle longest are forgotten first.
const MAX_NAMES: usize = 4096;

struct Entry {
    name: String,
    pin: Arc<PoolPin>,
    used_ms: u64,
}

#[derive(Default)]
pub(super) struct Names {
    map: HashMap<IpAddr, Entry>,
    swept_ms: u64,
}

impl Names {
    /// The name behind `addr` and a pin of it: remembered, or from `pool`
    /// (then remembered). None when the pool has no name for it.
    pub(super) fn get(
        &mut self,
        pool: &Arc<FakePool>,
        addr: IpAddr,
        now_ms: u64,
    ) -> Option<(String, Arc<PoolPin>)> {
        self.sweep(now_ms);
        if let Some(e) = self.map.get_mut(&addr) {
            e.used_ms = now_ms;
            return Some((e.name.clone(), e.pin.clone()));
        }
        let (name, pin) = pool.pin(addr)?;
        let pin = Arc::new(pin);
        self.map.insert(
            addr,
            Entry {
                name: name.clone(),
                pin: pin.clone(),
                used_ms: now_ms,
            },
        );
        Some((name, pin))
    }

    /// Forget what was not used for `KEEP_MS`, at most once a second; when
    /// full, the older half.
    fn sweep(&mut self, now_ms: u64) {
        if self.map.len() >= MAX_NAMES {
            let mut used: Vec<u64> = self.map.values().map(|e| e.used_ms).collect();
            used.sort_unstable();
            let cut = used[used.len() / 2];
            self.map.retain(|_, e| e.used_ms > cut);
        } else if now_ms.saturating_sub(self.swept_ms) < 1000 {
            return;
        }
        self.swept_ms = now_ms;
        self.map
            .retain(|_, e| now_ms.saturating_sub(e.used_ms) < KEEP_MS);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two usable addresses: a name's is recycled as soon as it is not pinned.
    fn pool() -> Arc<FakePool> {
        Arc::new(FakePool::new("198.18.0.0/30".parse().unwrap(), None, &[]).unwrap())
    }

    /// Whether `a` is pinned: assigning new names never lands on it.
    fn pinned(p: &FakePool, a: IpAddr) -> bool {
        (0..4).all(|i| p.assign(&format!("probe{i}"), false) != Some(a))
    }

    #[test]
    fn remembered_pinned_and_forgotten_when_idle() {
        let p = pool();
        let a = p.assign("quic.example", false).unwrap();
        let mut n = Names::default();
        let (name, pin) = n.get(&p, a, 0).unwrap();
        assert_eq!(name, "quic.example");
        drop(pin);
        assert!(pinned(&p, a), "the remembered entry does not pin");
        assert_eq!(n.get(&p, a, 10_000).unwrap().0, "quic.example");
        // Unused for KEEP_MS: forgotten and unpinned.
        n.sweep(10_000 + KEEP_MS);
        assert_eq!(n.len(), 0);
        assert!(!pinned(&p, a), "still pinned once forgotten");
    }

    #[test]
    fn an_association_keeps_its_pin_after_the_entry_goes() {
        let p = pool();
        let a = p.assign("held.example", false).unwrap();
        let mut n = Names::default();
        let (_, held) = n.get(&p, a, 0).unwrap();
        n.sweep(KEEP_MS + 2000);
        assert_eq!(n.len(), 0);
        assert!(pinned(&p, a), "the association's pin went with the entry");
        drop(held);
        assert!(!pinned(&p, a));
    }

    #[test]
    fn an_unknown_fake_address_has_no_name() {
        let p = pool();
        let mut n = Names::default();
        assert!(n.get(&p, "198.18.0.1".parse().unwrap(), 0).is_none());
        assert_eq!(n.len(), 0);
    }

    #[test]
    fn full_forgets_the_idle_half() {
        let p = Arc::new(FakePool::new("198.18.0.0/15".parse().unwrap(), None, &[]).unwrap());
        let mut n = Names::default();
        for i in 0..MAX_NAMES as u64 {
            let a = p.assign(&format!("n{i}.example"), false).unwrap();
            n.get(&p, a, i).unwrap();
        }
        let a = p.assign("last.example", false).unwrap();
        n.get(&p, a, MAX_NAMES as u64).unwrap();
        assert!(n.len() <= MAX_NAMES / 2 + 1, "{}", n.len());
    }
}
