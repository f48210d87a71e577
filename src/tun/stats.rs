//! Every counter of TUN mode, reachable from one place: the stacks', the UDP
//! tables' (one of each per queue) and the device's.

use super::udp::UdpStats;
use crate::stack::StackStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::info;

#[derive(Clone)]
pub struct Stats {
    /// One per queue, the first queue's first.
    pub stacks: Vec<Arc<StackStats>>,
    pub udp: Vec<Arc<UdpStats>>,
    /// Packets the device could not take (its queue was full).
    pub device_write_drops: Arc<AtomicU64>,
    /// Malformed reads from the device (bad virtio-net header).
    pub device_malformed: Arc<AtomicU64>,
    /// UDP segmentation super-packets read from the device and cut.
    pub device_super_packets: Arc<AtomicU64>,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Stats {
    /// A stack counter summed over the queues.
    pub fn stack(&self, f: impl Fn(&StackStats) -> &AtomicU64) -> u64 {
        self.stacks.iter().map(|s| get(f(s))).sum()
    }

    /// A UDP table counter summed over the queues.
    pub fn udp(&self, f: impl Fn(&UdpStats) -> &AtomicU64) -> u64 {
        self.udp.iter().map(|s| get(f(s))).sum()
    }

    /// The line logged when TUN mode stops. (The UDP tables log their own
    /// totals when they go.)
    pub fn log_totals(&self) {
        info!(
            tcp_opened = self.stack(|s| &s.tcp_opened),
            tcp_refused = self.stack(|s| &s.tcp_refused),
            udp_packets = self.stack(|s| &s.udp_packets),
            other_dropped = self.stack(|s| &s.other_dropped),
            malformed = self.stack(|s| &s.malformed) + get(&self.device_malformed),
            write_drops = get(&self.device_write_drops),
            queues = self.stacks.len(),
            tcp_by_queue = ?self
                .stacks
                .iter()
                .map(|s| get(&s.tcp_opened))
                .collect::<Vec<_>>(),
            "stopped"
        );
    }
}
