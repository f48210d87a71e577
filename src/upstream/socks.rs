//! [`Upstream`] over SOCKS4, SOCKS4a and SOCKS5 (`crate::socks::client`).

use super::{Association, BoxFuture, Error, Stream, Upstream};
use crate::socks::client::{self, Proxy, ProxyKind, UrlError};
use crate::socks::TargetAddr;
use std::fmt;

/// A SOCKS proxy: its address, credentials and socket options.
pub struct Socks(pub Proxy);

impl Socks {
    /// `socks5://`, `socks5h://`, `socks4://` or `socks4a://` with optional
    /// credentials. The error never echoes the URL: it may hold a password.
    pub fn from_url(url: &str) -> Result<Socks, UrlError> {
        Proxy::from_url(url).map(Socks)
    }
}

impl fmt::Display for Socks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Upstream for Socks {
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Stream, Error>> {
        Box::pin(async move {
            let s = client::connect(&self.0, target).await?;
            Ok(Box::new(s) as Stream)
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Association, Error>> {
        Box::pin(client::udp_associate(&self.0))
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(client::probe(&self.0))
    }

    fn carries_names(&self) -> bool {
        self.0.kind != ProxyKind::Socks4
    }

    fn carries_udp(&self) -> bool {
        self.0.kind.is_socks5()
    }
}
