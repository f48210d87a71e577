//! sockstun's side while the program runs: signals are taken through a
//! signalfd (blocked in every thread, so none ends sockstun), passed on to
//! the program, and its exit read with waitpid. sockstun stops when the
//! program does, never before.
//!
//! Ctrl-C: the terminal sends SIGINT to its whole foreground process group,
//! the program included, so a SIGINT (SIGQUIT, SIGHUP) sent by the kernel
//! is not passed on a second time; one sent with kill(1) is. SIGTERM is
//! always passed on.

use anyhow::Context as _;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tracing::{debug, info};

/// The blocked signals and the descriptor they are read from.
pub struct Signals(SignalFd);

/// Block the signals sockstun takes for the program (SIGHUP too unless a
/// config file is reloaded by it). Call before any thread exists: threads
/// inherit the mask, and a signal sent to a thread that has not blocked it
/// would take its default action (ending sockstun). Spawned processes get
/// an empty mask again (std resets it).
pub fn block(with_hup: bool) -> anyhow::Result<Signals> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    if with_hup {
        set.add(Signal::SIGHUP);
    }
    set.thread_block().context("blocking signals")?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    Ok(Signals(fd))
}

/// Whether a signal sockstun received goes on to the program. `code` is
/// its si_code: SI_KERNEL for one the terminal sent (to the program too).
pub fn passes_on(signo: i32, code: i32) -> bool {
    match signo {
        libc::SIGCHLD => false,
        libc::SIGINT | libc::SIGQUIT | libc::SIGHUP => code != libc::SI_KERNEL,
        _ => true,
    }
}

/// A shell's exit status for a wait status: the code, or 128+N for signal
/// N; None while the process lives.
pub fn exit_code(st: WaitStatus) -> Option<i32> {
    match st {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// The program's exit code, if it has exited (reaped).
fn reap(child: Pid) -> anyhow::Result<Option<i32>> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(st) => Ok(exit_code(st)),
        Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(e).context("waitpid on the program"),
    }
}

/// Pass signals on to `child` until it exits; its exit status.
pub async fn supervise(sig: Signals, child: Pid) -> anyhow::Result<i32> {
    // SAFETY: the AsyncFd owns the SignalFd, which keeps its descriptor
    // open and unreplaced until the AsyncFd is dropped.
    let fd = unsafe { AsyncFd::register(sig.0) }.context("registering the signalfd")?;
    loop {
        // Before every wait: the program may have ended before we looked.
        if let Some(code) = reap(child)? {
            return Ok(code);
        }
        let mut guard = fd.readable().await.context("waiting for signals")?;
        loop {
            match guard.get_inner().read_signal() {
                Ok(Some(si)) => forward(child, si.ssi_signo as i32, si.ssi_code),
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("reading the signalfd"),
            }
        }
    }
}

fn forward(child: Pid, signo: i32, code: i32) {
    let Ok(s) = Signal::try_from(signo) else {
        return;
    };
    if !passes_on(signo, code) {
        if signo != libc::SIGCHLD {
            debug!("{s} from the terminal: the program has it too; waiting for it to exit");
        }
        return;
    }
    info!("{s}: passed on to the program; waiting for it to exit");
    if let Err(e) = kill(child, s) {
        debug!("passing {s} on: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_passed_on() {
        assert!(passes_on(libc::SIGTERM, libc::SI_USER));
        assert!(passes_on(libc::SIGTERM, libc::SI_KERNEL));
        assert!(passes_on(libc::SIGINT, libc::SI_USER));
        assert!(
            !passes_on(libc::SIGINT, libc::SI_KERNEL),
            "Ctrl-C reached it already"
        );
        assert!(!passes_on(libc::SIGQUIT, libc::SI_KERNEL));
        assert!(passes_on(libc::SIGHUP, libc::SI_USER));
        assert!(!passes_on(libc::SIGCHLD, libc::SI_USER));
    }

    #[test]
    fn exit_codes_as_shells_report_them() {
        let p = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, false)),
            Some(143)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, true)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
