//! Virtual DNS: the fake pool, the answers, forwarding over TCP through the
//! upstream. Set up by `crate::tun`.

pub mod host;
pub mod message;
pub mod pool;
pub mod service;
pub mod stats;

pub use service::{Dns, DnsMode, TcpRoute};
