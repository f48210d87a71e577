//! The namespace side of `sockstun exec` (`sockstun exec-child`, run by
//! sockstun itself from /proc/self/exe, single-threaded as unshare(2) of a
//! user namespace requires): new namespaces, `lo` up, the TUN made and
//! addressed with default routes into it, the resolver bound, the TUN's
//! descriptor sent to sockstun; then, once sockstun says its stack runs,
//! the program in place of this process (so sockstun's child is the
//! program, and its exit status the program's).

use super::{link, resolv, userns};
use crate::cli::ExecChildArgs;
use crate::tun::{create_detached, ip_cmd, DeviceSpec};
use anyhow::Context as _;
use ipnetwork::{Ipv4Network, Ipv6Network};
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;

/// sockstun's own failure, apart from the program's statuses (as env(1)).
const FAILED: i32 = 125;

/// Set up, hand the TUN over, wait for the word, run the program. Never
/// returns: the program replaces this process, or it exits.
pub fn run(a: ExecChildArgs) -> ! {
    let sock = match link::adopt(a.sock) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sockstun exec-child: {e:#} (it is run by sockstun exec, not by hand)");
            std::process::exit(FAILED)
        }
    };
    let caller = userns::Caller::current();
    let tun = match set_up(&a, caller) {
        Ok(t) => t,
        Err(e) => {
            link::send_error(&sock, &format!("{e:#}"));
            std::process::exit(FAILED)
        }
    };
    if let Err(e) = link::send_tun(&sock, &tun) {
        eprintln!("sockstun exec: {e:#}");
        std::process::exit(FAILED)
    }
    // Only sockstun holds the TUN from now on: when it dies, the device
    // goes, and the program is left with `lo` alone.
    drop(tun);
    if !link::wait_go(&sock) {
        // sockstun failed to start its stack (it says why): nothing would
        // carry the program's traffic, so it does not start.
        std::process::exit(FAILED)
    }
    if !caller.is_root() {
        if let Err(e) = userns::become_caller(caller) {
            eprintln!("sockstun exec: {e:#}");
            std::process::exit(FAILED)
        }
    }
    drop(sock);
    // Command::exec resets the signal mask and SIGPIPE (which Rust
    // ignores) to the defaults, so the program starts as from a shell.
    let err = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .exec();
    eprintln!("sockstun exec: {}: {err}", a.command[0]);
    // As shells report them: not found, or found but not runnable.
    std::process::exit(match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    })
}

/// Everything before the program, in its namespaces. Returns the TUN.
fn set_up(a: &ExecChildArgs, caller: userns::Caller) -> anyhow::Result<Vec<OwnedFd>> {
    let rootless = !caller.is_root();
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if rootless {
        userns::check_available()?;
        userns::check_tun_access(caller)?;
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    userns::enter(flags, rootless)?;
    if rootless {
        userns::map_root(caller)?;
    }
    // Nothing mounted from here on may reach the caller's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making the program's mounts private")?;
    ip_cmd(&["link", "set", "lo", "up"])?;
    let ipv4: Option<Ipv4Network> = parse(a.ipv4.as_deref(), "--ipv4")?;
    let ipv6: Option<Ipv6Network> = parse(a.ipv6.as_deref(), "--ipv6")?;
    let tun = create_detached(&DeviceSpec {
        name: &a.device,
        fd: None,
        queue_fds: &[],
        ipv4,
        ipv6,
        mtu: a.mtu,
        explicit_ipv4: true,
        explicit_mtu: true,
        offload: a.offload,
        queues: a.queues.max(1),
    })?;
    if ipv4.is_some() {
        ip_cmd(&["route", "replace", "default", "dev", &a.device])?;
    }
    if ipv6.is_some() {
        ip_cmd(&["-6", "route", "replace", "default", "dev", &a.device])?;
    }
    resolv::install(a.nameserver)?;
    tracing::debug!(
        "exec: namespaces ready (lo, {} {ipv4:?} {ipv6:?}, nameserver {})",
        a.device,
        a.nameserver
    );
    Ok(tun)
}

fn parse<T: std::str::FromStr>(s: Option<&str>, flag: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match s {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{flag} {s}: {e}")),
    }
}
