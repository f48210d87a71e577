//! DNS over UDP through one association (`--dns udp`). A stub resolver asks
//! each query from a new source port, so one association per local endpoint
//! meant a new UDP ASSOCIATE (a round trip to the proxy, a TCP connection)
//! before every query. Queries to port 53 of a way instead share one
//! association, and the answers find their askers by query id: each query
//! leaves with an id of ours, unused among the queries still waiting, and
//! its answer gets the asker's id back on its way to the asker's endpoint.
//! An answer must come from the server its query went to.

use super::shared::WayKey;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Queries waiting for an answer, at most; beyond, a query goes through an
/// association of its own endpoint as before.
const MAX_PENDING: usize = 4096;
/// How long a query waits for its answer (a resolver has given up by then).
const PENDING_MS: u64 = 10_000;
/// Queries of a way left unanswered in a row after which its association is
/// taken for dead (the proxy's relay gone quiet while the control connection
/// stays up) and replaced by a new UDP ASSOCIATE.
pub(super) const SILENT_LIMIT: u32 = 8;

/// The endpoint that stands for the shared association in the table (the
/// key's way, `WayKey::DnsMux`, keeps it apart from any real endpoint).
pub(super) const MUX_LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Who asked a query, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Asked {
    pub(super) client: SocketAddr,
    /// The server as the application addressed it (replies are from it).
    pub(super) server: SocketAddr,
    /// The asker's own id, restored on the answer.
    pub(super) id: u16,
    /// Its question (`message::question_key`), which the answer must repeat.
    question: u64,
    way: WayKey,
    at_ms: u64,
}

#[derive(Default)]
struct Pending {
    by_id: HashMap<u16, Asked>,
    /// Our ids in the order they were given, for expiry.
    order: VecDeque<(u64, u16)>,
    rng: u64,
    /// Per way: queries that expired unanswered since its last answer.
    silent: HashMap<WayKey, u32>,
}

#[derive(Default)]
pub(super) struct DnsMux {
    pending: Mutex<Pending>,
}

/// Whether a UDP payload to port 53 is a standard DNS query: one question,
/// no answer or authority records. Anything else on port 53 (WireGuard,
/// OpenVPN or DNSCrypt run there to pass captive portals) keeps its bytes
/// and its endpoint's own association: rewriting its first two bytes as an
/// id would break it.
pub(super) fn is_query(payload: &[u8]) -> bool {
    let counts_ok = payload.len() >= 12 && payload[6..10] == [0, 0, 0, 0];
    counts_ok && crate::dns::message::Query::parse(payload).is_ok()
}

fn unmap(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::net::unmap(a.ip()), a.port())
}

impl Pending {
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.order.front() {
            if now_ms.saturating_sub(at) < PENDING_MS {
                break;
            }
            self.order.pop_front();
            if self.by_id.get(&id).is_some_and(|a| a.at_ms == at) {
                if let Some(a) = self.by_id.remove(&id) {
                    *self.silent.entry(a.way).or_default() += 1;
                }
            }
        }
        // Answered queries leave their place in `order` behind: dropped
        // when they outnumber the waiting ones (amortised, no scan per query).
        if self.order.len() > 2 * MAX_PENDING {
            let by_id = &self.by_id;
            self.order
                .retain(|(at, id)| by_id.get(id).is_some_and(|a| a.at_ms == *at));
        }
    }

    /// An unused id, unpredictable to whoever sees the relay's traffic.
    fn fresh_id(&mut self) -> Option<u16> {
        if self.rng == 0 {
            self.rng = RandomState::new().hash_one(0u8) | 1;
        }
        for _ in 0..64 {
            // xorshift64
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let id = (self.rng >> 24) as u16;
            if !self.by_id.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}

impl DnsMux {
    /// A query of `client` (with its id `id`) to `server` over the
    /// association of `way`: the id it leaves with, or None when too many
    /// wait (it then goes on its own endpoint's association).
    pub(super) fn ask(
        &self,
        client: SocketAddr,
        server: SocketAddr,
        (id, question): (u16, u64),
        way: &WayKey,
        now_ms: u64,
    ) -> Option<u16> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.expire(now_ms);
        if p.by_id.len() >= MAX_PENDING {
            return None;
        }
        let ours = p.fresh_id()?;
        let asked = Asked {
            client,
            server: unmap(server),
            id,
            question,
            way: way.clone(),
            at_ms: now_ms,
        };
        p.by_id.insert(ours, asked);
        p.order.push_back((now_ms, ours));
        Some(ours)
    }

    /// The asker of `answer` (with our id) from `from` on the association
    /// of `way`; None (the answer is dropped) when nobody asked that server
    /// that question with that id on that way. The relay's port is long-lived
    /// here, so the id and the question are what a forged answer must guess.
    pub(super) fn answer(&self, answer: &[u8], from: SocketAddr, way: &WayKey) -> Option<Asked> {
        let ours = crate::dns::message::query_id(answer)?;
        let question = crate::dns::message::question_key(answer)?;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.by_id.get(&ours) {
            Some(a) if a.server == unmap(from) && a.way == *way && a.question == question => {
                p.silent.remove(way);
                p.by_id.remove(&ours)
            }
            _ => None,
        }
    }

    /// The query that left with our id `ours` was dropped before it went:
    /// nobody waits for its answer.
    pub(super) fn forget(&self, ours: u16) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.by_id.remove(&ours);
    }

    /// Whether the association of `way` went silent (`SILENT_LIMIT` queries
    /// in a row expired unanswered): then the caller replaces it, and the
    /// count starts again.
    pub(super) fn take_silent(&self, way: &WayKey, now_ms: u64) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.expire(now_ms);
        match p.silent.get(way) {
            Some(&n) if n >= SILENT_LIMIT => {
                p.silent.remove(way);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::message::{question_key, tests::query};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The question every query of these tests asks.
    fn q() -> u64 {
        question_key(&query(0, "web.test", 1)).unwrap()
    }

    /// The answer to it that carries our id `ours`.
    fn ans(ours: u16) -> Vec<u8> {
        let mut a = query(ours, "web.test", 1);
        a[2] |= 0x80;
        a
    }

    /// A way whose queries expire unanswered 8 times in a row is reported
    /// silent once; an answer in between starts the count again.
    #[test]
    fn a_silent_way_is_reported_once() {
        let m = DnsMux::default();
        let way = WayKey::Proxy(None);
        let server = sa("203.0.113.53:53");
        for i in 0..7 {
            m.ask(sa("198.18.0.1:1"), server, (i, q()), &way, 0)
                .unwrap();
        }
        assert!(!m.take_silent(&way, PENDING_MS), "7 unanswered");
        let answered = m
            .ask(sa("198.18.0.1:1"), server, (9, q()), &way, PENDING_MS)
            .unwrap();
        assert!(m.answer(&ans(answered), server, &way).is_some());
        for i in 0..8 {
            m.ask(sa("198.18.0.1:1"), server, (i, q()), &way, PENDING_MS)
                .unwrap();
        }
        assert!(!m.take_silent(&way, 2 * PENDING_MS - 1));
        assert!(m.take_silent(&way, 2 * PENDING_MS), "8 unanswered in a row");
        assert!(!m.take_silent(&way, 2 * PENDING_MS), "reported twice");
        assert!(!m.take_silent(&WayKey::Proxy(Some("g".into())), 2 * PENDING_MS));
    }

    /// Only a standard query is taken for one: other traffic on port 53
    /// (a WireGuard handshake initiation, a DNS answer, a query with an
    /// answer section) keeps its bytes and its own association.
    #[test]
    fn only_standard_queries_are_queries() {
        let q = query(7, "web.test", 1);
        assert!(is_query(&q));
        let mut wg = vec![1u8, 0, 0, 0];
        wg.extend([0x5a; 144]);
        assert!(!is_query(&wg));
        let mut answer = q.clone();
        answer[2] |= 0x80;
        assert!(!is_query(&answer));
        let mut with_answers = q.clone();
        with_answers[7] = 1;
        assert!(!is_query(&with_answers));
        assert!(!is_query(&q[..11]));
    }

    #[test]
    fn answers_find_their_askers() {
        let m = DnsMux::default();
        let way = WayKey::Proxy(None);
        let server = sa("203.0.113.53:53");
        // The same id from two endpoints: two ids of ours.
        let a = m
            .ask(sa("198.18.0.1:40000"), server, (7, q()), &way, 0)
            .unwrap();
        let b = m
            .ask(sa("198.18.0.1:40001"), server, (7, q()), &way, 0)
            .unwrap();
        assert_ne!(a, b);
        // From another server, or on another way: not an answer.
        assert_eq!(m.answer(&ans(a), sa("203.0.113.54:53"), &way), None);
        assert_eq!(
            m.answer(&ans(a), server, &WayKey::Proxy(Some("g".into()))),
            None
        );
        let got = m
            .answer(&ans(b), sa("[::ffff:203.0.113.53]:53"), &way)
            .unwrap();
        assert_eq!((got.client, got.id), (sa("198.18.0.1:40001"), 7));
        assert_eq!(
            m.answer(&ans(a), server, &way).unwrap().client,
            sa("198.18.0.1:40000")
        );
        // Answered once only.
        assert_eq!(m.answer(&ans(a), server, &way), None);
    }

    /// An answer with the right id but another question (forged, or late
    /// for an id given again) is not the asker's; the name's case does not
    /// matter (servers may echo it in another case, RFC 4343).
    #[test]
    fn an_answer_must_repeat_the_question() {
        let m = DnsMux::default();
        let way = WayKey::Proxy(None);
        let server = sa("203.0.113.53:53");
        let a = m
            .ask(sa("198.18.0.1:1"), server, (5, q()), &way, 0)
            .unwrap();
        let mut other = query(a, "evil.test", 1);
        other[2] |= 0x80;
        assert_eq!(m.answer(&other, server, &way), None, "another name");
        let mut aaaa = query(a, "web.test", 28);
        aaaa[2] |= 0x80;
        assert_eq!(m.answer(&aaaa, server, &way), None, "another type");
        assert_eq!(m.answer(&ans(a)[..12], server, &way), None, "no question");
        let mut upper = query(a, "WEB.test", 1);
        upper[2] |= 0x80;
        assert!(m.answer(&upper, server, &way).is_some());
    }

    #[test]
    fn bounded_and_expired() {
        let m = DnsMux::default();
        let way = WayKey::Proxy(None);
        let server = sa("203.0.113.53:53");
        let first = m
            .ask(sa("198.18.0.1:1"), server, (1, q()), &way, 0)
            .unwrap();
        for i in 1..MAX_PENDING {
            assert!(m
                .ask(sa("198.18.0.1:2"), server, (i as u16, q()), &way, 0)
                .is_some());
        }
        assert_eq!(
            m.ask(sa("198.18.0.1:3"), server, (1, q()), &way, 1),
            None,
            "full"
        );
        // A query dropped before it went gives its place back at once.
        let dropped = m.ask(sa("198.18.0.1:4"), server, (1, q()), &way, 1);
        assert_eq!(dropped, None);
        m.forget(first);
        assert_eq!(m.answer(&ans(first), server, &way), None, "forgotten");
        assert!(m
            .ask(sa("198.18.0.1:4"), server, (1, q()), &way, 1)
            .is_some());
        // Once they are old, room again; the old ones are gone.
        let other = sa("203.0.113.99:53");
        assert!(m
            .ask(sa("198.18.0.1:3"), other, (1, q()), &way, PENDING_MS)
            .is_some());
        assert_eq!(m.answer(&ans(first), server, &way), None);
        // A bare header has no question: not a query (RFC 9619: QDCOUNT 1).
        assert!(!is_query(&[0; 12]));
        assert!(!is_query(&[0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_query(&[0; 11]));
    }
}
