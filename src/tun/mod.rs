//! TUN mode entry and the device (the only code that touches the `tun` crate). (issue 3)

use crate::cli::TunArgs;

pub fn run(_args: TunArgs) -> anyhow::Result<()> {
    anyhow::bail!("tun mode is not built yet")
}
