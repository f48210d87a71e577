//! sockstun: a TUN-to-SOCKS socksifier and a SOCKS4/4a/5 server.
//!
//! Data path (TUN mode): `tun::device` → `stack` (smoltcp, per-flow demux) →
//! `relay` (copy both ways) → `upstream` (the one seam to a proxy; SOCKS
//! through `socks::client`). `tun` assembles them, with `dns` and the UDP
//! table `tun::udp`. The `server` mode reuses `socks` and `relay`. `exec`
//! runs one program in a namespace whose TUN `tun` serves.
//! docs/architecture.md draws it.

pub mod admin;
pub mod check;
pub mod cli;
pub mod clidoc;
pub mod config;
pub mod dns;
pub mod exec;
pub mod mem;
pub mod net;
pub mod proxy;
pub mod relay;
pub mod rules;
pub mod server;
pub mod service;
pub mod socks;
pub mod stack;
pub mod tun;
pub mod upstream;

#[cfg(test)]
pub(crate) mod test_rng;
