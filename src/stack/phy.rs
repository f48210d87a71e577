//! Packet I/O of the stack: where it reads IP packets from and writes them
//! to (the TUN device in `crate::tun`, or the in-memory pair below in tests
//! and fuzzing).

use super::wire;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Where the stack writes IP packets (towards the applications). Sending never
/// blocks: a packet that does not fit is dropped (TCP retransmits), so one slow
/// consumer cannot stall the stack.
pub trait PacketSink: Send + Sync + 'static {
    fn send(&self, packet: &[u8]);

    /// Send a TCP packet from the stack when segment offload is on (see
    /// `StackConfig::segment_offload`): its TCP checksum is not filled in
    /// and its payload may be larger than `mss`, the largest segment the
    /// application accepts. A sink with offload has the kernel finish the
    /// checksum and cut the segments; this default computes the checksum in
    /// software and sends the packet whole.
    fn send_tcp(&self, packet: &mut [u8], mss: u16) {
        let _ = mss;
        wire::fill_tcp_checksum(packet);
        self.send(packet)
    }
}

/// Where the stack reads IP packets from (the applications).
pub trait PacketSource: Send + 'static {
    /// Wait until at least one packet is available, then read as many as are
    /// ready and fit into `batch` (which the caller has cleared).
    fn poll_recv(&mut self, cx: &mut Context<'_>, batch: &mut PacketBatch) -> Poll<io::Result<()>>;
}

/// A set of received packets packed one after another into one buffer, reused
/// for every read: no allocation per packet. Each read gets a full `slot`
/// (the MTU) of room, but only the bytes it returned stay taken, so a burst of
/// small packets (ACKs) fills the batch by count while a large MTU costs a
/// bounded buffer rather than `count` MTUs.
pub struct PacketBatch {
    buf: Vec<u8>,
    slot: usize,
    count: usize,
    /// Where the next packet goes.
    end: usize,
    /// (start, len) of each packet.
    pkts: Vec<(usize, usize)>,
}

impl PacketBatch {
    /// Room for at least `count` packets of `slot` bytes, but at most
    /// `MAX_BYTES` unless four full-size packets need more: at MTU 65000 a
    /// batch of 64 full slots would be 4 MB of buffer.
    pub fn new(slot: usize, count: usize) -> PacketBatch {
        const MAX_BYTES: usize = 256 * 1024;
        let slot = slot.max(1);
        let count = count.max(1);
        let bytes = (slot * count).min(MAX_BYTES.max(slot * 4));
        PacketBatch {
            buf: vec![0; bytes.max(slot)],
            slot,
            count,
            end: 0,
            pkts: Vec::with_capacity(count),
        }
    }
    pub fn clear(&mut self) {
        self.pkts.clear();
        self.end = 0;
    }
    pub fn len(&self) -> usize {
        self.pkts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }
    pub fn is_full(&self) -> bool {
        self.pkts.len() >= self.count || self.end + self.slot > self.buf.len()
    }
    /// Room for the next packet (a whole slot); `None` when full.
    pub fn slot_mut(&mut self) -> Option<&mut [u8]> {
        if self.pkts.len() >= self.count {
            return None;
        }
        self.buf.get_mut(self.end..self.end + self.slot)
    }
    /// Keep the first `len` bytes of the room `slot_mut` returned.
    pub fn commit(&mut self, len: usize) {
        self.commit_after(0, len);
    }
    /// Keep bytes `skip..len` of the room `slot_mut` returned as the packet
    /// (a device header before it stays in the buffer, unseen).
    pub fn commit_after(&mut self, skip: usize, len: usize) {
        let len = len.min(self.slot);
        let skip = skip.min(len);
        self.pkts.push((self.end + skip, len - skip));
        self.end += len;
    }
    pub fn get(&self, i: usize) -> &[u8] {
        let (at, len) = self.pkts[i];
        &self.buf[at..at + len]
    }
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let (at, len) = self.pkts[i];
        &mut self.buf[at..at + len]
    }
}

// ---------------------------------------------------------------------------
// In memory: drive the stack without a device.

pub struct MemSource {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl PacketSource for MemSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>, batch: &mut PacketBatch) -> Poll<io::Result<()>> {
        let mut got = false;
        while let Some(slot) = batch.slot_mut() {
            let p = if got {
                match self.rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => break,
                }
            } else {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(p)) => p,
                    // The test dropped its sender: the device is gone.
                    Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                    Poll::Pending => return Poll::Pending,
                }
            };
            let n = p.len().min(slot.len());
            slot[..n].copy_from_slice(&p[..n]);
            batch.commit(n);
            got = true;
        }
        if got {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// The test's end that injects packets.
pub type Injector = mpsc::UnboundedSender<Vec<u8>>;
/// The test's end that collects what the stack wrote.
pub type Collector = mpsc::UnboundedReceiver<Vec<u8>>;

pub struct MemSink {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// The MSS of every TCP packet handed over with offload (`u16::MAX`:
    /// not to be cut).
    pub segmented: std::sync::Mutex<Vec<u16>>,
}

impl PacketSink for MemSink {
    fn send(&self, packet: &[u8]) {
        let _ = self.tx.send(packet.to_vec());
    }

    /// Records the MSS and finishes the checksum as the kernel would; the
    /// packet goes to the collector uncut.
    fn send_tcp(&self, packet: &mut [u8], mss: u16) {
        if let Ok(mut v) = self.segmented.lock() {
            v.push(mss);
        }
        super::wire::fill_tcp_checksum(packet);
        self.send(packet)
    }
}

/// A source and a sink for the stack, and the test's ends of them: the
/// sender injects packets "from applications", the receiver gets what the
/// stack writes back.
pub fn pair() -> (MemSource, Arc<MemSink>, Injector, Collector) {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    (
        MemSource { rx: in_rx },
        Arc::new(MemSink {
            tx: out_tx,
            segmented: std::sync::Mutex::new(Vec::new()),
        }),
        in_tx,
        out_rx,
    )
}
