//! The server's stop signal: set once, at SIGINT/SIGTERM, and awaited by every
//! session, relay and UDP association. A relay polls it on every wake-up, so
//! once a waiter is registered a poll costs one atomic load, not a lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

impl Stop {
    pub fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Completes once `set` has been called (at once if it was).
    pub fn wait(&self) -> StopWait<'_> {
        StopWait {
            stop: self,
            notified: Box::pin(self.notify.notified()),
            waker: None,
        }
    }
}

pub struct StopWait<'a> {
    stop: &'a Stop,
    notified: Pin<Box<Notified<'a>>>,
    /// The waker `notified` holds: while the task's waker is the same, there
    /// is nothing to register again.
    waker: Option<Waker>,
}

impl Future for StopWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.stop.flag.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if this.notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.waker = Some(cx.waker().clone());
        // `set` may have run between the load above and the registration.
        if this.stop.flag.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_wakes_registered_or_not() {
        let stop = Arc::new(Stop::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = stop.clone();
                tokio::spawn(async move {
                    // Polled many times over (a relay's wake-ups), then set.
                    let w = s.wait();
                    tokio::pin!(w);
                    for _ in 0..10 {
                        let r = tokio::time::timeout(Duration::from_millis(1), w.as_mut()).await;
                        if r.is_ok() {
                            return;
                        }
                    }
                    w.await
                })
            })
            .collect();
        // Most waiters are registered by now, some perhaps not: either
        // order must end in a wake-up.
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.set();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a waiter missed the stop")
                .unwrap();
        }
        // Set already: at once.
        stop.wait().await;
    }
}
