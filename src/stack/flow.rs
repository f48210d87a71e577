//! One TCP flow's state shared between the stack task (which alone polls it
//! through the interface) and the relay task (which reads and writes its
//! buffers through `TunStream`). The lock is per flow, so the two contend only
//! over the same connection. The relay moves data between the socket's own
//! rings and the far side's socket directly (`RelayStream`'s in-place reads and
//! writes): no copy of its own in between.

use super::config::StackStats;
use super::ring::{RingMem, RingPool};
use super::seam::{DialFailed, DialFuture, FlowBytes, FlowObserver, Refusal};
use super::wire::{FlowKey, Unreachable};
use crate::relay::{InPlace, RelayStream};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, RecvError, SendError, State};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::UnboundedSender;
use tracing::info;

/// Messages from flow tasks to the stack task.
pub(crate) enum Cmd {
    /// The flow's buffers changed (data queued, window opened, close or
    /// abort requested): poll it for egress.
    Poll(FlowKey, u64),
    /// The dial finished.
    Dialed(FlowKey, u64, Result<(), Refusal>),
    /// A closed flow's ring memory went into an empty pool: arm the sweep
    /// that unmaps it if no flow takes it.
    Pooled,
}

/// A closed flow's mapping with at most this many resident pages is worth
/// keeping for the next flow (a short connection touches one or two).
const POOL_MAX_PAGES: usize = 8;

pub(crate) struct FlowShared {
    pub key: FlowKey,
    pub id: u64,
    pub set: Mutex<SocketSet<'static>>,
    pub handle: SocketHandle,
    /// A `Cmd::Poll` for this flow is in the stack's queue: do not send another.
    pub queued: AtomicBool,
    /// The relay dropped its `TunStream`: the stack reclaims the flow once it
    /// closes, or after a linger time at the latest.
    pub detached: AtomicBool,
    pub cmds: UnboundedSender<Cmd>,
    /// The memory of the socket's rings (always `Some` until drop, where the
    /// socket borrowing it is dropped first and the mapping goes back to
    /// `pool`).
    pub mem: Option<RingMem>,
    pub pool: Arc<RingPool>,
    /// Bytes the relay moved through the rings, both ways.
    pub moved: AtomicU64,
    /// Bytes the relay read out of the receive ring (the application's data).
    pub app_read: AtomicU64,
}

impl Drop for FlowShared {
    fn drop(&mut self) {
        // The socket borrows `mem`: it must be gone before the mapping is
        // reused or unmapped.
        let set = self.set.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(std::mem::replace(set, SocketSet::new(Vec::new())));
        if let Some(mem) = self.mem.take() {
            // Counted, not guessed from the bytes relayed: data the relay
            // never read (or that arrived out of order) touched pages too.
            let small = mem.resident_pages() <= POOL_MAX_PAGES;
            if self.pool.give(mem, small) {
                let _ = self.cmds.send(Cmd::Pooled);
            }
        }
    }
}

impl FlowBytes for FlowShared {
    fn up(&self) -> u64 {
        self.app_read.load(Ordering::Relaxed)
    }

    fn down(&self) -> u64 {
        self.moved.load(Ordering::Relaxed).saturating_sub(self.up())
    }
}

impl FlowShared {
    pub fn lock(&self) -> MutexGuard<'_, SocketSet<'static>> {
        // A panic while holding the lock leaves a socket that is still
        // consistent enough to be closed; do not poison the whole flow.
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the stack to poll this flow, once per batch of changes.
    pub fn kick(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let _ = self.cmds.send(Cmd::Poll(self.key, self.id));
        }
    }
}

/// The TUN side of a relayed flow: bytes the application sent are read from
/// it, bytes written to it go back to the application.
pub struct TunStream {
    pub(crate) shared: Arc<FlowShared>,
    /// We called `close` (FIN queued) or `abort`.
    closed: bool,
}

impl TunStream {
    pub(crate) fn new(shared: Arc<FlowShared>) -> TunStream {
        TunStream {
            shared,
            closed: false,
        }
    }

    pub fn key(&self) -> FlowKey {
        self.shared.key
    }
}

/// The connection has not completed its handshake yet: wait for it.
fn opening(state: State) -> bool {
    matches!(state, State::Listen | State::SynReceived)
}

impl AsyncRead for TunStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = self.shared.clone();
        let mut set = shared.lock();
        let sock = set.get_mut::<tcp::Socket>(shared.handle);
        match sock.recv_slice(buf.initialize_unfilled()) {
            Ok(0) => {
                sock.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                buf.advance(n);
                drop(set);
                shared.moved.fetch_add(n as u64, Ordering::Relaxed);
                shared.app_read.fetch_add(n as u64, Ordering::Relaxed);
                // The window grew: let the stack announce it if it matters.
                shared.kick();
                Poll::Ready(Ok(()))
            }
            Err(RecvError::Finished) => Poll::Ready(Ok(())),
            Err(RecvError::InvalidState) if opening(sock.state()) => {
                sock.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Err(RecvError::InvalidState) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
        }
    }
}

impl AsyncWrite for TunStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = self.shared.clone();
        let mut set = shared.lock();
        let sock = set.get_mut::<tcp::Socket>(shared.handle);
        match sock.send_slice(data) {
            Ok(0) if !data.is_empty() => {
                sock.register_send_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                drop(set);
                shared.moved.fetch_add(n as u64, Ordering::Relaxed);
                shared.kick();
                Poll::Ready(Ok(n))
            }
            Err(SendError::InvalidState) if opening(sock.state()) => {
                sock.register_send_waker(cx.waker());
                Poll::Pending
            }
            Err(SendError::InvalidState) => Poll::Ready(Err(send_error(sock.state()).into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is already queued on the socket; the stack sends it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            let shared = this.shared.clone();
            shared.lock().get_mut::<tcp::Socket>(shared.handle).close();
            shared.kick();
        }
        Poll::Ready(Ok(()))
    }
}

impl RelayStream for TunStream {
    fn reset(&mut self) {
        self.closed = true;
        let shared = self.shared.clone();
        shared.lock().get_mut::<tcp::Socket>(shared.handle).abort();
        shared.kick();
    }

    /// The application's bytes straight out of the receive ring. The taker
    /// writes them to the far side's socket while the flow is locked; TUN mode
    /// runs the stack and every flow task on one thread, so nothing waits for
    /// the lock (on a multi-threaded runtime the stack would wait out that
    /// system call when it polls this flow).
    fn poll_read_in_place(
        &mut self,
        waker: &Waker,
        take: &mut dyn FnMut(&[u8]) -> usize,
    ) -> Option<Poll<io::Result<InPlace>>> {
        let shared = self.shared.clone();
        let mut set = shared.lock();
        let sock = set.get_mut::<tcp::Socket>(shared.handle);
        let r = sock.recv(|data| {
            if data.is_empty() {
                return (0, None);
            }
            let n = take(data).min(data.len());
            (n, Some(n))
        });
        Some(match r {
            Ok(None) => {
                sock.register_recv_waker(waker);
                Poll::Pending
            }
            Ok(Some(n)) => {
                drop(set);
                if n > 0 {
                    shared.moved.fetch_add(n as u64, Ordering::Relaxed);
                    shared.app_read.fetch_add(n as u64, Ordering::Relaxed);
                    // The window grew: let the stack announce it if it matters.
                    shared.kick();
                }
                Poll::Ready(Ok(InPlace::Took(n)))
            }
            Err(RecvError::Finished) => Poll::Ready(Ok(InPlace::Eof)),
            Err(RecvError::InvalidState) if opening(sock.state()) => {
                sock.register_recv_waker(waker);
                Poll::Pending
            }
            Err(RecvError::InvalidState) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
        })
    }

    /// The far side's bytes read straight into the transmit ring.
    fn poll_write_in_place(
        &mut self,
        waker: &Waker,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Option<Poll<io::Result<usize>>> {
        let shared = self.shared.clone();
        let mut set = shared.lock();
        let sock = set.get_mut::<tcp::Socket>(shared.handle);
        let r = sock.send(|room| {
            if room.is_empty() {
                return (0, None);
            }
            let n = fill(room).min(room.len());
            (n, Some(n))
        });
        Some(match r {
            Ok(None) => {
                sock.register_send_waker(waker);
                Poll::Pending
            }
            Ok(Some(n)) => {
                drop(set);
                if n > 0 {
                    shared.moved.fetch_add(n as u64, Ordering::Relaxed);
                    shared.kick();
                }
                Poll::Ready(Ok(n))
            }
            Err(SendError::InvalidState) if opening(sock.state()) => {
                sock.register_send_waker(waker);
                Poll::Pending
            }
            Err(SendError::InvalidState) => Poll::Ready(Err(send_error(sock.state()).into())),
        })
    }
}

/// Why the application's side takes no more data: it reset (the socket is
/// closed) or it is closing.
fn send_error(state: State) -> io::ErrorKind {
    if state == State::Closed {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::BrokenPipe
    }
}

impl Drop for TunStream {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        {
            let mut set = shared.lock();
            let sock = set.get_mut::<tcp::Socket>(shared.handle);
            // The relay ended without closing (idle timeout, panic): end the
            // connection cleanly, and never wait on the application forever.
            sock.close();
        }
        shared.detached.store(true, Ordering::Release);
        shared.kick();
    }
}

/// One flow's life outside the stack task: dial, report, relay, log.
/// `limits`: the connect timeout and the idle timeout; `ctx`: the counters the
/// relay's totals go to, and whoever watches the live flows.
pub(super) async fn flow_task(
    shared: Arc<FlowShared>,
    dial: DialFuture,
    limits: (Duration, Option<Duration>),
    ctx: (Arc<StackStats>, Option<Arc<dyn FlowObserver>>),
) {
    let (connect_timeout, idle) = limits;
    let (stats, observer) = ctx;
    let (key, id) = (shared.key, shared.id);
    let started = std::time::Instant::now();
    let res = match tokio::time::timeout(connect_timeout, dial).await {
        Ok(r) => r,
        // As a proxy that timed out answers: the host did not answer.
        Err(_) => Err(DialFailed::new(
            Refusal::Unreachable(Unreachable::Host),
            "timed out",
        )),
    };
    match res {
        Ok(far) => {
            let _ = shared.cmds.send(Cmd::Dialed(key, id, Ok(())));
            if let Some(o) = &observer {
                o.opened(id, key.src, key.dst, &far.via, shared.clone());
            }
            let tun = TunStream::new(shared);
            let st = crate::relay::relay(tun, far.stream, idle).await;
            // Once per flow, and with no await before the observer hears
            // of the end: a scrape sees the bytes in the totals or in the
            // live flow, never in both nor in neither.
            stats.bytes_up.fetch_add(st.a_to_b, Ordering::Relaxed);
            stats.bytes_down.fetch_add(st.b_to_a, Ordering::Relaxed);
            if let Some(o) = &observer {
                o.closed(id);
            }
            info!(
                src = %key.src, dst = %key.dst, name = far.note.name.as_deref(),
                via = %far.via, rule = far.note.rule.as_deref(),
                up = st.a_to_b, down = st.b_to_a,
                ms = started.elapsed().as_millis() as u64,
                "tcp flow {}", st.outcome.describe("app", "proxy")
            );
        }
        Err(e) => {
            let refusal = e.answer;
            let _ = shared.cmds.send(Cmd::Dialed(key, id, Err(refusal)));
            let answer = match refusal {
                Refusal::Reset => "RST".to_string(),
                Refusal::Unreachable(u) => format!("ICMP {u:?} unreachable"),
            };
            info!(
                src = %key.src, dst = %key.dst, name = e.note.name.as_deref(),
                rule = e.note.rule.as_deref(),
                ms = started.elapsed().as_millis() as u64,
                "tcp flow refused: {e} (answered with {answer})"
            );
        }
    }
}
