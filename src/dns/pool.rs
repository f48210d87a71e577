//! The fake-IP pool of virtual DNS: each name gets an address from a private
//! range; a flow to that address is dialed by name. Addresses are recycled
//! least-recently-used first, and never while a flow pins them.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most entries one family keeps, whatever the prefix: bounds memory
/// (about 100 bytes an entry) for wide IPv6 pools.
pub const MAX_ENTRIES: u64 = 1 << 17;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// Fewer than two usable addresses once the excluded ones are taken out.
    TooSmall(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::TooSmall(p) => write!(f, "fake DNS pool {p} has too few usable addresses"),
        }
    }
}

impl std::error::Error for PoolError {}

struct Entry {
    name: String,
    pins: u32,
    tick: u64,
}

/// One address family. Addresses are `base + offset`, offsets `first..=last`.
struct Family {
    base: u128,
    first: u64,
    last: u64,
    next_fresh: u64,
    excluded: Vec<u128>,
    by_name: HashMap<String, u64>,
    entries: HashMap<u64, Entry>,
    /// Unpinned entries by last use: the eviction order.
    lru: BTreeMap<u64, u64>,
}

impl Family {
    fn new(
        base: u128,
        size: u128,
        skip_ends: bool,
        excluded: Vec<u128>,
        label: String,
    ) -> Result<Family, PoolError> {
        let (first, last) = if skip_ends && size >= 4 {
            (1u128, size - 2)
        } else {
            (0, size - 1)
        };
        let last = last.min(first + MAX_ENTRIES as u128 - 1);
        let usable = (first..=last)
            .filter(|o| !excluded.contains(&(base + o)))
            .take(2)
            .count();
        if usable < 2 {
            return Err(PoolError::TooSmall(label));
        }
        Ok(Family {
            base,
            first: first as u64,
            last: last as u64,
            next_fresh: first as u64,
            excluded,
            by_name: HashMap::new(),
            entries: HashMap::new(),
            lru: BTreeMap::new(),
        })
    }

    fn offset_of(&self, addr: u128) -> Option<u64> {
        let off = addr.checked_sub(self.base)?;
        (off >= self.first as u128 && off <= self.last as u128).then_some(off as u64)
    }

    fn touch(&mut self, off: u64, tick: u64) {
        if let Some(e) = self.entries.get_mut(&off) {
            if e.pins == 0 {
                self.lru.remove(&e.tick);
                self.lru.insert(tick, off);
            }
            e.tick = tick;
        }
    }

    fn assign(&mut self, name: &str, tick: u64) -> Option<u64> {
        if let Some(&off) = self.by_name.get(name) {
            self.touch(off, tick);
            return Some(off);
        }
        let off = loop {
            if self.next_fresh <= self.last {
                let off = self.next_fresh;
                self.next_fresh += 1;
                if self.excluded.contains(&(self.base + off as u128)) {
                    continue;
                }
                break off;
            }
            // Every address is handed out: recycle the least recently used
            // one nobody pins. None when all are in use by flows.
            let (_, off) = self.lru.pop_first()?;
            if let Some(old) = self.entries.remove(&off) {
                self.by_name.remove(&old.name);
            }
            break off;
        };
        self.entries.insert(
            off,
            Entry {
                name: name.to_string(),
                pins: 0,
                tick,
            },
        );
        self.by_name.insert(name.to_string(), off);
        self.lru.insert(tick, off);
        Some(off)
    }

    fn pin(&mut self, off: u64) -> Option<String> {
        let e = self.entries.get_mut(&off)?;
        if e.pins == 0 {
            self.lru.remove(&e.tick);
        }
        e.pins += 1;
        Some(e.name.clone())
    }

    fn unpin(&mut self, off: u64, tick: u64) {
        if let Some(e) = self.entries.get_mut(&off) {
            e.pins = e.pins.saturating_sub(1);
            if e.pins == 0 {
                e.tick = tick;
                self.lru.insert(tick, off);
            }
        }
    }
}

struct Inner {
    v4: Family,
    v6: Option<Family>,
    tick: u64,
}

impl Inner {
    fn family(&mut self, addr: IpAddr) -> Option<(&mut Family, u64)> {
        let fam = match addr {
            IpAddr::V4(_) => &mut self.v4,
            IpAddr::V6(_) => self.v6.as_mut()?,
        };
        let off = fam.offset_of(ip_to_u128(addr))?;
        Some((fam, off))
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

fn ip_to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The pool, shared by the DNS answerer, the TCP dialer and the UDP table.
pub struct FakePool {
    net4: Ipv4Network,
    net6: Option<Ipv6Network>,
    inner: Mutex<Inner>,
    /// Times the lock was taken (the data path's tests count them).
    #[cfg(test)]
    pub(crate) locks: std::sync::atomic::AtomicU64,
}

/// Keeps a pool address (and its name) from being recycled while alive.
pub struct PoolPin {
    pool: Arc<FakePool>,
    addr: IpAddr,
}

impl fmt::Debug for PoolPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolPin({})", self.addr)
    }
}

impl Drop for PoolPin {
    fn drop(&mut self) {
        let mut inner = self.pool.lock();
        let tick = inner.next_tick();
        if let Some((fam, off)) = inner.family(self.addr) {
            fam.unpin(off, tick);
        }
    }
}

impl FakePool {
    /// A pool over `net4` (and `net6`), never handing out `exclude` (the TUN's
    /// own addresses) nor the network and broadcast addresses of `net4`.
    pub fn new(
        net4: Ipv4Network,
        net6: Option<Ipv6Network>,
        exclude: &[IpAddr],
    ) -> Result<FakePool, PoolError> {
        let ex = |v6: bool| -> Vec<u128> {
            exclude
                .iter()
                .filter(|a| a.is_ipv6() == v6)
                .map(|a| ip_to_u128(*a))
                .collect()
        };
        let v4 = Family::new(
            u32::from(net4.network()) as u128,
            1u128 << (32 - net4.prefix()),
            true,
            ex(false),
            net4.to_string(),
        )?;
        let v6 = match net6 {
            Some(n) => Some(Family::new(
                u128::from(n.network()),
                1u128
                    .checked_shl(128 - n.prefix() as u32)
                    .unwrap_or(u128::MAX),
                true,
                ex(true),
                n.to_string(),
            )?),
            None => None,
        };
        Ok(FakePool {
            net4,
            net6,
            inner: Mutex::new(Inner { v4, v6, tick: 0 }),
            #[cfg(test)]
            locks: Default::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        #[cfg(test)]
        self.locks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A panic while holding the lock leaves consistent-enough maps; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ranges, for logs.
    pub fn describe(&self) -> String {
        match self.net6 {
            Some(n6) => format!("{} and {n6}", self.net4),
            None => self.net4.to_string(),
        }
    }

    /// Whether `addr` lies in the pool's ranges (assigned or not).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.net4.contains(a),
            IpAddr::V6(a) => self.net6.is_some_and(|n| n.contains(a)),
        }
    }

    pub fn has_v6(&self) -> bool {
        self.net6.is_some()
    }

    /// The address for `name` (lower-case host name), assigning one if needed.
    /// None when every address is pinned by a live flow (or no IPv6 pool).
    pub fn assign(&self, name: &str, v6: bool) -> Option<IpAddr> {
        let mut inner = self.lock();
        let tick = inner.next_tick();
        if v6 {
            let fam = inner.v6.as_mut()?;
            let off = fam.assign(name, tick)?;
            Some(IpAddr::V6(Ipv6Addr::from(fam.base + off as u128)))
        } else {
            let off = inner.v4.assign(name, tick)?;
            Some(IpAddr::V4(Ipv4Addr::from(
                (inner.v4.base + off as u128) as u32,
            )))
        }
    }

    /// The name behind a pool address, if it is assigned.
    pub fn lookup(&self, addr: IpAddr) -> Option<String> {
        let mut inner = self.lock();
        let tick = inner.next_tick();
        let (fam, off) = inner.family(addr)?;
        fam.touch(off, tick);
        fam.entries.get(&off).map(|e| e.name.clone())
    }

    /// The name behind `addr`, pinned until the returned guard drops.
    pub fn pin(self: &Arc<Self>, addr: IpAddr) -> Option<(String, PoolPin)> {
        let name = {
            let mut inner = self.lock();
            let (fam, off) = inner.family(addr)?;
            fam.pin(off)?
        };
        Some((
            name,
            PoolPin {
                pool: self.clone(),
                addr,
            },
        ))
    }

    /// Assigned entries (both families).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.v4.entries.len() + inner.v6.as_ref().map_or(0, |f| f.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(v4: &str, v6: Option<&str>, ex: &[&str]) -> Arc<FakePool> {
        let ex: Vec<IpAddr> = ex.iter().map(|a| a.parse().unwrap()).collect();
        Arc::new(FakePool::new(v4.parse().unwrap(), v6.map(|p| p.parse().unwrap()), &ex).unwrap())
    }

    #[test]
    fn same_name_same_address_and_back() {
        let p = pool("198.19.0.0/16", Some("fc00:5::/96"), &[]);
        let a = p.assign("web.test", false).unwrap();
        assert_eq!(a, "198.19.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.assign("web.test", false), Some(a));
        let b = p.assign("other.test", false).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.lookup(a).as_deref(), Some("web.test"));
        let a6 = p.assign("web.test", true).unwrap();
        assert_eq!(a6, "fc00:5::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.lookup(a6).as_deref(), Some("web.test"));
        assert!(p.contains("198.19.200.1".parse().unwrap()));
        assert!(!p.contains("198.18.0.1".parse().unwrap()));
        assert_eq!(p.lookup("198.19.200.1".parse().unwrap()), None);
        assert_eq!(p.lookup("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn excluded_and_ends_never_handed_out() {
        // /29: .0 network, .7 broadcast, .1 excluded (the TUN address) -> .2 to .6.
        let p = pool("198.18.0.0/29", None, &["198.18.0.1"]);
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(p.assign(&format!("n{i}"), false).unwrap().to_string());
        }
        assert_eq!(
            got,
            [
                "198.18.0.2",
                "198.18.0.3",
                "198.18.0.4",
                "198.18.0.5",
                "198.18.0.6"
            ]
        );
        assert_eq!(p.assign("x", true), None, "no IPv6 pool");
        assert!(FakePool::new(
            "198.18.0.0/30".parse().unwrap(),
            None,
            &["198.18.0.1".parse().unwrap()]
        )
        .is_err());
    }

    #[test]
    fn recycles_least_recently_used() {
        let p = pool("198.18.0.0/29", None, &[]); // 6 usable
        let addrs: Vec<IpAddr> = (0..6)
            .map(|i| p.assign(&format!("n{i}"), false).unwrap())
            .collect();
        // Use n0 again: n1 becomes the oldest.
        assert_eq!(p.lookup(addrs[0]).as_deref(), Some("n0"));
        let n6 = p.assign("n6", false).unwrap();
        assert_eq!(n6, addrs[1]);
        assert_eq!(p.lookup(addrs[1]).as_deref(), Some("n6"));
        assert_eq!(p.assign("n1", false), Some(addrs[2]));
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn pinned_addresses_are_never_reused() {
        let p = pool("198.18.0.0/29", None, &[]);
        let addrs: Vec<IpAddr> = (0..6)
            .map(|i| p.assign(&format!("n{i}"), false).unwrap())
            .collect();
        let pins: Vec<_> = addrs[..5].iter().map(|a| p.pin(*a).unwrap()).collect();
        assert_eq!(pins[0].0, "n0");
        // A second pin of the same address (two flows to one name).
        let extra = p.pin(addrs[0]).unwrap();
        // Only n5 is free to recycle, then nothing.
        assert_eq!(p.assign("a", false), Some(addrs[5]));
        let pin_a = p.pin(addrs[5]).unwrap();
        assert_eq!(p.assign("b", false), None);
        drop(pins);
        assert_eq!(p.lookup(addrs[0]).as_deref(), Some("n0"));
        // n0 still pinned by `extra`; n1 is now the oldest unpinned.
        assert_eq!(p.assign("b", false), Some(addrs[1]));
        drop(extra);
        drop(pin_a);
        for i in 0..5 {
            let a = p.assign(&format!("c{i}"), false).unwrap();
            assert!(addrs.contains(&a));
        }
    }

    #[test]
    fn wide_v6_pool_is_bounded() {
        let p = pool("198.18.0.0/24", Some("fc00:5::/64"), &[]);
        let a = p.assign("x", true).unwrap();
        assert_eq!(a, "fc00:5::1".parse::<IpAddr>().unwrap());
        assert!(p.pin("fc00:5::ffff:ffff".parse().unwrap()).is_none());
        assert!(p.pin("198.18.1.1".parse().unwrap()).is_none());
    }
}
