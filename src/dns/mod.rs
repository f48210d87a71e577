//! Virtual DNS: the fake pool, the answers, forwarding over TCP. (issue 4)

pub mod message;
pub mod pool;
pub mod service;

pub use service::{Dns, DnsMode, TcpRoute};
pub mod setup;

pub use setup::UdpDnsConfig;
