//! The threads that serve clients, and their listeners. Each thread runs a
//! current-thread runtime with a listener of its own on every address
//! (`SO_REUSEPORT`; the kernel spreads new connections over them), so a
//! session is accepted, handshaken, dialed and relayed on one thread: with a
//! shared multi-thread runtime the accepted connection's task, and its
//! outbound connect's completion, were often woken on the other worker, a
//! futex wake-up and a context switch per connection. Everything else
//! (configuration, budgets, counters, the stop signal) stays shared.

use super::reload::Current;
use super::Gate;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::warn;

/// As many threads as tokio's multi-thread runtime would start:
/// `TOKIO_WORKER_THREADS`, else one per CPU.
pub(super) fn count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn socket(addr: SocketAddr, shared: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if shared {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 can then both be listened on, each explicitly.
        s.set_only_v6(true)?;
    }
    Ok(s)
}

pub(super) fn listen(addr: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    let s = socket(addr, shared)?;
    s.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux): set
    // once here, not with a syscall per connection.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    // Up to net.core.somaxconn (4096 by default): a burst of connections
    // waits in the kernel rather than having its SYNs dropped.
    s.listen(4096)?;
    defer_accept(&s);
    Ok(s.into())
}

/// A SOCKS client speaks first: with TCP_DEFER_ACCEPT the kernel queues a
/// connection for `accept` once its first bytes are there (or after a
/// second of silence, the shortest it offers), so the server wakes once per
/// new client, not once to accept and again for the greeting. Best effort.
fn defer_accept(s: &Socket) {
    let secs: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket, with a c_int option value and
    // its exact length.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `n` listeners on `addr`, one per thread, on one port.
pub(super) fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let shared = n > 1;
    if shared && addr.port() != 0 {
        // With SO_REUSEPORT a second server of this user on the same port
        // would silently take a share of the connections; a plain bind fails
        // on a port in use, as it did before there were several listeners.
        socket(addr, false)?.bind(&addr.into())?;
    }
    let first = listen(addr, shared)?;
    // Port 0: the others join the port the first one got.
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listen(addr, true)?);
    }
    Ok(all)
}

/// Start thread `i` serving `listeners` until the stop signal, then until
/// its sessions have ended (2 s at most: each logs its line on the way out).
/// The receiver completes when the thread is done.
pub(super) fn spawn(
    i: usize,
    listeners: Vec<std::net::TcpListener>,
    current: Current,
    gate: Arc<Gate>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, finished) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("server-{i}"))
        .spawn(move || {
            rt.block_on(serve(listeners, current, gate));
            // Do not wait for name lookups still running on the blocking pool.
            rt.shutdown_timeout(Duration::from_millis(500));
            drop(done);
        })?;
    Ok(finished)
}

async fn serve(listeners: Vec<std::net::TcpListener>, current: Current, gate: Arc<Gate>) {
    let stop = current.load().stop.clone();
    let mut loops = Vec::new();
    for l in listeners {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => loops.push(tokio::spawn(super::accept_loop(
                l,
                current.clone(),
                gate.clone(),
            ))),
            // The other threads' listeners on this address still accept.
            Err(e) => warn!("a listener could not join its thread's runtime: {e}"),
        }
    }
    stop.wait().await;
    for l in loops {
        l.abort();
    }
    // Sessions run only while their thread drives them.
    let mut live = gate.live.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(2), live.wait_for(|o| o.now == 0)).await;
}
