//! The one seam between TUN mode and a proxy: [`Upstream`] gives a stream to
//! a target (TCP flows, DNS forwarding) and a UDP association (UDP flows).
//!
//! Everything above it (the dialer of TCP flows, the UDP table, the DNS
//! forwarder) holds an `Arc<dyn Upstream>` and knows no proxy protocol; each
//! protocol is one implementation beside this file ([`socks`], [`http`]).

pub mod group;
pub mod health;
pub mod http;
pub mod pipelining;
pub mod pool;
mod seam;
pub mod socks;
pub mod switch;
pub mod watched;

pub use seam::{
    blame, Associated, Association, Blame, BoxFuture, Connected, Error, Stream, Upstream,
};

use crate::proxy::{Proxy, ProxyKind};
use std::sync::Arc;

/// The upstream that speaks `proxy`'s protocol.
pub fn for_proxy(proxy: Proxy) -> Arc<dyn Upstream> {
    match proxy.kind {
        ProxyKind::Http => Arc::new(http::Http::new(proxy)),
        ProxyKind::Socks4 | ProxyKind::Socks4a | ProxyKind::Socks5 | ProxyKind::Socks5h => {
            Arc::new(socks::Socks::new(proxy))
        }
    }
}
