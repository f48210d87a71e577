//! Readiness for a service manager: systemd's `Type=notify` protocol
//! (sd_notify(3)), through the `sd-notify` crate.
//!
//! `sockstun server` says `READY=1` once every listener is bound, `sockstun
//! tun` once its device is up and the stack is about to run; both say
//! `STOPPING=1` when a signal ends them. Each is one datagram to the socket
//! named by `NOTIFY_SOCKET`; without that variable (not started by systemd)
//! nothing is sent. A failure to send is logged and otherwise ignored: the
//! service manager then times the start out, which says more than dying here.

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Startup is finished: `READY=1`, with `status` as the unit's status line
/// (`systemctl status`).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has begun: `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // NOTIFY_SOCKET stays set: nothing sockstun runs is a service of its own,
    // and systemd takes notifications from the main process only.
    match sd_notify::notify(false, states) {
        Ok(()) => debug!("sd_notify: {states:?}"),
        Err(e) => warn!("sd_notify: could not tell the service manager {states:?}: {e}"),
    }
}
