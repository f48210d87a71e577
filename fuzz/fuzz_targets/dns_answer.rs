//! The DNS message parser and the fake-DNS answer path: `dns::Dns::answer`
//! (virtual and tcp modes, UDP size limits, forwarding to a lying upstream),
//! the fake pool behind it, and DNS-over-TCP (`Dns::serve_stream`).
//!
//! Input: a config byte, a query count, that many queries with a two-byte
//! length before each (which is also DNS-over-TCP framing: the same bytes are
//! served as a TCP stream), then what the upstream DNS server answers.
//!
//! Invariants:
//! - a query that does not parse gets exactly `error_response` (FORMERR or
//!   NOTIMP with its id, or nothing);
//! - one that parses always gets an answer with its id and QR set, no longer
//!   than the UDP limit (EDNS included) when there is one;
//! - an answer made here is itself a well-formed message: the same question,
//!   the counts it claims, an A/AAAA record pointing at the question with the
//!   fake TTL, and nothing after it;
//! - a fake address lies in the pool, is never the network, broadcast or an
//!   excluded address, and maps back to the name asked; an address pinned by a
//!   flow keeps its name for as long as the pin lives;
//! - DNS-over-TCP answers come framed, with the ids of the queries, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::dns::message::{self, Query, TYPE_A, TYPE_AAAA};
use sockstun::dns::pool::{FakePool, PoolPin};
use sockstun::dns::service::{Dns, DnsMode, TcpRoute, FAKE_TTL};
use sockstun::relay::RelayStream;
use sockstun::socks::TargetAddr;
use sockstun::upstream::{self, BoxFuture, Stream, Upstream};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const EXCLUDED: &str = "198.19.0.1";

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Answer,
    Refuse,
    Silent,
}

/// An in-memory stream: reads serve `script` then end (or never end, when
/// `silent`); writes are kept.
struct Script {
    script: Arc<Vec<u8>>,
    at: usize,
    silent: bool,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (self.script.len() - self.at).min(buf.remaining());
        if n == 0 && self.silent {
            // The paused clock moves on to the caller's timeout.
            return Poll::Pending;
        }
        let at = self.at;
        buf.put_slice(&self.script[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl RelayStream for Script {
    fn reset(&mut self) {}
}

/// The upstream DNS server reached through the proxy: every connection
/// answers with the same script.
struct Resolver {
    script: Arc<Vec<u8>>,
    behaviour: Behaviour,
}

impl fmt::Display for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fuzz: scripted resolver")
    }
}

impl Upstream for Resolver {
    fn connect<'a>(
        &'a self,
        _target: &'a TargetAddr,
    ) -> BoxFuture<'a, Result<upstream::Connected, upstream::Error>> {
        let s = Script {
            script: self.script.clone(),
            at: 0,
            silent: self.behaviour == Behaviour::Silent,
            written: Arc::default(),
        };
        let refuse = self.behaviour == Behaviour::Refuse;
        Box::pin(async move {
            if refuse {
                return Err(upstream::Error::Refused);
            }
            Ok(upstream::Connected {
                stream: Box::new(s) as Stream,
                via: "fuzz".into(),
            })
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<upstream::Associated, upstream::Error>> {
        Box::pin(async { Err(upstream::Error::CommandNotSupported) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), upstream::Error>> {
        Box::pin(async { Ok(()) })
    }

    fn carries_names(&self) -> bool {
        true
    }

    fn carries_udp(&self) -> bool {
        false
    }
}

/// Split `b` into up to `n` length-prefixed messages (the last may be cut
/// short); returns them and the bytes that follow.
fn split(mut b: &[u8], n: usize) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    while out.len() < n && b.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let end = (2 + len).min(b.len());
        out.push(&b[2..end]);
        b = &b[end..];
    }
    (out, b)
}

/// Wire length of the question's name, uncompressed.
fn name_len(q: &Query) -> usize {
    q.name.labels().iter().map(|l| 1 + l.len()).sum::<usize>() + 1
}

/// An answer made here: the question back, and at most one address record.
fn check_local(q: &Query, r: &[u8], pool: &FakePool) -> Option<IpAddr> {
    let mut as_query = r.to_vec();
    as_query[2] &= 0x7f;
    let back = Query::parse(&as_query).expect("an answer made here parses");
    assert_eq!(
        (&back.name, back.qtype, back.qclass, back.rd),
        (&q.name, q.qtype, q.qclass, q.rd),
        "question not echoed"
    );
    assert_eq!(&r[8..12], &[0, 0, 0, 0], "authority or additional records");
    let ancount = u16::from_be_bytes([r[6], r[7]]);
    let end = message::HEADER_LEN + name_len(q) + 4;
    if ancount == 0 {
        assert_eq!(r.len(), end, "bytes after the question");
        return None;
    }
    assert_eq!(ancount, 1);
    assert_eq!(r[3] & 0x0f, 0, "an address with an error code");
    let rec = &r[end..];
    let ty = u16::from_be_bytes([rec[2], rec[3]]);
    let rdlen = usize::from(u16::from_be_bytes([rec[10], rec[11]]));
    assert_eq!(&rec[..2], &[0xc0, 12], "owner is not the question");
    assert_eq!(ty, q.qtype);
    assert_eq!(&rec[4..6], &[0, 1], "class IN");
    assert_eq!(u32::from_be_bytes(rec[6..10].try_into().unwrap()), FAKE_TTL);
    assert_eq!(rec.len(), 12 + rdlen, "record length");
    let ip = match (ty, rdlen) {
        (TYPE_A, 4) => IpAddr::from(<[u8; 4]>::try_from(&rec[12..]).unwrap()),
        (TYPE_AAAA, 16) => IpAddr::from(<[u8; 16]>::try_from(&rec[12..]).unwrap()),
        other => panic!("record {other:?}"),
    };
    assert!(pool.contains(ip), "{ip} outside the pool");
    // The ends of each range (network, broadcast) and the TUN's address.
    let bad: [IpAddr; 5] = [
        "198.19.0.0".parse().unwrap(),
        "198.19.0.7".parse().unwrap(),
        "fc00:5::".parse().unwrap(),
        "fc00:5::7".parse().unwrap(),
        EXCLUDED.parse().unwrap(),
    ];
    assert!(!bad.contains(&ip), "{ip} handed out");
    assert_eq!(
        pool.lookup(ip),
        q.name.to_hostname(),
        "{ip} maps to another name"
    );
    Some(ip)
}

struct Setup {
    dns: Dns,
    pool: Arc<FakePool>,
    local_only: bool,
}

fn setup(cfg: u8, script: Arc<Vec<u8>>) -> Setup {
    let behaviour = match (cfg >> 4) & 3 {
        0 | 1 => Behaviour::Answer,
        2 => Behaviour::Refuse,
        _ => Behaviour::Silent,
    };
    let pool = Arc::new(
        FakePool::new(
            "198.19.0.0/29".parse().unwrap(),
            (cfg & 3 != 3).then(|| "fc00:5::/125".parse().unwrap()),
            &[EXCLUDED.parse().unwrap()],
        )
        .unwrap(),
    );
    let (mode, upstream) = match cfg & 3 {
        1 => (DnsMode::Virtual, Some("192.0.2.53:53".parse().unwrap())),
        2 => (DnsMode::Tcp, Some("192.0.2.53:53".parse().unwrap())),
        _ => (DnsMode::Virtual, None),
    };
    let up = Arc::new(Resolver { script, behaviour });
    let dns = Dns::new(mode, upstream, Some(pool.clone()), up).unwrap();
    Setup {
        dns,
        pool,
        local_only: upstream.is_none(),
    }
}

async fn one_query(
    s: &Setup,
    msg: &[u8],
    limit: Option<usize>,
    pins: &mut Vec<(String, IpAddr, PoolPin)>,
) {
    let r = s.dns.answer(msg, limit).await;
    let q = match Query::parse(msg) {
        Ok(q) => q,
        Err(e) => {
            assert_eq!(
                r,
                message::error_response(msg, e),
                "answer to a malformed query"
            );
            return;
        }
    };
    let r = r.expect("a query that parses is answered");
    assert!(
        r.len() >= message::HEADER_LEN && r[2] & 0x80 != 0,
        "not a response"
    );
    assert_eq!(message::query_id(&r), Some(q.id), "id");
    if let Some(lim) = limit {
        let edns = sockstun::dns::service::edns_udp_size(msg).unwrap_or(512);
        assert!(
            r.len() <= lim.min(edns),
            "{} bytes over a limit of {lim}/{edns}",
            r.len()
        );
    }
    let is_addr = q.qclass == 1 && (q.qtype == TYPE_A || q.qtype == TYPE_AAAA);
    // The answer that sends the client to TCP (a forwarded one may carry TC
    // too: the upstream's, left as it is).
    let mut tc = q.respond_empty(message::Rcode::NoError);
    tc[2] |= 0x02;
    let truncated = r == tc;
    if s.dns.mode() == DnsMode::Virtual && (is_addr || s.local_only) || truncated {
        let ip = check_local(&q, &r, &s.pool);
        let wants = is_addr
            && q.name.to_hostname().is_some()
            && (q.qtype == TYPE_A || s.pool.has_v6())
            && !truncated;
        // Only pinned addresses can run the pool dry.
        assert!(
            ip.is_some() || !wants || !pins.is_empty(),
            "no address for {}",
            q.name
        );
        if let (Some(ip), true) = (ip, q.id & 1 == 1) {
            // An odd id stands for a flow to that address: it pins it.
            match s.dns.route_tcp(SocketAddr::new(ip, 80)) {
                TcpRoute::Name(TargetAddr::Domain(name, 80), pin) => pins.push((name, ip, pin)),
                _ => panic!("{ip}, just answered, does not route to its name"),
            }
        }
    }
    for (name, ip, _) in pins.iter() {
        assert_eq!(
            s.pool.lookup(*ip).as_deref(),
            Some(name.as_str()),
            "pinned {ip} reused"
        );
    }
}

/// DNS-over-TCP: every framed answer carries the id of a query, in order.
async fn check_stream(s: &Setup, framed: &[u8], queries: &[&[u8]]) {
    let written = Arc::new(Mutex::new(Vec::new()));
    let client = Script {
        script: Arc::new(framed.to_vec()),
        at: 0,
        silent: false,
        written: written.clone(),
    };
    let _ = s.dns.serve_stream(client).await;
    let out = written.lock().unwrap().clone();
    let (answers, rest) = split(&out, usize::MAX);
    assert!(rest.is_empty(), "a partial frame written");
    let mut ids = queries.iter().filter_map(|q| message::query_id(q));
    for a in answers {
        let id = message::query_id(a).expect("framed answer shorter than a header");
        assert!(
            ids.any(|q| q == id),
            "answer id {id} not of a query, in order"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (cfg, count) = (data[0], usize::from(data[1] % 8) + 1);
    let (queries, script) = split(&data[2..], count);
    let framed = &data[2..data.len() - script.len()];
    let limit = [None, Some(1472), Some(548), Some(65507)][usize::from((cfg >> 2) & 3)];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let s = setup(cfg, Arc::new(script.to_vec()));
        let mut pins = Vec::new();
        for q in &queries {
            one_query(&s, q, limit, &mut pins).await;
        }
        if cfg & 0x40 != 0 {
            check_stream(&s, framed, &queries).await;
        }
    });
});
