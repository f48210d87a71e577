//! `sockstun server`: accept, authenticate, rules, CONNECT/BIND/UDP relays. (issue 2)

use crate::cli::ServerArgs;

pub fn run(_args: ServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("server mode is not built yet")
}
