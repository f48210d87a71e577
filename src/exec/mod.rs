//! `sockstun exec`: one program, and only it, through the proxies.
//!
//! The program runs in a network namespace of its own whose only interfaces
//! are `lo` and a TUN, and a mount namespace in which /etc/resolv.conf names
//! the virtual DNS; this sockstun stays in the calling namespace, where its
//! sockets to the proxies are, and serves the TUN as `sockstun tun --fd`
//! would. Nothing of the caller's network changes, so there is nothing to
//! undo: the namespaces go with the program, the TUN with sockstun.
//!
//! Namespaces are made by a fresh process (`exec-child`, from
//! /proc/self/exe: single-threaded, as unshare(2) of a user namespace needs)
//! which sends back the TUN's descriptor over a socket (`link`), waits for
//! the stack to run, then becomes the program (`child`). Without root a user
//! namespace owns the others (`userns`). sockstun takes the signals meant
//! for the program and waits for it (`signals`); its exit status is the
//! program's. If sockstun is killed, the TUN goes with its last descriptor
//! and the program is left with `lo` alone: it loses its network and never
//! gains the host's. The program does not die with sockstun (no
//! PR_SET_PDEATHSIG): it may finish what needs no network.

pub mod child;
mod link;
mod resolv;
mod signals;
mod userns;

use crate::cli::{ExecArgs, TunArgs};
use crate::tun::{Reload, TunConfig};
use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use std::cell::Cell;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::rc::Rc;
use tracing::{error, info};

/// The namespace side's first argument (`sockstun exec-child ...`).
pub const CHILD: &str = "exec-child";

/// The TUN's IPv6 address in the program's namespace unless --ipv6 says
/// otherwise: from 2001:2::/48, the IPv6 benchmarking block (RFC 5180), as
/// 198.18.0.0/15 is IPv4's. A global-scope address, so programs try IPv6
/// destinations (a ULA source would make them prefer IPv4).
pub const DEFAULT_IPV6: &str = "2001:2::1/64";

/// The TUN options exec runs with: `--ipv6` defaults to `DEFAULT_IPV6`
/// (`none` for no IPv6).
pub fn tun_args(a: &ExecArgs) -> TunArgs {
    let mut t = a.tun.clone();
    t.ipv6 = match t.ipv6.as_deref() {
        None => Some(DEFAULT_IPV6.into()),
        Some("" | "none") => None,
        Some(_) => t.ipv6,
    };
    t
}

/// What became of the program, shared with the future that waits for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Program {
    Waiting,
    Running,
    Exited(i32),
}

/// Run the program through the proxies; its exit status.
pub fn run(args: ExecArgs, reload: Option<Reload>, log: &str) -> anyhow::Result<i32> {
    if args.tun.fd.is_some() {
        bail!("--fd: exec makes its own TUN, in the program's namespace");
    }
    let mut tun = tun_args(&args);
    if !tun.rules_test.is_empty() {
        // As `sockstun tun --rules-test`: print, start nothing.
        crate::tun::run_until(tun, None, None)?;
        return Ok(0);
    }
    let cfg = TunConfig::from_args(&tun)?;
    // The queues' descriptors come over in one message (SCM_MAX_FD).
    if cfg.queues > link::MAX_FDS {
        bail!(
            "--queues {}: sockstun exec passes at most {} queues",
            cfg.queues,
            link::MAX_FDS
        );
    }
    let nameserver = resolv::nameserver(&cfg)?;
    // Before any thread exists (the runtime starts in `run_until`).
    let sig = signals::block(reload.is_none())?;
    let (ours, theirs) = link::pair()?;
    let argv = child_args(&cfg, nameserver, theirs.as_raw_fd(), log, &args.command);
    let child = std::process::Command::new("/proc/self/exe")
        .args(&argv)
        .spawn()
        .context("starting sockstun's namespace side (/proc/self/exe)")?;
    drop(theirs);
    let pid = Pid::from_raw(child.id() as i32);
    let fds = match link::recv_tun(&ours) {
        Ok(fds) => fds,
        Err(e) => {
            let _ = waitpid(pid, None);
            return Err(e.context("setting up the program's namespace"));
        }
    };
    info!(
        "exec: {} (pid {pid}) runs in a network namespace of its own, {}: lo and TUN {} ({}, {}), \
         resolver {nameserver}; sockstun stays here and carries its traffic",
        args.command[0],
        if nix::unistd::Uid::effective().is_root() {
            "as root"
        } else {
            "rootless"
        },
        cfg.device,
        cfg.ipv4.map_or("no IPv4".into(), |n| n.to_string()),
        cfg.ipv6.map_or("no IPv6".into(), |n| n.to_string()),
    );
    // `sockstun tun --fd`: the TUN stack adopts (and closes) it.
    // Each queue of a multi-queue device is a descriptor of its own.
    let mut fds = fds.into_iter().map(IntoRawFd::into_raw_fd);
    tun.fd = fds.next();
    tun.queue_fds = fds.collect();
    let state = Rc::new(Cell::new(Program::Waiting));
    let st = state.clone();
    let until = Box::pin(async move {
        // First polled once the stack runs: the program may start.
        if let Err(e) = link::send_go(&ours) {
            error!("{e:#}");
        }
        st.set(Program::Running);
        match signals::supervise(sig, pid).await {
            Ok(code) => {
                info!("exec: the program exited with status {code}: stopping");
                st.set(Program::Exited(code));
            }
            Err(e) => error!("exec: {e:#}"),
        }
    });
    let res = crate::tun::run_until(tun, reload, Some(until));
    match (res, state.get()) {
        (Ok(()), Program::Exited(code)) => Ok(code),
        (Ok(()), _) => bail!("the TUN stack stopped before the program exited"),
        (Err(e), Program::Waiting) => {
            // Our end closed: the namespace side exits without the program.
            let _ = waitpid(pid, None);
            Err(e)
        }
        (Err(e), _) => {
            // Its network is gone with the TUN; tell it, as a shutdown would.
            let _ = kill(pid, Signal::SIGTERM);
            Err(e)
        }
    }
}

/// The namespace side's command line.
fn child_args(
    cfg: &TunConfig,
    nameserver: IpAddr,
    sock: i32,
    log: &str,
    command: &[String],
) -> Vec<String> {
    let mut v: Vec<String> = vec![CHILD.into(), "--log".into(), log.into()];
    v.extend(["--sock".into(), sock.to_string()]);
    v.extend(["--device".into(), cfg.device.clone()]);
    v.extend(["--mtu".into(), cfg.mtu.to_string()]);
    v.extend(["--nameserver".into(), nameserver.to_string()]);
    if let Some(n) = cfg.ipv4 {
        v.extend(["--ipv4".into(), n.to_string()]);
    }
    if let Some(n) = cfg.ipv6 {
        v.extend(["--ipv6".into(), n.to_string()]);
    }
    if cfg.offload {
        v.push("--offload".into());
    }
    v.extend(["--queues".into(), cfg.queues.to_string()]);
    v.push("--".into());
    v.extend(command.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn exec_args(extra: &[&str]) -> ExecArgs {
        let mut argv = vec!["sockstun", "exec", "--proxy", "socks5://127.0.0.1:1080"];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            Command::Exec(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn ipv6_by_default_none_on_request() {
        let a = exec_args(&["--", "curl", "-v"]);
        assert_eq!(a.command, ["curl", "-v"]);
        assert_eq!(tun_args(&a).ipv6.as_deref(), Some(DEFAULT_IPV6));
        let a = exec_args(&["--ipv6", "none", "--", "true"]);
        assert_eq!(tun_args(&a).ipv6, None);
        let a = exec_args(&["--ipv6", "2001:db8::1/64", "--", "true"]);
        assert_eq!(tun_args(&a).ipv6.as_deref(), Some("2001:db8::1/64"));
        // The program is required, and its flags are its own.
        assert!(Cli::try_parse_from(["sockstun", "exec", "--proxy", "socks5://h:1"]).is_err());
        let a = exec_args(&["--", "sh", "-c", "exit 3", "--proxy"]);
        assert_eq!(a.command, ["sh", "-c", "exit 3", "--proxy"]);
    }

    #[test]
    fn the_namespace_side_gets_what_it_needs() {
        let a = exec_args(&[
            "--device", "st9", "--mtu", "1500", "--queues", "2", "--", "dig", "x.test",
        ]);
        let cfg = TunConfig::from_args(&tun_args(&a)).unwrap();
        let ns = resolv::nameserver(&cfg).unwrap();
        let v = child_args(&cfg, ns, 7, "debug", &a.command);
        let want = "exec-child --log debug --sock 7 --device st9 --mtu 1500 --nameserver \
                    198.18.0.2 --ipv4 198.18.0.1/15 --ipv6 2001:2::1/64 --offload --queues 2 -- \
                    dig x.test";
        assert_eq!(v.join(" "), want);
        // And the namespace side takes them back (as main.rs parses them).
        let c = crate::cli::ExecChildArgs::parse_from(v);
        assert_eq!(
            (c.sock, c.mtu, c.offload, c.log.as_str(), c.queues),
            (7, 1500, true, "debug", 2)
        );
        assert_eq!(c.command, ["dig", "x.test"]);
        assert_eq!(c.ipv6.as_deref(), Some("2001:2::1/64"));
    }
}
