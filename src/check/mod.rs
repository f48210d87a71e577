//! `sockstun check URL [--target HOST:PORT]... [--udp HOST:PORT]`: test a
//! proxy the way someone debugging a setup needs, one step per line with its
//! time, then a verdict naming the first failing step; exit status 0 when
//! no step failed, 1 otherwise.
//!
//! The steps: resolve the proxy's name (when it has one), TCP connect,
//! greeting and method, authentication, a CONNECT to each `--target` (an
//! address sent as an address, a name as a name: a target name is never
//! resolved here), UDP ASSOCIATE and one datagram to `--udp` and back, and
//! whether the proxy takes a pipelined handshake. Every message is the
//! product's own (`socks::client`, `upstream::http`): what passes here is
//! what `sockstun tun` sends.
//!
//! - `plan`: the validated arguments;
//! - `report`: the lines and the verdict;
//! - `session`: the TCP steps; `udp`: the UDP ones; `pipeline`: the last.

mod pipeline;
mod plan;
mod report;
mod session;
mod udp;

pub use plan::Plan;
pub use report::{Captured, Report, Status, Step};

use crate::cli::CheckArgs;
use std::net::IpAddr;
use std::time::Instant;

/// Run the check, the lines on stdout; true when no step failed. An error
/// is a malformed argument (nothing was tried).
pub fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let plan = Plan::from_args(&args)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new(Box::new(std::io::stdout()), &plan.proxy.to_string());
    rt.block_on(check(plan, &mut report));
    Ok(report.verdict())
}

/// Every step against `plan`'s proxy, into `report`.
pub async fn check(mut plan: Plan, report: &mut Report) {
    resolve(&mut plan, report).await;
    if !report.blocked("tcp connect") {
        session::run(&plan, report).await;
    }
    udp::run(&plan, report).await;
    pipeline::run(&plan, report).await;
}

/// The proxy's own name, resolved here (necessarily: this is no target
/// name), on the blocking pool.
async fn resolve(plan: &mut Plan, report: &mut Report) {
    if plan.proxy.host.parse::<IpAddr>().is_ok() {
        return;
    }
    let start = Instant::now();
    let mut p = plan.proxy.clone();
    let r = tokio::task::spawn_blocking(move || -> std::io::Result<crate::proxy::Proxy> {
        p.resolve()?;
        Ok(p)
    })
    .await;
    match r {
        Ok(Ok(p)) => {
            let addrs: Vec<String> = p.addrs.iter().map(|a| a.ip().to_string()).collect();
            report.timed("resolve proxy", Status::Ok, start, addrs.join(", "));
            plan.proxy = p;
        }
        Ok(Err(e)) => report.fatal("resolve proxy", start, format!("{}: {e}", plan.proxy.host)),
        Err(e) => report.fatal("resolve proxy", start, e.to_string()),
    }
}

#[cfg(test)]
mod tests;
