//! Every counter of TUN mode, reachable from one place: the stack's, the UDP
//! table's and the device's.

use super::udp::UdpStats;
use crate::stack::StackStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::info;

#[derive(Clone)]
pub struct Stats {
    pub stack: Arc<StackStats>,
    pub udp: Arc<UdpStats>,
    /// Packets the device could not take (its queue was full).
    pub device_write_drops: Arc<AtomicU64>,
    /// Malformed reads from the device (bad virtio-net header).
    pub device_malformed: Arc<AtomicU64>,
}

impl Stats {
    /// The line logged when TUN mode stops. (The UDP table logs its own
    /// totals when it goes.)
    pub fn log_totals(&self) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let st = &self.stack;
        info!(
            tcp_opened = get(&st.tcp_opened),
            tcp_refused = get(&st.tcp_refused),
            udp_packets = get(&st.udp_packets),
            other_dropped = get(&st.other_dropped),
            malformed = get(&st.malformed) + get(&self.device_malformed),
            write_drops = get(&self.device_write_drops),
            "stopped"
        );
    }
}
