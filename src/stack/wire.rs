//! What the stack needs to know about a packet before smoltcp sees it, and the
//! ICMP errors it builds itself. Parsing only reads headers; nothing is copied.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
};
use std::net::{IpAddr, SocketAddr};

/// A TCP flow as the application sees it: its own address and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// One `write` of the packed 4-tuple. The derived impl fed the table's keyed
/// SipHash field by field (a discriminant, a length and the bytes of each
/// address, each port: 6 calls a key, each paying SipHash's tail handling),
/// which made hashing the largest user-space cost of a short connection.
/// Packing keeps the hash keyed (the table's keys come from whoever sends
/// packets into the TUN) and equal keys still hash equally: the buffer is a
/// function of the key, and the family byte keeps an IPv4 key from colliding
/// by construction with an IPv6 one.
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn put(b: &mut [u8], a: &SocketAddr) {
            match a.ip() {
                IpAddr::V4(ip) => b[..4].copy_from_slice(&ip.octets()),
                IpAddr::V6(ip) => b[..16].copy_from_slice(&ip.octets()),
            }
            b[16..18].copy_from_slice(&a.port().to_be_bytes());
        }
        let mut b = [0u8; 37];
        b[36] = u8::from(self.src.is_ipv6()) | u8::from(self.dst.is_ipv6()) << 1;
        put(&mut b[..18], &self.src);
        put(&mut b[18..36], &self.dst);
        state.write(&b);
    }
}

/// The classes of inbound packets the stack treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Tcp {
        key: FlowKey,
        syn: bool,
        ack: bool,
        rst: bool,
        /// Sequence number and payload length (RFC 9293 3.4).
        seq: u32,
        len: u32,
    },
    Udp,
    /// Any other IP protocol (ICMP, ICMPv6, IPv6 extension headers, ...).
    Other,
    /// Not a well-formed IPv4/IPv6 packet, or a truncated TCP header.
    Malformed,
}

/// Replace the MSS option (RFC 9293 3.7.1) of a TCP segment in an IPv4/IPv6
/// packet that [`classify`] called TCP; returns the value it had, or `None`
/// (nothing changed) when there is none or the options are malformed. The
/// checksum is left as it was: the stack does not verify the checksums of
/// what the kernel wrote into the TUN.
pub fn replace_mss(pkt: &mut [u8], mss: u16) -> Option<u16> {
    let off = match pkt.first()? >> 4 {
        4 => ((pkt[0] & 0x0f) as usize) * 4,
        6 => 40,
        _ => return None,
    };
    let doff = ((*pkt.get(off + 12)? >> 4) as usize) * 4;
    // A data offset under 20 makes an empty range: no options.
    let opts = pkt.get_mut(off + 20..off + doff)?;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = *opts.get(i + 1)? as usize;
                if len < 2 || i + len > opts.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                    opts[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                    return Some(old);
                }
                i += len;
            }
        }
    }
    None
}

/// In a SYN we emit, lower the MSS option to what a device of `mtu` carries
/// (RFC 9293 3.7.1: the IP MTU less the IP and TCP headers) and fix the
/// checksum. With segment offload smoltcp works with a 64 KB MTU and would
/// advertise that, and a sender whose path is wider than the TUN would stop
/// being clamped to it. Other packets are left alone.
pub fn clamp_syn_mss(pkt: &mut [u8], mtu: usize) {
    let Some((off, src, dst)) = tcp_in_ip(pkt) else {
        return;
    };
    let syn = pkt.get(off + 13).is_some_and(|f| f & 0x02 != 0);
    let mss = mtu.saturating_sub(off + 20).min(u16::MAX as usize) as u16;
    if !syn || replace_mss(pkt, mss).is_none() {
        return;
    }
    let mut tcp = TcpPacket::new_unchecked(&mut pkt[off..]);
    tcp.fill_checksum(&src, &dst);
}

/// Compute the TCP checksum of a TCP packet in IPv4/IPv6 in software (a sink
/// without checksum offload, given a packet smoltcp left it to). Anything
/// else is left alone.
pub fn fill_tcp_checksum(pkt: &mut [u8]) {
    if let Some((off, src, dst)) = tcp_in_ip(pkt) {
        if pkt.len() >= off + 20 {
            TcpPacket::new_unchecked(&mut pkt[off..]).fill_checksum(&src, &dst);
        }
    }
}

/// The offset of the TCP header in an IPv4/IPv6 packet carrying TCP, and the
/// addresses of its pseudo-header.
fn tcp_in_ip(pkt: &[u8]) -> Option<(usize, IpAddress, IpAddress)> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| {
                (
                    ip.header_len() as usize,
                    IpAddress::Ipv4(ip.src_addr()),
                    IpAddress::Ipv4(ip.dst_addr()),
                )
            })
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(pkt).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| {
                (
                    40,
                    IpAddress::Ipv6(ip.src_addr()),
                    IpAddress::Ipv6(ip.dst_addr()),
                )
            })
        }
        _ => None,
    }
}

/// Classify an inbound IP packet by its headers.
pub fn classify(pkt: &[u8]) -> Class {
    let (src, dst, proto, payload) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
                return Class::Malformed;
            };
            // A fragment (other than a whole datagram) cannot be demultiplexed by
            // ports; the kernel does not fragment TCP towards a TUN (PMTU/MSS).
            if ip.more_frags() || ip.frag_offset() != 0 {
                return Class::Other;
            }
            let hl = ip.header_len() as usize;
            let total = (ip.total_len() as usize).min(pkt.len());
            (
                IpAddr::V4(ip.src_addr()),
                IpAddr::V4(ip.dst_addr()),
                ip.next_header(),
                &pkt[hl.min(total)..total],
            )
        }
        Some(6) => {
            let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
                return Class::Malformed;
            };
            (
                IpAddr::V6(ip.src_addr()),
                IpAddr::V6(ip.dst_addr()),
                ip.next_header(),
                ip.payload(),
            )
        }
        _ => return Class::Malformed,
    };
    match proto {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(payload) else {
                return Class::Malformed;
            };
            Class::Tcp {
                key: FlowKey {
                    src: SocketAddr::new(src, tcp.src_port()),
                    dst: SocketAddr::new(dst, tcp.dst_port()),
                },
                syn: tcp.syn(),
                ack: tcp.ack(),
                rst: tcp.rst(),
                seq: tcp.seq_number().0 as u32,
                len: tcp.payload().len() as u32,
            }
        }
        IpProtocol::Udp => Class::Udp,
        _ => Class::Other,
    }
}

/// Why a destination could not be reached, as an ICMP error can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Net,
    Host,
    /// Administratively prohibited (the proxy's rules said no).
    Prohibited,
    /// Nothing listens on that port (a UDP datagram a rule blocks).
    Port,
}

/// How much of the offending packet an ICMP error quotes. RFC 792 asks for the
/// IP header and 64 bits of data (enough for the TCP ports and sequence number,
/// which is all the kernel checks); RFC 4443 2.4(c) asks for as much as fits,
/// and the SYN's TCP header is enough for ICMPv6 too.
pub fn quote_len(pkt: &[u8]) -> usize {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => (((pkt[0] & 0x0f) as usize) * 4 + 8).min(pkt.len()),
        _ => (40 + 60).min(pkt.len()),
    }
}

/// Build the ICMP/ICMPv6 destination-unreachable answer to `quoted` (the head
/// of the SYN, see `quote_len`), sent from the SYN's destination to its source.
pub fn icmp_unreachable(quoted: &[u8], why: Unreachable) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    match quoted.first().map(|b| b >> 4) {
        Some(4) => {
            // The quote is cut after 8 payload bytes, so total_len describes the
            // original packet: read the header fields without the length check.
            if quoted.len() < 20 || quoted.len() < ((quoted[0] & 0x0f) as usize) * 4 {
                return None;
            }
            let ip = Ipv4Packet::new_unchecked(quoted);
            let header = Ipv4Repr {
                src_addr: ip.src_addr(),
                dst_addr: ip.dst_addr(),
                next_header: ip.next_header(),
                payload_len: (ip.total_len() as usize).saturating_sub(ip.header_len() as usize),
                hop_limit: ip.hop_limit(),
            };
            let hl = ip.header_len() as usize;
            let data = &quoted[hl.min(quoted.len())..];
            let reason = match why {
                Unreachable::Net => Icmpv4DstUnreachable::NetUnreachable,
                Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
                Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            };
            let outer = Ipv4Repr {
                src_addr: header.dst_addr,
                dst_addr: header.src_addr,
                next_header: IpProtocol::Icmp,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut buf = vec![0u8; outer.buffer_len() + icmp.buffer_len()];
            let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
            outer.emit(&mut pkt, &caps);
            icmp.emit(&mut Icmpv4Packet::new_unchecked(pkt.payload_mut()), &caps);
            Some(buf)
        }
        Some(6) => {
            if quoted.len() < 40 {
                return None;
            }
            let ip = Ipv6Packet::new_unchecked(quoted);
            let header = Ipv6Repr {
                src_addr: ip.src_addr(),
                dst_addr: ip.dst_addr(),
                next_header: ip.next_header(),
                payload_len: ip.payload_len() as usize,
                hop_limit: ip.hop_limit(),
            };
            let data = &quoted[40..];
            let reason = match why {
                Unreachable::Net => Icmpv6DstUnreachable::NoRoute,
                Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
                Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
            };
            let icmp = Icmpv6Repr::DstUnreachable {
                reason,
                header,
                data,
            };
            let outer = Ipv6Repr {
                src_addr: header.dst_addr,
                dst_addr: header.src_addr,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            let mut buf = vec![0u8; outer.buffer_len() + icmp.buffer_len()];
            let mut pkt = Ipv6Packet::new_unchecked(&mut buf[..]);
            outer.emit(&mut pkt);
            icmp.emit(
                &outer.src_addr,
                &outer.dst_addr,
                &mut Icmpv6Packet::new_unchecked(pkt.payload_mut()),
                &caps,
            );
            Some(buf)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 SYN with options NOP, NOP, MSS 1460, window scale 7.
    fn syn_v4() -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        p[9] = 6;
        p[32] = 8 << 4; // data offset: 32 bytes
        p[33] = 0x02; // SYN
        p[40..52].copy_from_slice(&[1, 1, 2, 4, 0x05, 0xb4, 3, 3, 7, 0, 0, 0]);
        p
    }

    #[test]
    fn flow_key_hash_covers_every_field() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        // A fixed hasher so the test is deterministic.
        let h = |k: &FlowKey| BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(k);
        let key = |s: &str, d: &str| FlowKey {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
        };
        let base = key("198.18.0.1:40000", "203.0.113.2:80");
        assert_eq!(h(&base), h(&key("198.18.0.1:40000", "203.0.113.2:80")));
        let others = [
            key("198.18.0.2:40000", "203.0.113.2:80"),
            key("198.18.0.1:40001", "203.0.113.2:80"),
            key("198.18.0.1:40000", "203.0.113.3:80"),
            key("198.18.0.1:40000", "203.0.113.2:81"),
            key("203.0.113.2:80", "198.18.0.1:40000"),
            key("[::ffff:198.18.0.1]:40000", "203.0.113.2:80"),
            key("198.18.0.1:40000", "[::ffff:203.0.113.2]:80"),
            // The bytes of 198.18.0.1, then zeros: only the family tells them apart.
            key("[c612:1::]:40000", "203.0.113.2:80"),
            key("[c612:1::]:40000", "[cb00:7102::]:80"),
            key("[2001:db8::1]:40000", "[2001:db8::2]:80"),
            key("[2001:db8::1]:40000", "[2001:db8::2:0]:80"),
        ];
        let mut seen = vec![h(&base)];
        for k in &others {
            assert!(!seen.contains(&h(k)), "{k:?} hashes like an earlier key");
            seen.push(h(k));
        }
    }

    #[test]
    fn replace_mss_finds_the_option_and_only_it() {
        let mut p = syn_v4();
        let before = p.clone();
        assert_eq!(replace_mss(&mut p, 65000), Some(1460));
        assert_eq!(&p[44..46], &65000u16.to_be_bytes());
        p[44..46].copy_from_slice(&before[44..46]);
        assert_eq!(p, before, "nothing else changed");
        // IPv6: the TCP header follows the fixed 40-byte header.
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6.extend_from_slice(&syn_v4()[20..]);
        assert_eq!(replace_mss(&mut v6, 9000), Some(1460));
    }

    #[test]
    fn clamp_syn_mss_lowers_it_and_keeps_the_checksum_right() {
        use smoltcp::wire::Ipv4Address;
        let mut p = syn_v4();
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[12..16].copy_from_slice(&[203, 0, 113, 2]);
        p[16..20].copy_from_slice(&[198, 18, 0, 1]);
        replace_mss(&mut p, 65495).unwrap();
        clamp_syn_mss(&mut p, 1500);
        assert_eq!(&p[44..46], &1460u16.to_be_bytes());
        let tcp = TcpPacket::new_checked(&p[20..]).unwrap();
        let (src, dst) = (
            IpAddress::Ipv4(Ipv4Address::new(203, 0, 113, 2)),
            IpAddress::Ipv4(Ipv4Address::new(198, 18, 0, 1)),
        );
        assert!(tcp.verify_checksum(&src, &dst));
        // Not a SYN: untouched.
        let mut ack = p.clone();
        ack[33] = 0x10;
        let before = ack.clone();
        clamp_syn_mss(&mut ack, 1280);
        assert_eq!(ack, before);
    }

    #[test]
    fn replace_mss_survives_malformed_options() {
        let mut no_opts = syn_v4();
        no_opts[32] = 5 << 4;
        assert_eq!(replace_mss(&mut no_opts, 1), None);
        let mut bad_len = syn_v4();
        bad_len[42] = 2;
        bad_len[43] = 40; // runs past the header
        assert_eq!(replace_mss(&mut bad_len, 1), None);
        let mut zero_len = syn_v4();
        zero_len[40] = 9;
        zero_len[41] = 0;
        assert_eq!(replace_mss(&mut zero_len, 1), None);
        let mut tiny_doff = syn_v4();
        tiny_doff[32] = 2 << 4;
        assert_eq!(replace_mss(&mut tiny_doff, 1), None);
        let mut truncated = syn_v4();
        truncated.truncate(45);
        assert_eq!(replace_mss(&mut truncated, 1), None);
        assert_eq!(replace_mss(&mut [], 1), None);
    }
}
