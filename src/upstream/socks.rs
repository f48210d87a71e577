//! [`Upstream`] over SOCKS4, SOCKS4a and SOCKS5 (`crate::socks::client`),
//! with a warm pool of ready connections (`Proxy::warm`, see `pool`) and
//! SOCKS5 pipelining learned per proxy (`Proxy::learn_pipeline`, see
//! `pipelining`).
//!
//! A flow takes a ready connection when there is one and sends its request
//! alone. One that turns out dead before the proxy answered (`Stale`: a
//! proxy restarted, or its handshake timeout passed) is dropped with the
//! rest of the pool and the flow dialed afresh, unseen by the application
//! (its SYN is answered only once the proxy accepted). A fresh dial's
//! failure is reported as it comes, so a proxy that is down is seen down.

use super::pipelining::{self, Learned};
use super::pool::{Opener, PoolConfig, Pools};
use super::seam::{Associated, BoxFuture, Connected, Error, Upstream};
use crate::proxy::{Proxy, ProxyKind, UrlError};
use crate::socks::client::{self, ReadyError};
use crate::socks::TargetAddr;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::debug;

/// A SOCKS proxy: its address, credentials and socket options.
pub struct Socks {
    proxy: Arc<Proxy>,
    /// Its URL without the password, for log lines.
    name: Arc<str>,
    pool: Option<Pools<TcpStream, Error>>,
    /// SOCKS5 without `--socks-pipeline` or `--no-socks-pipeline`.
    learned: Option<Arc<Learned>>,
}

impl Socks {
    /// The pool and the pipelining probe start here when `proxy` asks for
    /// them and a tokio runtime runs (they are tasks of their own).
    pub fn new(proxy: Proxy) -> Socks {
        let name: Arc<str> = proxy.to_string().into();
        let proxy = Arc::new(proxy);
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        let pool = (runtime && proxy.warm > 0).then(|| {
            let p = proxy.clone();
            let open: Opener<TcpStream, Error> = Arc::new(move || {
                let p = p.clone();
                Box::pin(async move { client::ready(&p).await })
            });
            Pools::new(PoolConfig::new(proxy.warm), name.clone(), open)
        });
        let learned =
            (runtime && proxy.kind.is_socks5() && proxy.learn_pipeline && !proxy.pipeline)
                .then(Arc::<Learned>::default);
        let s = Socks {
            proxy,
            name,
            pool,
            learned,
        };
        s.ask_pipelining();
        s
    }

    /// `socks5://`, `socks5h://`, `socks4://` or `socks4a://` with optional
    /// credentials. The error never echoes the URL: it may hold a password.
    pub fn from_url(url: &str) -> Result<Socks, UrlError> {
        Proxy::from_url(url).map(Socks::new)
    }

    /// Ready connections in the pool now.
    pub fn pooled(&self) -> usize {
        self.pool.as_ref().map_or(0, Pools::ready)
    }

    /// What was learned of pipelining: Some(takes it), None not yet (or
    /// not asked: forced either way, or not SOCKS5).
    pub fn pipelining(&self) -> Option<bool> {
        self.learned.as_ref().and_then(|l| l.known())
    }

    /// Ask the proxy in the background whether it takes a pipelined
    /// handshake, if it is time to.
    fn ask_pipelining(&self) {
        let Some(l) = &self.learned else { return };
        if !l.should_ask() {
            return;
        }
        let (l, p, name) = (l.clone(), self.proxy.clone(), self.name.clone());
        tokio::spawn(async move {
            let answer = pipelining::probe(&p).await;
            debug!("proxy {name} takes a pipelined handshake: {answer:?}");
            l.learn(answer);
        });
    }

    /// Whether this dial's SOCKS5 handshake goes in one write.
    fn pipelined(&self) -> bool {
        self.proxy.pipeline || self.learned.as_ref().is_some_and(|l| l.pipelined())
    }

    /// A fresh dial's outcome, learned from when it was pipelined by what
    /// was learned.
    fn dialed<T>(&self, pipelined: bool, r: Result<T, Error>) -> Result<T, Error> {
        if let (Err(e), Some(l)) = (&r, &self.learned) {
            if pipelined && l.failed(e) {
                self.ask_pipelining();
            }
        }
        if self.learned.as_ref().is_some_and(|l| l.known().is_none()) {
            self.ask_pipelining();
        }
        r
    }

    /// `f` on a ready connection from the pool: None when there was none,
    /// or it was stale (then the pool is emptied, and the caller dials
    /// afresh).
    async fn on_pooled<T, F, Fut>(
        &self,
        what: &(dyn fmt::Display + Sync),
        f: F,
    ) -> Option<Result<T, Error>>
    where
        F: FnOnce(TcpStream) -> Fut,
        Fut: Future<Output = Result<T, ReadyError>>,
    {
        let pool = self.pool.as_ref()?.here();
        let s = pool.take(client::still_open)?;
        match f(s).await {
            Ok(t) => Some(Ok(t)),
            Err(ReadyError::Failed(e)) => Some(Err(e)),
            Err(ReadyError::Stale(e)) => {
                debug!(
                    "{what} through {}: pooled connection was dead ({e}); dialing afresh",
                    self.name
                );
                pool.flush();
                None
            }
        }
    }
}

impl fmt::Display for Socks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Upstream for Socks {
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        Box::pin(async move {
            client::check_carriable(self.proxy.kind, target)?;
            let p = &self.proxy;
            let s = match self
                .on_pooled(target, |s| client::connect_on(s, p, target))
                .await
            {
                Some(r) => r?,
                None => {
                    let pipelined = self.pipelined();
                    let r = client::connect_as(p, target, pipelined).await;
                    self.dialed(pipelined, r)?
                }
            };
            Ok(Connected {
                stream: Box::new(s),
                via: self.name.clone(),
            })
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        Box::pin(async move {
            if !self.carries_udp() {
                return Err(Error::CommandNotSupported);
            }
            let p = &self.proxy;
            let what = "UDP ASSOCIATE";
            let assoc = match self
                .on_pooled(&what, |s| client::udp_associate_on(s, p))
                .await
            {
                Some(r) => r?,
                None => {
                    let pipelined = self.pipelined();
                    let r = client::udp_associate_as(p, pipelined).await;
                    self.dialed(pipelined, r)?
                }
            };
            Ok(Associated {
                assoc,
                via: self.name.clone(),
            })
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(client::probe(&self.proxy))
    }

    fn carries_names(&self) -> bool {
        self.proxy.kind != ProxyKind::Socks4
    }

    fn carries_udp(&self) -> bool {
        self.proxy.kind.is_socks5()
    }
}

#[cfg(test)]
mod tests;
