//! Whether a SOCKS5 proxy takes a pipelined handshake (greeting,
//! credentials and request in one write: one round trip instead of two or
//! three), learned per proxy instead of asked of the user.
//!
//! dante and `sockstun server` parse incrementally and take it; microsocks
//! reads the greeting with one large read, drops what followed and then
//! waits for a request that never comes. So a proxy is asked once in the
//! background (`probe`: a pipelined greeting and UDP ASSOCIATE, which opens
//! nothing towards any target; closed at once), and until it answered, dials
//! are not pipelined: no flow ever waits on the question. A pipelined dial
//! that fails through the proxy's fault (a proxy replaced at the same
//! address) makes it forget, and it is asked again.
//!
//! `verdict` reads a pipelined exchange's outcome; `sockstun check` reads
//! its own probe (a CONNECT to its target) with it too.

use super::seam::{blame, Blame, Error};
use crate::proxy::Proxy;
use crate::socks::client;
use crate::socks::codec::cmd;
use crate::socks::TargetAddr;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// Not asked yet, or forgotten.
const UNKNOWN: u8 = 0;
/// A probe is under way.
const ASKING: u8 = 1;
const TAKES_IT: u8 = 2;
const DROPS_IT: u8 = 3;

/// The probe is not repeated sooner than this (a proxy that is down).
const REASK_AFTER: Duration = Duration::from_secs(10);

/// What a pipelined exchange's outcome says: `Some(true)` the proxy
/// answered the request (a success, or a refusal: an answer all the same),
/// `Some(false)` it did not read what followed the greeting (silence, a
/// close, a garbled answer), `None` it could not tell (the proxy
/// unreachable).
pub fn verdict<T>(r: &Result<T, Error>) -> Option<bool> {
    match r {
        Ok(_) => Some(true),
        Err(e) if blame(e) != Blame::Proxy => Some(true),
        Err(Error::Timeout | Error::Protocol(_) | Error::AuthFailed) => Some(false),
        Err(_) => None,
    }
}

/// Ask `proxy` once: a pipelined greeting (and credentials) with a UDP
/// ASSOCIATE, answered within the connect timeout; the connection is then
/// closed.
pub async fn probe(proxy: &Proxy) -> Option<bool> {
    let any = TargetAddr::Ip(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    let mut s = match client::connect_proxy(proxy).await {
        Ok(s) => s,
        Err(_) => return None,
    };
    let r = tokio::time::timeout(
        proxy.connect_timeout,
        client::handshake_as(&mut s, proxy, cmd::UDP_ASSOCIATE, &any, true),
    )
    .await
    .unwrap_or(Err(Error::Timeout));
    verdict(&r)
}

/// What is known of one proxy.
pub struct Learned {
    state: AtomicU8,
    /// When it was last asked.
    asked: Mutex<Option<Instant>>,
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            state: AtomicU8::new(UNKNOWN),
            asked: Mutex::new(None),
        }
    }
}

impl Learned {
    /// Whether to pipeline the next dial.
    pub fn pipelined(&self) -> bool {
        self.state.load(Ordering::Relaxed) == TAKES_IT
    }

    /// Whether it answered yet: Some(takes it).
    pub fn known(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            TAKES_IT => Some(true),
            DROPS_IT => Some(false),
            _ => None,
        }
    }

    /// Whether a probe should start now: true once, for the caller that
    /// then runs it and calls `learn`.
    pub fn should_ask(&self) -> bool {
        let now = Instant::now();
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.is_some_and(|t| now < t + REASK_AFTER)
            || self
                .state
                .compare_exchange(UNKNOWN, ASKING, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        *asked = Some(now);
        true
    }

    /// A probe's answer (`probe`); None leaves it unknown.
    pub fn learn(&self, answer: Option<bool>) {
        let s = match answer {
            Some(true) => TAKES_IT,
            Some(false) => DROPS_IT,
            None => UNKNOWN,
        };
        self.state.store(s, Ordering::Relaxed);
    }

    /// A pipelined dial failed with `e`: if through the proxy's fault,
    /// forget what was learned (the next dials are not pipelined until it
    /// is asked again). True when it forgot.
    pub fn failed(&self, e: &Error) -> bool {
        if blame(e) != Blame::Proxy {
            return false;
        }
        let forgot = self
            .state
            .compare_exchange(TAKES_IT, UNKNOWN, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if forgot {
            debug!("pipelined dial failed ({e}): asking the proxy again");
        }
        forgot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&Ok::<(), _>(())), Some(true));
        assert_eq!(verdict::<()>(&Err(Error::Refused)), Some(true));
        assert_eq!(verdict::<()>(&Err(Error::CommandNotSupported)), Some(true));
        assert_eq!(verdict::<()>(&Err(Error::Timeout)), Some(false));
        assert_eq!(
            verdict::<()>(&Err(Error::Protocol("x".into()))),
            Some(false)
        );
        let down = Error::ProxyUnreachable(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(verdict::<()>(&Err(down)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn asked_once_then_again_after_a_failure() {
        let l = Learned::default();
        assert!(!l.pipelined());
        assert!(l.should_ask());
        assert!(!l.should_ask(), "a second probe while one runs");
        l.learn(Some(true));
        assert!(l.pipelined() && !l.should_ask());
        // The target's answer says nothing of pipelining.
        assert!(!l.failed(&Error::Refused));
        assert!(l.pipelined());
        assert!(l.failed(&Error::Timeout));
        assert!(!l.pipelined() && l.known().is_none());
        assert!(!l.should_ask(), "asked again too soon");
        tokio::time::advance(REASK_AFTER).await;
        assert!(l.should_ask());
        l.learn(Some(false));
        assert_eq!(l.known(), Some(false));
        assert!(!l.failed(&Error::Timeout) && !l.pipelined());
        // An unreachable proxy leaves it unknown, asked again later.
        let l = Learned::default();
        assert!(l.should_ask());
        l.learn(None);
        tokio::time::advance(REASK_AFTER).await;
        assert!(l.should_ask());
    }
}
