//! The virtio-net header path of a TUN with offload (`tun::vnet`): what the
//! device read loop does with every read (`VnetHdr::parse`, `prepare_rx`),
//! then `tcp_tx` on the packet it yields, as the sink does on the way out.
//!
//! Input: two bytes of MSS, one mode byte, the 10-byte header, the packet.
//! With mode bit 0 a UDP packet gets the header the kernel writes for a
//! partial checksum (`NEEDS_CSUM`, the pseudo-header sum in the field), so
//! the checksum path is reached with consistent offsets.
//!
//! Invariants:
//! - the header round-trips through `to_bytes`; fewer than 10 bytes are `Short`;
//! - `prepare_rx` touches only the two checksum bytes, and only for a non-TCP
//!   packet with `NEEDS_CSUM`; its error is `UnsupportedGso` exactly for a
//!   segmentation type that is not TCP's on a TCP packet;
//! - the checksum it writes completes the one's-complement sum (for a UDP
//!   packet set up as the kernel does, smoltcp then verifies it);
//! - `tcp_tx` changes only the TCP checksum field, its offsets and lengths lie
//!   inside the packet, it asks for segmentation only of a payload larger than
//!   the segment size, and once the checksum is finished as the kernel would,
//!   the TCP checksum verifies;
//! - with mode bit 1, the packet taken as a UDP segmentation super-packet
//!   (`tun::uso`): refused, or cut into datagrams whose payloads put together
//!   are the super-packet's, each no longer than the segment size, none
//!   longer than `max_len`, every length field matching its datagram.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address, TcpPacket, UdpPacket};
use sockstun::tun::uso::Super;
use sockstun::tun::vnet::{self, RxError, VnetHdr};

/// RFC 1071 one's-complement sum, folded, not inverted.
fn sum(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Equal in one's-complement arithmetic (0 and 0xffff are both zero).
fn ones_eq(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

/// Source and destination of an IPv4/IPv6 packet, and the offset after the
/// fixed IP header, read straight from the bytes.
fn addrs(pkt: &[u8]) -> Option<(IpAddress, IpAddress, usize, u8)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let s = Ipv4Address::from(<[u8; 4]>::try_from(&pkt[12..16]).ok()?);
            let d = Ipv4Address::from(<[u8; 4]>::try_from(&pkt[16..20]).ok()?);
            Some((s.into(), d.into(), ihl, pkt[9]))
        }
        6 if pkt.len() >= 40 => {
            let s = Ipv6Address::from(<[u8; 16]>::try_from(&pkt[8..24]).ok()?);
            let d = Ipv6Address::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?);
            Some((s.into(), d.into(), 40, pkt[6]))
        }
        _ => None,
    }
}

/// Pseudo-header sum (RFC 768 / RFC 8200 §8.1) for a transport segment of `len`.
fn pseudo(src: IpAddress, dst: IpAddress, proto: u8, len: usize) -> u16 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => unreachable!(),
    }
    sum(&p)
}

/// Make the header and the checksum field what the kernel writes for a UDP
/// packet whose checksum it leaves to us.
fn as_kernel_writes(hdr: &mut VnetHdr, pkt: &mut [u8]) -> bool {
    let Some((s, d, off, 17)) = addrs(pkt) else {
        return false;
    };
    if off < 20 || pkt.len() < off + 8 {
        return false;
    }
    let len = pkt.len() - off;
    pkt[off + 4..off + 6].copy_from_slice(&(len as u16).to_be_bytes());
    let p = pseudo(s, d, 17, len);
    pkt[off + 6..off + 8].copy_from_slice(&p.to_be_bytes());
    *hdr = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: off as u16,
        csum_offset: 6,
    };
    true
}

fn check_rx(hdr: &VnetHdr, pkt: &mut [u8], kernel_like: bool) {
    let before = pkt.to_vec();
    let proto = match pkt.first().map(|b| b >> 4) {
        Some(4) => pkt.get(9).copied(),
        Some(6) => pkt.get(6).copied(),
        _ => None,
    };
    let r = vnet::prepare_rx(hdr, pkt);
    let gso = hdr.gso_type & !vnet::GSO_ECN;
    let gso_ok = gso == vnet::GSO_NONE
        || ((gso == vnet::GSO_TCPV4 || gso == vnet::GSO_TCPV6) && proto == Some(6));
    match r {
        Err(RxError::UnsupportedGso(t)) => assert!(!gso_ok && t == gso, "{hdr:?}"),
        Err(RxError::Short) => panic!("prepare_rx said Short"),
        Err(RxError::BadSuperPacket) => panic!("prepare_rx cuts no super-packet"),
        Err(RxError::BadChecksumOffsets) => {
            assert!(gso_ok && hdr.flags & vnet::F_NEEDS_CSUM != 0 && proto != Some(6))
        }
        Ok(()) => assert!(gso_ok, "{hdr:?} accepted"),
    }
    let finished = r.is_ok() && hdr.flags & vnet::F_NEEDS_CSUM != 0 && proto != Some(6);
    if !finished {
        assert_eq!(before, pkt, "packet changed without a checksum to finish");
        return;
    }
    let start = hdr.csum_start as usize;
    let at = start + hdr.csum_offset as usize;
    for (i, (a, b)) in before.iter().zip(pkt.iter()).enumerate() {
        assert!(a == b || (at..at + 2).contains(&i), "byte {i} changed");
    }
    if (at - start) % 2 == 0 {
        // The field held the pseudo-header sum P: the finished data sums to !P.
        let p = u16::from_be_bytes([before[at], before[at + 1]]);
        assert!(
            ones_eq(sum(&pkt[start..]), !p),
            "checksum does not complete the sum"
        );
    }
    if kernel_like {
        let (s, d, off, _) = addrs(pkt).unwrap();
        let udp = UdpPacket::new_unchecked(&pkt[off..]);
        assert!(
            udp.verify_checksum(&s, &d),
            "finished UDP checksum is wrong"
        );
    }
}

fn check_tx(pkt: &[u8], mss: u16) {
    let mut p = pkt.to_vec();
    let Some(h) = vnet::tcp_tx(&mut p, mss) else {
        assert_eq!(p, pkt, "tcp_tx changed a packet it refused");
        return;
    };
    let (s, d, off, proto) = addrs(pkt).expect("tcp_tx took a non-IP packet");
    assert_eq!(proto, 6, "tcp_tx took a non-TCP packet");
    let start = h.csum_start as usize;
    let at = start + h.csum_offset as usize;
    assert_eq!(
        (start, h.csum_offset, h.flags),
        (off, 16, vnet::F_NEEDS_CSUM)
    );
    assert!(
        at + 2 <= p.len() && (h.hdr_len as usize) <= p.len(),
        "{h:?} beyond {}",
        p.len()
    );
    for (i, (a, b)) in pkt.iter().zip(p.iter()).enumerate() {
        assert!(
            a == b || (at..at + 2).contains(&i),
            "tcp_tx changed byte {i}"
        );
    }
    let payload = p.len() - h.hdr_len as usize;
    match h.gso_type {
        vnet::GSO_NONE => assert_eq!(h.gso_size, 0),
        t => {
            let want = if pkt[0] >> 4 == 4 {
                vnet::GSO_TCPV4
            } else {
                vnet::GSO_TCPV6
            };
            assert_eq!(t, want);
            assert!(
                h.gso_size > 0 && payload > h.gso_size as usize,
                "{h:?}, {payload}"
            );
        }
    }
    // Finish as the kernel does (skb_checksum_help); then it must verify.
    let c = !sum(&p[start..]);
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let tcp = TcpPacket::new_unchecked(&p[off..]);
    assert!(
        tcp.verify_checksum(&s, &d),
        "TCP checksum wrong once finished"
    );
}

fn check_uso(pkt: &[u8], gso_size: u16) {
    let Ok(s) = Super::parse(pkt, gso_size) else {
        return;
    };
    let (_, _, off, proto) = addrs(pkt).expect("accepted a non-IP packet");
    assert_eq!(proto, 17, "accepted a non-UDP packet");
    let mut out = vec![0u8; s.max_len()];
    let mut joined = Vec::new();
    for i in 0..s.count() {
        let n = s.write(pkt, i, &mut out);
        let d = &out[..n];
        let data = &d[off + 8..];
        assert!(
            data.len() <= gso_size as usize,
            "datagram {i}: {} bytes",
            data.len()
        );
        let udp_len = u16::from_be_bytes([d[off + 4], d[off + 5]]) as usize;
        assert_eq!(udp_len, n - off, "UDP length of datagram {i}");
        let ip_len = if d[0] >> 4 == 4 {
            u16::from_be_bytes([d[2], d[3]]) as usize
        } else {
            u16::from_be_bytes([d[4], d[5]]) as usize + 40
        };
        assert_eq!(ip_len, n, "IP length of datagram {i}");
        joined.extend_from_slice(data);
    }
    assert_eq!(&joined[..], &pkt[off + 8..], "payloads lost or changed");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mss = u16::from_be_bytes([data[0], data[1]]);
    let mode = data[2];
    let rest = &data[3..];
    let parsed = VnetHdr::parse(rest);
    if rest.len() < vnet::HDR_LEN {
        assert_eq!(parsed, Err(RxError::Short));
        return;
    }
    let mut hdr = parsed.expect("ten bytes are a header");
    assert_eq!(
        &hdr.to_bytes()[..],
        &rest[..vnet::HDR_LEN],
        "header round trip"
    );
    let mut pkt = rest[vnet::HDR_LEN..].to_vec();
    let kernel_like = mode & 1 != 0 && as_kernel_writes(&mut hdr, &mut pkt);
    if mode & 2 != 0 {
        check_uso(&pkt, hdr.gso_size);
    }
    check_rx(&hdr, &mut pkt, kernel_like);
    check_tx(&pkt, mss);
});
