//! scripts/route-up, route-down, gateway-up, gateway-down without sockstun:
//! a persistent TUN made with `ip tuntap` stands in for sockstun's device. Each
//! test builds a "machine" namespace with an uplink and default routes (as a
//! real host has), runs the scripts in it with `ip netns exec`, checks what they
//! set up, and that the down script puts routes, rules, sysctls, nftables and
//! the resolver file back byte for byte, also twice and after the TUN vanished.

mod common;

use common::routes::*;
use common::{require_root, uniq, EtcNetns, Netns, TempDir};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

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
