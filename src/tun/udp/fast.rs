//! The stack task's own way into a live association. A datagram to a
//! destination its association has already sent to is written to the
//! association's socket by the stack task itself, as it comes off the TUN:
//! no copy into a queue, no wake-up of the association's task, no second
//! trip through the runtime (the task hop was most of what a UDP round trip
//! through sockstun cost beyond the socks-only path). What the task must see
//! (a new destination, the association being set up, a socket that is full)
//! still goes through its queue.

use crate::socks::TargetAddr;
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Destinations one association keeps ready; when full they are forgotten
/// at once and learnt again from the task (a fan-out to thousands of
/// remotes goes through the task, as before).
const MAX_FAST_DESTS: usize = 1024;

/// What goes before a destination's payload, and where it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Prefix {
    /// The RFC 1928 §7 header (empty on a direct association).
    pub(super) header: Box<[u8]>,
    /// None: the socket's connected peer (the proxy's relay).
    pub(super) to: Option<SocketAddr>,
}

/// A live association as the stack task sees it: its socket and the
/// destinations (as the application addressed them) it may send to alone.
pub(super) struct FastPath {
    socket: Arc<UdpSocket>,
    /// With what each destination stood for when learnt: a fake address's
    /// name may change once the address is recycled, and its prefix with it.
    dests: HashMap<SocketAddr, (TargetAddr, Prefix)>,
}

impl FastPath {
    pub(super) fn new(socket: Arc<UdpSocket>) -> FastPath {
        FastPath {
            socket,
            dests: HashMap::new(),
        }
    }

    /// The association's task sent to `dst` with `prefix`: the stack task
    /// may do the same from now on.
    pub(super) fn learn(&mut self, dst: SocketAddr, target: &TargetAddr, prefix: &Prefix) {
        if self
            .dests
            .get(&dst)
            .is_some_and(|(t, p)| t == target && p == prefix)
        {
            return;
        }
        if self.dests.len() >= MAX_FAST_DESTS {
            self.dests.clear();
        }
        self.dests.insert(dst, (target.clone(), prefix.clone()));
    }

    /// Send `payload` to `dst` now, without waiting: None when `dst` is not
    /// known here, `WouldBlock` when the socket is full (the caller queues
    /// it for the task then, which waits for room).
    pub(super) fn try_send(
        &self,
        dst: SocketAddr,
        target: &TargetAddr,
        payload: &[u8],
    ) -> Option<io::Result<usize>> {
        let (t, p) = self.dests.get(&dst)?;
        if t != target {
            // The task learns the new one from this datagram.
            return None;
        }
        Some(try_send_parts(&self.socket, p, payload))
    }
}

fn send_parts(socket: &UdpSocket, p: &Prefix, payload: &[u8]) -> io::Result<usize> {
    match p.to {
        Some(to) if p.header.is_empty() => {
            socket2::SockRef::from(socket).send_to(payload, &to.into())
        }
        Some(to) => socket2::SockRef::from(socket).send_to_vectored(
            &[IoSlice::new(&p.header), IoSlice::new(payload)],
            &to.into(),
        ),
        // Header and payload in one datagram, the payload sent from where
        // it lies (the TUN's read buffer, or the queued datagram).
        None => socket2::SockRef::from(socket)
            .send_vectored(&[IoSlice::new(&p.header), IoSlice::new(payload)]),
    }
}

/// One attempt, now (readiness kept right for tokio: a full socket clears it).
pub(super) fn try_send_parts(socket: &UdpSocket, p: &Prefix, payload: &[u8]) -> io::Result<usize> {
    socket.try_io(Interest::WRITABLE, || send_parts(socket, p, payload))
}

/// Waits for room in the socket.
pub(super) async fn send_parts_async(
    socket: &UdpSocket,
    p: &Prefix,
    payload: &[u8],
) -> io::Result<usize> {
    socket
        .async_io(Interest::WRITABLE, || send_parts(socket, p, payload))
        .await
}

#[cfg(test)]
mod name_tests {
    use super::*;

    /// A destination learnt for one name is not sent to for another (a fake
    /// address recycled to a new name): the task takes it and learns again.
    #[tokio::test]
    async fn a_destination_is_sent_to_only_for_the_target_it_was_learnt_for() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(peer.local_addr().unwrap()).await.unwrap();
        let mut f = FastPath::new(Arc::new(s));
        let dst: SocketAddr = "198.19.0.1:443".parse().unwrap();
        let old = TargetAddr::Domain("old.example".into(), 443);
        let new = TargetAddr::Domain("new.example".into(), 443);
        let prefix = Prefix {
            header: Box::new([0, 0, 0]),
            to: None,
        };
        f.learn(dst, &old, &prefix);
        assert!(
            f.try_send(dst, &new, b"x").is_none(),
            "sent for another name"
        );
        assert!(
            f.try_send(dst, &old, b"x").is_some(),
            "not sent for its own name"
        );
        f.learn(dst, &new, &prefix);
        assert!(f.try_send(dst, &old, b"x").is_none());
    }
}
