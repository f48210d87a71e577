//! The memory behind one flow's two smoltcp ring buffers.
//!
//! smoltcp fixes a socket's buffers when the socket is created, and TCP
//! advertises a window as large as the receive ring, so every flow needs its
//! full rings (256 KiB each way by default) from the SYN on. What a flow costs
//! is therefore decided by how many of those pages are resident:
//! - Both rings live in one anonymous private mapping of our own (one `mmap`
//!   and one `munmap` per flow instead of two of each through the allocator,
//!   and no allocator header in the first page). Untouched pages are the
//!   kernel's zero page: they cost nothing until data lands in them.
//! - A flow whose data has all been delivered, and through which nothing
//!   moved for a sweep period, hands every page back to the kernel
//!   ([`RingMem::release`], `MADV_DONTNEED`), which is what the kernel's own
//!   TCP costs for an idle socket: no buffer memory. The next byte faults a
//!   fresh zero page in. (smoltcp restarts an empty transmit ring at offset 0,
//!   but its receive ring keeps walking forward, so a long-lived flow touches
//!   all of it over time: releasing when idle is what bounds that.)
//! - Short connections come and go by the thousand per second: a closed
//!   flow's mapping goes back to a small [`RingPool`] (only when the flow moved
//!   little data, so only its first pages are resident) and the next flow
//!   takes it, pages and all: no `mmap`, `munmap` or page faults per
//!   connection. The pool empties itself (unmaps) once it has gone unused for
//!   a sweep period, so the memory goes back after a burst.

use std::io;
use std::ptr::NonNull;

/// One mapping holding a flow's receive and transmit rings, unmapped on drop.
/// The slices handed to smoltcp borrow it for `'static`; the owner must drop
/// every socket built on them before the `RingMem` (see `FlowShared`).
pub struct RingMem {
    base: NonNull<u8>,
    /// The whole mapping.
    len: usize,
    rx_len: usize,
    /// Where the transmit ring starts: `rx_len` rounded up to a page.
    tx_at: usize,
    tx_len: usize,
}

// SAFETY: RingMem is a plain owned allocation (like a Box<[u8]>); it has no
// thread affinity, and it only touches the mapping in `release` and `drop`,
// whose callers hold the flow's lock or own the RingMem.
unsafe impl Send for RingMem {}
// SAFETY: see above: `&RingMem` gives access to no bytes, only `release`,
// whose caller must uphold its contract.
unsafe impl Sync for RingMem {}

/// The receive ring length to build a flow with, for a wanted `len`: the
/// largest at most `len` for which smoltcp's window arithmetic stays inside
/// the ring. smoltcp (0.14) scales the windows it advertises by a shift taken
/// from the ring's bit length (`bits - 16`), but reads the window of its
/// SYN-ACK back as if it were scaled, although a SYN's window is sent
/// unscaled (RFC 7323 §2.2, at most 65535). Until the flow sends its next
/// segment, data that far ahead counts as inside the window: with a 256 KiB
/// ring (shift 3), up to 512 KiB ahead. Bytes past the ring's end are then
/// recorded as received without being written (a `debug_assert` in smoltcp,
/// a panic of the stack task in debug builds; stale bytes handed on in
/// release builds). With `65535 << shift <= len` that window ends inside the
/// ring. Found by fuzz/fuzz_targets/stack_ingress.rs.
pub fn rx_ring_len(len: usize) -> usize {
    let bits = usize::BITS - len.leading_zeros();
    if len <= 0xffff || 0xffff << (bits - 16) <= len {
        return len;
    }
    // The top of the next shorter bit length: one shift less, and
    // 0xffff << (bits - 17) is below it.
    (1 << (bits - 1)) - 1
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl RingMem {
    /// Map `rx_len + tx_len` bytes (each rounded up to whole pages, so the two
    /// rings never share a page), zero and not yet resident.
    pub fn new(rx_len: usize, tx_len: usize) -> io::Result<RingMem> {
        let page = page_size();
        let round = |n: usize| n.max(1).div_ceil(page).checked_mul(page);
        let too_big = || io::Error::other("ring sizes too large");
        let (rx_round, tx_round) = (
            round(rx_len).ok_or_else(too_big)?,
            round(tx_len).ok_or_else(too_big)?,
        );
        let len = rx_round
            .checked_add(tx_round)
            .filter(|n| *n <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing aliases no existing memory; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(RingMem {
            base,
            len,
            rx_len,
            tx_at: rx_round,
            tx_len,
        })
    }

    /// The receive and transmit ring storage, for `tcp::SocketBuffer::new`.
    /// A mapping from the pool may still hold an earlier flow's bytes; a ring
    /// buffer reads only bytes it wrote, so they are never seen.
    ///
    /// # Safety
    /// Slices from an earlier call must all be gone, and whatever holds these
    /// must be dropped before the `RingMem` (or before the next call).
    pub unsafe fn slices(&mut self) -> (&'static mut [u8], &'static mut [u8]) {
        // SAFETY: both ranges lie inside the mapping (rx at 0, tx at the
        // page-rounded rx length), do not overlap, and are readable and
        // writable initialised memory (zero-filled by the kernel, or bytes
        // written since); the caller keeps the mapping alive as long as the
        // slices and holds no earlier ones (contract above), so no other
        // reference to these bytes exists.
        unsafe {
            let rx = std::slice::from_raw_parts_mut(self.base.as_ptr(), self.rx_len);
            let tx =
                std::slice::from_raw_parts_mut(self.base.as_ptr().add(self.tx_at), self.tx_len);
            (rx, tx)
        }
    }

    /// Give every page of both rings back to the kernel; they read as zeros
    /// afterwards and become resident again only when written.
    ///
    /// # Safety
    /// Neither ring may hold a byte smoltcp will read: both queues empty and
    /// no out-of-order data waiting in the receive ring (the caller tracks
    /// sequence numbers for that; `recv_queue` does not show it). Nothing may
    /// access the rings during the call (hold the flow's lock).
    ///
    /// The bytes change behind the `&mut [u8]` smoltcp stores, through our
    /// own pointer; that reference is held, not in use (no call of smoltcp's
    /// is running), and every byte it reads later it writes first, so no
    /// read observes the change. The kernel keeps the mapping itself valid.
    pub unsafe fn release(&self) {
        // SAFETY: the range is exactly our own mapping; MADV_DONTNEED keeps it
        // mapped (private anonymous memory reads back as zero-fill), so every
        // slice into it stays valid. Failure only means the pages stay.
        unsafe {
            libc::madvise(self.base.as_ptr().cast(), self.len, libc::MADV_DONTNEED);
        }
    }

    /// Pages of the mapping that are resident now (for tests and stats).
    /// A mapping it cannot ask about counts as fully resident.
    pub fn resident_pages(&self) -> usize {
        let page = page_size();
        let pages = self.len.div_ceil(page);
        // The default rings (2 x 256 KiB) need 128 bytes: no allocation.
        let mut small = [0u8; 256];
        let mut big = Vec::new();
        let v: &mut [u8] = if pages <= small.len() {
            &mut small[..pages]
        } else {
            big.resize(pages, 0);
            &mut big
        };
        // SAFETY: the range is our mapping and `v` has one byte per page,
        // as mincore(2) requires.
        let r = unsafe { libc::mincore(self.base.as_ptr().cast(), self.len, v.as_mut_ptr()) };
        if r != 0 {
            return pages;
        }
        v.iter().filter(|b| *b & 1 != 0).count()
    }
}

/// Mappings of closed flows, kept for the next flows. Shared by the stack
/// (which takes) and the flows' last owners (which give back, from any thread).
pub struct RingPool {
    inner: std::sync::Mutex<PoolInner>,
    rx_len: usize,
    tx_len: usize,
    cap: usize,
}

struct PoolInner {
    /// Each mapping with the sweep generation it was given back in.
    free: Vec<(RingMem, u64)>,
    generation: u64,
}

impl RingPool {
    /// A pool of at most `cap` mappings of `rx_len + tx_len` bytes.
    pub fn new(rx_len: usize, tx_len: usize, cap: usize) -> RingPool {
        RingPool {
            inner: std::sync::Mutex::new(PoolInner {
                free: Vec::new(),
                generation: 0,
            }),
            rx_len,
            tx_len,
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        // The inner state is a plain list: consistent after any panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mapping for a new flow, and whether it came from the pool (then some
    /// of its pages may be resident already).
    pub fn take(&self) -> io::Result<(RingMem, bool)> {
        if let Some((m, _)) = self.lock().free.pop() {
            return Ok((m, true));
        }
        Ok((RingMem::new(self.rx_len, self.tx_len)?, false))
    }

    /// Take back a closed flow's mapping; `small` says the flow moved little
    /// data, so few of its pages are resident. Others are unmapped at once.
    /// Returns true when the pool was empty before (someone must arrange a
    /// sweep, or the kept pages would stay).
    pub fn give(&self, mem: RingMem, small: bool) -> bool {
        let mut inner = self.lock();
        let was_empty = inner.free.is_empty();
        if small && inner.free.len() < self.cap {
            let g = inner.generation;
            inner.free.push((mem, g));
            return was_empty;
        }
        // else: dropped here, unmapped.
        false
    }

    /// Called once per sweep period: unmap what sat unused for a whole
    /// period. Returns whether mappings remain (the sweep must come back).
    pub fn sweep(&self) -> bool {
        let stale = {
            let mut inner = self.lock();
            let g = inner.generation;
            inner.generation += 1;
            let (keep, stale): (Vec<_>, Vec<_>) = inner.free.drain(..).partition(|(_, x)| *x == g);
            inner.free = keep;
            stale
        };
        // Unmapped outside the lock.
        drop(stale);
        !self.lock().free.is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and by the contract of `slices` no
        // socket using it outlives this call.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_ring_holds_the_synack_window_read_back_scaled() {
        let shift = |n: usize| (usize::BITS - n.leading_zeros()).saturating_sub(16);
        for want in [
            4096,
            65535,
            65536,
            100_000,
            131_071,
            256 * 1024,
            1 << 20,
            (1 << 20) - 17,
        ] {
            let n = rx_ring_len(want);
            assert!(n <= want && n >= want / 2, "{want} -> {n}");
            assert!(0xffff.min(n) << shift(n) <= n, "{want} -> {n}");
        }
        // The default loses one byte, not its window: 65535 << 2.
        assert_eq!(rx_ring_len(256 * 1024), 256 * 1024 - 1);
        assert_eq!(rx_ring_len(4096), 4096);
    }

    #[test]
    fn rings_are_separate_zeroed_and_released() {
        let mut m = RingMem::new(10_000, 5_000).unwrap();
        assert_eq!(m.resident_pages(), 0, "nothing resident before use");
        // SAFETY: taken once; dropped before `m` (end of scope order below).
        let (rx, tx) = unsafe { m.slices() };
        assert_eq!((rx.len(), tx.len()), (10_000, 5_000));
        // (Reading untouched pages would map the zero page, which mincore
        // counts: write first, read afterwards.)
        rx[0] = 1;
        tx[0] = 2;
        rx[9_999] = 3;
        assert_eq!(tx[0], 2, "the rings do not overlap");
        assert_eq!(m.resident_pages(), 3);
        // SAFETY: nothing else uses the slices during the call.
        unsafe { m.release() };
        assert_eq!(m.resident_pages(), 0, "released pages are not resident");
        assert_eq!(
            (rx[0], tx[0], rx[9_999]),
            (0, 0, 0),
            "and read back as zero"
        );
        assert!(rx.iter().chain(tx.iter()).all(|b| *b == 0));
        tx[4_999] = 7;
        assert_eq!(tx[4_999], 7, "still mapped and writable");
    }

    #[test]
    fn pool_reuses_small_flows_and_empties_after_a_quiet_period() {
        let pool = RingPool::new(8192, 8192, 2);
        let (a, reused) = pool.take().unwrap();
        assert!(!reused);
        let (b, _) = pool.take().unwrap();
        let (c, _) = pool.take().unwrap();
        let a_base = a.base;
        pool.give(a, true);
        pool.give(b, false);
        assert_eq!(pool.len(), 1, "a flow that moved much data is not kept");
        pool.give(c, true);
        let (again, reused) = pool.take().unwrap();
        assert!(reused);
        pool.give(again, true);
        assert_eq!(pool.len(), 2);
        let (d, _) = pool.take().unwrap();
        let (e, _) = pool.take().unwrap();
        assert!(
            [d.base, e.base].contains(&a_base),
            "the same mapping comes back"
        );
        pool.give(d, true);
        pool.give(e, true);
        let (f, _) = pool.take().unwrap();
        pool.give(f, true);
        pool.give(RingMem::new(8192, 8192).unwrap(), true);
        assert_eq!(pool.len(), 2, "bounded by its capacity");
        assert!(pool.sweep(), "given back in this period: kept one more");
        assert!(!pool.sweep(), "unused for a whole period: unmapped");
        assert!(pool.is_empty());
    }
}
