//! What a mode gives the admin server.

use super::scrape::Scrape;
use serde::Serialize;
use std::fmt;

/// What a mode shows through the admin server.
pub trait Report: Send + Sync + 'static {
    /// The mode's metrics (names without the `sockstun_` prefix), encoded at
    /// each scrape.
    fn metrics(&self, m: &mut Scrape<'_>) -> fmt::Result;
    /// The flows open now.
    fn flows(&self) -> Vec<FlowInfo>;
    /// Whether it can carry traffic (a usable proxy, in TUN mode).
    fn healthy(&self) -> bool;
}

/// One live flow, as `/flows` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowInfo {
    /// "tcp" or "udp".
    pub protocol: &'static str,
    pub source: String,
    pub destination: String,
    /// The name behind a fake (virtual DNS) destination.
    pub name: Option<String>,
    /// The proxy that carries it.
    pub via: Option<String>,
    /// Bytes from the application, and back to it.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Datagrams from the application and back to it (UDP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams_up: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams_down: Option<u64>,
    pub age_ms: u64,
    pub state: &'static str,
}
