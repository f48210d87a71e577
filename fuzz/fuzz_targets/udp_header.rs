//! The SOCKS5 UDP request header (RFC 1928 §7), as both relays read it from
//! datagrams: `parse_udp_header`, `encode_udp_header`, `udp_header_len`.
//!
//! Invariants:
//! - a header that parses lies inside the datagram, is as long as
//!   `udp_header_len` says, and re-encodes to its bytes (FRAG written as 0);
//!   the encoding parses back to the same address;
//! - the payload does not change the header: every longer cut of the datagram
//!   parses the same, every shorter one is an error;
//! - the address is the one `parse_addr` reads after RSV RSV FRAG;
//! - any address an encoder accepts (built here from the input) parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockstun::socks::codec::{self, CodecError};
use sockstun::socks::TargetAddr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address made of fuzz bytes, for the encode-then-parse direction.
fn address_from(b: &[u8]) -> Option<TargetAddr> {
    let (&kind, rest) = b.split_first()?;
    let port = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let rest = &rest[2..];
    Some(match kind % 3 {
        0 => {
            let o: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            TargetAddr::Ip(SocketAddr::new(Ipv4Addr::from(o).into(), port))
        }
        1 => {
            let o: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            TargetAddr::Ip(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        _ => TargetAddr::Domain(String::from_utf8_lossy(rest).into_owned(), port),
    })
}

fuzz_target!(|d: &[u8]| {
    match codec::parse_udp_header(d) {
        Ok(h) => {
            let n = h.header_len;
            assert!(n <= d.len(), "header {n} beyond the datagram {}", d.len());
            assert_eq!(n, codec::udp_header_len(&h.addr), "udp_header_len");
            assert_eq!(h.frag, d[2]);
            let mut enc = Vec::new();
            codec::encode_udp_header(&h.addr, &mut enc).expect("a parsed address encodes");
            let mut want = d[..n].to_vec();
            want[2] = 0;
            assert_eq!(enc, want, "re-encoding");
            let back = codec::parse_udp_header(&enc).expect("our encoding parses");
            assert_eq!((back.frag, &back.addr, back.header_len), (0, &h.addr, n));
            assert_eq!(
                codec::parse_addr(&d[3..]),
                Ok(Some((h.addr.clone(), n - 3))),
                "parse_addr after RSV RSV FRAG"
            );
            for k in 0..d.len() {
                let r = codec::parse_udp_header(&d[..k]);
                if k < n {
                    assert!(r.is_err(), "a cut at {k} of a {n}-byte header parsed");
                } else {
                    assert_eq!(r, Ok(h.clone()), "cut at {k}");
                }
            }
        }
        Err(e) => {
            // A datagram is whole: any error names what is wrong, and a
            // short header is `Truncated`, never an incomplete answer.
            if d.len() < 4 {
                assert_eq!(e, CodecError::Truncated);
            }
        }
    }

    if let Some(addr) = address_from(d) {
        let mut enc = Vec::new();
        if codec::encode_udp_header(&addr, &mut enc).is_ok() {
            assert_eq!(enc.len(), codec::udp_header_len(&addr));
            let h = codec::parse_udp_header(&enc).expect("what we encode parses");
            assert_eq!((h.frag, h.addr, h.header_len), (0, addr, enc.len()));
        }
    }
});
