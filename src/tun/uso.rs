//! UDP segmentation offload on receive (`TUN_F_USO4`/`TUN_F_USO6`, Linux
//! 6.2+). An application that sends with `UDP_SEGMENT` (QUIC stacks do) hands
//! the kernel one buffer of many equal datagrams; with USO on the device the
//! kernel passes that "super-packet" through the TUN whole, in one `read(2)`,
//! instead of cutting it and making us read each datagram. Here it is cut into
//! the datagrams the application meant, each a whole IP packet with its own
//! lengths and checksums, as the kernel's `__udp_gso_segment` would have cut
//! it. No I/O.

use super::vnet::RxError;

/// `VIRTIO_NET_HDR_GSO_UDP_L4` (include/uapi/linux/virtio_net.h).
pub const GSO_UDP_L4: u8 = 5;

const UDP: u8 = 17;
const UDP_HEADER: usize = 8;

/// A checked super-packet: where its datagrams are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Super {
    /// IP header length (IPv4 with its options; IPv6 fixed, no extension
    /// headers: the kernel does not make USO packets with them).
    ip_len: usize,
    v6: bool,
    /// Payload bytes per datagram (the last may be shorter).
    seg: usize,
    /// Payload bytes of the whole super-packet.
    payload: usize,
}

impl Super {
    /// `pkt` (the IP packet after the virtio-net header) with `gso_size`.
    pub fn parse(pkt: &[u8], gso_size: u16) -> Result<Super, RxError> {
        let (ip_len, v6) = match pkt.first().map(|b| b >> 4) {
            Some(4) => (((pkt[0] & 0x0f) as usize) * 4, false),
            Some(6) => (40, true),
            _ => return Err(RxError::BadSuperPacket),
        };
        let proto = if v6 { pkt.get(6) } else { pkt.get(9) };
        if ip_len < 20 || proto != Some(&UDP) || pkt.len() < ip_len + UDP_HEADER {
            return Err(RxError::BadSuperPacket);
        }
        let seg = gso_size as usize;
        let payload = pkt.len() - ip_len - UDP_HEADER;
        // Each datagram must fit an IP packet's length fields.
        if seg == 0 || ip_len + UDP_HEADER + seg > u16::MAX as usize {
            return Err(RxError::BadSuperPacket);
        }
        Ok(Super {
            ip_len,
            v6,
            seg,
            payload,
        })
    }

    /// Datagrams in it (an empty payload is one empty datagram).
    pub fn count(&self) -> usize {
        self.payload.div_ceil(self.seg).max(1)
    }

    /// The largest datagram's packet size.
    pub fn max_len(&self) -> usize {
        self.ip_len + UDP_HEADER + self.seg.min(self.payload)
    }

    /// Datagram `i` of `pkt` as a whole IP packet in `out` (at least
    /// `max_len` bytes); its length.
    pub fn write(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> usize {
        let hdrs = self.ip_len + UDP_HEADER;
        let from = hdrs + i * self.seg;
        let data = &pkt[from.min(pkt.len())..(from + self.seg).min(pkt.len())];
        let len = hdrs + data.len();
        out[..hdrs].copy_from_slice(&pkt[..hdrs]);
        out[hdrs..len].copy_from_slice(data);
        let udp_len = (UDP_HEADER + data.len()) as u16;
        if self.v6 {
            out[4..6].copy_from_slice(&udp_len.to_be_bytes());
        } else {
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&out[..self.ip_len]));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let u = self.ip_len;
        out[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[u + 6..u + 8].copy_from_slice(&[0, 0]);
        // RFC 768 / RFC 8200 8.1: the pseudo-header, then header and data.
        let addrs = if self.v6 { &out[8..40] } else { &out[12..20] };
        let pseudo = sum(addrs) + u64::from(UDP) + u64::from(udp_len);
        let mut c = !fold(pseudo + sum(&out[u..len]));
        if c == 0 {
            // Zero means "no checksum": a computed zero is sent as all ones.
            c = 0xffff;
        }
        out[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
        len
    }
}

/// Big-endian 16-bit words of `data` added up (RFC 1071), not folded.
fn sum(data: &[u8]) -> u64 {
    let mut s: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tun::udp::parse_udp;

    /// A super-packet as the kernel hands it: the headers of the first
    /// datagram with the whole length, the checksum left partial.
    fn super_packet(v6: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = if v6 {
            let mut h = vec![0x60, 0, 0, 0, 0, 0, UDP, 64];
            h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            h
        } else {
            vec![
                0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, UDP, 0, 0, 198, 18, 0, 1, 203, 0, 113, 2,
            ]
        };
        p.extend_from_slice(&[0x13, 0x88, 0, 7, 0xff, 0xff, 0x12, 0x34]);
        p.extend_from_slice(payload);
        let total = p.len() as u16;
        if v6 {
            p[4..6].copy_from_slice(&(total - 40).to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&total.to_be_bytes());
        }
        p
    }

    #[test]
    fn cut_into_datagrams_that_parse_with_their_checksums() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
            let pkt = super_packet(v6, &payload);
            let s = Super::parse(&pkt, 1000).unwrap();
            assert_eq!(s.count(), 3);
            let mut out = vec![0u8; s.max_len()];
            let mut got = Vec::new();
            for i in 0..s.count() {
                let n = s.write(&pkt, i, &mut out);
                // parse_udp checks the IP header and the UDP checksum.
                let d = parse_udp(&out[..n]).unwrap_or_else(|e| panic!("v6={v6} {i}: {e:?}"));
                assert_eq!(d.src.port(), 5000);
                assert_eq!(d.dst.port(), 7);
                assert_eq!(d.payload.len(), if i < 2 { 1000 } else { 500 });
                got.extend_from_slice(d.payload);
            }
            assert_eq!(got, payload, "v6={v6}");
        }
    }

    #[test]
    fn nonsense_is_refused_not_cut() {
        let pkt = super_packet(false, &[1; 100]);
        assert!(Super::parse(&pkt, 0).is_err());
        assert!(Super::parse(&pkt[..20], 50).is_err());
        let mut tcp = pkt.clone();
        tcp[9] = 6;
        assert!(Super::parse(&tcp, 50).is_err());
        assert!(Super::parse(&[0x75; 60], 50).is_err());
        assert!(Super::parse(&[], 50).is_err());
        // A payload shorter than one segment: one datagram.
        let s = Super::parse(&pkt, 1000).unwrap();
        assert_eq!(s.count(), 1);
        let mut out = vec![0u8; s.max_len()];
        let n = s.write(&pkt, 0, &mut out);
        assert_eq!(parse_udp(&out[..n]).unwrap().payload, &[1; 100][..]);
    }
}
