//! systemd readiness (`Type=notify`, dist/*.service) without systemd: the
//! test binds the Unix datagram socket a service manager would, passes it in
//! NOTIFY_SOCKET, and reads what sockstun says. `READY=1` must come only once
//! the service can be used (the server accepts on every listener; the TUN
//! device is up), `STOPPING=1` at SIGTERM, before a clean exit.
//! The units themselves and the package: `scripts/package.sh --check`.
mod common;

use common::*;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The service manager's end: a datagram socket in a temporary directory.
struct Notify {
    sock: UnixDatagram,
    path: String,
    _dir: TempDir,
}

impl Notify {
    fn new() -> Notify {
        let dir = TempDir::new("notify");
        let path = dir.file("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        Notify {
            sock,
            path,
            _dir: dir,
        }
    }

    /// `NOTIFY_SOCKET=...`, for `env` in front of a command line.
    fn env(&self) -> String {
        format!("NOTIFY_SOCKET={}", self.path)
    }

    /// The next message holding `state` (e.g. "READY=1"), within `timeout`;
    /// every message received on the way is returned too, in order.
    fn wait_for(&self, state: &str, timeout: Duration) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                break;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == state) {
                return Ok(msg);
            }
            seen.push(msg);
        }
        Err(seen)
    }
}

/// `sockstun server` says READY=1 once both its listeners accept, with a
/// status line, and STOPPING=1 at SIGTERM, then exits 0.
#[test]
fn server_notifies_ready_and_stopping() {
    if !require_root("server_notifies_ready_and_stopping") {
        return;
    }
    let ns = Netns::new("sdn");
    let notify = Notify::new();
    let bin = sockstun_bin();
    let env = notify.env();
    let mut srv = ns.spawn(&[
        "env",
        &env,
        bin.to_str().unwrap(),
        "server",
        "--listen",
        "127.0.0.1:1080",
        "--listen",
        "127.0.0.1:1081",
    ]);
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(20))
        .unwrap_or_else(|seen| panic!("no READY=1 (got {seen:?}):\n{}", srv.log()));
    // At READY every listener accepts: no retry, no wait.
    let accepted = ns.run_in(|| {
        ["127.0.0.1:1080", "127.0.0.1:1081"].map(|a| {
            TcpStream::connect(a)
                .map(drop)
                .map_err(|e| format!("{a}: {e}"))
        })
    });
    for a in accepted {
        a.unwrap_or_else(|e| panic!("READY=1 before listening: {e}\n{}", srv.log()));
    }
    assert!(
        ready.contains("STATUS=listening on 2 address(es)"),
        "{ready:?}"
    );
    assert!(srv.is_running(), "{}", srv.log());

    srv.signal(libc::SIGTERM);
    notify
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .unwrap_or_else(|seen| panic!("no STOPPING=1 (got {seen:?}):\n{}", srv.log()));
    let st = srv
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", srv.log());
}

/// `sockstun tun` says READY=1 once its device exists and is up (route-up,
/// the unit's ExecStartPost=, needs exactly that), STOPPING=1 at SIGTERM.
/// The proxy need not answer: that is a warning, and the service is up.
#[test]
fn tun_notifies_ready_and_stopping() {
    if !require_root("tun_notifies_ready_and_stopping") {
        return;
    }
    let ns = Netns::new("sdt");
    let notify = Notify::new();
    let dev = uniq("sdt");
    let bin = sockstun_bin();
    let env = notify.env();
    let mut tun = ns.spawn(&[
        "env",
        &env,
        bin.to_str().unwrap(),
        "tun",
        "--proxy",
        "socks5://127.0.0.1:1",
        "--device",
        &dev,
    ]);
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(20))
        .unwrap_or_else(|seen| panic!("no READY=1 (got {seen:?}):\n{}", tun.log()));
    let link = ns.ip(&["-o", "link", "show", "dev", &dev]);
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains(",UP"),
        "device not up at READY=1: {link}\n{}",
        tun.log()
    );
    assert!(
        ready.contains(&format!("STATUS=device {dev} up")),
        "{ready:?}"
    );

    tun.signal(libc::SIGTERM);
    notify
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .unwrap_or_else(|seen| panic!("no STOPPING=1 (got {seen:?}):\n{}", tun.log()));
    let st = tun
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", tun.log());
}

/// Without NOTIFY_SOCKET (not started by systemd) nothing changes: the
/// server starts and stops as before, and says nothing about sd_notify.
#[test]
fn no_notify_socket_no_notification() {
    if !require_root("no_notify_socket_no_notification") {
        return;
    }
    let ns = Netns::new("sdx");
    let mut srv = start_server(&ns, Some("debug"), &["--listen", "127.0.0.1:1080"]);
    srv.signal(libc::SIGTERM);
    let st = srv
        .wait_exit(Duration::from_secs(10))
        .expect("no exit on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(!srv.log().contains("sd_notify"), "{}", srv.log());
}
