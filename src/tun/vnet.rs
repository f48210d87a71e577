//! The virtio-net header that precedes every packet on a TUN opened with
//! `IFF_VNET_HDR` (struct virtio_net_hdr, include/uapi/linux/virtio_net.h;
//! virtio spec 1.2 section 5.1.6). No I/O here.
//!
//! With the header the device can take checksum and segmentation offloads
//! (`TUNSETOFFLOAD`): the kernel hands us TCP segments of up to 64 KB whatever
//! the MTU (TSO) with the checksum left to finish (`NEEDS_CSUM`), instead of
//! one MTU-sized packet per `read(2)` whose checksum it computed in software.
//! The header's fields are in the host's byte order (a legacy virtio device;
//! the TUN's default).

/// Size of the header (no `num_buffers`: `TUNSETVNETHDRSZ` left at its default).
pub const HDR_LEN: usize = 10;

/// `csum_start`/`csum_offset` name a checksum still to be finished.
pub const F_NEEDS_CSUM: u8 = 1;
/// The kernel verified the packet's checksums.
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// Flag bit on `gso_type`: the segments carry ECN CWR.
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// Why a packet read from the device cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxError {
    /// Shorter than the header.
    Short,
    /// A segmentation type we did not ask for (UDP fragmentation offload).
    UnsupportedGso(u8),
    /// `csum_start`/`csum_offset` point outside the packet.
    BadChecksumOffsets,
    /// A UDP segmentation super-packet that is not UDP over IP, or whose
    /// segment size is zero or too large.
    BadSuperPacket,
}

impl std::fmt::Display for RxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RxError::Short => write!(f, "shorter than its virtio-net header"),
            RxError::UnsupportedGso(t) => write!(f, "unsupported segmentation type {t:#04x}"),
            RxError::BadChecksumOffsets => write!(f, "checksum offsets outside the packet"),
            RxError::BadSuperPacket => write!(f, "malformed UDP segmentation super-packet"),
        }
    }
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Result<VnetHdr, RxError> {
        let b: &[u8; HDR_LEN] = b
            .get(..HDR_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(RxError::Short)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// The header for a TCP packet from the stack whose checksum the kernel is to
/// finish (`NEEDS_CSUM`; virtio spec 5.1.6.2): the checksum field is set to
/// the pseudo-header sum, from which the kernel sums the segment (smoltcp
/// leaves TCP checksums to the device when offload is on, so no payload is
/// summed twice). A packet whose payload is larger than `mss` is also cut by
/// the kernel into segments of `mss` payload bytes (TSO on transmit). `None`
/// when the packet is not plain TCP over IPv4/IPv6.
pub fn tcp_tx(pkt: &mut [u8], mss: u16) -> Option<VnetHdr> {
    let (ip_len, gso_type) = match pkt.first()? >> 4 {
        4 => (((pkt[0] & 0x0f) as usize) * 4, GSO_TCPV4),
        6 => (40, GSO_TCPV6),
        _ => return None,
    };
    if ip_protocol(pkt)? != TCP || ip_len < 20 {
        return None;
    }
    let tcp_hdr = ((*pkt.get(ip_len + 12)? >> 4) as usize) * 4;
    if tcp_hdr < 20 || pkt.len() < ip_len + tcp_hdr {
        return None;
    }
    let tcp_len = pkt.len() - ip_len;
    let mut pseudo = [0u8; 40];
    let n = if gso_type == GSO_TCPV4 {
        pseudo[..8].copy_from_slice(&pkt[12..20]);
        pseudo[9] = TCP;
        pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        12
    } else {
        pseudo[..32].copy_from_slice(&pkt[8..40]);
        pseudo[32..36].copy_from_slice(&(tcp_len as u32).to_be_bytes());
        pseudo[39] = TCP;
        40
    };
    let sum = checksum(&pseudo[..n]);
    pkt[ip_len + 16..ip_len + 18].copy_from_slice(&sum.to_be_bytes());
    let mut h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: (ip_len + tcp_hdr) as u16,
        gso_size: 0,
        csum_start: ip_len as u16,
        csum_offset: 16,
    };
    // The MSS counts payload without options (RFC 9293 3.7.1); the kernel
    // copies our options into every segment, so they come off the size.
    let seg = (mss as usize).saturating_sub(tcp_hdr - 20);
    if seg > 0 && tcp_len - tcp_hdr > seg {
        h.gso_type = gso_type;
        h.gso_size = seg as u16;
    }
    Some(h)
}

/// IP protocol number of an IPv4 or IPv6 packet (the IPv6 next header, so an
/// extension header reads as "not TCP").
fn ip_protocol(pkt: &[u8]) -> Option<u8> {
    match pkt.first()? >> 4 {
        4 => pkt.get(9).copied(),
        6 => pkt.get(6).copied(),
        _ => None,
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Make a packet read from the device ready for the stack, in place.
///
/// TCP (whole or a TSO super-segment) is passed as it is: the stack does not
/// verify checksums of what the kernel wrote into the TUN (`stack::device`),
/// so a checksum left unfinished costs nothing. Any other packet whose
/// checksum the kernel left to us is finished here, because the UDP relay
/// checks it: one's-complement sum from `csum_start` to the end, stored at
/// `csum_start + csum_offset`, which holds the pseudo-header sum (RFC 1071;
/// `skb_checksum_help` in the kernel).
pub fn prepare_rx(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), RxError> {
    let gso = hdr.gso_type & !GSO_ECN;
    let proto = ip_protocol(pkt);
    match gso {
        GSO_NONE => {}
        GSO_TCPV4 | GSO_TCPV6 if proto == Some(TCP) => {}
        t => return Err(RxError::UnsupportedGso(t)),
    }
    if hdr.flags & F_NEEDS_CSUM == 0 || proto == Some(TCP) {
        return Ok(());
    }
    let start = hdr.csum_start as usize;
    let at = start + hdr.csum_offset as usize;
    if start >= pkt.len() || at + 2 > pkt.len() {
        return Err(RxError::BadChecksumOffsets);
    }
    let mut c = !checksum(&pkt[start..]);
    // RFC 768: a computed UDP checksum of zero is sent as all ones (zero
    // means "no checksum").
    if c == 0 && proto == Some(UDP) {
        c = 0xffff;
    }
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The folded one's-complement sum of `data` as big-endian 16-bit words
/// (RFC 1071), not inverted.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        sum += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr};

    #[test]
    fn header_round_trip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.to_bytes()), Ok(h));
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(RxError::Short));
        assert_eq!(
            VnetHdr::parse(&[0; HDR_LEN]),
            Ok(VnetHdr::default()),
            "a plain packet's header"
        );
    }

    /// A UDP datagram as the kernel hands it over with `NEEDS_CSUM`: the
    /// checksum field holds only the pseudo-header sum. Finished, it must be
    /// what smoltcp computes for the whole datagram.
    fn udp_packet(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let src = Ipv4Address::new(198, 18, 0, 1);
        let dst = Ipv4Address::new(203, 0, 113, 2);
        let udp = UdpRepr {
            src_port: 40000,
            dst_port: 53,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: smoltcp::wire::IpProtocol::Udp,
            payload_len: 8 + payload.len(),
            hop_limit: 64,
        };
        let mut full = vec![0u8; 20 + 8 + payload.len()];
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut full[..]), &caps);
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut full[20..]),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &caps,
        );
        // The partial form: the pseudo-header sum, not inverted.
        let mut partial = full.clone();
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        partial[26..28].copy_from_slice(&checksum(&pseudo).to_be_bytes());
        (full, partial)
    }

    /// A TCP packet for the kernel to finish: the checksum field holds the
    /// pseudo-header sum, which finished over the whole packet gives
    /// smoltcp's full checksum; a big one also names the MSS to cut it to.
    /// An IPv4 or IPv6 packet carrying a TCP data segment with `payload`
    /// and its full checksum, as smoltcp emits it without offload.
    fn tcp_packet(src: IpAddress, dst: IpAddress, payload: &[u8]) -> Vec<u8> {
        use smoltcp::wire::{IpProtocol, IpRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};
        let tcp = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(1),
            ack_number: Some(TcpSeqNumber(1)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        };
        let ip = IpRepr::new(src, dst, IpProtocol::Tcp, tcp.buffer_len(), 64);
        let caps = ChecksumCapabilities::default();
        let mut pkt = vec![0u8; ip.header_len() + tcp.buffer_len()];
        ip.emit(&mut pkt[..], &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut pkt[ip.header_len()..]),
            &src,
            &dst,
            &caps,
        );
        pkt
    }

    /// The same over IPv6: the pseudo-header of RFC 8200 8.1 (32-bit
    /// length), which nothing downstream checks when the kernel trusts a
    /// partial checksum on local delivery.
    #[test]
    fn tcp_tx_over_ipv6() {
        use smoltcp::wire::Ipv6Address;
        let src = Ipv6Address::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        let dst = Ipv6Address::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);
        for (len, mss, cut) in [(101usize, 1440u16, false), (9001, 1440, true)] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut pkt = tcp_packet(src.into(), dst.into(), &payload);
            let full = pkt.clone();
            let h = tcp_tx(&mut pkt, mss).unwrap();
            assert_eq!(
                (h.flags, h.csum_start, h.csum_offset),
                (F_NEEDS_CSUM, 40, 16)
            );
            assert_eq!(
                (h.gso_type, h.gso_size),
                if cut { (GSO_TCPV6, mss) } else { (GSO_NONE, 0) }
            );
            let c = !checksum(&pkt[40..]);
            pkt[56..58].copy_from_slice(&c.to_be_bytes());
            assert_eq!(pkt, full, "{len} bytes");
        }
    }

    #[test]
    fn tcp_tx_finishes_every_tcp_packet_and_cuts_large_ones() {
        let src = Ipv4Address::new(203, 0, 113, 2);
        let dst = Ipv4Address::new(198, 18, 0, 1);
        let mut pkt = tcp_packet(src.into(), dst.into(), &[7u8; 5000]);
        let full = pkt.clone();
        // Finishing the partial checksum as the kernel does restores it.
        let finish = |p: &[u8], h: VnetHdr| {
            let mut done = p.to_vec();
            let start = h.csum_start as usize;
            let c = !checksum(&done[start..]);
            done[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
            done
        };
        let mut small = pkt.clone();
        let h = tcp_tx(&mut small, 5000).unwrap();
        assert_eq!(
            (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, GSO_NONE, 0, 20, 16),
            "fits in one segment: checksum only"
        );
        assert_ne!(small, full, "the field holds the pseudo-header sum");
        assert_eq!(finish(&small, h), full);
        let h = tcp_tx(&mut pkt, 1460).unwrap();
        assert_eq!(
            (
                h.flags,
                h.gso_type,
                h.hdr_len,
                h.gso_size,
                h.csum_start,
                h.csum_offset
            ),
            (F_NEEDS_CSUM, GSO_TCPV4, 40, 1460, 20, 16)
        );
        assert_eq!(finish(&pkt, h), full);
        // Not TCP, or garbage: no header.
        let (_, mut udp) = udp_packet(&[0; 3000]);
        assert_eq!(tcp_tx(&mut udp, 1000), None);
        assert_eq!(tcp_tx(&mut [0x45, 0, 0], 1000), None);
        assert_eq!(tcp_tx(&mut [], 1000), None);
    }

    #[test]
    fn finishes_a_partial_udp_checksum() {
        for payload in [&b"hello, world"[..], b"odd", b""] {
            let (full, mut pkt) = udp_packet(payload);
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 20,
                csum_offset: 6,
                ..VnetHdr::default()
            };
            prepare_rx(&h, &mut pkt).unwrap();
            assert_eq!(pkt, full, "payload {payload:?}");
        }
    }

    #[test]
    fn leaves_tcp_and_valid_packets_alone_and_rejects_nonsense() {
        let (full, mut pkt) = udp_packet(b"x");
        let untouched = pkt.clone();
        // No NEEDS_CSUM: nothing to do.
        prepare_rx(&VnetHdr::default(), &mut pkt).unwrap();
        assert_eq!(pkt, untouched);
        assert_ne!(pkt, full);
        let mut tcp = vec![0x45u8; 60];
        tcp[9] = TCP;
        let before = tcp.clone();
        let tso = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        prepare_rx(&tso, &mut tcp).unwrap();
        assert_eq!(tcp, before, "TCP is not touched");
        // UDP segmentation was not asked for.
        let ufo = VnetHdr { gso_type: 3, ..tso };
        assert_eq!(prepare_rx(&ufo, &mut pkt), Err(RxError::UnsupportedGso(3)));
        let bad = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 200,
            ..VnetHdr::default()
        };
        assert_eq!(prepare_rx(&bad, &mut pkt), Err(RxError::BadChecksumOffsets));
        assert_eq!(
            prepare_rx(
                &VnetHdr {
                    csum_start: 999,
                    ..bad
                },
                &mut pkt
            ),
            Err(RxError::BadChecksumOffsets)
        );
    }
}
