//! With several queues, a UDP endpoint's datagrams are handled by one queue's
//! UDP table, whatever queue they arrive on. The kernel picks a queue by a
//! hash of the whole flow (both addresses and ports), so an application that
//! sends from one port to two destinations would reach two tables and get
//! two associations, two public ports at the proxy: a full-cone NAT would
//! look symmetric to STUN and ICE. Each endpoint has an owner queue (a hash
//! of the source alone); a datagram that arrives elsewhere is passed to its
//! owner. The owner writes the replies on its own queue, and the kernel then
//! steers the flow's next datagrams there (it remembers the queue a flow's
//! packets were written on), so in a steady exchange few datagrams cross.

use super::udp::UdpRelay;
use crate::stack::UdpHandler;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// Datagrams (whole IP packets) handed to a queue by the others.
pub type Inbox = mpsc::UnboundedReceiver<Vec<u8>>;

/// One inbox per queue, and the senders every queue uses; none with one
/// queue (it owns every endpoint).
pub fn inboxes(n: usize) -> (Vec<mpsc::UnboundedSender<Vec<u8>>>, Vec<Inbox>) {
    match n {
        0 | 1 => (Vec::new(), Vec::new()),
        n => (0..n).map(|_| mpsc::unbounded_channel()).unzip(),
    }
}

/// Queue `me`'s UDP handler: its own table for the endpoints it owns.
pub struct Sharded {
    pub me: usize,
    pub owners: Vec<mpsc::UnboundedSender<Vec<u8>>>,
    pub local: UdpRelay,
}

/// The queue that owns source endpoint `src` (the same answer on every
/// queue: a fixed hash).
pub fn owner(src: SocketAddr, queues: usize) -> usize {
    let h = rustc_hash::FxBuildHasher.hash_one(src);
    // The high bits: FxHash mixes into them.
    ((h >> 32) as usize) % queues.max(1)
}

/// The source endpoint of an IPv4 or IPv6 UDP packet, without checking the
/// rest (the owner's table does).
fn source(pkt: &[u8]) -> Option<SocketAddr> {
    let (ip, l4): (std::net::IpAddr, usize) = match pkt.first()? >> 4 {
        4 => {
            let a: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
            (a.into(), ((pkt[0] & 0x0f) as usize) * 4)
        }
        6 => {
            let a: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
            (a.into(), 40)
        }
        _ => return None,
    };
    let p = pkt.get(l4..l4 + 2)?;
    Some(SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]])))
}

impl UdpHandler for Sharded {
    fn on_packet(&self, packet: &[u8]) {
        let to = source(packet).map_or(self.me, |s| owner(s, self.owners.len()));
        if to == self.me {
            return self.local.handle_packet(packet);
        }
        // The owner stops only when all queues do: a failed send is the end.
        let _ = self.owners[to].send(packet.to_vec());
    }
}

/// Hand what the other queues pass to this queue's table, until they stop.
pub async fn serve_inbox(mut inbox: Inbox, local: UdpRelay) {
    while let Some(pkt) = inbox.recv().await {
        local.handle_packet(&pkt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_source_alone() {
        let a: SocketAddr = "198.18.0.1:5000".parse().unwrap();
        for n in 1..8 {
            assert!(owner(a, n) < n);
        }
        // Spread: 1000 ports over 4 queues, none left idle or overfull.
        let mut per = [0usize; 4];
        for p in 0..1000u16 {
            per[owner(SocketAddr::new(a.ip(), 10000 + p), 4)] += 1;
        }
        assert!(per.iter().all(|&c| (150..350).contains(&c)), "{per:?}");
    }

    #[test]
    fn source_of_v4_and_v6() {
        let v4 = crate::tun::udp::build_udp(
            "198.18.0.1:5000".parse().unwrap(),
            "203.0.113.2:7".parse().unwrap(),
            b"x",
            1500,
        )
        .unwrap();
        assert_eq!(source(&v4), Some("198.18.0.1:5000".parse().unwrap()));
        let v6 = crate::tun::udp::build_udp(
            "[fc00::1]:6000".parse().unwrap(),
            "[2001:db8:2::2]:7".parse().unwrap(),
            b"x",
            1500,
        )
        .unwrap();
        assert_eq!(source(&v6), Some("[fc00::1]:6000".parse().unwrap()));
        assert_eq!(source(&[0x45, 0, 0]), None);
        assert_eq!(source(&[]), None);
    }
}
