//! Unit tests of the SOCKS codec.

use super::*;

fn v4(a: [u8; 4], p: u16) -> TargetAddr {
    TargetAddr::Ip(SocketAddr::new(Ipv4Addr::from(a).into(), p))
}

/// Every proper prefix of a valid message is "incomplete", never an error.
fn all_prefixes_incomplete<T: fmt::Debug>(msg: &[u8], f: impl Fn(&[u8]) -> Parsed<T>) {
    for i in 0..msg.len() {
        assert!(
            matches!(f(&msg[..i]), Ok(None)),
            "prefix of {i} bytes of {msg:02x?} was not incomplete: {:?}",
            f(&msg[..i])
        );
    }
}

#[test]
fn greeting_split_and_whole() {
    let g = [5, 2, 0, 2];
    all_prefixes_incomplete(&g, parse_greeting);
    assert_eq!(parse_greeting(&g), Ok(Some((vec![0, 2], 4))));
    // Trailing bytes (a pipelined request) are not consumed.
    assert_eq!(parse_greeting(&[5, 1, 0, 5, 1]), Ok(Some((vec![0], 3))));
    assert_eq!(parse_greeting(&[5, 0]), Err(CodecError::NoMethods));
    assert_eq!(parse_greeting(&[4, 1]), Err(CodecError::BadVersion(4)));
    assert_eq!(encode_greeting(&[0, 2]), g);
}

#[test]
fn auth_request_and_reply() {
    let m = encode_auth_request("alice", "s3cret").unwrap();
    all_prefixes_incomplete(&m, parse_auth_request);
    let (c, n) = parse_auth_request(&m).unwrap().unwrap();
    assert_eq!(
        (c.user.as_str(), c.password.as_slice(), n),
        ("alice", &b"s3cret"[..], m.len())
    );
    // An empty password is allowed by RFC 1929 (PLEN 0), an empty user is not.
    let (c, _) = parse_auth_request(&[1, 1, b'u', 0]).unwrap().unwrap();
    assert!(c.password.is_empty());
    assert_eq!(
        parse_auth_request(&[1, 0, 0]),
        Err(CodecError::EmptyUsername)
    );
    assert_eq!(
        parse_auth_request(&[5, 1, b'u', 0]),
        Err(CodecError::BadVersion(5))
    );
    // RFC 1929 §2: reply version 0x01.
    assert_eq!(encode_auth_reply(true), [1, 0]);
    assert_eq!(encode_auth_reply(false), [1, 1]);
    assert_eq!(parse_auth_reply(&[1, 0]), Ok(Some((true, 2))));
    assert_eq!(parse_auth_reply(&[1, 1]), Ok(Some((false, 2))));
    assert_eq!(parse_auth_reply(&[1]), Ok(None));
}

#[test]
fn socks5_request_all_address_types() {
    let six: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    for dest in [
        v4([203, 0, 113, 2], 80),
        TargetAddr::Ip(six),
        TargetAddr::Domain("example.test".into(), 8080),
    ] {
        for c in [cmd::CONNECT, cmd::BIND, cmd::UDP_ASSOCIATE] {
            let m = encode_socks5_request(c, &dest).unwrap();
            all_prefixes_incomplete(&m, parse_socks5_request);
            let mut with_data = m.clone();
            with_data.extend_from_slice(b"GET /");
            assert_eq!(
                parse_socks5_request(&with_data),
                Ok(Some((
                    Socks5Request {
                        cmd: c,
                        dest: dest.clone()
                    },
                    m.len()
                )))
            );
        }
    }
}

#[test]
fn socks5_request_errors_are_early_and_typed() {
    assert_eq!(
        parse_socks5_request(&[5, 9]),
        Err(CodecError::UnknownCommand(9))
    );
    assert_eq!(
        parse_socks5_request(&[5, 1, 0, 7]),
        Err(CodecError::UnknownAddrType(7))
    );
    assert_eq!(
        parse_socks5_request(&[5, 1, 0, 3, 0, 0, 80]),
        Err(CodecError::BadDomain)
    );
    assert_eq!(
        parse_socks5_request(&[5, 1, 0, 3, 3, b'a', 0, b'b', 0, 80]),
        Err(CodecError::BadDomain)
    );
    // CR, LF, DEL: no DNS name has them, and they would forge log lines.
    for c in [b'\r', b'\n', 0x1b, 0x7f] {
        assert_eq!(
            parse_socks5_request(&[5, 1, 0, 3, 3, b'a', c, b'b', 0, 80]),
            Err(CodecError::BadDomain),
            "byte {c:#x}"
        );
        assert_eq!(
            parse_socks4_request(&[4, 1, 0, 80, 0, 0, 0, 1, 0, b'a', c, b'b', 0]),
            Err(CodecError::BadDomain),
            "SOCKS4a byte {c:#x}"
        );
    }
    assert!(encode_addr(&TargetAddr::Domain("a\nb".into(), 1), &mut Vec::new()).is_err());
    assert_eq!(
        parse_socks5_request(&[4, 1]),
        Err(CodecError::BadVersion(4))
    );
    assert!(encode_socks5_request(1, &TargetAddr::Domain(String::new(), 1)).is_err());
    assert!(encode_socks5_request(1, &TargetAddr::Domain("a".repeat(256), 1)).is_err());
}

#[test]
fn socks5_replies_are_complete() {
    let r = encode_socks5_failure(Reply::CommandNotSupported.socks5());
    assert_eq!(r, [5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    let b: SocketAddr = "[2001:db8::5]:1080".parse().unwrap();
    let r = encode_socks5_reply(Reply::Succeeded.socks5(), b);
    assert_eq!(r.len(), 22);
    all_prefixes_incomplete(&r, parse_socks5_reply);
    assert_eq!(
        parse_socks5_reply(&r),
        Ok(Some((
            Socks5Reply {
                rep: 0,
                bound: TargetAddr::Ip(b)
            },
            22
        )))
    );
}

#[test]
fn socks4_and_4a() {
    let m = encode_socks4_request(cmd::CONNECT, &v4([203, 0, 113, 2], 80), b"bob").unwrap();
    assert_eq!(m, [4, 1, 0, 80, 203, 0, 113, 2, b'b', b'o', b'b', 0]);
    all_prefixes_incomplete(&m, parse_socks4_request);
    let (r, n) = parse_socks4_request(&m).unwrap().unwrap();
    assert_eq!(n, m.len());
    assert!(!r.socks4a);
    assert_eq!(r.dest, v4([203, 0, 113, 2], 80));
    assert_eq!(r.user_id, b"bob");

    let d = TargetAddr::Domain("web.test".into(), 443);
    let m = encode_socks4_request(cmd::CONNECT, &d, b"").unwrap();
    all_prefixes_incomplete(&m, parse_socks4_request);
    let (r, n) = parse_socks4_request(&m).unwrap().unwrap();
    assert_eq!((n, r.socks4a, r.dest), (m.len(), true, d));

    // 0.0.0.0 is not the 4a marker: no host name is read after USERID.
    let m = [4, 1, 0, 80, 0, 0, 0, 0, 0, b'x', 0];
    let (r, n) = parse_socks4_request(&m).unwrap().unwrap();
    assert_eq!((n, r.socks4a), (9, false));
    assert!(is_socks4a_marker(Ipv4Addr::new(0, 0, 0, 255)));
    assert!(!is_socks4a_marker(Ipv4Addr::new(0, 0, 1, 1)));

    // Caps and bad input.
    let mut long = vec![4, 1, 0, 80, 1, 2, 3, 4];
    long.extend(std::iter::repeat_n(b'a', 300));
    assert_eq!(parse_socks4_request(&long), Err(CodecError::TooLong));
    assert_eq!(
        parse_socks4_request(&[4, 3]),
        Err(CodecError::UnknownCommand(3))
    );
    assert_eq!(
        parse_socks4_request(&[4, 1, 0, 80, 0, 0, 0, 1, 0, 0]),
        Err(CodecError::BadDomain)
    );
    assert!(encode_socks4_request(1, &TargetAddr::Ip("[::1]:1".parse().unwrap()), b"").is_err());

    let r = encode_socks4_reply(
        Reply::Succeeded.socks4(),
        SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 258),
    );
    assert_eq!(r, [0, 0x5A, 1, 2, 1, 2, 3, 4]);
    assert_eq!(parse_socks4_reply(&r[..7]), Ok(None));
    assert_eq!(parse_socks4_reply(&r).unwrap().unwrap().0.code, 0x5A);
}

#[test]
fn udp_header() {
    for dest in [
        v4([203, 0, 113, 2], 53),
        TargetAddr::Ip("[2001:db8::2]:53".parse().unwrap()),
        TargetAddr::Domain("dns.test".into(), 53),
    ] {
        let mut d = Vec::new();
        encode_udp_header(&dest, &mut d).unwrap();
        assert_eq!(d.len(), udp_header_len(&dest));
        if let TargetAddr::Ip(a) = dest {
            let (h, n) = udp_header_ip(a);
            assert_eq!(&h[..n], &d[..], "the in-place header of {a}");
        }
        d.extend_from_slice(b"payload");
        let h = parse_udp_header(&d).unwrap();
        assert_eq!((h.frag, &h.addr), (0, &dest));
        assert_eq!(&d[h.header_len..], b"payload");
    }
    let h = parse_udp_header(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 53, b'x']).unwrap();
    assert_eq!(h.frag, 1);
    assert!(parse_udp_header(&[0, 0, 0, 1, 1, 2]).is_err());
    assert!(parse_udp_header(&[1, 0, 0, 1, 1, 2, 3, 4, 0, 53]).is_err());
    assert!(parse_udp_header(&[0, 0, 0, 9, 1, 2, 3, 4, 0, 53]).is_err());
}

/// Random input, and valid messages with bytes changed and more bytes
/// after them: no parser panics, and each answers the way a server or
/// client reading a byte at a time relies on. A message found complete at
/// `n` bytes is complete at exactly `n` without what follows and
/// incomplete before; an error stays the same error as more bytes arrive,
/// and no prefix of erroneous bytes is a complete message.
#[test]
fn random_input_parses_consistently_byte_by_byte() {
    type Answer = Result<Option<usize>, CodecError>;
    fn n<T>(r: Parsed<T>) -> Answer {
        r.map(|o| o.map(|(_, n)| n))
    }
    // Per parser: complete messages and errors seen, so the test shows it
    // reached both.
    let mut seen = std::collections::HashMap::<&str, (u32, u32)>::new();
    let mut check = |name: &'static str, b: &[u8], f: &dyn Fn(&[u8]) -> Answer| {
        let at = |k: usize| f(&b[..k]);
        let tally = seen.entry(name).or_default();
        match at(b.len()) {
            Ok(Some(n)) => {
                tally.0 += 1;
                assert!(n > 0 && n <= b.len(), "{name}: {n} of {b:02x?}");
                assert_eq!(at(n), Ok(Some(n)), "{name}: {b:02x?} cut at {n}");
                for k in 0..n {
                    assert_eq!(at(k), Ok(None), "{name}: {b:02x?} cut at {k} of {n}");
                }
            }
            Ok(None) => {
                for k in 0..b.len() {
                    assert_eq!(at(k), Ok(None), "{name}: {b:02x?} cut at {k}");
                }
            }
            Err(e) => {
                tally.1 += 1;
                for k in 0..b.len() {
                    let r = at(k);
                    assert!(
                        r == Ok(None) || r == Err(e.clone()),
                        "{name}: {b:02x?} cut at {k}: {r:?}, whole: {e:?}"
                    );
                }
            }
        }
    };
    let dom = TargetAddr::Domain("example.org".into(), 80);
    let v4 = TargetAddr::Ip("203.0.113.2:80".parse().unwrap());
    let v6 = TargetAddr::Ip("[2001:db8::2]:443".parse().unwrap());
    let valid: Vec<Vec<u8>> = vec![
        encode_greeting(&[0, 2]),
        encode_method_choice(2).to_vec(),
        encode_auth_request("user", "secret").unwrap(),
        encode_auth_reply(true).to_vec(),
        encode_socks5_request(1, &v4).unwrap(),
        encode_socks5_request(3, &v6).unwrap(),
        encode_socks5_request(2, &dom).unwrap(),
        encode_socks5_reply(0, "198.51.100.1:1080".parse().unwrap()),
        encode_socks5_failure(5),
        encode_socks4_request(1, &v4, b"id").unwrap(),
        encode_socks4_request(1, &dom, b"").unwrap(),
        encode_socks4_reply(Reply::Succeeded.socks4(), "0.0.0.0:0".parse().unwrap()).to_vec(),
    ];
    let mut r = crate::test_rng::TestRng::new(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let b: Vec<u8> = if r.below(2) == 0 {
            (0..r.below(48)).map(|_| r.byte()).collect()
        } else {
            // From byte 0, or from byte 1 (where a request's address is
            // three bytes further on, a mismatch on purpose).
            let m = &valid[r.below(valid.len())];
            let mut b = m[r.below(2)..].to_vec();
            for _ in 0..r.below(3) {
                let i = r.below(b.len());
                b[i] = r.byte();
            }
            b.extend((0..r.below(4)).map(|_| r.below(256) as u8));
            b
        };
        check("addr", &b, &|b| n(parse_addr(b)));
        check("greeting", &b, &|b| n(parse_greeting(b)));
        check("method choice", &b, &|b| n(parse_method_choice(b)));
        check("auth request", &b, &|b| n(parse_auth_request(b)));
        check("auth reply", &b, &|b| n(parse_auth_reply(b)));
        check("socks5 request", &b, &|b| n(parse_socks5_request(b)));
        check("socks5 reply", &b, &|b| n(parse_socks5_reply(b)));
        check("socks4 request", &b, &|b| n(parse_socks4_request(b)));
        check("socks4 reply", &b, &|b| n(parse_socks4_reply(b)));
        let _ = parse_udp_header(&b);
    }
    for (name, (complete, errors)) in &seen {
        assert!(
            *complete >= 50 && *errors >= 50,
            "{name}: {complete} complete, {errors} errors"
        );
    }
    assert_eq!(seen.len(), 9);
}

#[test]
fn reply_codes_in_both_dialects() {
    for code in 0..=255u8 {
        if let Some(r) = Reply::from_socks5(code) {
            assert_eq!(r.socks5(), code);
        }
    }
    assert_eq!(Reply::from_socks5(0x09), None);
    assert_eq!(Reply::AddrTypeNotSupported.socks5(), 0x08);
    assert_eq!(Reply::Succeeded.socks4(), 0x5A);
    assert_eq!(Reply::HostUnreachable.socks4(), 0x5B);
    assert_eq!(Reply::from_socks4(0x5A), Some(Reply::Succeeded));
    assert_eq!(Reply::from_socks4(0x5B), Some(Reply::ConnectionRefused));
    assert_eq!(Reply::from_socks4(0x5D), Some(Reply::NotAllowed));
    assert_eq!(Reply::from_socks4(0x00), None);
}
