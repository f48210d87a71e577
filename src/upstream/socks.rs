//! [`Upstream`] over SOCKS4, SOCKS4a and SOCKS5 (`crate::socks::client`).

use super::seam::{Associated, BoxFuture, Connected, Error, Upstream};
use crate::proxy::{Proxy, ProxyKind, UrlError};
use crate::socks::client;
use crate::socks::TargetAddr;
use std::fmt;
use std::sync::Arc;

/// A SOCKS proxy: its address, credentials and socket options.
pub struct Socks {
    proxy: Proxy,
    /// Its URL without the password, for log lines.
    name: Arc<str>,
}

impl Socks {
    pub fn new(proxy: Proxy) -> Socks {
        let name = proxy.to_string().into();
        Socks { proxy, name }
    }

    /// `socks5://`, `socks5h://`, `socks4://` or `socks4a://` with optional
    /// credentials. The error never echoes the URL: it may hold a password.
    pub fn from_url(url: &str) -> Result<Socks, UrlError> {
        Proxy::from_url(url).map(Socks::new)
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
            let s = client::connect(&self.proxy, target).await?;
            Ok(Connected {
                stream: Box::new(s),
                via: self.name.clone(),
            })
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        Box::pin(async move {
            let assoc = client::udp_associate(&self.proxy).await?;
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
