//! The stack task's own way into a live association. A datagram to a
//! destination its association has already sent to is written to the
//! association's socket by the stack task itself, as it comes off the TUN:
//! no copy into a queue, no wake-up of the association's task, no second
//! trip through the runtime (the task hop was most of what a UDP round trip
//! through sockstun cost beyond the socks-only path). What the task must see
//! (a new destination, the association being set up, a socket that is full)
//! still goes through its queue.

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
    dests: HashMap<SocketAddr, Prefix>,
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
    pub(super) fn learn(&mut self, dst: SocketAddr, prefix: &Prefix) {
        if self.dests.get(&dst) == Some(prefix) {
            return;
        }
        if self.dests.len() >= MAX_FAST_DESTS {
            self.dests.clear();
        }
        self.dests.insert(dst, prefix.clone());
    }

    /// Send `payload` to `dst` now, without waiting: None when `dst` is not
    /// known here, `WouldBlock` when the socket is full (the caller queues
    /// it for the task then, which waits for room).
    pub(super) fn try_send(&self, dst: SocketAddr, payload: &[u8]) -> Option<io::Result<usize>> {
        let p = self.dests.get(&dst)?;
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
