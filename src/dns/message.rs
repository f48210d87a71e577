//! The small part of the DNS wire format (RFC 1035) virtual DNS needs: the
//! header, one question, and answers with A/AAAA records. Parsing is bounded
//! (RFC 1035 §2.3.4 caps names at 255 octets and labels at 63) and follows
//! compression pointers only backwards, so a hostile message cannot loop.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
/// RFC 1035 §2.3.4.
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_LABEL_LEN: usize = 63;
/// Largest message over TCP (two-byte length prefix, RFC 1035 §4.2.2).
pub const MAX_MESSAGE_LEN: usize = 65535;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

/// Response codes (RFC 1035 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header: nothing to answer, drop it.
    TooShort,
    /// The QR bit is set: a response, not a query; drop it.
    NotAQuery,
    /// A header we can answer, but the rest is malformed (FORMERR).
    Malformed,
    /// A well-formed opcode other than QUERY (NOTIMP).
    NotImplemented,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::TooShort => "shorter than a DNS header",
            ParseError::NotAQuery => "not a query",
            ParseError::Malformed => "malformed query",
            ParseError::NotImplemented => "opcode not implemented",
        })
    }
}

impl std::error::Error for ParseError {}

/// A domain name as a list of labels, case preserved (compare with `eq_ignore_ascii_case`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    labels: Vec<Vec<u8>>,
}

impl Name {
    pub fn labels(&self) -> &[Vec<u8>] {
        &self.labels
    }

    /// Dotted text suitable for a SOCKS domain address, lower-cased, without the
    /// trailing dot. None when a label holds bytes that cannot be written as a
    /// host name unambiguously ('.', NUL, space, non-ASCII, control) or the name is root.
    pub fn to_hostname(&self) -> Option<String> {
        if self.labels.is_empty() {
            return None;
        }
        let mut s = String::new();
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            for &b in l {
                if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*') {
                    return None;
                }
                s.push(b.to_ascii_lowercase() as char);
            }
        }
        Some(s)
    }

    /// Encode uncompressed (RFC 1035 §3.1).
    fn emit(&self, out: &mut Vec<u8>) {
        for l in &self.labels {
            out.push(l.len() as u8);
            out.extend_from_slice(l);
        }
        out.push(0);
    }

    /// Parse the name at `pos`; returns it and the position after it in the
    /// original (un-jumped) byte stream.
    fn parse(msg: &[u8], mut pos: usize) -> Result<(Name, usize), ParseError> {
        let mut labels = Vec::new();
        let mut wire_len = 1; // the root label
        let mut end = None;
        // Each jump must go strictly backwards, so the number of jumps is bounded by the message length.
        let mut jump_limit = pos;
        loop {
            let len = *msg.get(pos).ok_or(ParseError::Malformed)? as usize;
            match len & 0xC0 {
                0x00 => {
                    if len == 0 {
                        pos += 1;
                        break;
                    }
                    let label = msg
                        .get(pos + 1..pos + 1 + len)
                        .ok_or(ParseError::Malformed)?;
                    wire_len += 1 + len;
                    if wire_len > MAX_NAME_LEN {
                        return Err(ParseError::Malformed);
                    }
                    labels.push(label.to_vec());
                    pos += 1 + len;
                }
                0xC0 => {
                    let lo = *msg.get(pos + 1).ok_or(ParseError::Malformed)? as usize;
                    let target = ((len & 0x3F) << 8) | lo;
                    if target >= jump_limit {
                        return Err(ParseError::Malformed);
                    }
                    if end.is_none() {
                        end = Some(pos + 2);
                    }
                    jump_limit = target;
                    pos = target;
                }
                // 0x40 and 0x80 are reserved (RFC 6891 §5 retired extended labels).
                _ => return Err(ParseError::Malformed),
            }
        }
        debug_assert!(labels.iter().all(|l| l.len() <= MAX_LABEL_LEN));
        Ok((Name { labels }, end.unwrap_or(pos)))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.labels.is_empty() {
            return f.write_str(".");
        }
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&String::from_utf8_lossy(l).escape_debug().to_string())?;
        }
        Ok(())
    }
}

/// A parsed query: its header fields and its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired, echoed in the answer.
    pub rd: bool,
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// The question of a query or of its answer (one question: name, ignoring
/// case, type, class), as a number to compare them by (RFC 5452 §9.1: an
/// answer must repeat its query's question). None without one question.
pub fn question_key(msg: &[u8]) -> Option<u64> {
    if msg.len() < HEADER_LEN || msg[4..6] != [0, 1] {
        return None;
    }
    let (name, pos) = Name::parse(msg, HEADER_LEN).ok()?;
    let q = msg.get(pos..pos + 4)?;
    // FNV-1a: stable, and enough to tell questions apart (not a secret).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for label in name.labels() {
        eat(label.len() as u8);
        label.iter().for_each(|b| eat(b.to_ascii_lowercase()));
    }
    q.iter().for_each(|b| eat(*b));
    Some(h)
}

/// What a malformed query can still be answered with: its id and flags.
pub fn query_id(msg: &[u8]) -> Option<u16> {
    (msg.len() >= HEADER_LEN).then(|| u16::from_be_bytes([msg[0], msg[1]]))
}

impl Query {
    /// Parse a query. Only the question is read; answer, authority and
    /// additional sections (an EDNS OPT record, RFC 6891) are ignored.
    pub fn parse(msg: &[u8]) -> Result<Query, ParseError> {
        if msg.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::Malformed);
        }
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let flags = u16::from_be_bytes([msg[2], msg[3]]);
        if flags & 0x8000 != 0 {
            return Err(ParseError::NotAQuery);
        }
        let opcode = (flags >> 11) & 0xF;
        if opcode != 0 {
            return Err(ParseError::NotImplemented);
        }
        let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
        // RFC 9619: QDCOUNT must be 1 for a QUERY.
        if qdcount != 1 {
            return Err(ParseError::Malformed);
        }
        let (name, pos) = Name::parse(msg, HEADER_LEN)?;
        let q = msg.get(pos..pos + 4).ok_or(ParseError::Malformed)?;
        Ok(Query {
            id,
            rd: flags & 0x0100 != 0,
            name,
            qtype: u16::from_be_bytes([q[0], q[1]]),
            qclass: u16::from_be_bytes([q[2], q[3]]),
        })
    }

    fn header(&self, rcode: Rcode, ancount: u16, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        // QR=1, opcode QUERY, RD echoed, RA=1 (we do resolve recursively, at the proxy).
        let flags: u16 = 0x8000 | if self.rd { 0x0100 } else { 0 } | 0x0080 | rcode as u16;
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ancount.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        self.name.emit(out);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
    }

    /// A response with no answer records and `rcode` (NOERROR gives NODATA, RFC 2308 §2.2).
    pub fn respond_empty(&self, rcode: Rcode) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + MAX_NAME_LEN + 4);
        self.header(rcode, 0, &mut out);
        out
    }

    /// A response answering the question with one address. The owner name is a
    /// pointer to the question (offset 12, RFC 1035 §4.1.4).
    pub fn respond_addr(&self, addr: Answer, ttl: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + MAX_NAME_LEN + 4 + 28);
        self.header(Rcode::NoError, 1, &mut out);
        out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
        let (ty, rdata): (u16, Vec<u8>) = match addr {
            Answer::V4(a) => (TYPE_A, a.octets().to_vec()),
            Answer::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
        };
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// The answer to a query that could not be parsed: FORMERR or NOTIMP with the
/// query's id and no question (RFC 1035 §4.1.1), or None to drop it silently
/// (too short to carry an id, or not a query at all).
pub fn error_response(msg: &[u8], err: ParseError) -> Option<Vec<u8>> {
    let rcode = match err {
        ParseError::TooShort | ParseError::NotAQuery => return None,
        ParseError::Malformed => Rcode::FormErr,
        ParseError::NotImplemented => Rcode::NotImp,
    };
    let id = query_id(msg)?;
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&id.to_be_bytes());
    // Keep the opcode and RD of the query; set QR.
    let flags = 0x8000 | (u16::from_be_bytes([msg[2], msg[3]]) & 0x7900) | rcode as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// A recursive query for `name` (RD set), as a stub resolver sends it.
/// None when `name` cannot be written as labels (RFC 1035 §2.3.4 limits).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut m = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.trim_end_matches('.').split('.') {
        if l.is_empty() || l.len() > MAX_LABEL_LEN {
            return None;
        }
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
    if m.len() - HEADER_LEN > MAX_NAME_LEN {
        return None;
    }
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(m)
}

/// What a resolver answered to one of our queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub rcode: u8,
    /// The A/AAAA records of type `qtype` in the answer section (a CNAME
    /// chain's target records included).
    pub addrs: Vec<std::net::IpAddr>,
    /// The smallest TTL among them, seconds.
    pub ttl: u32,
}

/// Read the answer to query `id` (built by `build_query`). Malformed, or not
/// the response to that id: Err, and the caller keeps waiting (RFC 5452 §9.1:
/// a reply with another id is not ours).
pub fn parse_addresses(msg: &[u8], id: u16, qtype: u16) -> Result<Addresses, ParseError> {
    if msg.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if u16::from_be_bytes([msg[0], msg[1]]) != id || flags & 0x8000 == 0 {
        return Err(ParseError::NotAQuery);
    }
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let (qd, an) = (count(4), count(6));
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = Name::parse(msg, pos)?.1 + 4;
    }
    let mut out = Addresses {
        rcode: (flags & 0xF) as u8,
        addrs: Vec::new(),
        ttl: u32::MAX,
    };
    for _ in 0..an {
        pos = Name::parse(msg, pos)?.1;
        let f = msg.get(pos..pos + 10).ok_or(ParseError::Malformed)?;
        let (ty, class) = (
            u16::from_be_bytes([f[0], f[1]]),
            u16::from_be_bytes([f[2], f[3]]),
        );
        let ttl = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
        let len = u16::from_be_bytes([f[8], f[9]]) as usize;
        let rdata = msg
            .get(pos + 10..pos + 10 + len)
            .ok_or(ParseError::Malformed)?;
        pos += 10 + len;
        if ty != qtype || class != CLASS_IN {
            continue;
        }
        let addr = match (ty, len) {
            (TYPE_A, 4) => <[u8; 4]>::try_from(rdata).map(|b| Ipv4Addr::from(b).into()),
            (TYPE_AAAA, 16) => <[u8; 16]>::try_from(rdata).map(|b| Ipv6Addr::from(b).into()),
            _ => return Err(ParseError::Malformed),
        }
        .map_err(|_| ParseError::Malformed)?;
        out.addrs.push(addr);
        out.ttl = out.ttl.min(ttl);
    }
    if out.addrs.is_empty() {
        out.ttl = 0;
    }
    Ok(out)
}

/// Rewrite a forwarded response's id: the upstream saw our own id.
pub fn set_id(msg: &mut [u8], id: u16) {
    if msg.len() >= 2 {
        msg[..2].copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as `dig` sends it, with an EDNS OPT record.
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&[0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        m
    }

    /// The stub side (direct rules resolve on the host): our query is a
    /// well-formed one, and answers are read back, CNAME chains included.
    #[test]
    fn stub_query_and_answers() {
        let q = build_query(0x1234, "www.Example.org.", TYPE_A).unwrap();
        let parsed = Query::parse(&q).unwrap();
        assert_eq!((parsed.id, parsed.rd, parsed.qtype), (0x1234, true, TYPE_A));
        assert_eq!(parsed.name.to_hostname().unwrap(), "www.example.org");
        let resp = parsed.respond_addr(Answer::V4(Ipv4Addr::new(203, 0, 113, 5)), 77);
        let a = parse_addresses(&resp, 0x1234, TYPE_A).unwrap();
        assert_eq!((a.rcode, a.ttl), (0, 77));
        assert_eq!(a.addrs, vec![std::net::IpAddr::from([203, 0, 113, 5])]);
        assert!(
            parse_addresses(&resp, 0x1235, TYPE_A).is_err(),
            "another id"
        );
        assert!(parse_addresses(&q, 0x1234, TYPE_A).is_err(), "a query");
        assert!(parse_addresses(&resp, 0x1234, TYPE_AAAA)
            .unwrap()
            .addrs
            .is_empty());
        for cut in 0..resp.len() {
            let _ = parse_addresses(&resp[..cut], 0x1234, TYPE_A);
        }
        // A CNAME, then the A record of its target.
        let mut m = resp[..resp.len() - 16].to_vec();
        m[7] = 2;
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 9, 0, 4, 1, b'x', 0xC0, 16]);
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 198, 51, 100, 7]);
        let a = parse_addresses(&m, 0x1234, TYPE_A).unwrap();
        assert_eq!(a.addrs, vec![std::net::IpAddr::from([198, 51, 100, 7])]);
        assert_eq!(a.ttl, 30);
        assert!(build_query(1, "a..b", TYPE_A).is_none());
        assert!(build_query(1, &"a".repeat(64), TYPE_A).is_none());
    }

    #[test]
    fn parses_a_dig_query() {
        let q = Query::parse(&query(0xBEEF, "Web.Test", TYPE_A)).unwrap();
        assert_eq!(q.id, 0xBEEF);
        assert!(q.rd);
        assert_eq!(q.qtype, TYPE_A);
        assert_eq!(q.qclass, CLASS_IN);
        assert_eq!(q.name.to_hostname().as_deref(), Some("web.test"));
        assert_eq!(q.name.to_string(), "Web.Test");
    }

    #[test]
    fn answers_a_and_aaaa() {
        let q = Query::parse(&query(7, "web.test", TYPE_A)).unwrap();
        let r = q.respond_addr(Answer::V4(Ipv4Addr::new(198, 19, 0, 5)), 5);
        assert_eq!(&r[..4], &[0, 7, 0x81, 0x80]);
        assert_eq!(&r[4..12], &[0, 1, 0, 1, 0, 0, 0, 0]);
        let (name, pos) = Name::parse(&r, HEADER_LEN).unwrap();
        assert_eq!(name, q.name);
        let ans = &r[pos + 4..];
        assert_eq!(&ans[..2], &[0xC0, 12]);
        assert_eq!(&ans[2..10], &[0, 1, 0, 1, 0, 0, 0, 5]);
        assert_eq!(&ans[10..], &[0, 4, 198, 19, 0, 5]);
        // The answer's owner name resolves through the pointer.
        let (owner, _) = Name::parse(&r, pos + 4).unwrap();
        assert_eq!(owner, q.name);

        let q6 = Query::parse(&query(8, "web.test", TYPE_AAAA)).unwrap();
        let r6 = q6.respond_addr(Answer::V6("fc00:5::1".parse().unwrap()), 5);
        assert_eq!(r6.len(), pos + 4 + 12 + 16);
        assert_eq!(&r6[r6.len() - 18..r6.len() - 16], &[0, 16]);
    }

    #[test]
    fn empty_answer_keeps_question() {
        let q = Query::parse(&query(9, "x.test", 15)).unwrap();
        let r = q.respond_empty(Rcode::NoError);
        assert_eq!(&r[2..12], &[0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]);
        let r = q.respond_empty(Rcode::ServFail);
        assert_eq!(r[3] & 0xF, 2);
    }

    #[test]
    fn malformed_queries() {
        assert_eq!(Query::parse(&[0; 5]), Err(ParseError::TooShort));
        assert_eq!(error_response(&[0; 5], ParseError::TooShort), None);
        // Truncated question.
        let m = query(1, "web.test", TYPE_A);
        for cut in HEADER_LEN..HEADER_LEN + 14 {
            assert_eq!(
                Query::parse(&m[..cut]),
                Err(ParseError::Malformed),
                "cut {cut}"
            );
        }
        let r = error_response(&m[..13], ParseError::Malformed).unwrap();
        assert_eq!(&r[..4], &[0, 1, 0x81, 0x01]);
        assert_eq!(&r[4..], &[0; 8]);
        // Two questions.
        let mut two = m.clone();
        two[5] = 2;
        assert_eq!(Query::parse(&two), Err(ParseError::Malformed));
        // A response is not answered.
        let mut resp = m.clone();
        resp[2] |= 0x80;
        assert_eq!(Query::parse(&resp), Err(ParseError::NotAQuery));
        // Opcode STATUS (2) gets NOTIMP.
        let mut st = m.clone();
        st[2] = 2 << 3;
        assert_eq!(Query::parse(&st), Err(ParseError::NotImplemented));
        let r = error_response(&st, ParseError::NotImplemented).unwrap();
        assert_eq!(r[3] & 0xF, 4);
        // Reserved label type.
        let mut bad = m.clone();
        bad[HEADER_LEN] = 0x40;
        assert_eq!(Query::parse(&bad), Err(ParseError::Malformed));
    }

    #[test]
    fn compression_loops_and_forward_pointers_rejected() {
        let mut m = query(1, "a", TYPE_A)[..HEADER_LEN].to_vec();
        // Pointer to itself.
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(Query::parse(&m), Err(ParseError::Malformed));
        // Pointer forward.
        let mut f = m[..HEADER_LEN].to_vec();
        f.extend_from_slice(&[0xC0, 20, 0, 1, 0, 1, 0, 0, 1, b'a', 0]);
        assert_eq!(Query::parse(&f), Err(ParseError::Malformed));
        // A backward pointer into the header is followed (and bounded).
        let mut b = m[..HEADER_LEN].to_vec();
        b[HEADER_LEN - 1] = 0; // last header byte is a root label
        b.extend_from_slice(&[0xC0, 11, 0, 1, 0, 1]);
        let q = Query::parse(&b).unwrap();
        assert!(q.name.labels().is_empty());
        assert_eq!(q.qtype, TYPE_A);
    }

    #[test]
    fn long_names_rejected() {
        let label = "a".repeat(63);
        let ok = [label.as_str(); 3].join(".");
        assert!(Query::parse(&query(1, &ok, TYPE_A)).is_ok());
        let too_long = [label.as_str(); 4].join(".") + ".b";
        assert_eq!(
            Query::parse(&query(1, &too_long, TYPE_A)),
            Err(ParseError::Malformed)
        );
    }

    #[test]
    fn hostname_rejects_ambiguous_labels() {
        let mut m = query(1, "ab.test", TYPE_A);
        m[HEADER_LEN + 1] = b'.';
        let q = Query::parse(&m).unwrap();
        assert_eq!(q.name.to_hostname(), None);
        m[HEADER_LEN + 1] = 0;
        assert_eq!(Query::parse(&m).unwrap().name.to_hostname(), None);
    }

    #[test]
    fn fuzz_never_panics() {
        // A small deterministic fuzz: mutate a real query byte by byte.
        let base = query(0x1234, "www.example.test", TYPE_AAAA);
        let mut seed: u32 = 1;
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed as usize >> 8) % m.len();
                m[i] = (seed >> 16) as u8;
            }
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            m.truncate((seed as usize >> 8) % (m.len() + 1));
            match Query::parse(&m) {
                Ok(q) => {
                    let _ = q.respond_empty(Rcode::NoError);
                }
                Err(e) => {
                    let _ = error_response(&m, e);
                }
            }
        }
    }
}
