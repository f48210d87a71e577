//! Packet I/O in memory: drive the stack from tests without a device.

use super::{PacketBatch, PacketSink, PacketSource};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

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
