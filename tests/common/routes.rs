//! The routing scripts (scripts/route-up, route-down, gateway-up,
//! gateway-down) run in test namespaces: how to run them, the snapshot of
//! everything they may touch, and the namespaces they run in (a "machine"
//! with an uplink to an "isp", a LAN behind it). Used by route_scripts (a
//! stand-in TUN) and route_e2e (the real sockstun and dante).
#![allow(dead_code)]

use super::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// The path of scripts/NAME.
pub fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A command's status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run a script inside the namespace; the output, whatever the status.
pub fn run_script(ns: &Netns, name: &str, args: &[&str]) -> Output {
    let path = script(name);
    let mut cmd = vec![path.as_str()];
    cmd.extend_from_slice(args);
    ns.exec(&cmd)
}

/// Run a script inside the namespace; panics unless it succeeds.
pub fn ok_script(ns: &Netns, name: &str, args: &[&str]) -> Output {
    let out = run_script(ns, name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        text(&out)
    );
    out
}

/// `sh -c SCRIPT` in `ns`: its stdout (panics when it fails).
pub fn stdout(ns: &Netns, script: &str) -> String {
    String::from_utf8_lossy(&ns.sh(script).stdout).into_owned()
}

/// Everything the scripts may touch, as text: routes of every table, rules,
/// the nftables ruleset, forwarding and rp_filter sysctls, the resolver file
/// (bytes and inode).
pub fn snapshot(ns: &Netns, resolv: Option<&PathBuf>) -> String {
    let mut s = stdout(
        ns,
        "echo '## ip route'; ip route show table all; echo '## ip -6 route'; ip -6 route show table all; \
         echo '## ip rule'; ip rule; echo '## ip -6 rule'; ip -6 rule; \
         echo '## nft'; nft list ruleset; \
         echo '## sysctl'; grep -r . /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/*/forwarding \
            /proc/sys/net/ipv4/conf/*/rp_filter /proc/sys/net/ipv6/conf/*/forwarding",
    );
    if let Some(p) = resolv {
        let meta = std::fs::metadata(p).expect("resolver file");
        s.push_str(&format!(
            "## resolver (inode {})\n{}",
            meta.ino(),
            std::fs::read_to_string(p).expect("read resolver")
        ));
    }
    s
}

/// Wait until the kernel has finished configuring `ifaces` (their IPv6
/// link-local address appears once the carrier is up), so that a snapshot
/// taken now does not change later on its own.
pub fn settle(ns: &Netns, ifaces: &[&str]) {
    for i in ifaces {
        let ok = wait_until(Duration::from_secs(10), || {
            let out = ns.exec(&["ip", "-6", "addr", "show", "dev", i, "scope", "link"]);
            String::from_utf8_lossy(&out.stdout).contains("fe80")
        });
        assert!(ok, "{i}: no link-local address after 10 s");
    }
}

/// A machine (namespace `<tag>m`) with an uplink to an isp (`<tag>i`) and
/// default routes through it, as a real host has; returns (machine, isp).
///
/// ```text
///  machine up0 198.51.100.2/25, 2001:db8:1::2/64 -- isp0 .1, ::1  isp
/// ```
pub fn uplinked_machine(tag: &str) -> (Netns, Netns) {
    let m = Netns::new(&format!("{tag}m"));
    let isp = Netns::new(&format!("{tag}i"));
    veth(
        &m,
        "up0",
        &["198.51.100.2/25", "2001:db8:1::2/64"],
        &isp,
        "isp0",
        &["198.51.100.1/25", "2001:db8:1::1/64"],
    );
    m.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    m.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
    settle(&m, &["up0"]);
    (m, isp)
}

/// Wait until `sockstun tun` (`p`) brought `dev` in `m` up with its carrier,
/// then for the link-local address the kernel gives it shortly after, so
/// that snapshots taken from now on stay valid.
pub fn wait_tun_up(m: &Netns, dev: &str, p: &Proc) {
    let up = wait_until(Duration::from_secs(10), || {
        let out = m.exec(&["ip", "-o", "link", "show", "dev", dev]);
        let s = String::from_utf8_lossy(&out.stdout);
        s.contains(",UP") && !s.contains("NO-CARRIER")
    });
    assert!(up, "sockstun tun did not bring {dev} up:\n{}", p.log());
    settle(m, &[dev]);
}

/// The target (namespace `<tag>t`) behind the isp, as the internet is:
///
/// ```text
///  isp p1 203.0.113.1/24, 2001:db8:2::1/64 -- t0 .2, ::2  target
/// ```
pub fn target_behind(tag: &str, isp: &Netns) -> Netns {
    let target = Netns::new(&format!("{tag}t"));
    veth(
        isp,
        "p1",
        &["203.0.113.1/24", "2001:db8:2::1/64"],
        &target,
        "t0",
        &["203.0.113.2/24", "2001:db8:2::2/64"],
    );
    target
}

/// A LAN client (namespace `<tag>l`) behind the machine `m`, with default
/// routes through it.
///
/// ```text
///  machine lan0 198.51.100.129/25, 2001:db8:3::1/64 -- eth0 .130, ::2  lan
/// ```
pub fn lan_behind(tag: &str, m: &Netns) -> Netns {
    let lan = Netns::new(&format!("{tag}l"));
    veth(
        m,
        "lan0",
        &["198.51.100.129/25", "2001:db8:3::1/64"],
        &lan,
        "eth0",
        &["198.51.100.130/25", "2001:db8:3::2/64"],
    );
    lan.ip(&["route", "add", "default", "via", "198.51.100.129"]);
    lan.ip(&["-6", "route", "add", "default", "via", "2001:db8:3::1"]);
    settle(m, &["lan0"]);
    lan
}
