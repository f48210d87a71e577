//! The process's heap after a burst: when many flows or sessions have
//! closed, give the allocator's free memory back to the system, so that RSS
//! after a load is about what it was before (glibc keeps freed memory).
//! Used by the TUN stack's sweep and by the server's session count.

/// Once this many more flows (or sessions) were open at once than are open
/// now, trim the heap...
const TRIM_AFTER_CLOSED: usize = 1024;
/// ... or once at least this many closed, when that is half of the peak or
/// more (a drop from many to few).
const TRIM_AFTER_HALF: usize = 64;

/// The heap is worth trimming: `peak` were open at once since the last trim,
/// `now` are.
pub fn trim_due(peak: usize, now: usize) -> bool {
    let closed = peak.saturating_sub(now);
    closed >= TRIM_AFTER_CLOSED || (closed >= TRIM_AFTER_HALF && closed * 2 >= peak)
}

/// Return the allocator's free memory to the system.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; it is safe to call
    // at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_after_many_closed_or_a_drop_to_half() {
        assert!(trim_due(10_000, 8_976));
        assert!(trim_due(1_000, 0), "1,000 flows closed, none left");
        assert!(trim_due(200, 100));
        assert!(!trim_due(200, 150), "a quarter of a small peak");
        assert!(!trim_due(40, 0), "a few short connections");
        assert!(!trim_due(5_000, 4_000));
    }
}
