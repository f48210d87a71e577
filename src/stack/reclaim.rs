//! The stack's once-a-second sweep: memory that idle flows, and flows that
//! are gone, no longer need goes back to the system.
//!
//! - Idle flows give their ring pages back ([`ring::RingMem::release`]).
//! - Closed flows' mappings kept in the pool are unmapped once unused.
//! - When the stack goes from many flows to few, the tables that grew with
//!   them (the flow table, the sweep's and the egress's lists) are shrunk:
//!   Rust's collections never shrink by themselves, and a table sized for
//!   10,000 flows stays fully resident (the flow table alone is 2.5 MB, 160
//!   bytes an entry, touched all over by hashing). Then the allocator's free
//!   memory goes back to the system (`malloc_trim`).
//!
//! The sweep is armed only while there is something to do, so a quiet stack
//! never wakes for it, and nothing here runs per packet.
//!
//! [`ring::RingMem::release`]: super::ring::RingMem::release

use super::config::bump;
use super::engine::{seq_after, Engine};
use smoltcp::socket::tcp;
use std::sync::atomic::Ordering;

/// Entries a table keeps room for however few it holds.
const KEEP: usize = 64;

/// The capacity a collection that grew to `cap` and must hold up to `len`
/// should be shrunk to, if it should: twice that (and at least `KEEP`), once
/// it has four times that. Shrinking moves every entry, so it waits for a
/// large drop, and what it leaves cannot ask to shrink again before the
/// count falls further: there is no back and forth.
pub(super) fn shrunk_capacity(len: usize, cap: usize) -> Option<usize> {
    let want = len.saturating_mul(2).max(KEEP);
    (cap >= want.saturating_mul(4)).then_some(want)
}

impl Engine {
    /// Called after every wake-up; does its work once per `release_idle`
    /// period, and only while armed. Idle flows on the `resident` list give
    /// their ring pages back (one to two periods after their last byte), the
    /// pool unmaps what it kept unused, and after a drop in the number of
    /// flows the tables are shrunk and the heap trimmed. A stack whose flows
    /// are all released (or closed), with nothing left to shrink, has no
    /// sweep armed and sleeps.
    pub(super) fn sweep(&mut self) {
        let now = self.now().total_micros();
        match self.sweep_at {
            None if self.resident.is_empty() && self.pool.is_empty() && !self.reclaim_due() => {
                return
            }
            None => {
                self.sweep_at = Some(now + self.cfg.release_idle.as_micros() as i64);
                return;
            }
            Some(t) if t > now => return,
            Some(_) => {}
        }
        bump(&self.stats.sweeps);
        let released = self.release_idle_rings();
        if released > 0 {
            self.stats
                .rings_released
                .fetch_add(released, Ordering::Relaxed);
        }
        let pooled = self.pool.sweep();
        self.reclaim();
        self.sweep_at = if self.resident.is_empty() && !pooled {
            None
        } else {
            Some(now + self.cfg.release_idle.as_micros() as i64)
        };
    }

    /// A flow on the `resident` list that moved no data since the previous
    /// sweep and has both rings empty gives its pages back; one that moved
    /// data is looked at again next time. Returns how many were released.
    fn release_idle_rings(&mut self) -> u64 {
        let mut list = std::mem::take(&mut self.resident);
        let mut released = 0;
        list.retain(|(key, id)| {
            let Some(flow) = self.flows.get_mut(key) else {
                return false;
            };
            if flow.shared.id != *id {
                return false;
            }
            if std::mem::take(&mut flow.busy) {
                return true;
            }
            let set = flow.shared.lock();
            let sock = set.get::<tcp::Socket>(flow.shared.handle);
            // Both queues empty, and no data beyond a gap waiting in the
            // receive ring: everything the application sent up to its
            // furthest byte was delivered in order (read by the relay or
            // queued). Otherwise leave the pages; the flow is listed again
            // when data moves.
            let read = flow.shared.app_read.load(Ordering::Relaxed);
            let in_order = flow.rx_isn.is_some_and(|isn| {
                let next = isn
                    .wrapping_add(1)
                    .wrapping_add(read as u32)
                    .wrapping_add(sock.recv_queue() as u32);
                !seq_after(flow.rx_end, next)
            });
            if sock.recv_queue() > 0 || sock.send_queue() > 0 || !in_order {
                drop(set);
                flow.resident = false;
                return false;
            }
            if let Some(mem) = &flow.shared.mem {
                // SAFETY: both rings hold no data (queues empty, nothing
                // out of order) and we hold the flow's lock, so nothing reads
                // or writes them during the call (RingMem::release).
                unsafe { mem.release() };
            }
            drop(set);
            flow.resident = false;
            released += 1;
            false
        });
        self.resident = list;
        released
    }

    /// Memory left over from more flows than there are now: tables to shrink
    /// or a heap to trim. A few comparisons, on wake-ups that find no sweep
    /// armed.
    fn reclaim_due(&self) -> bool {
        let n = self.flows.len();
        shrunk_capacity(n, self.flows.capacity()).is_some()
            || shrunk_capacity(n, self.resident.capacity()).is_some()
            || shrunk_capacity(n, self.touched.capacity()).is_some()
            || crate::mem::trim_due(self.peak_flows, n)
    }

    /// After a drop from many flows to few: shrink what grew with them, then
    /// give the allocator's free memory back. The lists are sized by the
    /// number of flows, which bounds what they can hold, not by what they
    /// hold now: the egress's list is always empty here, and must not be
    /// shrunk every second under a steady load only to grow again.
    fn reclaim(&mut self) {
        let mut shrank = false;
        let n = self.flows.len();
        if let Some(c) = shrunk_capacity(n, self.flows.capacity()) {
            self.flows.shrink_to(c);
            self.stats
                .table_capacity
                .store(self.flows.capacity() as u64, Ordering::Relaxed);
            shrank = true;
        }
        if let Some(c) = shrunk_capacity(n, self.resident.capacity()) {
            self.resident.shrink_to(c);
            shrank = true;
        }
        if let Some(c) = shrunk_capacity(n, self.touched.capacity()) {
            self.touched.shrink_to(c);
            shrank = true;
        }
        if shrank || crate::mem::trim_due(self.peak_flows, n) {
            // Many flows have ended: hand the heap memory their state used
            // back to the system, or RSS stays at its peak for good.
            self.peak_flows = n;
            crate::mem::trim_heap();
            bump(&self.stats.heap_trims);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::NoUdp;
    use super::super::{
        phy, DialFailed, DialFuture, Dialer, Refusal, Stack, StackConfig, StackStats,
    };
    use super::*;
    use smoltcp::wire::TcpControl;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::watch;

    /// Holds every dial until the test opens the gate, then refuses it.
    struct Gate(watch::Receiver<bool>);

    impl Dialer for Gate {
        fn dial(&self, _src: SocketAddr, _dst: SocketAddr) -> DialFuture {
            let mut open = self.0.clone();
            Box::pin(async move {
                let _ = open.wait_for(|o| *o).await;
                Err(DialFailed::new(Refusal::Reset, "refused by the test"))
            })
        }
    }

    async fn until(secs: u64, stats: &StackStats, cond: impl Fn(&StackStats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !cond(stats) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// 3,000 flows open at once, then all gone: the flow table shrinks back
    /// and the heap is trimmed, by the sweep, with no packet to prompt it.
    #[tokio::test]
    async fn the_flow_table_shrinks_once_its_flows_are_gone() {
        const N: u16 = 3_000;
        let (gate, open) = watch::channel(false);
        let (src, sink, inject, _out) = phy::pair();
        let cfg = StackConfig {
            release_idle: Duration::from_millis(20),
            ..StackConfig::default()
        };
        let stack = Stack::new(cfg, Arc::new(Gate(open)), Arc::new(NoUdp), sink);
        let stats = stack.stats();
        let (_stop, stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(stack.run(src, async move {
            let _ = stop.await;
        }));
        let server: SocketAddr = "203.0.113.2:80".parse().unwrap();
        for port in 0..N {
            let client = SocketAddr::from(([198, 18, 0, 1], 10_000 + port));
            let syn = crate::stack::tests::seg(client, server, TcpControl::Syn, 1, None, &[]);
            inject.send(syn).unwrap();
        }
        let all = |s: &StackStats| s.tcp_active.load(Ordering::Relaxed) == u64::from(N);
        assert!(until(10, &stats, all).await, "the flows did not open");
        let grown = stats.table_capacity.load(Ordering::Relaxed);
        assert!(grown >= u64::from(N), "table capacity {grown}");
        gate.send(true).unwrap();
        let gone = |s: &StackStats| s.tcp_active.load(Ordering::Relaxed) == 0;
        assert!(until(10, &stats, gone).await, "the flows were not refused");
        let small = |s: &StackStats| s.table_capacity.load(Ordering::Relaxed) < 4 * KEEP as u64;
        assert!(
            until(5, &stats, small).await,
            "the flow table kept room for {} flows",
            stats.table_capacity.load(Ordering::Relaxed)
        );
        assert!(stats.heap_trims.load(Ordering::Relaxed) >= 1, "no trim");
    }

    #[test]
    fn tables_shrink_after_a_large_drop_and_never_back_and_forth() {
        // 10,000 flows' table (capacity 14,336) with 3 left: down to KEEP.
        assert_eq!(shrunk_capacity(3, 14_336), Some(KEEP));
        assert_eq!(shrunk_capacity(1_000, 14_336), Some(2_000));
        // Not for a small drop, nor for a table already small.
        assert_eq!(shrunk_capacity(5_000, 14_336), None);
        assert_eq!(shrunk_capacity(0, 4 * KEEP - 1), None);
        // What a shrink leaves (a hash table rounds up: at most 2.3 times
        // what was asked) does not ask to shrink again for the same count.
        for len in [0, 10, 100, 1_000, 5_000] {
            if let Some(want) = shrunk_capacity(len, 1 << 20) {
                let mut m: std::collections::HashMap<u64, u64> =
                    (0..14_000).map(|i| (i, i)).collect();
                m.retain(|k, _| *k < len as u64);
                m.shrink_to(want);
                assert!(m.capacity() >= len);
                assert_eq!(shrunk_capacity(len, m.capacity()), None, "len {len}");
            }
        }
    }
}
