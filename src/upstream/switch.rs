//! An upstream that can be replaced while flows use it (SIGHUP in TUN mode):
//! each new dial, association and probe goes to the upstream in force at
//! that moment (one atomic load); what is already connected keeps its proxy.

use super::seam::{Associated, BoxFuture, Connected, Error, Upstream};
use crate::socks::TargetAddr;
use arc_swap::ArcSwap;
use std::fmt;
use std::sync::Arc;

pub struct Switch {
    current: ArcSwap<Arc<dyn Upstream>>,
}

impl Switch {
    pub fn new(up: Arc<dyn Upstream>) -> Switch {
        Switch {
            current: ArcSwap::from_pointee(up),
        }
    }

    /// Put `up` in force for new flows; returns the one it replaces.
    pub fn replace(&self, up: Arc<dyn Upstream>) -> Arc<dyn Upstream> {
        let old = self.current.swap(Arc::new(up));
        Arc::clone(&*old)
    }

    /// The upstream in force.
    pub fn current(&self) -> Arc<dyn Upstream> {
        let g = self.current.load();
        Arc::clone(&**g)
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.current.load(), f)
    }
}

impl Upstream for Switch {
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        let up = self.current();
        Box::pin(async move { up.connect(target).await })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        let up = self.current();
        Box::pin(async move { up.associate().await })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        let up = self.current();
        Box::pin(async move { up.probe().await })
    }

    fn carries_names(&self) -> bool {
        self.current.load().carries_names()
    }

    fn carries_udp(&self) -> bool {
        self.current.load().carries_udp()
    }
}
