//! Whether the proxy takes a pipelined SOCKS5 handshake (`--socks-pipeline`
//! of `sockstun tun`): greeting, credentials and request in one write, by
//! the SOCKS client's own code (`socks::client::handshake` with
//! `Proxy::pipeline`). Any answer to the request (a success or a refusal)
//! shows that the proxy read what followed the greeting; silence or a close
//! shows that it dropped it (microsocks).

use super::plan::Plan;
use super::report::{Report, Status};
use super::session::{close, within};
use crate::socks::client;
use crate::socks::codec::cmd;
use crate::socks::TargetAddr;
use crate::upstream::pipelining;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

const NAME: &str = "pipelined handshake";

pub async fn run(plan: &Plan, report: &mut Report) {
    if report.blocked(NAME) {
        return;
    }
    if !plan.proxy.kind.is_socks5() {
        report.skip(NAME, "SOCKS5 only (this protocol sends a single request)");
        return;
    }
    let mut proxy = plan.proxy.clone();
    proxy.pipeline = true;
    // The request: a CONNECT to the first target, as --socks-pipeline would
    // send it; without one, a UDP ASSOCIATE, whose answer (even "not
    // supported") tells as much.
    let any = TargetAddr::Ip(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    let (command, dest, what) = match plan.targets.first() {
        Some(t) => (cmd::CONNECT, t, format!("CONNECT {t}")),
        None => (cmd::UDP_ASSOCIATE, &any, "UDP ASSOCIATE".to_string()),
    };
    let start = Instant::now();
    let mut s = match client::connect_proxy(&proxy).await {
        Ok(s) => s,
        Err(e) => return report.timed(NAME, Status::Fail, start, e.to_string()),
    };
    let r = within(plan, client::handshake(&mut s, &proxy, command, dest)).await;
    // Read as `sockstun tun` reads its own probe of the proxy.
    let (status, detail) = match (pipelining::verdict(&r), r) {
        (Some(true), Ok(_)) => (Status::Ok, format!("accepted ({what} answered): sockstun tun pipelines with this proxy")),
        // Refused, unreachable, not allowed, not supported: an answer to the
        // request all the same.
        (Some(true), Err(e)) => {
            (Status::Ok, format!("accepted ({what} answered: {e}): sockstun tun pipelines with this proxy"))
        }
        (Some(false), r) => (
            Status::No,
            format!("not accepted ({what}: {}): the proxy drops what follows the greeting; sockstun tun learns this itself: leave --socks-pipeline off", r.err().map(|e| e.to_string()).unwrap_or_default()),
        ),
        (None, r) => (Status::Fail, r.err().map(|e| e.to_string()).unwrap_or_default()),
    };
    report.timed(NAME, status, start, detail);
    close(s).await;
}
