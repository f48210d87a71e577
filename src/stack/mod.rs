//! The userspace TCP/IP stack of TUN mode: smoltcp behind a demultiplexer.
//!
//! # Data path
//! A [`PacketSource`] (the TUN device, or memory in tests) yields batches of IP
//! packets. Each one is classified by its headers ([`wire::classify`]):
//! - TCP: looked up by its 4-tuple ([`FlowKey`]). Every flow owns a one-socket
//!   `SocketSet`; the single shared smoltcp `Interface` is polled with just that
//!   set and a device that yields just that packet, so the cost of a packet does
//!   not depend on how many flows are open (smoltcp walks every socket of the set
//!   it is given). A SYN for an unknown tuple creates the flow: a listening socket
//!   with the SYN-ACK held back (`pause_synack`) while the [`Dialer`] connects
//!   through the proxy; then the handshake completes, or the SYN is answered with
//!   a RST (refused) or an ICMP/ICMPv6 unreachable (net/host unreachable, not
//!   allowed). Other packets for unknown tuples get smoltcp's RST.
//! - UDP: handed, raw, to the [`UdpHandler`]; it answers through the
//!   [`Arc<dyn PacketSink>`] (a cloneable [`PacketSink`]).
//! - Anything else (ICMP echo included: answering pings for every address would
//!   claim reachability the proxy cannot vouch for) is dropped and counted.
//!
//! # Threading
//! One task (the "stack task") owns the `Interface`, the flow table and the timer
//! queue, and is the only one that polls smoltcp. Each flow's socket sits behind
//! its own mutex, shared with the flow's relay task through a [`TunStream`], which
//! reads and writes the socket's ring buffers directly and then asks the stack
//! task (once, deduplicated) to poll that flow. The stack task sleeps until a
//! packet, a request, or the earliest smoltcp `poll_at` of any flow.
//!
//! # Seams
//! The stack knows IP and TCP, not proxies or DNS; whoever builds it (TUN
//! mode) plugs in:
//! - [`PacketSource`] / [`PacketSink`] ([`phy`]): where packets come from and
//!   go to (the device, or memory in tests); a sink is shared, from any thread.
//! - [`Dialer`]: how a new TCP flow reaches its destination, and the
//!   [`Refusal`] the application gets when it cannot.
//! - [`UdpHandler`]: receives every inbound UDP packet (whole IPv4/IPv6 packet).

mod config;
mod engine;
pub mod flow;
mod oneshot;
pub mod phy;
mod reclaim;
pub mod ring;
mod seam;
pub mod wire;

pub use config::{StackConfig, StackShare, StackStats};
pub use flow::TunStream;
pub use phy::{PacketBatch, PacketSink, PacketSource};
pub use seam::{
    DialFailed, DialFuture, Dialed, Dialer, FlowBytes, FlowNote, FlowObserver, Refusal, UdpHandler,
};
pub use wire::{FlowKey, Unreachable};

use config::bump;
use engine::Engine;
use flow::Cmd;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The stack: build with [`Stack::new`], then [`Stack::run`] it on a tokio
/// runtime.
pub struct Stack {
    cfg: StackConfig,
    dialer: Arc<dyn Dialer>,
    udp: Arc<dyn UdpHandler>,
    sink: Arc<dyn PacketSink>,
    stats: Arc<StackStats>,
    observer: Option<Arc<dyn FlowObserver>>,
}

impl Stack {
    pub fn new(
        cfg: StackConfig,
        dialer: Arc<dyn Dialer>,
        udp: Arc<dyn UdpHandler>,
        sink: Arc<dyn PacketSink>,
    ) -> Stack {
        Stack {
            cfg,
            dialer,
            udp,
            sink,
            stats: Arc::new(StackStats::default()),
            observer: None,
        }
    }

    /// Tell `observer` of every flow that starts relaying and ends (a live
    /// view; without one the flows tell no one).
    pub fn observe(&mut self, observer: Arc<dyn FlowObserver>) {
        self.observer = Some(observer);
    }

    pub fn stats(&self) -> Arc<StackStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` completes or the source fails. On shutdown every
    /// open flow is reset, so applications learn at once.
    pub async fn run<S: PacketSource>(
        self,
        mut source: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
        let Stack {
            cfg,
            dialer,
            udp,
            sink,
            stats,
            observer,
        } = self;
        let mut eng = Engine::new(cfg, dialer, udp, sink, stats, cmd_tx);
        eng.observer = observer;
        let slot = eng.cfg.read_slot.unwrap_or(0).max(eng.cfg.mtu).max(1280);
        let mut batch = PacketBatch::new(slot, eng.cfg.batch.max(1));
        let epoch = tokio::time::Instant::now();
        eng.epoch = epoch.into_std();
        tokio::pin!(shutdown);
        // One timer, re-armed only when the earliest deadline moves.
        let sleep = tokio::time::sleep_until(epoch);
        tokio::pin!(sleep);
        let mut armed: Option<i64> = None;
        enum Ev {
            Stop,
            Packets(io::Result<()>),
            Cmd(Option<Cmd>),
            Timer,
        }
        loop {
            let next = eng.timers.keys().next().map(|(t, _)| *t);
            let next = match (next, eng.sweep_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(t) = next {
                if armed != Some(t) {
                    sleep
                        .as_mut()
                        .reset(epoch + Duration::from_micros(t.max(0) as u64));
                    armed = Some(t);
                }
            }
            batch.clear();
            let ev = tokio::select! {
                _ = &mut shutdown => Ev::Stop,
                r = std::future::poll_fn(|cx| source.poll_recv(cx, &mut batch)) => Ev::Packets(r),
                c = cmd_rx.recv() => Ev::Cmd(c),
                _ = &mut sleep, if next.is_some() => Ev::Timer,
            };
            bump(&eng.stats.wakeups);
            eng.tick();
            let ingested = matches!(ev, Ev::Packets(Ok(())));
            match ev {
                Ev::Stop => break,
                Ev::Packets(r) => {
                    r?;
                    for i in 0..batch.len() {
                        eng.packet(batch.get_mut(i));
                    }
                }
                Ev::Cmd(Some(c)) => eng.command(c),
                Ev::Cmd(None) => {}
                Ev::Timer => armed = None,
            }
            // Let the flow tasks this batch woke run before the egress: a
            // request then goes upstream before our ACK of it goes to the
            // TUN, and the ACK carries the window their reads reopened (one
            // packet, not an ACK and then a window update), and the UDP
            // relays drain their queues. Interleaved A/B through dante: crr
            // +2-5 % connections/s, udp at 50,000/s answered 39,000 -> 44,000.
            if ingested {
                tokio::task::yield_now().await;
            }
            // Whatever woke us, also take the requests and timers that are
            // due, so a busy device cannot starve the relays or the timers.
            for _ in 0..1024 {
                match cmd_rx.try_recv() {
                    Ok(c) => eng.command(c),
                    Err(_) => break,
                }
            }
            // Handling a full batch can take a while: timers and the egress
            // below see the time as it is now.
            eng.tick();
            eng.fire_timers();
            eng.settle_touched();
            eng.sweep();
        }
        eng.tick();
        eng.shutdown();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
