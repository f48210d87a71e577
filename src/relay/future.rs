//! The relay as a future: both directions and the idle timeout polled
//! together, ended early by a stop signal.

use super::splice::DirErr;
use super::{Dir, Outcome, RelayStats, RelayStream, Side};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Copy `a` ⇄ `b` until both directions ended, one side failed, or nothing
/// moved for `idle`. The streams are dropped (closed, or reset) on return.
pub fn relay<A: RelayStream, B: RelayStream>(
    a: A,
    b: B,
    idle: Option<Duration>,
) -> Relay<A, B, std::future::Pending<()>> {
    relay_until(a, b, idle, std::future::pending())
}

/// `relay`, ended early when `stop` completes: both sides are reset and the
/// outcome is `Stopped`, with the bytes moved until then.
pub fn relay_until<A: RelayStream, B: RelayStream, S: Future<Output = ()> + Unpin>(
    a: A,
    b: B,
    idle: Option<Duration>,
    stop: S,
) -> Relay<A, B, S> {
    Relay {
        a,
        b,
        ab: Dir::new(),
        ba: Dir::new(),
        idle: idle.map(|d| Idle {
            after: d,
            last_move: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(d)),
        }),
        stop,
    }
}

/// The future `relay_until` returns. A plain struct rather than an `async
/// fn`: a held server session is mostly this, and an `async fn` would keep
/// its arguments twice (as arguments and as locals) plus references to every
/// local for its poll closure (issue 19: memory per held connection).
pub struct Relay<A, B, S> {
    a: A,
    b: B,
    ab: Dir,
    ba: Dir,
    idle: Option<Idle>,
    stop: S,
}

/// The idle timeout of a relay.
struct Idle {
    after: Duration,
    last_move: Instant,
    /// Boxed to keep `Relay` movable (`Unpin`) without pin projection.
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<A: RelayStream, B: RelayStream, S: Future<Output = ()> + Unpin> Future for Relay<A, B, S> {
    type Output = RelayStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayStats> {
        let r = self.get_mut();
        let outcome = ready!(r.poll_outcome(cx));
        match outcome {
            // The failed side is dead already; abort the other one so its peer
            // sees what this side's peer did.
            Outcome::Reset { side: Side::A, .. } => r.b.reset(),
            Outcome::Reset { side: Side::B, .. } => r.a.reset(),
            Outcome::Stopped => {
                r.a.reset();
                r.b.reset();
            }
            Outcome::Closed | Outcome::IdleTimeout => {}
        }
        Poll::Ready(RelayStats {
            a_to_b: r.ab.amt,
            b_to_a: r.ba.amt,
            a_to_b_spliced: r.ab.splice.spliced,
            b_to_a_spliced: r.ba.splice.spliced,
            outcome,
        })
    }
}

impl<A: RelayStream, B: RelayStream, S: Future<Output = ()> + Unpin> Relay<A, B, S> {
    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if Pin::new(&mut self.stop).poll(cx).is_ready() {
            return Poll::Ready(Outcome::Stopped);
        }
        let (a, b) = (&mut self.a, &mut self.b);
        let mut moved = false;
        if !self.ab.done {
            match self.ab.poll_copy(cx, Pin::new(a), Pin::new(b), &mut moved) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(DirErr::Read(e))) => return Poll::Ready(fail(Side::A, e)),
                Poll::Ready(Err(DirErr::Write(e))) => return Poll::Ready(fail(Side::B, e)),
            }
        }
        if !self.ba.done {
            match self.ba.poll_copy(cx, Pin::new(b), Pin::new(a), &mut moved) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(DirErr::Read(e))) => return Poll::Ready(fail(Side::B, e)),
                Poll::Ready(Err(DirErr::Write(e))) => return Poll::Ready(fail(Side::A, e)),
            }
        }
        if self.ab.done && self.ba.done {
            return Poll::Ready(Outcome::Closed);
        }
        if let Some(idle) = self.idle.as_mut() {
            if moved {
                // Cheaper than re-arming the timer per chunk: the timer is
                // only moved when it fires early.
                idle.last_move = Instant::now();
            }
            while idle.sleep.as_mut().poll(cx).is_ready() {
                let deadline = idle.last_move + idle.after;
                if deadline <= Instant::now() {
                    return Poll::Ready(Outcome::IdleTimeout);
                }
                idle.sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    }
}

fn fail(side: Side, e: io::Error) -> Outcome {
    Outcome::Reset {
        side,
        kind: e.kind(),
    }
}
