//! What `sockstun check` is asked to test, validated from its arguments.

use crate::cli::CheckArgs;
use crate::proxy::Proxy;
use crate::socks::TargetAddr;
use anyhow::{anyhow, Result};
use std::time::Duration;

pub struct Plan {
    /// The proxy, not resolved yet; its connect timeout is the step timeout.
    pub proxy: Proxy,
    /// CONNECT targets, each on a connection of its own.
    pub targets: Vec<TargetAddr>,
    /// Where the UDP datagram goes (a UDP echo).
    pub udp: Option<TargetAddr>,
    /// The most any one step may take.
    pub timeout: Duration,
}

impl Plan {
    pub fn from_args(args: &CheckArgs) -> Result<Plan> {
        // The URL error never echoes the URL: it may hold a password.
        let mut proxy = Proxy::from_url(&args.url).map_err(|e| anyhow!("proxy URL: {e}"))?;
        let timeout = Duration::from_secs(args.timeout.max(1));
        proxy.connect_timeout = timeout;
        proxy.opts.fwmark = args.fwmark;
        proxy.opts.bind_interface = args.bind_interface.clone();
        let target = |flag: &str, t: &str| {
            TargetAddr::parse(t).map_err(|e| anyhow!("{flag} {t:?}: {e} (HOST:PORT, [IPv6]:PORT)"))
        };
        let targets = args
            .targets
            .iter()
            .map(|t| target("--target", t))
            .collect::<Result<Vec<_>>>()?;
        let udp = args
            .udp
            .as_deref()
            .map(|t| target("--udp", t))
            .transpose()?;
        Ok(Plan {
            proxy,
            targets,
            udp,
            timeout,
        })
    }

    /// What the step of a CONNECT to `t` is called.
    pub fn connect_step(t: &TargetAddr) -> &'static str {
        match t {
            TargetAddr::Ip(_) => "connect by address",
            TargetAddr::Domain(..) => "connect by name",
        }
    }
}
