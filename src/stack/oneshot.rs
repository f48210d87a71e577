//! The smoltcp `Device` the stack hands to `Interface::poll_*`: it yields at
//! most the one packet the demultiplexer chose for this flow, and transmits
//! straight into the packet sink from one reusable buffer (no allocation per
//! packet).

use super::phy::PacketSink;
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

pub(crate) struct OneShot<'a> {
    pub rx: Option<&'a [u8]>,
    pub sink: &'a dyn PacketSink,
    pub txbuf: &'a mut Vec<u8>,
    pub mtu: usize,
    /// The flow's MSS when the sink cuts larger segments (segment offload).
    pub gso: Option<u16>,
    /// With segment offload: the device MTU, to which the MSS of our SYNs is
    /// lowered (smoltcp's own MTU is then 64 KB). Also what says offload is
    /// on: smoltcp then leaves TCP checksums to the sink.
    pub syn_mtu: Option<usize>,
}

pub(crate) struct Rx<'a>(&'a [u8]);

pub(crate) struct Tx<'a> {
    sink: &'a dyn PacketSink,
    buf: &'a mut Vec<u8>,
    gso: Option<u16>,
    syn_mtu: Option<usize>,
}

impl smoltcp::phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let r = f(&mut self.buf[..len]);
        let pkt = &mut self.buf[..len];
        match self.syn_mtu {
            // With offload every TCP packet goes out without its checksum;
            // only an offload flow's are cut (`gso`).
            Some(mtu) if is_tcp(pkt) => {
                super::wire::clamp_syn_mss(pkt, mtu);
                self.sink.send_tcp(pkt, self.gso.unwrap_or(u16::MAX));
            }
            _ => self.sink.send(pkt),
        }
        r
    }
}

impl Device for OneShot<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let pkt = self.rx.take()?;
        Some((
            Rx(pkt),
            Tx {
                sink: self.sink,
                buf: self.txbuf,
                gso: self.gso,
                syn_mtu: self.syn_mtu,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx {
            sink: self.sink,
            buf: self.txbuf,
            gso: self.gso,
            syn_mtu: self.syn_mtu,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // What the kernel wrote to the TUN is its own: verifying checksums it
        // computed is pure cost, and with TUN offload TCP checksums arrive
        // unfinished (src/tun/vnet.rs) and are not checked at all. Outgoing
        // ones must be right.
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        // With offload the sink has the kernel finish TCP checksums
        // (`PacketSink::send_tcp`): summing a 64 KB segment here was an
        // eighth of sockstun's time in a download.
        ck.tcp = if self.syn_mtu.is_some() {
            Checksum::None
        } else {
            Checksum::Tx
        };
        ck.udp = Checksum::Tx;
        ck.icmpv4 = Checksum::Tx;
        ck.icmpv6 = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

/// An IPv4 packet or an IPv6 packet without extension headers carrying TCP
/// (all smoltcp emits here).
fn is_tcp(pkt: &[u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => pkt.get(9) == Some(&6),
        Some(6) => pkt.get(6) == Some(&6),
        _ => false,
    }
}
