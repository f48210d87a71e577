//! UDP in IP: parse what the TUN gives, build what goes back.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

pub(super) const IPV4_HEADER: usize = 20;
pub(super) const IPV6_HEADER: usize = 40;
pub(super) const UDP_HEADER: usize = 8;

/// One UDP datagram read from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Not a well-formed IPv4/IPv6 packet with a UDP header.
    Malformed,
    /// Another protocol, or IPv6 extension headers before UDP.
    NotUdp,
    /// An IPv4 fragment: ports are only in the first, and we do not reassemble.
    Fragment,
    /// Bad IP header or UDP checksum, or destination port 0 (RFC 768).
    Invalid,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketError::Malformed => "malformed packet",
            PacketError::NotUdp => "not UDP",
            PacketError::Fragment => "IPv4 fragment",
            PacketError::Invalid => "bad checksum or port",
        })
    }
}

impl std::error::Error for PacketError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The packet would exceed the MTU: dropped, never truncated.
    TooBig,
    /// Source and destination of different families.
    FamilyMismatch,
}

/// Parse a UDP packet read from the TUN, checksums verified.
pub fn parse_udp(pkt: &[u8]) -> Result<Datagram<'_>, PacketError> {
    let caps = ChecksumCapabilities::default();
    let (src, dst, payload) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt).map_err(|_| PacketError::Malformed)?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Err(PacketError::Fragment);
            }
            let repr = Ipv4Repr::parse(&ip, &caps).map_err(|_| PacketError::Invalid)?;
            if repr.next_header != IpProtocol::Udp {
                return Err(PacketError::NotUdp);
            }
            (
                IpAddr::V4(repr.src_addr),
                IpAddr::V4(repr.dst_addr),
                ip.payload(),
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(pkt).map_err(|_| PacketError::Malformed)?;
            let repr = Ipv6Repr::parse(&ip).map_err(|_| PacketError::Malformed)?;
            if repr.next_header != IpProtocol::Udp {
                return Err(PacketError::NotUdp);
            }
            (
                IpAddr::V6(repr.src_addr),
                IpAddr::V6(repr.dst_addr),
                ip.payload(),
            )
        }
        _ => return Err(PacketError::Malformed),
    };
    let udp = UdpPacket::new_checked(payload).map_err(|_| PacketError::Malformed)?;
    let repr = UdpRepr::parse(&udp, &IpAddress::from(src), &IpAddress::from(dst), &caps)
        .map_err(|_| PacketError::Invalid)?;
    Ok(Datagram {
        src: SocketAddr::new(src, repr.src_port),
        dst: SocketAddr::new(dst, repr.dst_port),
        payload: udp.payload(),
    })
}

/// Build an IP/UDP packet with valid checksums, at most `mtu` bytes long.
pub fn build_udp(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    mtu: usize,
) -> Result<Vec<u8>, BuildError> {
    let hdr = headers_len(src, dst)?;
    let mut buf = vec![0u8; hdr + payload.len()];
    buf[hdr..].copy_from_slice(payload);
    build_udp_in_place(&mut buf, hdr..hdr + payload.len(), src, dst, mtu)?;
    Ok(buf)
}

/// IP and UDP header bytes of a packet from `src` to `dst`.
pub(super) fn headers_len(src: SocketAddr, dst: SocketAddr) -> Result<usize, BuildError> {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Ok(IPV4_HEADER + UDP_HEADER),
        (IpAddr::V6(_), IpAddr::V6(_)) => Ok(IPV6_HEADER + UDP_HEADER),
        _ => Err(BuildError::FamilyMismatch),
    }
}

/// Build an IP/UDP packet around the payload already at `payload` in `buf`,
/// writing the headers into the bytes just before it (there must be
/// `headers_len` of them): a reply read from the relay becomes the packet
/// for the TUN where it lies, with no copy and no allocation. Returns where
/// the packet is in `buf`.
pub(super) fn build_udp_in_place(
    buf: &mut [u8],
    payload: Range<usize>,
    src: SocketAddr,
    dst: SocketAddr,
    mtu: usize,
) -> Result<Range<usize>, BuildError> {
    let caps = ChecksumCapabilities::default();
    let hdr = headers_len(src, dst)?;
    let len = payload.len();
    let udp_len = UDP_HEADER + len;
    // IPv4 total length and the UDP length field are both 16 bits.
    if hdr + len > mtu || hdr + len > u16::MAX as usize {
        return Err(BuildError::TooBig);
    }
    let start = payload
        .start
        .checked_sub(hdr)
        .expect("room for the headers before the payload");
    let pkt = &mut buf[start..payload.end];
    let ip_len = hdr - UDP_HEADER;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut pkt[..]), &caps),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ipv6Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut pkt[..])),
        _ => return Err(BuildError::FamilyMismatch),
    }
    UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut pkt[ip_len..]),
        &IpAddress::from(src.ip()),
        &IpAddress::from(dst.ip()),
        len,
        // The payload is in place already.
        |_| {},
        &caps,
    );
    Ok(start..payload.end)
}

/// A reply source in the family of the local endpoint it goes to: IPv4-mapped
/// IPv6 becomes IPv4, IPv4 towards an IPv6 endpoint becomes IPv4-mapped.
pub(super) fn same_family(src: SocketAddr, local: SocketAddr) -> SocketAddr {
    let ip = match (crate::net::unmap(src.ip()), local.ip()) {
        (IpAddr::V4(a), IpAddr::V6(_)) => IpAddr::V6(a.to_ipv6_mapped()),
        (ip, _) => ip,
    };
    SocketAddr::new(ip, src.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn build_then_parse_v4_and_v6() {
        for (src, dst) in [
            ("203.0.113.2:7", "198.18.0.1:40000"),
            ("[2001:db8:2::2]:7", "[fc00:1::1]:40000"),
        ] {
            let p = build_udp(sa(src), sa(dst), b"hello", 1500).unwrap();
            let d = parse_udp(&p).unwrap();
            assert_eq!((d.src, d.dst, d.payload), (sa(src), sa(dst), &b"hello"[..]));
        }
    }

    /// Built in place around a payload already in a buffer: the same bytes
    /// as `build_udp`, and nothing outside the packet's range touched.
    #[test]
    fn in_place_matches_build_udp() {
        for (src, dst) in [
            ("203.0.113.2:7", "198.18.0.1:40000"),
            ("[2001:db8:2::2]:7", "[fc00:1::1]:40000"),
        ] {
            let (src, dst) = (sa(src), sa(dst));
            let want = build_udp(src, dst, b"hello world", 1500).unwrap();
            let mut buf = vec![0xEEu8; 100];
            buf[60..71].copy_from_slice(b"hello world");
            let r = build_udp_in_place(&mut buf, 60..71, src, dst, 1500).unwrap();
            assert_eq!(&buf[r.clone()], &want[..]);
            assert!(buf[..r.start].iter().all(|b| *b == 0xEE));
            assert!(buf[r.end..].iter().all(|b| *b == 0xEE));
            assert_eq!(
                build_udp_in_place(&mut buf, 60..71, src, dst, want.len() - 1),
                Err(BuildError::TooBig)
            );
        }
    }

    #[test]
    fn checksums_are_verified() {
        let mut p = build_udp(sa("203.0.113.2:7"), sa("198.18.0.1:9"), b"hello", 1500).unwrap();
        // RFC 768: the checksum is not 0 (0 means "none" over IPv4).
        assert_ne!(&p[26..28], &[0, 0]);
        let last = p.len() - 1;
        p[last] ^= 1;
        assert_eq!(parse_udp(&p), Err(PacketError::Invalid));
        let mut p6 =
            build_udp(sa("[2001:db8::1]:7"), sa("[2001:db8::2]:9"), b"hello", 1500).unwrap();
        let last = p6.len() - 1;
        p6[last] ^= 1;
        assert_eq!(parse_udp(&p6), Err(PacketError::Invalid));
        // IPv4 header checksum.
        let mut p = build_udp(sa("203.0.113.2:7"), sa("198.18.0.1:9"), b"x", 1500).unwrap();
        p[8] ^= 1;
        assert_eq!(parse_udp(&p), Err(PacketError::Invalid));
    }

    #[test]
    fn never_truncates() {
        let payload = vec![7u8; 1472];
        assert!(build_udp(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &payload, 1500).is_ok());
        let payload = vec![7u8; 1473];
        assert_eq!(
            build_udp(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &payload, 1500),
            Err(BuildError::TooBig)
        );
        let payload = vec![7u8; 1453];
        assert_eq!(
            build_udp(sa("[::1]:1"), sa("[::2]:2"), &payload, 1500),
            Err(BuildError::TooBig)
        );
        assert_eq!(
            build_udp(sa("1.2.3.4:1"), sa("[::2]:2"), b"", 1500),
            Err(BuildError::FamilyMismatch)
        );
    }

    #[test]
    fn rejects_what_is_not_plain_udp() {
        let mut p = build_udp(sa("203.0.113.2:7"), sa("198.18.0.1:9"), b"hello", 1500).unwrap();
        assert_eq!(parse_udp(&p[..10]), Err(PacketError::Malformed));
        assert_eq!(parse_udp(&p[..24]), Err(PacketError::Malformed));
        assert_eq!(parse_udp(&[]), Err(PacketError::Malformed));
        // More-fragments flag.
        p[6] |= 0x20;
        assert_eq!(parse_udp(&p), Err(PacketError::Fragment));
        // TCP.
        let mut t = build_udp(sa("[::1]:7"), sa("[::2]:9"), b"x", 1500).unwrap();
        t[6] = 6;
        assert_eq!(parse_udp(&t), Err(PacketError::NotUdp));
        // Port 0 destination (RFC 768 allows only the source to be 0).
        let z = build_udp(sa("1.2.3.4:7"), sa("5.6.7.8:0"), b"x", 1500).unwrap();
        assert_eq!(parse_udp(&z), Err(PacketError::Invalid));
        // Fuzz: truncations and bit flips never panic.
        let base = build_udp(
            sa("[2001:db8::1]:7"),
            sa("[2001:db8::2]:9"),
            b"hello world",
            1500,
        )
        .unwrap();
        for i in 0..base.len() {
            let _ = parse_udp(&base[..i]);
            for bit in 0..8 {
                let mut m = base.clone();
                m[i] ^= 1 << bit;
                let _ = parse_udp(&m);
            }
        }
    }
}
