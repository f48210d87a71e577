//! `sockstun exec`, end to end: the program runs in a namespace of its own
//! whose only way out is sockstun's TUN, while sockstun itself runs in the
//! rig's client namespace (the calling namespace), whose only way to the
//! target is dante in the proxy namespace. The target's name resolves only
//! there (dante's /etc/hosts); the client namespace has no route to it.

mod common;

use common::udp_rig::start_upstream;
use common::udp_rig::Upstream;
use common::*;
use std::process::ExitStatus;
use std::time::Duration;

const PAGE: &str = "hello from web.test\n";

/// The standard topology, dante (TCP and UDP) in the proxy namespace with
/// web.test in its hosts file, HTTP on port 80 and UDP echo on port 7 at the
/// target (both families). Field order is drop order.
struct Rig {
    dante: Proc,
    _http: Vec<Http>,
    _echo: Vec<UdpEcho>,
    _etc: EtcNetns,
    dir: TempDir,
    topo: Topology,
}

fn rig(tag: &str) -> Rig {
    let topo = Topology::new(tag);
    let dir = TempDir::new(tag);
    let etc = EtcNetns::new(&topo.proxy);
    etc.file(
        "hosts",
        &format!("127.0.0.1 localhost\n{TARGET_V4} web.test\n{TARGET_V6} web.test\n"),
    );
    let http = vec![
        Http::start(&topo.target, &format!("{TARGET_V4}:80"), PAGE),
        Http::start(&topo.target, &format!("[{TARGET_V6}]:80"), PAGE),
    ];
    let echo = vec![
        UdpEcho::start(&topo.target, &format!("{TARGET_V4}:7")),
        UdpEcho::start(&topo.target, &format!("[{TARGET_V6}]:7")),
    ];
    let dante = start_upstream(Upstream::Dante, &topo.proxy, &dir);
    Rig {
        dante,
        _http: http,
        _echo: echo,
        _etc: etc,
        dir,
        topo,
    }
}

impl Rig {
    /// `sockstun exec --proxy DANTE [extra] -- prog...` spawned in the client
    /// namespace; `wrap` goes before sockstun (e.g. a setpriv).
    fn spawn_wrapped(&self, wrap: &[&str], extra: &[&str], prog: &[&str]) -> Proc {
        let bin = sockstun_bin();
        let proxy = format!("socks5://{PROXY_V4}:{DANTE_PORT}");
        let mut cmd: Vec<&str> = wrap.to_vec();
        cmd.extend_from_slice(&[bin.to_str().unwrap(), "--log", "debug,smoltcp=info", "exec"]);
        cmd.extend_from_slice(&["--proxy", &proxy, "--connect-timeout", "3"]);
        cmd.extend_from_slice(extra);
        cmd.push("--");
        cmd.extend_from_slice(prog);
        self.topo.client.spawn(&cmd)
    }

    fn spawn(&self, prog: &[&str]) -> Proc {
        self.spawn_wrapped(&[], &[], prog)
    }

    /// Run to the end (30 s at most): the exit status and the log (the
    /// program's output and sockstun's).
    fn run(&self, prog: &[&str]) -> (ExitStatus, String) {
        finish(self.spawn(prog))
    }

    fn dante_log(&self) -> String {
        read_to_string(&self.dir.file("danted.log")) + &self.dante.log()
    }
}

fn finish(mut p: Proc) -> (ExitStatus, String) {
    let st = p.wait_exit(Duration::from_secs(30));
    let log = p.log();
    let st = st.unwrap_or_else(|| panic!("sockstun exec did not end:\n{log}"));
    (st, log)
}

/// A program that says it runs (`DIR/running`, its pid in `DIR/pid`), then
/// loops until `DIR/go` exists; `trap` is its TERM handler. Killed on drop
/// if still alive: when sockstun is killed it outlives it (by design).
struct Waiter {
    dir: TempDir,
}

impl Waiter {
    fn new(tag: &str) -> Waiter {
        let dir = TempDir::new(tag);
        // World-writable: the rootless program (uid 65534) writes here too.
        run(&["chmod", "0777", &dir.file("")]);
        Waiter { dir }
    }

    fn script(&self, trap: &str) -> String {
        let d = self.dir.file("");
        format!(
            "trap '{trap}' TERM; echo $$ > {d}/pid; touch {d}/running; \
             while [ ! -e {d}/go ]; do sleep 0.05; done; exit 0"
        )
    }

    fn wait_running(&self, p: &mut Proc) {
        let f = self.dir.join("running");
        assert!(
            wait_until(Duration::from_secs(20), || f.exists()),
            "the program did not start (sockstun running: {}):\n{}",
            p.is_running(),
            p.log()
        );
    }

    fn pid(&self) -> i32 {
        read_to_string(&self.dir.file("pid"))
            .trim()
            .parse()
            .expect("pid")
    }

    fn release(&self) {
        std::fs::write(self.dir.join("go"), "").unwrap();
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(pid) = read_to_string(&self.dir.file("pid")).trim().parse::<i32>() {
            // SAFETY: kill(2) on the program's pid; at worst ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn stdout(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_by_name_goes_through_the_proxy() {
    if !require_root("curl_by_name_goes_through_the_proxy") {
        return;
    }
    let r = rig("xc");
    // Without exec the client namespace can neither resolve nor reach it.
    let direct = r
        .topo
        .client
        .exec(&["curl", "-sS", "--max-time", "3", "http://web.test/"]);
    assert!(
        !direct.status.success(),
        "the rig leaks: {}",
        stdout(direct)
    );
    let (st, log) = r.run(&["curl", "-sS", "--max-time", "10", "http://web.test/"]);
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains(PAGE), "no page:\n{log}");
    // sockstun sent the name, and dante (which alone knows it) connected.
    assert!(log.contains("name=\"web.test\" via=socks5://"), "{log}");
    let dante = r.dante_log();
    assert!(
        dante.lines().any(|l| l.contains("tcp/connect")
            && (l.contains(&format!("{TARGET_V4}.80")) || l.contains(&format!("{TARGET_V6}.80")))),
        "dante did not connect to the target:\n{dante}"
    );
}

/// With `--queues 2` the program's device is made multi-queue and every
/// queue reaches sockstun: 24 connections by name all get the page, and
/// both queues carried some (one run in 2^23 would not).
#[test]
fn two_queues_reach_sockstun() {
    if !require_root("two_queues_reach_sockstun") {
        return;
    }
    let r = rig("xq");
    let script = "for i in $(seq 24); do curl -sS --max-time 10 http://web.test/ || exit 9; done";
    let (st, log) = finish(r.spawn_wrapped(&[], &["--queues", "2"], &["sh", "-c", script]));
    assert_eq!(st.code(), Some(0), "{log}");
    assert_eq!(log.matches(PAGE).count(), 24, "{log}");
    assert!(log.contains("queues=2"), "{log}");
    let by_queue = log
        .lines()
        .find_map(|l| l.split("tcp_by_queue=[").nth(1)?.split(']').next())
        .unwrap_or_else(|| panic!("no totals line:\n{log}"));
    let n: Vec<u64> = by_queue.split(", ").map(|x| x.parse().unwrap()).collect();
    // curl may race IPv6 and IPv4 (happy eyeballs): a fetch opens 1 or 2.
    assert!(n.iter().sum::<u64>() >= 24, "{by_queue}");
    assert!(n.len() == 2 && n.iter().all(|&x| x > 0), "{by_queue}");
}

#[test]
fn dig_gets_a_fake_answer() {
    if !require_root("dig_gets_a_fake_answer") {
        return;
    }
    let r = rig("xd");
    let (st, log) = r.run(&["dig", "+short", "+time=3", "+tries=1", "web.test", "A"]);
    assert_eq!(st.code(), Some(0), "{log}");
    let answer = log
        .lines()
        .find_map(|l| l.trim().parse::<std::net::Ipv4Addr>().ok())
        .unwrap_or_else(|| panic!("no address in:\n{log}"));
    assert_eq!(
        answer.octets()[..2],
        [198, 19],
        "not from the fake pool: {answer}"
    );
    // The resolver dig used is the one exec named.
    let (_, log) = r.run(&["cat", "/etc/resolv.conf"]);
    assert!(log.contains("nameserver 198.18.0.2\n"), "{log}");
}

#[test]
fn the_exit_status_is_the_programs() {
    if !require_root("the_exit_status_is_the_programs") {
        return;
    }
    let r = rig("xs");
    let (st, log) = r.run(&["sh", "-c", "exit 3"]);
    assert_eq!(st.code(), Some(3), "{log}");
    // Died of SIGUSR1 (10): 128 + 10, as shells report it.
    let (st, log) = r.run(&["sh", "-c", "kill -USR1 $$"]);
    assert_eq!(st.code(), Some(138), "{log}");
    let (st, log) = r.run(&["/nonexistent/program"]);
    assert_eq!(st.code(), Some(127), "{log}");
}

/// What the calling namespace's network looks like, and its resolver.
fn snapshot(ns: &Netns) -> String {
    let mut s = String::new();
    for cmd in [
        &["ip", "-o", "link"][..],
        &["ip", "-o", "addr"],
        &["ip", "route"],
        &["ip", "-6", "route"],
        &["ip", "rule"],
        &["ip", "-6", "rule"],
        &["cat", "/etc/resolv.conf"],
    ] {
        s += &format!("$ {}\n{}", cmd.join(" "), stdout(ns.exec(cmd)));
    }
    // The host's own file, as this (root namespace) process sees it.
    s + &read_to_string("/etc/resolv.conf")
}

#[test]
fn the_calling_namespace_is_untouched() {
    if !require_root("the_calling_namespace_is_untouched") {
        return;
    }
    let r = rig("xu");
    let _etc = EtcNetns::resolv_conf(&r.topo.client, "192.0.2.1");
    let before = snapshot(&r.topo.client);
    let w = Waiter::new("xuw");
    let mut p = r.spawn(&["sh", "-c", &w.script("exit 1")]);
    w.wait_running(&mut p);
    let during = snapshot(&r.topo.client);
    w.release();
    let (st, log) = finish(p);
    assert_eq!(st.code(), Some(0), "{log}");
    let after = snapshot(&r.topo.client);
    assert_eq!(before, during, "changed while the program ran");
    assert_eq!(before, after, "changed after the program ended");
    assert!(before.contains("nameserver 192.0.2.1"), "{before}");
}

#[test]
fn sigterm_reaches_the_program() {
    if !require_root("sigterm_reaches_the_program") {
        return;
    }
    let r = rig("xt");
    let w = Waiter::new("xtw");
    let mut p = r.spawn(&["sh", "-c", &w.script("exit 42")]);
    w.wait_running(&mut p);
    p.signal(libc::SIGTERM);
    let (st, log) = finish(p);
    assert_eq!(
        st.code(),
        Some(42),
        "the program's TERM trap did not run:\n{log}"
    );
    assert!(log.contains("SIGTERM: passed on"), "{log}");
    // SIGINT sent with kill (not by a terminal, which reaches the program
    // itself) is passed on too.
    let w = Waiter::new("xtw");
    let script = w
        .script("exit 1")
        .replace("TERM;", "TERM; trap 'exit 43' INT;");
    let mut p = r.spawn(&["sh", "-c", &script]);
    w.wait_running(&mut p);
    p.signal(libc::SIGINT);
    let (st, log) = finish(p);
    assert_eq!(
        st.code(),
        Some(43),
        "the program's INT trap did not run:\n{log}"
    );
}

#[test]
fn sigkill_leaves_the_program_without_network() {
    if !require_root("sigkill_leaves_the_program_without_network") {
        return;
    }
    let r = rig("xk");
    let w = Waiter::new("xkw");
    let mut p = r.spawn(&["sh", "-c", &w.script("exit 1")]);
    w.wait_running(&mut p);
    let pid = w.pid().to_string();
    let links = || stdout(run(&["nsenter", "-t", &pid, "-n", "ip", "-o", "link"]));
    assert!(links().contains(": sockstun0:"), "{}", links());
    p.signal(libc::SIGKILL);
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
    let only_lo = wait_until(Duration::from_secs(10), || {
        let l = links();
        l.lines().count() == 1 && l.contains(": lo:")
    });
    assert!(only_lo, "the program kept more than lo:\n{}", links());
    for fam in ["-4", "-6"] {
        let routes = stdout(run(&["nsenter", "-t", &pid, "-n", "ip", fam, "route"]));
        assert!(
            !routes.contains("default"),
            "a way out is left ({fam}):\n{routes}"
        );
    }
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-n", "ip", "route", "get", TARGET_V4])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stdout(out));
    // Still alive, networkless (Waiter's drop kills it).
    // SAFETY: kill(2) with signal 0 only checks that the pid exists.
    assert_eq!(
        unsafe { libc::kill(w.pid(), 0) },
        0,
        "the program died with sockstun"
    );
}

#[test]
fn ipv6_and_udp_go_through_the_proxy() {
    if !require_root("ipv6_and_udp_go_through_the_proxy") {
        return;
    }
    let r = rig("x6");
    let url = format!("http://[{TARGET_V6}]/");
    let (st, log) = r.run(&["curl", "-sS", "-g", "--max-time", "10", &url]);
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains(PAGE), "{log}");
    // By name over IPv6: an AAAA from the fake pool, dialed by name.
    let (st, log) = r.run(&["curl", "-6", "-sS", "--max-time", "10", "http://web.test/"]);
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains(PAGE), "{log}");
    let udp = format!(
        "import socket\n\
         for fam, addr in ((socket.AF_INET, '{TARGET_V4}'), (socket.AF_INET6, '{TARGET_V6}')):\n\
         \x20   s = socket.socket(fam, socket.SOCK_DGRAM)\n\
         \x20   s.settimeout(5)\n\
         \x20   s.sendto(('udp to ' + addr).encode(), (addr, 7))\n\
         \x20   print('echo:', s.recv(100).decode())\n"
    );
    let (st, log) = r.run(&["python3", "-c", &udp]);
    assert_eq!(st.code(), Some(0), "{log}");
    for addr in [TARGET_V4, TARGET_V6] {
        assert!(log.contains(&format!("echo: udp to {addr}")), "{log}");
    }
    assert!(r.dante_log().contains("udpassociate"), "{}", r.dante_log());
}

/// As uid 65534 in a mount namespace of the test's own where /dev/net/tun
/// is a fresh node of mode `mode` (the host's is never changed).
fn rootless(r: &Rig, dir: &TempDir, mode: &str, prog: &[&str]) -> Proc {
    let node = dir.file("tun");
    run(&["mknod", "-m", mode, &node, "c", "10", "200"]);
    let inner = format!(
        "mount --bind {node} /dev/net/tun && exec setpriv --reuid=65534 --regid=65534 \
         --clear-groups \"$@\""
    );
    let wrap = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &inner,
        "sh",
    ];
    r.spawn_wrapped(&wrap, &[], prog)
}

#[test]
fn rootless_with_an_open_tun_node() {
    if !require_root("rootless_with_an_open_tun_node") {
        return;
    }
    let r = rig("xr");
    let dir = TempDir::new("xrn");
    let script = "id -u; curl -sS --max-time 10 http://web.test/";
    let (st, log) = finish(rootless(&r, &dir, "0666", &["sh", "-c", script]));
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains(PAGE), "{log}");
    assert!(log.contains("rootless"), "{log}");
    // The program runs as the caller, not as root of its namespace.
    assert!(log.lines().any(|l| l.trim() == "65534"), "{log}");
}

#[test]
fn rootless_with_a_closed_tun_node_says_why() {
    if !require_root("rootless_with_a_closed_tun_node_says_why") {
        return;
    }
    let r = rig("xe");
    let dir = TempDir::new("xen");
    let (st, log) = finish(rootless(&r, &dir, "0600", &["true"]));
    assert_eq!(st.code(), Some(125), "{log}");
    assert!(
        log.contains("/dev/net/tun is mode 0600")
            && log.contains("needs read and write access")
            && log.contains("run it as root"),
        "unclear error:\n{log}"
    );
}
