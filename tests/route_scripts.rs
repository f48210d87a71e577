//! scripts/route-up, route-down, gateway-up, gateway-down without sockstun:
//! a persistent TUN made with `ip tuntap` stands in for sockstun's device. Each
//! test builds a "machine" namespace with an uplink and default routes (as a
//! real host has), runs the scripts in it with `ip netns exec`, checks what they
//! set up, and that the down script puts routes, rules, sysctls, nftables and
//! the resolver file back byte for byte, also twice and after the TUN vanished.

mod common;

use common::routes::*;
use common::{
    require_root, spawn_tun, uniq, wait_until, Dante, EtcNetns, Netns, Proc, TempDir, TUN_V4,
    TUN_V6,
};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A machine with an uplink to an "isp" namespace and default routes through it.
struct Machine {
    m: Netns,
    _isp: Netns,
    tmp: TempDir,
}

impl Machine {
    fn new(tag: &str) -> Machine {
        let (m, isp) = uplinked_machine(tag);
        Machine {
            m,
            _isp: isp,
            tmp: TempDir::new("routes"),
        }
    }

    /// A stand-in for sockstun's device: a persistent TUN, addressed and up.
    fn tun(&self, name: &str, mtu: &str) {
        self.m.ip(&["tuntap", "add", "mode", "tun", "name", name]);
        self.m.ip(&["addr", "add", "198.18.0.1/15", "dev", name]);
        self.m
            .ip(&["-6", "addr", "add", "fd00:5::1/64", "dev", name, "nodad"]);
        self.m.ip(&["link", "set", name, "mtu", mtu, "up"]);
    }

    /// A file of the machine's temporary directory (which also takes what
    /// the scripts put beside it: locks, the saved resolver), with `content`
    /// if given.
    fn temp(&self, name: &str, content: Option<&str>) -> PathBuf {
        let p = self.tmp.join(name);
        if let Some(c) = content {
            std::fs::write(&p, c).expect("write temp file");
        }
        p
    }
}

const RESOLV: &str = "# the machine's own resolver\nsearch example.test\nnameserver 192.0.2.53\noptions edns0 timeout:2\n";

fn route_get(ns: &Netns, args: &str) -> String {
    let out = ns.exec(&["sh", "-c", &format!("ip {args}")]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn route_up_down_restores_exactly() {
    if !require_root("route_up_down_restores_exactly") {
        return;
    }
    let mc = Machine::new("ru");
    let tun = uniq("rt");
    mc.tun(&tun, "1500");
    let resolv = mc.temp("resolv", Some(RESOLV));
    let state = mc.temp("state", None);
    let m = &mc.m;
    let before = snapshot(m, Some(&resolv));
    let inode = std::fs::metadata(&resolv).unwrap().ino();

    let (rs, st) = (resolv.to_str().unwrap(), state.to_str().unwrap());
    let up_args = [
        "--device",
        &tun,
        "--proxy",
        "203.0.113.7:1080,[2001:db8:7::7]:1080",
        "--fwmark",
        "0x438",
        "--exclude",
        "192.0.2.0/24",
        "--exclude",
        "2001:db8:9::/48",
        "--resolv-conf",
        rs,
        "--state",
        st,
    ];
    ok_script(m, "route-up", &up_args);

    // The rules, in the order that makes loops impossible.
    let rules4 = stdout(m, "ip rule");
    for want in [
        "10800:\tfrom all fwmark 0x438 lookup main",
        "10801:\tfrom all fwmark 0x438 unreachable",
        "10802:\tfrom all to 203.0.113.7 lookup main",
        "10803:\tfrom all to 203.0.113.7 unreachable",
        "10802:\tfrom all to 192.0.2.0/24 lookup main",
        "10806:\tfrom all lookup main suppress_prefixlength 0",
        "10807:\tfrom all lookup 1080",
    ] {
        assert!(rules4.contains(want), "missing {want:?} in\n{rules4}");
    }
    let rules6 = stdout(m, "ip -6 rule");
    for want in [
        "10800:\tfrom all fwmark 0x438 lookup main",
        "10802:\tfrom all to 2001:db8:7::7 lookup main",
        "10802:\tfrom all to 2001:db8:9::/48 lookup main",
        "10807:\tfrom all lookup 1080",
    ] {
        assert!(rules6.contains(want), "missing {want:?} in\n{rules6}");
    }
    // Where packets go now.
    let dev = format!("dev {tun} ");
    for (q, want) in [
        ("route get 203.0.113.2", dev.as_str()),
        ("-6 route get 2001:db8:2::2", dev.as_str()),
        ("route get 198.18.0.2", dev.as_str()),
        ("route get 203.0.113.7", "via 198.51.100.1 dev up0"),
        ("-6 route get 2001:db8:7::7", "via 2001:db8:1::1 dev up0"),
        ("route get 192.0.2.1", "via 198.51.100.1 dev up0"),
        ("-6 route get 2001:db8:9::1", "via 2001:db8:1::1 dev up0"),
        ("route get 198.51.100.1", "198.51.100.1 dev up0"),
        (
            "route get 203.0.113.2 mark 0x438",
            "via 198.51.100.1 dev up0",
        ),
        (
            "-6 route get 2001:db8:2::2 mark 0x438",
            "via 2001:db8:1::1 dev up0",
        ),
    ] {
        let got = route_get(m, q);
        assert!(got.contains(want), "ip {q}: want {want:?}, got {got}");
    }
    // The resolver: same inode, virtual DNS only, search and options kept.
    let r = std::fs::read_to_string(&resolv).unwrap();
    assert_eq!(
        std::fs::metadata(&resolv).unwrap().ino(),
        inode,
        "resolver file replaced"
    );
    let ns_lines: Vec<_> = r.lines().filter(|l| l.starts_with("nameserver")).collect();
    assert_eq!(ns_lines, ["nameserver 198.18.0.2"], "{r}");
    assert!(
        r.contains("search example.test\n") && r.contains("options edns0 timeout:2\n"),
        "{r}"
    );

    // Idempotent: a second route-up leaves the same configuration.
    let after_first = snapshot(m, Some(&resolv));
    ok_script(m, "route-up", &up_args);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        after_first,
        "second route-up differs"
    );

    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        before,
        "route-down did not restore"
    );
    assert!(!state.exists(), "state file left behind");
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        before,
        "second route-down changed something"
    );
}

#[test]
fn route_down_after_tun_vanished() {
    if !require_root("route_down_after_tun_vanished") {
        return;
    }
    // sockstun creates its device; SIGKILLed, the device and its routes vanish.
    let mc = Machine::new("rk");
    let resolv = mc.temp("resolv", Some(RESOLV));
    let state = mc.temp("state", None);
    let m = &mc.m;
    let before = snapshot(m, Some(&resolv));
    let tun = uniq("rt");
    mc.tun(&tun, "1500");
    let (rs, st) = (resolv.to_str().unwrap(), state.to_str().unwrap());
    ok_script(
        m,
        "route-up",
        &[
            "--device",
            &tun,
            "--proxy",
            "198.51.100.1",
            "--resolv-conf",
            rs,
            "--state",
            st,
        ],
    );
    m.ip(&["link", "del", &tun]);
    // Kill switch: with the TUN gone nothing leaks out of the uplink...
    for q in ["route get 203.0.113.2", "-6 route get 2001:db8:2::2"] {
        let got = route_get(m, q);
        assert!(
            !got.contains("dev up0") && got.contains("No route to host"),
            "ip {q}: leaks without the TUN: {got}"
        );
    }
    // ...but the proxy and the local subnet stay reachable.
    let got = route_get(m, "route get 198.51.100.1");
    assert!(got.contains("dev up0"), "{got}");

    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        before,
        "route-down after the TUN vanished"
    );
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, Some(&resolv)), before);
}

#[test]
fn route_up_refuses_bad_settings_and_rolls_back() {
    if !require_root("route_up_refuses_bad_settings_and_rolls_back") {
        return;
    }
    let mc = Machine::new("rb");
    let tun = uniq("rt");
    mc.tun(&tun, "1500");
    let resolv = mc.temp("resolv", Some(RESOLV));
    let state = mc.temp("state", None);
    let m = &mc.m;
    let (rs, st) = (resolv.to_str().unwrap(), state.to_str().unwrap());
    // Someone else's rule and table, which route-up must not disturb.
    m.ip(&[
        "rule",
        "add",
        "pref",
        "10803",
        "to",
        "192.0.2.9",
        "lookup",
        "main",
    ]);
    m.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "198.51.100.1",
        "table",
        "77",
    ]);
    let before = snapshot(m, Some(&resolv));
    let base = ["--resolv-conf", rs, "--state", st];
    for (args, why) in [
        (vec!["--device", tun.as_str()], "--proxy"),
        (
            vec![
                "--device",
                "nosuchdev0",
                "--proxy",
                "198.51.100.1",
                "--wait",
                "0",
            ],
            "does not exist",
        ),
        (
            vec!["--device", tun.as_str(), "--proxy", "not_an/address!"],
            "--proxy",
        ),
        (
            vec![
                "--device",
                tun.as_str(),
                "--proxy",
                "198.51.100.1",
                "--exclude",
                "10.0.0.0/40",
            ],
            "--exclude",
        ),
        (
            vec!["--device", tun.as_str(), "--proxy", "198.51.100.1"],
            "10803",
        ),
        (
            vec![
                "--device",
                tun.as_str(),
                "--proxy",
                "198.51.100.1",
                "--priority",
                "10900",
                "--table",
                "77",
            ],
            "table 77",
        ),
        // Passes validation, fails half-way (the kernel refuses the mark): rolled back.
        (
            vec![
                "--device",
                tun.as_str(),
                "--proxy",
                "198.51.100.1",
                "--priority",
                "10900",
                "--fwmark",
                "0x1ffffffff",
            ],
            "undoing",
        ),
    ] {
        let mut a = args.clone();
        a.extend_from_slice(&base);
        let out = run_script(m, "route-up", &a);
        assert!(!out.status.success(), "route-up {a:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "route-up {a:?}: want {why:?} in: {err}");
        assert_eq!(
            snapshot(m, Some(&resolv)),
            before,
            "route-up {a:?} left changes"
        );
        assert!(!state.exists() || std::fs::read_to_string(&state).unwrap().is_empty());
    }
}

/// Gateway with an uplink, a LAN link to a client namespace and a TUN stand-in.
fn gateway(tag: &str, mtu: &str) -> (Machine, Netns, String) {
    let mc = Machine::new(tag);
    let lan = lan_behind(tag, &mc.m);
    // As a hardened host has it: strict reverse-path filtering.
    mc.m.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1");
    let tun = uniq("gt");
    mc.tun(&tun, mtu);
    (mc, lan, tun)
}

#[test]
fn gateway_up_down_restores_exactly() {
    if !require_root("gateway_up_down_restores_exactly") {
        return;
    }
    let (mc, _lan, tun) = gateway("gu", "1280");
    let state = mc.temp("state", None);
    let st = state.to_str().unwrap();
    let m = &mc.m;
    let before = snapshot(m, None);
    let args = [
        "--device",
        &tun,
        "--lan",
        "lan0",
        "--exclude",
        "192.0.2.0/24",
        "--state",
        st,
    ];
    ok_script(m, "gateway-up", &args);

    let dev = format!("dev {tun} ");
    for (q, want) in [
        (
            "route get 203.0.113.2 from 198.51.100.130 iif lan0",
            dev.as_str(),
        ),
        (
            "-6 route get 2001:db8:2::2 from 2001:db8:3::2 iif lan0",
            dev.as_str(),
        ),
        (
            "route get 192.0.2.1 from 198.51.100.130 iif lan0",
            "via 198.51.100.1 dev up0",
        ),
        // The gateway's own traffic is left alone.
        ("route get 203.0.113.2", "via 198.51.100.1 dev up0"),
        ("-6 route get 2001:db8:2::2", "via 2001:db8:1::1 dev up0"),
    ] {
        let got = route_get(m, q);
        assert!(got.contains(want), "ip {q}: want {want:?}, got {got}");
    }
    let sys = stdout(
        m,
        &format!(
            "cat /proc/sys/net/ipv4/conf/lan0/forwarding /proc/sys/net/ipv4/conf/{tun}/forwarding \
             /proc/sys/net/ipv4/conf/up0/forwarding /proc/sys/net/ipv6/conf/all/forwarding"
        ),
    );
    assert_eq!(sys, "1\n1\n0\n1\n", "forwarding lan0, tun, up0, v6");
    // Replies sockstun writes into the TUN towards the LAN pass the (strict)
    // reverse-path filter: `ip route get ... iif` runs the same check.
    let got = route_get(
        m,
        &format!("route get 198.51.100.130 from 203.0.113.2 iif {tun}"),
    );
    assert!(
        got.contains("dev lan0"),
        "reply from the TUN dropped: {got}"
    );
    let nft = stdout(m, "nft list ruleset");
    for want in [
        "maxseg size set 1240",
        "maxseg size set 1220",
        "dnat ip to 198.18.0.2",
        "dnat ip6 to fd00:5::2",
    ] {
        assert!(nft.contains(want), "missing {want:?} in\n{nft}");
    }

    let after_first = snapshot(m, None);
    ok_script(m, "gateway-up", &args);
    assert_eq!(snapshot(m, None), after_first, "second gateway-up differs");
    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(snapshot(m, None), before, "gateway-down did not restore");
    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(
        snapshot(m, None),
        before,
        "second gateway-down changed something"
    );
}

#[test]
fn gateway_down_after_tun_vanished() {
    if !require_root("gateway_down_after_tun_vanished") {
        return;
    }
    let (mc, _lan, tun) = gateway("gk", "1500");
    let state = mc.temp("state", None);
    let st = state.to_str().unwrap();
    let m = &mc.m;
    m.ip(&["link", "del", &tun]);
    let before = snapshot(m, None);
    mc.tun(&tun, "1500");
    ok_script(
        m,
        "gateway-up",
        &["--device", &tun, "--lan", "lan0", "--state", st],
    );
    m.ip(&["link", "del", &tun]);
    let got = route_get(m, "route get 203.0.113.2 from 198.51.100.130 iif lan0");
    assert!(
        !got.contains("up0"),
        "LAN traffic leaks out of the uplink without the TUN: {got}"
    );
    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(
        snapshot(m, None),
        before,
        "gateway-down after the TUN vanished"
    );
    ok_script(m, "gateway-down", &["--state", st]);
    assert_eq!(snapshot(m, None), before);
}

#[test]
fn scripts_have_help() {
    for s in ["route-up", "route-down", "gateway-up", "gateway-down"] {
        let out = std::process::Command::new(script(s))
            .arg("--help")
            .output()
            .expect("run script");
        assert!(out.status.success(), "{s} --help: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.starts_with("Usage: "), "{s} --help: {help}");
        let out = std::process::Command::new(script(s))
            .arg("--bogus")
            .output()
            .expect("run script");
        assert!(!out.status.success(), "{s} accepted --bogus");
    }
}

/// When /etc/resolv.conf is systemd-resolved's stub, route-up configures the
/// TUN link through resolvectl instead of rewriting the file, and route-down
/// reverts it. A recording stand-in for resolvectl (first in PATH) and a stub
/// resolv.conf that `ip netns exec` mounts over /etc/resolv.conf for this
/// namespace only play the part of systemd-resolved.
#[test]
fn route_up_uses_systemd_resolved_when_it_manages_dns() {
    if !require_root("route_up_uses_systemd_resolved_when_it_manages_dns") {
        return;
    }
    let mc = Machine::new("rr");
    let tun = uniq("rt");
    mc.tun(&tun, "1500");
    let state = mc.temp("state", None);
    let bin = TempDir::new("fakebin");
    let calls = bin.join("calls");
    let fake = bin.join("resolvectl");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$*\" >>'{}'\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let etc = EtcNetns::new(&mc.m);
    let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
    let stub_file = etc.file("resolv.conf", stub);
    let path = format!(
        "PATH={}:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.path().display()
    );
    let st = state.to_str().unwrap();
    let m = &mc.m;
    let before = snapshot(m, None);

    let up = script("route-up");
    let out = m.exec(&[
        "env",
        &path,
        &up,
        "--device",
        &tun,
        "--proxy",
        "198.51.100.1",
        "--state",
        st,
    ]);
    let down = script("route-down");
    let calls_up = std::fs::read_to_string(&calls).unwrap_or_default();
    let stub_after_up = std::fs::read_to_string(&stub_file).unwrap();
    let out2 = m.exec(&["env", &path, &down, "--state", st]);
    let calls_all = std::fs::read_to_string(&calls).unwrap_or_default();
    let after = snapshot(m, None);

    assert!(out.status.success(), "route-up: {}", text(&out));
    assert!(out2.status.success(), "route-down: {}", text(&out2));
    assert_eq!(
        calls_up,
        format!("dns {tun} 198.18.0.2\ndomain {tun} ~.\ndefault-route {tun} yes\n")
    );
    assert_eq!(
        stub_after_up, stub,
        "the stub resolv.conf must be left alone"
    );
    assert_eq!(calls_all, format!("{calls_up}revert {tun}\n"));
    assert_eq!(after, before);
}

// --- route-up --uid / --cgroup: only some processes through the TUN ----------

/// The cgroup v2 hierarchy as this (root mount namespace) test process sees
/// it: /sys/fs/cgroup on a unified layout, /sys/fs/cgroup/unified on a hybrid
/// one (as here and in CI). `ip netns exec` remounts /sys without it, which is
/// why route-up mounts its own view (and why processes are moved into a
/// cgroup from here, before they enter the namespace).
fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mi.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let Some(i) = f.iter().position(|x| *x == "-") {
            if f.get(i + 1) == Some(&"cgroup2") {
                return PathBuf::from(f[4]);
            }
        }
    }
    panic!("no cgroup2 file system mounted: route-up --cgroup cannot be tested here\n{mi}");
}

/// A cgroup `<unique>/svc` created for a test (route-up selects the parent,
/// the processes run in the child: a slice selects its services); every
/// process left in it is killed and both are removed on drop.
struct Cgroup {
    parent: PathBuf,
    child: PathBuf,
    /// The parent's path relative to the cgroup v2 root, for --cgroup.
    rel: String,
}

impl Cgroup {
    fn new(tag: &str) -> Cgroup {
        let rel = uniq(&format!("st-{tag}"));
        let parent = cgroup2_root().join(&rel);
        let child = parent.join("svc");
        std::fs::create_dir_all(&child).expect("mkdir cgroup");
        Cgroup { parent, child, rel }
    }

    /// `cmd` run inside the namespace from a process of the child cgroup
    /// (it moves itself there before exec, so every socket it opens belongs
    /// to the cgroup).
    fn exec(&self, ns: &Netns, cmd: &[&str]) -> Output {
        let procs = self.child.join("cgroup.procs");
        Command::new("sh")
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(&procs)
            .args(["ip", "netns", "exec", &ns.name])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("spawn sh")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in [&self.child, &self.parent] {
            let procs = dir.join("cgroup.procs");
            let _ = wait_until(Duration::from_secs(5), || {
                let pids = std::fs::read_to_string(&procs).unwrap_or_default();
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on a pid listed in our own test cgroup.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                std::fs::remove_dir(dir).is_ok() || !dir.exists()
            });
        }
    }
}

/// Answers every HTTP GET with the address of its peer, as the target sees it.
const WHOAMI: &str = "import http.server, socket\n\
class H(http.server.BaseHTTPRequestHandler):\n    \
    def do_GET(self):\n        \
        b = self.client_address[0].removeprefix('::ffff:').encode()\n        \
        self.send_response(200)\n        \
        self.send_header('Content-Length', str(len(b)))\n        \
        self.end_headers()\n        \
        self.wfile.write(b)\n    \
    def log_message(self, *a):\n        pass\n\
class S(http.server.ThreadingHTTPServer):\n    address_family = socket.AF_INET6\n\
S(('::', 80), H).serve_forever()\n";

/// The selection network: a target the machine reaches both directly (the isp
/// forwards) and through dante on the isp, so the peer address the target
/// reports tells the two paths apart; a resolver on the isp (dnsmasq) that
/// answers every name with 203.0.113.53.
///
/// ```text
///  machine up0 198.51.100.2/25 -- isp0 .1/25 (danted :1080, dnsmasq :53) p1 203.0.113.1 -- t0 .2 target
///          2001:db8:1::2/64        ::1                                     2001:db8:2::1     ::2
/// ```
/// Through the proxy the target sees 203.0.113.1 / 2001:db8:2::1, directly
/// 198.51.100.2 / 2001:db8:1::2.
struct SelNet {
    m: Netns,
    _isp: Netns,
    _target: Netns,
    tmp: TempDir,
    /// The machine's resolver file (/etc/resolv.conf of its namespace).
    resolv: PathBuf,
    _etc: Vec<EtcNetns>,
    dante: Proc,
    _web: Proc,
    _dns: Proc,
}

const VIA_PROXY: &str = "203.0.113.1";
const VIA_PROXY6: &str = "2001:db8:2::1";
const DIRECT: &str = "198.51.100.2";
const DIRECT6: &str = "2001:db8:1::2";
const REAL_ANSWER: &str = "203.0.113.53";
const SEL_RESOLV: &str =
    "search example.test\nnameserver 198.51.100.1\noptions timeout:2 attempts:1\n";

impl SelNet {
    fn new(tag: &str) -> SelNet {
        let (m, isp) = uplinked_machine(tag);
        let target = target_behind(tag, &isp);
        target.ip(&["route", "add", "default", "via", "203.0.113.1"]);
        target.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"]);
        isp.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        settle(&isp, &["p1"]);
        let tmp = TempDir::new("route-sel");
        let etc_isp = EtcNetns::new(&isp);
        etc_isp.file("hosts", "127.0.0.1 localhost\n203.0.113.2 target.test\n");
        let etc_m = EtcNetns::new(&m);
        let resolv = etc_m.file("resolv.conf", SEL_RESOLV);
        let dante = Dante {
            internal: &["198.51.100.1", "2001:db8:1::1"],
            external: &["p1"],
            client_rule: &["log: connect error"],
            socks_rule: &["log: connect error"],
            log_file: false,
            mothers: Some(1),
        }
        .start(&isp, &tmp);
        let web = target.spawn(&["python3", "-c", WHOAMI]);
        let dns = isp.spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=198.51.100.1",
            "--address=/#/203.0.113.53",
            "--pid-file=",
            "--user=root",
        ]);
        for (ns, q) in [(&target, "sport = :80"), (&isp, "sport = :53")] {
            let ok = wait_until(Duration::from_secs(10), || {
                let out = ns.exec(&["ss", "-Hlnu", q]);
                let out2 = ns.exec(&["ss", "-Hlnt", q]);
                !String::from_utf8_lossy(&out.stdout).trim().is_empty()
                    || !String::from_utf8_lossy(&out2.stdout).trim().is_empty()
            });
            assert!(ok, "nothing listens on {q}");
        }
        SelNet {
            m,
            _isp: isp,
            _target: target,
            tmp,
            resolv,
            _etc: vec![etc_isp, etc_m],
            dante,
            _web: web,
            _dns: dns,
        }
    }

    /// `sockstun tun` (as root) in the machine namespace, once its device is up.
    fn sockstun(&self, extra: &[&str]) -> (Proc, String) {
        let dev = uniq("stun");
        let mut args = vec!["--ipv4", TUN_V4, "--ipv6", TUN_V6, "--connect-timeout", "3"];
        args.extend_from_slice(extra);
        let p = spawn_tun(
            &self.m,
            "debug,smoltcp=info",
            "socks5://198.51.100.1:1080",
            &dev,
            &args,
        );
        wait_tun_up(&self.m, &dev, &p);
        (p, dev)
    }

    fn snap(&self) -> String {
        snapshot(&self.m, Some(&self.resolv))
    }
}

/// `cmd` inside the machine as `uid` (None: as root).
fn run_as(m: &Netns, uid: Option<u32>, cmd: &[&str]) -> Output {
    let ids = uid.map(|u| (format!("--reuid={u}"), format!("--regid={u}")));
    let mut v: Vec<&str> = Vec::new();
    if let Some((r, g)) = &ids {
        v.extend_from_slice(&["setpriv", r, g, "--clear-groups"]);
    }
    v.extend_from_slice(cmd);
    m.exec(&v)
}

/// curl's command line for `url`, giving up after `secs` seconds.
fn curl<'a>(url: &'a str, secs: &'a str) -> [&'a str; 6] {
    ["curl", "-sS", "-g", "--max-time", secs, url]
}

/// The body (the target's view of its peer) or the error.
fn body(out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text(&out))
    }
}

/// What the target sees as its peer for a GET of `url` from the machine, as `uid`.
fn peer_as(m: &Netns, uid: Option<u32>, url: &str) -> Result<String, String> {
    body(run_as(m, uid, &curl(url, "10")))
}

/// The addresses `dig +short NAME` gets with the machine's resolver file.
fn dig_answer(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.parse::<std::net::IpAddr>().is_ok())
        .collect::<Vec<_>>()
        .join("\n")
}
const DIG: [&str; 5] = ["dig", "+short", "+time=2", "+tries=2", "www.example.org"];

fn dig_as(m: &Netns, uid: Option<u32>) -> String {
    dig_answer(run_as(m, uid, &DIG))
}

fn is_fake(a: &str) -> bool {
    a.starts_with("198.19.") && !a.contains('\n')
}

/// route-up --uid: the selected users' processes (nobody, by name, and root,
/// which sockstun itself runs as: only its --fwmark keeps its own connection
/// to the proxy out of the TUN) go through the proxy and get the virtual DNS;
/// another uid's go direct and ask the real resolver; the resolver file is
/// not touched; the kill switch blocks the selected users when sockstun dies,
/// not the others; route-down restores every route, rule (both families),
/// the nftables ruleset and the sysctls.
#[test]
fn route_up_uid_routes_only_that_user() {
    if !require_root("route_up_uid_routes_only_that_user") {
        return;
    }
    let net = SelNet::new("su");
    let m = &net.m;
    m.sh("sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0");
    const OTHER: Option<u32> = Some(1234);
    const NOBODY: Option<u32> = Some(65534);
    let url4 = "http://203.0.113.2/";
    let url6 = "http://[2001:db8:2::2]/";
    // Before: everyone goes direct and gets the real resolver's answers.
    assert_eq!(peer_as(m, NOBODY, url4).as_deref(), Ok(DIRECT));
    assert_eq!(dig_as(m, NOBODY), REAL_ANSWER);
    let before_tun = net.snap();
    let (mut tun, dev) = net.sockstun(&["--fwmark", "1080"]);
    let before = net.snap();
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    let rs = net.resolv.to_str().unwrap();
    let args = [
        "--device",
        &dev,
        "--fwmark",
        "1080",
        "--uid",
        "nobody",
        "--uid",
        "0",
        "--resolv-conf",
        rs,
        "--state",
        st,
    ];
    ok_script(m, "route-up", &args);
    assert_eq!(
        std::fs::read_to_string(&net.resolv).unwrap(),
        SEL_RESOLV,
        "the resolver must not change for everyone"
    );
    // (taken before any traffic: the nftables counters count it)
    let after_first = net.snap();
    let check = |what: &str| {
        for (uid, url, want) in [
            (NOBODY, url4, VIA_PROXY),
            (NOBODY, url6, VIA_PROXY6),
            (None, url4, VIA_PROXY),
            (OTHER, url4, DIRECT),
            (OTHER, url6, DIRECT6),
        ] {
            assert_eq!(
                peer_as(m, uid, url).as_deref(),
                Ok(want),
                "{what}: uid {uid:?} {url}\n--- sockstun ---\n{}\n--- dante ---\n{}",
                tun.log(),
                net.dante.log()
            );
        }
        let fake = dig_as(m, NOBODY);
        assert!(
            is_fake(&fake),
            "{what}: nobody's DNS answer {fake:?} is not the virtual DNS's"
        );
        assert!(is_fake(&dig_as(m, None)), "{what}: root's DNS answer");
        assert_eq!(dig_as(m, OTHER), REAL_ANSWER, "{what}: another uid's DNS");
    };
    check("after route-up");
    // A name the virtual DNS answered reaches the target through the proxy
    // (sockstun dials it by name; the proxy resolves it).
    let by_name = body(run_as(m, NOBODY, &curl("http://target.test/", "10")));
    assert_eq!(by_name.as_deref(), Ok(VIA_PROXY), "{}", tun.log());
    assert!(tun.log().contains("target.test:80"), "{}", tun.log());

    // Idempotent.
    ok_script(m, "route-up", &args);
    assert_eq!(net.snap(), after_first, "second route-up differs");
    check("after the second route-up");

    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(net.snap(), before, "route-down did not restore");
    assert_eq!(peer_as(m, NOBODY, url4).as_deref(), Ok(DIRECT));
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(net.snap(), before, "second route-down");

    // Kill switch: sockstun dies, the selected users are cut off, not leaked.
    ok_script(m, "route-up", &args);
    tun.signal(libc::SIGKILL);
    assert!(tun.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        wait_until(Duration::from_secs(10), || !m
            .exec(&["ip", "link", "show", "dev", &dev])
            .status
            .success()),
        "{dev} outlived sockstun"
    );
    for (uid, url) in [(NOBODY, url4), (NOBODY, url6), (None, url4)] {
        let r = body(run_as(m, uid, &curl(url, "3")));
        assert!(
            r.is_err(),
            "uid {uid:?} reaches {url} without the tunnel: {r:?}"
        );
    }
    assert_eq!(
        dig_as(m, NOBODY),
        "",
        "nobody's DNS leaks without the tunnel"
    );
    assert_eq!(peer_as(m, OTHER, url4).as_deref(), Ok(DIRECT));
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(net.snap(), before_tun, "route-down after sockstun died");
}

/// route-up --cgroup: the processes of a cgroup below the selected one go
/// through the proxy and get the virtual DNS, the same program outside it
/// does not; with strict rp_filter (route-up loosens it on the TUN only); a
/// loopback resolver (a stub like 127.0.0.53) is redirected too; kill switch;
/// route-down restores everything.
#[test]
fn route_up_cgroup_routes_only_that_cgroup() {
    if !require_root("route_up_cgroup_routes_only_that_cgroup") {
        return;
    }
    let net = SelNet::new("sc");
    let m = &net.m;
    m.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1");
    let cg = Cgroup::new("sc");
    let url4 = "http://203.0.113.2/";
    let url6 = "http://[2001:db8:2::2]/";
    let in_cg = |cmd: &[&str]| cg.exec(m, cmd);
    let outside = |cmd: &[&str]| m.exec(cmd);
    let dig = DIG;
    let dig_lo = [
        "dig",
        "@127.0.0.53",
        "+short",
        "+time=2",
        "+tries=2",
        "www.example.org",
    ];

    assert_eq!(body(in_cg(&curl(url4, "10"))).as_deref(), Ok(DIRECT));
    let before_tun = net.snap();
    let (mut tun, dev) = net.sockstun(&[]);
    let before = net.snap();
    let state = net.tmp.join("route.state");
    let st = state.to_str().unwrap();
    let rs = net.resolv.to_str().unwrap();
    let sel = format!("/{}/", cg.rel);
    let args = [
        "--device",
        &dev,
        "--proxy",
        "198.51.100.1",
        "--cgroup",
        &sel,
        "--resolv-conf",
        rs,
        "--state",
        st,
    ];
    ok_script(m, "route-up", &args);
    assert_eq!(std::fs::read_to_string(&net.resolv).unwrap(), SEL_RESOLV);
    for (url, want) in [(url4, VIA_PROXY), (url6, VIA_PROXY6)] {
        assert_eq!(
            body(in_cg(&curl(url, "10"))).as_deref(),
            Ok(want),
            "in the cgroup: {url}\n--- sockstun ---\n{}\n--- dante ---\n{}",
            tun.log(),
            net.dante.log()
        );
    }
    for (url, want) in [(url4, DIRECT), (url6, DIRECT6)] {
        assert_eq!(
            body(outside(&curl(url, "10"))).as_deref(),
            Ok(want),
            "outside: {url}"
        );
    }
    let fake = dig_answer(in_cg(&dig));
    assert!(is_fake(&fake), "DNS in the cgroup: {fake:?}\n{}", tun.log());
    let fake_lo = dig_answer(in_cg(&dig_lo));
    assert!(
        is_fake(&fake_lo),
        "DNS to a loopback stub in the cgroup: {fake_lo:?}"
    );
    assert_eq!(
        dig_answer(outside(&dig)),
        REAL_ANSWER,
        "DNS outside the cgroup"
    );

    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(net.snap(), before, "route-down did not restore");
    assert_eq!(body(in_cg(&curl(url4, "10"))).as_deref(), Ok(DIRECT));

    // Kill switch.
    ok_script(m, "route-up", &args);
    tun.signal(libc::SIGKILL);
    assert!(tun.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        wait_until(Duration::from_secs(10), || !m
            .exec(&["ip", "link", "show", "dev", &dev])
            .status
            .success()),
        "{dev} outlived sockstun"
    );
    for url in [url4, url6] {
        let r = body(in_cg(&curl(url, "3")));
        assert!(
            r.is_err(),
            "the cgroup reaches {url} without the tunnel: {r:?}"
        );
    }
    assert_eq!(
        dig_answer(in_cg(&dig)),
        "",
        "the cgroup's DNS leaks without the tunnel"
    );
    assert_eq!(body(outside(&curl(url4, "10"))).as_deref(), Ok(DIRECT));
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(net.snap(), before_tun, "route-down after sockstun died");
}

/// With the stand-in TUN: what route-up --uid/--cgroup refuses (nothing
/// changed), the rules it adds, where the kernel sends each user's and the
/// cgroup mark's packets, the kill switch once the TUN vanished, and
/// route-down.
#[test]
fn route_up_selection_validates_routes_and_restores() {
    if !require_root("route_up_selection_validates_routes_and_restores") {
        return;
    }
    let mc = Machine::new("rs");
    let resolv = mc.temp("resolv", Some(RESOLV));
    let state = mc.temp("state", None);
    let m = &mc.m;
    let cg = Cgroup::new("rs");
    let before_tun = snapshot(m, Some(&resolv));
    let tun = uniq("rt");
    mc.tun(&tun, "1500");
    let before = snapshot(m, Some(&resolv));
    let (rs, st) = (resolv.to_str().unwrap(), state.to_str().unwrap());
    // A PATH with every command but nft.
    let bin = TempDir::new("nonft");
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if name == "nft" || bin.path().join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), bin.path().join(&name));
        }
    }
    let nonft = format!("PATH={}", bin.path().display());
    let up = script("route-up");
    let base = [
        "--device",
        tun.as_str(),
        "--proxy",
        "198.51.100.1",
        "--resolv-conf",
        rs,
        "--state",
        st,
    ];
    for (pre, args, why) in [
        (None, vec!["--uid", "no-such-user-st"], "no such user"),
        (None, vec!["--uid", "5-3"], "--uid '5-3'"),
        (
            None,
            vec!["--cgroup", "no-such-cgroup-st/x"],
            "no such cgroup",
        ),
        (None, vec!["--cgroup", "a/../b"], "not a cgroup path"),
        (None, vec!["--cgroup", "a\"b"], "not a cgroup path"),
        (
            None,
            vec!["--cgroup", &cg.rel, "--fwmark", "0x5354"],
            "--cgroup-mark must differ",
        ),
        (
            Some(nonft.as_str()),
            vec!["--cgroup", &cg.rel],
            "'nft' not found",
        ),
        (
            Some(nonft.as_str()),
            vec!["--uid", "nobody"],
            "'nft' not found",
        ),
    ] {
        let mut cmd: Vec<&str> = Vec::new();
        if let Some(p) = pre {
            cmd.extend_from_slice(&["env", p]);
        }
        cmd.push(&up);
        cmd.extend_from_slice(&args);
        cmd.extend_from_slice(&base);
        let out = m.exec(&cmd);
        assert!(!out.status.success(), "route-up {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(why),
            "route-up {args:?}: want {why:?} in: {err}"
        );
        assert_eq!(
            snapshot(m, Some(&resolv)),
            before,
            "route-up {args:?} left changes"
        );
        assert!(!state.exists() || std::fs::read_to_string(&state).unwrap().is_empty());
    }
    // --uid without DNS handling needs no nftables.
    let mut cmd = vec![
        "env",
        nonft.as_str(),
        up.as_str(),
        "--uid",
        "nobody",
        "--no-dns",
    ];
    cmd.extend_from_slice(&base);
    let out = m.exec(&cmd);
    assert!(
        out.status.success(),
        "route-up --uid --no-dns without nft: {}",
        text(&out)
    );
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(snapshot(m, Some(&resolv)), before);

    let mut args = vec![
        "--uid",
        "65534",
        "--uid",
        "2000-2002",
        "--cgroup",
        &cg.rel,
        "--fwmark",
        "0x438",
    ];
    args.extend_from_slice(&base);
    ok_script(m, "route-up", &args);
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        RESOLV,
        "resolver rewritten"
    );
    for cmd in ["ip rule", "ip -6 rule"] {
        let rules = stdout(m, cmd);
        for want in [
            "10800:\tfrom all fwmark 0x438 lookup main",
            "10806:\tfrom all uidrange 65534-65534 lookup main suppress_prefixlength 0",
            "10807:\tfrom all uidrange 65534-65534 lookup 1080",
            "10807:\tfrom all uidrange 2000-2002 lookup 1080",
            "10806:\tfrom all fwmark 0x5354 lookup main suppress_prefixlength 0",
            "10807:\tfrom all fwmark 0x5354 lookup 1080",
        ] {
            assert!(rules.contains(want), "{cmd}: missing {want:?} in\n{rules}");
        }
        assert!(
            !rules.lines().any(|l| l.ends_with("from all lookup 1080")),
            "{cmd}: a catch-all rule routes everyone:\n{rules}"
        );
    }
    let nft = stdout(m, "nft list ruleset");
    for want in [
        "table inet sockstun_route_",
        "type route hook output",
        "socket cgroupv2 level 1",
        "meta mark set 0x00005354",
        "meta skuid 65534",
        "meta skuid 2000-2002",
        "dnat ip to 198.18.0.2",
        "dnat ip6 to fd00:5::2",
        "meta mark != 0x00000438",
    ] {
        assert!(nft.contains(want), "missing {want:?} in\n{nft}");
    }
    let dev = format!("dev {tun} ");
    for (q, want) in [
        ("route get 203.0.113.2 uid 65534", dev.as_str()),
        ("-6 route get 2001:db8:2::2 uid 2001", dev.as_str()),
        ("route get 203.0.113.2 mark 0x5354", dev.as_str()),
        ("route get 203.0.113.2 uid 1234", "via 198.51.100.1 dev up0"),
        ("-6 route get 2001:db8:2::2", "via 2001:db8:1::1 dev up0"),
        // sockstun's own sockets, even as a selected user.
        (
            "route get 203.0.113.2 uid 65534 mark 0x438",
            "via 198.51.100.1 dev up0",
        ),
        ("route get 198.51.100.1 uid 65534", "dev up0"),
        // The local subnet stays direct for the selected user too.
        ("route get 198.51.100.3 uid 65534", "dev up0"),
    ] {
        let got = route_get(m, q);
        assert!(got.contains(want), "ip {q}: want {want:?}, got {got}");
    }
    // The TUN vanishes: the selected traffic is blocked, the rest untouched.
    m.ip(&["link", "del", &tun]);
    for q in [
        "route get 203.0.113.2 uid 65534",
        "-6 route get 2001:db8:2::2 uid 65534",
        "route get 203.0.113.2 mark 0x5354",
        "route get 198.18.0.2 uid 65534",
    ] {
        let got = route_get(m, q);
        assert!(
            !got.contains("dev up0") && got.contains("No route to host"),
            "ip {q}: leaks without the TUN: {got}"
        );
    }
    let got = route_get(m, "route get 203.0.113.2 uid 1234");
    assert!(got.contains("dev up0"), "{got}");
    ok_script(m, "route-down", &["--state", st]);
    assert_eq!(
        snapshot(m, Some(&resolv)),
        before_tun,
        "route-down after the TUN vanished"
    );
    assert!(!state.exists(), "state file left behind");
}
