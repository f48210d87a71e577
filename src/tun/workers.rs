//! One stack per queue of the device. The first queue is served on the main
//! thread, beside the admin endpoint, the health probes and the reloads;
//! every other queue gets a thread of its own with a current-thread runtime,
//! a stack and a UDP table. The kernel keeps a flow on one queue (it picks
//! the queue by a symmetric hash of the flow, and remembers the queue our
//! answers were written to), so a flow never needs another queue's table.
//!
//! Shared by all, none of it locked per packet: the upstreams and their
//! pools and health (atomics), the rules (one atomic load), the DNS service
//! and its fake pool (locked per name or new flow), the TCP flow budget (one
//! atomic per flow), the flows' observer.

use super::dialer::FlowDialer;
use super::queue::QueueFile;
use super::route::Router;
use super::udp::{UdpConfig, UdpRelay};
use super::udp_shard::{serve_inbox, Inbox, Sharded};
use crate::dns::Dns;
use crate::stack::{FlowObserver, PacketSink, Stack, StackConfig, StackStats, UdpHandler};
use crate::upstream::Upstream;
use anyhow::Context as _;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What each queue's stack is built from.
pub(super) struct Common {
    pub stack: StackConfig,
    /// Per queue: `max_flows` is the device's share for one queue.
    pub udp: UdpConfig,
    pub dns: Arc<Dns>,
    pub upstream: Arc<dyn Upstream>,
    pub router: Arc<Router>,
    pub dialer: Arc<FlowDialer>,
    pub observer: Option<Arc<dyn FlowObserver>>,
    /// Each queue's inbox of datagrams whose source endpoint it owns
    /// (`udp_shard`); empty with one queue.
    pub owners: Vec<mpsc::UnboundedSender<Vec<u8>>>,
}

/// A queue's counters and UDP table, for the admin endpoint and the totals.
pub(super) struct Parts {
    pub stack: Arc<StackStats>,
    pub udp: UdpRelay,
}

/// The stack and UDP table of queue `me`, answering through `sink`, taking
/// the datagrams the other queues pass from `inbox` (with several queues).
/// Called on the runtime that will run them (the UDP table spawns onto it).
pub(super) fn build(
    c: &Common,
    sink: Arc<dyn PacketSink>,
    me: usize,
    inbox: Option<Inbox>,
) -> (Stack, Parts) {
    let udp = UdpRelay::new(
        c.udp.clone(),
        Some(c.dns.clone()),
        c.upstream.clone(),
        Some(c.router.clone()),
        sink.clone(),
    );
    let handler: Arc<dyn UdpHandler> = match inbox {
        Some(inbox) => {
            tokio::spawn(serve_inbox(inbox, udp.clone()));
            Arc::new(Sharded {
                me,
                owners: c.owners.clone(),
                local: udp.clone(),
            })
        }
        None => Arc::new(udp.clone()),
    };
    let mut stack = Stack::new(c.stack.clone(), c.dialer.clone(), handler, sink);
    if let Some(o) = &c.observer {
        stack.observe(o.clone());
    }
    let parts = Parts {
        stack: stack.stats(),
        udp,
    };
    (stack, parts)
}

/// Tells the main thread, when dropped, that queue `.0` stopped.
struct Ended(usize, mpsc::UnboundedSender<usize>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// A queue served by a thread of its own.
pub(super) struct Worker {
    index: usize,
    thread: JoinHandle<io::Result<()>>,
}

/// Serve queue `index` on a new thread until `stop` turns true (or its
/// sender goes); `ended` is told when its stack stops, for whatever reason.
/// Returns once the queue's parts are built.
pub(super) fn spawn(
    index: usize,
    queue: QueueFile,
    common: Arc<Common>,
    inbox: Option<Inbox>,
    mut stop: watch::Receiver<bool>,
    ended: mpsc::UnboundedSender<usize>,
) -> anyhow::Result<(Worker, Parts)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Parts>>(1);
    let thread = std::thread::Builder::new()
        .name(format!("sockstun-q{index}"))
        .spawn(move || {
            // Told when the stack stops, also by a panic: the main thread then
            // stops every queue, rather than leave the kernel hashing flows to
            // a queue nobody reads.
            let _ended = Ended(index, ended);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            let res = rt.block_on(async {
                let (source, sink) = match queue.into_io() {
                    Ok(io) => io,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(());
                    }
                };
                let (stack, parts) = build(&common, sink, index, inbox);
                let _ = tx.send(Ok(parts));
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                stack.run(source, shutdown).await
            });
            rt.shutdown_timeout(Duration::from_millis(500));
            res
        })
        .with_context(|| format!("starting the thread of queue {index}"))?;
    let parts = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the thread of queue {index} ended before it started"))?
        .with_context(|| format!("starting queue {index}"))?;
    Ok((Worker { index, thread }, parts))
}

impl Worker {
    /// Wait for the thread (told to stop before); the error its stack
    /// stopped with, if any.
    pub fn join(self) -> anyhow::Result<()> {
        match self.thread.join() {
            Ok(r) => r.with_context(|| format!("reading queue {} of the TUN", self.index)),
            Err(_) => anyhow::bail!("the thread of queue {} panicked", self.index),
        }
    }
}
