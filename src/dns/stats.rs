//! DNS counters: queries by type and answers by response code, bumped once
//! per query (relaxed atomics), read by `--admin`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The query types counted by name; the rest are "other".
pub const QTYPES: [(u16, &str); 8] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (33, "SRV"),
    (65, "HTTPS"),
];

/// The response codes counted by name (RFC 1035 §4.1.1); the rest are "other".
pub const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

#[derive(Debug, Default)]
pub struct DnsStats {
    /// Indexed as `QTYPES`, then "other", then "malformed" (no question).
    queries: [AtomicU64; QTYPES.len() + 2],
    /// Indexed as `RCODES`, then "other", then "truncated" (TC set: retry
    /// over TCP).
    answers: [AtomicU64; RCODES.len() + 2],
}

impl DnsStats {
    pub(super) fn query(&self, qtype: Option<u16>) {
        let i = match qtype {
            None => QTYPES.len() + 1,
            Some(t) => QTYPES
                .iter()
                .position(|(n, _)| *n == t)
                .unwrap_or(QTYPES.len()),
        };
        self.queries[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn answer(&self, resp: &[u8]) {
        let i = match resp.get(2..4) {
            Some(h) if h[0] & 0x02 != 0 => RCODES.len() + 1,
            Some(h) => ((h[1] & 0x0f) as usize).min(RCODES.len()),
            None => RCODES.len(),
        };
        self.answers[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (type, queries), every type listed.
    pub fn queries(&self) -> Vec<(&'static str, u64)> {
        let names = QTYPES.iter().map(|(_, n)| *n).chain(["other", "malformed"]);
        names
            .zip(self.queries.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }

    /// (response code, answers), every code listed.
    pub fn answers(&self) -> Vec<(&'static str, u64)> {
        let names = RCODES.iter().copied().chain(["other", "truncated"]);
        names
            .zip(self.answers.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_by_type_and_answers_by_code() {
        let s = DnsStats::default();
        s.query(Some(1));
        s.query(Some(28));
        s.query(Some(28));
        s.query(Some(99));
        s.query(None);
        let q = s.queries();
        assert_eq!(q[0], ("A", 1));
        assert_eq!(q[1], ("AAAA", 2));
        assert_eq!(q[QTYPES.len()], ("other", 1));
        assert_eq!(q[QTYPES.len() + 1], ("malformed", 1));
        s.answer(&[0, 0, 0x81, 0x80]);
        s.answer(&[0, 0, 0x81, 0x83]);
        s.answer(&[0, 0, 0x83, 0x80]);
        s.answer(&[0, 0, 0x81, 0x8c]);
        let a = s.answers();
        assert_eq!(a[0], ("NOERROR", 1));
        assert_eq!(a[3], ("NXDOMAIN", 1));
        assert_eq!(a[RCODES.len()], ("other", 1));
        assert_eq!(a[RCODES.len() + 1], ("truncated", 1));
    }
}
