//! The live TCP flows of TUN mode, for `/flows` and the byte counters of
//! `/metrics`: the stack tells this registry (its `FlowObserver`) when a flow
//! starts relaying and when it ends, once each; the byte counts are read from
//! the flow's own counters when asked. Only built with `--admin`.

use crate::admin::FlowInfo;
use crate::dns::Dns;
use crate::stack::{FlowBytes, FlowObserver};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

struct Live {
    src: SocketAddr,
    dst: SocketAddr,
    /// The name behind a fake destination, looked up once at the start.
    name: Option<String>,
    via: Arc<str>,
    bytes: Arc<dyn FlowBytes>,
    since: Instant,
}

pub struct Flows {
    dns: Arc<Dns>,
    live: Mutex<HashMap<u64, Live>>,
}

impl Flows {
    pub fn new(dns: Arc<Dns>) -> Flows {
        Flows {
            dns,
            live: Mutex::default(),
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the live flows moved so far: up, down.
    pub fn bytes(&self) -> (u64, u64) {
        self.live()
            .values()
            .fold((0, 0), |(u, d), f| (u + f.bytes.up(), d + f.bytes.down()))
    }

    /// One object per live flow, oldest first.
    pub fn list(&self) -> Vec<FlowInfo> {
        let live = self.live();
        let mut v: Vec<(&u64, &Live)> = live.iter().collect();
        v.sort_by_key(|(id, _)| **id);
        v.into_iter()
            .map(|(_, f)| FlowInfo {
                protocol: "tcp",
                source: f.src.to_string(),
                destination: f.dst.to_string(),
                name: f.name.clone(),
                via: Some(f.via.to_string()),
                bytes_up: f.bytes.up(),
                bytes_down: f.bytes.down(),
                datagrams_up: None,
                datagrams_down: None,
                age_ms: f.since.elapsed().as_millis() as u64,
                state: "open",
            })
            .collect()
    }
}

impl FlowObserver for Flows {
    fn opened(
        &self,
        id: u64,
        src: SocketAddr,
        dst: SocketAddr,
        via: &Arc<str>,
        bytes: Arc<dyn FlowBytes>,
    ) {
        let name = self
            .dns
            .pool()
            .filter(|p| p.contains(dst.ip()))
            .and_then(|p| p.lookup(dst.ip()));
        let f = Live {
            src,
            dst,
            name,
            via: via.clone(),
            bytes,
            since: Instant::now(),
        };
        self.live().insert(id, f);
    }

    fn closed(&self, id: u64) {
        self.live().remove(&id);
    }
}
