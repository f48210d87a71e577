//! Starting the sockstun binary under test: `sockstun tun` on a device in a
//! namespace, `sockstun server` in a namespace. Every test file starts them
//! through these, with its own options.
#![allow(dead_code)]

use super::*;
use std::time::Duration;

/// The TUN's addresses when sockstun creates the device (`--ipv4`, `--ipv6`).
pub const TUN_V4: &str = "198.18.0.1/15";
pub const TUN_V6: &str = "2001:db8:ff::1/64";

/// `sockstun --log LOG tun --proxy PROXY --device DEV ARGS...` spawned in
/// `ns`, not waited for. `SOCKSTUN_TEST_TUN_ARGS` (words split at spaces)
/// comes after ARGS: a whole test file run again with, say, `--warm 0`.
pub fn spawn_tun(ns: &Netns, log: &str, proxy: &str, dev: &str, args: &[&str]) -> Proc {
    let bin = sockstun_bin();
    let mut cmd = vec![
        bin.to_str().unwrap(),
        "--log",
        log,
        "tun",
        "--proxy",
        proxy,
        "--device",
        dev,
    ];
    cmd.extend_from_slice(args);
    let more = std::env::var("SOCKSTUN_TEST_TUN_ARGS").unwrap_or_default();
    cmd.extend(more.split_whitespace());
    ns.spawn(&cmd)
}

/// `spawn_tun`, once it says the device is up (within 10 s; panics with its
/// log otherwise).
pub fn start_tun(ns: &Netns, log: &str, proxy: &str, dev: &str, args: &[&str]) -> Proc {
    let mut p = spawn_tun(ns, log, proxy, dev, args);
    let up = wait_until(Duration::from_secs(10), || {
        p.log().contains("TUN device up")
    });
    if !up {
        panic!(
            "sockstun tun did not bring {dev} up (running: {}):\n{}",
            p.is_running(),
            p.log()
        );
    }
    p
}

/// `sockstun [--log LOG] server ARGS...` spawned in `ns`, once it listens on
/// every `--listen` address of ARGS (within 20 s; panics with its log
/// otherwise).
pub fn start_server(ns: &Netns, log: Option<&str>, args: &[&str]) -> Proc {
    let bin = sockstun_bin();
    let mut cmd = vec![bin.to_str().unwrap()];
    if let Some(log) = log {
        cmd.extend_from_slice(&["--log", log]);
    }
    cmd.push("server");
    cmd.extend_from_slice(args);
    let listeners = args.iter().filter(|a| **a == "--listen").count();
    let mut p = ns.spawn(&cmd);
    let ok = wait_until(Duration::from_secs(20), || {
        p.log().matches("listening on").count() >= listeners || !p.is_running()
    });
    assert!(
        ok && p.is_running(),
        "sockstun server did not start: {}",
        p.log()
    );
    p
}
