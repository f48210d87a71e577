//! Shared harness for the namespace tests: namespaces, processes and files
//! that are removed on drop (also when a test fails), waiting on conditions
//! with a deadline, and the standard client / proxy / target topology.
//!
//! Every name is unique per test process and call, so cargo's parallel tests
//! never share a namespace, device or address space.
//!
//! Every fixture that more than one test file needs lives here, once:
//! - this file: processes, namespaces, veth pairs, `Topology`, `TempDir`,
//!   `EtcNetns`, process limits and memory;
//! - `launch.rs`: starting `sockstun tun` and `sockstun server`;
//! - `dante.rs`: dante-server, its configuration written from one template;
//! - `servers.rs`: targets (TCP echo, reset, HTTP, UDP echo) and waiters on
//!   sockets;
//! - `routes.rs`: the routing scripts, the state snapshot, the machine / LAN
//!   namespaces they run in (route_scripts, route_e2e);
//! - `tun_rig.rs`: the TCP rig of the TUN tests (tun_tcp, tun_device, tun_memory);
//! - `udp_rig.rs`: the UDP / DNS rig of the TUN tests (udp_tun, dns_tun);
//! - `server_lab.rs`: the one-namespace lab of the server tests (server_*);
//! - `tinyproxy.rs`: tinyproxy, the HTTP CONNECT upstream (http_upstream).
//!
//! `launch`, `dante` and `servers` are re-exported here (`use common::*`);
//! `routes` and the rigs are imported by name (`use common::tun_rig::*`).
#![allow(dead_code)]

pub mod dante;
pub mod launch;
pub mod routes;
pub mod server_lab;
pub mod servers;
pub mod tinyproxy;
pub mod tun_rig;
pub mod udp_rig;

pub use dante::*;
pub use launch::*;
pub use servers::*;

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the sockstun binary cargo built for these tests.
pub fn sockstun_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockstun"))
}

/// Namespace tests need root. In CI (CI=true) a missing privilege is a failure;
/// elsewhere the test says loudly that it did not run and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root and CI=true: namespace tests must run in CI");
    }
    eprintln!("\n*** SKIPPED {test}: needs root (network namespaces, TUN). Run as root to test this. ***\n");
    false
}

/// A short name unique to this process and call: `<tag><pid%10000>x<n>`,
/// kept under the 15-byte interface-name limit for short tags.
pub fn uniq(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 10000)
}

/// Poll `cond` until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a command, panic with its output if it fails.
pub fn run(cmd: &[&str]) -> Output {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    log: Option<PathBuf>,
}

impl Proc {
    /// The log file the process writes (stdout and stderr), if any.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal (e.g. libc::SIGTERM) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit up to `timeout`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            if !log.is_empty() {
                let tail: String = log
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                eprintln!("--- last lines of {} ---\n{tail}", self.name);
            }
        }
        if let Some(p) = &self.log {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Spawn `cmd` (optionally inside namespace `ns`) with output to a log file.
pub fn spawn(ns: Option<&str>, cmd: &[&str]) -> Proc {
    let name = cmd[0].rsplit('/').next().unwrap_or(cmd[0]).to_string();
    let log = std::env::temp_dir().join(format!("{}.log", uniq(&format!("st-{name}-"))));
    let f = File::create(&log).expect("create log");
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(cmd);
            c
        }
        None => {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..]);
            c
        }
    };
    c.stdin(Stdio::null())
        .stdout(f.try_clone().expect("dup log"))
        .stderr(f);
    let child = c.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Proc {
        child,
        name,
        log: Some(log),
    }
}

/// A network namespace deleted on drop, with every process still in it killed.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = uniq(tag);
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // Tests must be deterministic: no DAD delay on the test links.
        ns.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        ns
    }

    /// `ip ARGS` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Run a command inside the namespace and return its output (no panic).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
    }

    /// `sh -c SCRIPT` inside the namespace; panics on failure.
    pub fn sh(&self, script: &str) -> Output {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "in {}: {script:?} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Spawn a long-running process inside the namespace.
    pub fn spawn(&self, cmd: &[&str]) -> Proc {
        spawn(Some(&self.name), cmd)
    }

    /// Run `f` on a thread that has entered this namespace. Sockets created by
    /// `f` stay in the namespace and may be used from any thread afterwards.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_in(f)
            .join()
            .expect("thread in namespace panicked")
    }

    /// Like `run_in` but does not wait: for servers that live in the namespace.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd affects only this thread,
            // which is dedicated to `f` and ends with it.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a pid read from the namespace; at worst ESRCH.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Connect two namespaces with a veth pair and address both ends (v4 and v6).
/// Addresses are CIDR strings such as "198.51.100.2/24".
pub fn veth(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    run(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    for (ns, ifn, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", ifn, "nodad"]);
        }
        ns.ip(&["link", "set", ifn, "up"]);
    }
}

/// The standard three-namespace topology of the TUN tests:
///
/// ```text
///  client (TUN, sockstun tun)  --veth--  proxy (upstream)  --veth--  target (servers)
///   198.51.100.2/24                       198.51.100.1/24
///   2001:db8:1::2/64                      2001:db8:1::1/64
///                                         203.0.113.1/24             203.0.113.2/24
///                                         2001:db8:2::1/64           2001:db8:2::2/64
/// ```
/// The proxy namespace does not forward, so the target is reachable from the
/// client only through the proxy. Default routes into the TUN are added by
/// `route_default_via_tun` once the device exists.
pub struct Topology {
    pub client: Netns,
    pub proxy: Netns,
    pub target: Netns,
}

pub const PROXY_V4: &str = "198.51.100.1";
pub const PROXY_V6: &str = "2001:db8:1::1";
pub const CLIENT_V4: &str = "198.51.100.2";
pub const TARGET_V4: &str = "203.0.113.2";
pub const TARGET_V6: &str = "2001:db8:2::2";
pub const PROXY_TARGET_SIDE_V4: &str = "203.0.113.1";

impl Topology {
    pub fn new(tag: &str) -> Topology {
        let client = Netns::new(&format!("{tag}c"));
        let proxy = Netns::new(&format!("{tag}p"));
        let target = Netns::new(&format!("{tag}t"));
        veth(
            &client,
            "c0",
            &["198.51.100.2/24", "2001:db8:1::2/64"],
            &proxy,
            "p0",
            &["198.51.100.1/24", "2001:db8:1::1/64"],
        );
        veth(
            &proxy,
            "p1",
            &["203.0.113.1/24", "2001:db8:2::1/64"],
            &target,
            "t0",
            &["203.0.113.2/24", "2001:db8:2::2/64"],
        );
        proxy.sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
        Topology {
            client,
            proxy,
            target,
        }
    }

    /// Default routes (v4 and v6) of the client namespace into `dev`.
    pub fn route_default_via_tun(&self, dev: &str) {
        self.client.ip(&["route", "replace", "default", "dev", dev]);
        self.client
            .ip(&["-6", "route", "replace", "default", "dev", dev]);
    }
}

/// Read a whole file into a string ("" when missing).
pub fn read_to_string(path: &str) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// A temporary directory, `st-<tag>-<unique>` under the system's temporary
/// directory, removed with everything in it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(uniq(&format!("st-{tag}-")));
        std::fs::create_dir_all(&p).expect("mkdir temp");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` in the directory (the directory itself for "").
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `join` as a string, for command lines.
    pub fn file(&self, name: &str) -> String {
        self.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files under /etc/netns/<ns>/, which `ip netns exec <ns>` bind-mounts over
/// /etc/<file> for the processes of that namespace only (a resolver, a hosts
/// file); the directory is removed on drop.
pub struct EtcNetns(PathBuf);

impl EtcNetns {
    pub fn new(ns: &Netns) -> EtcNetns {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NS");
        EtcNetns(dir)
    }

    /// Write /etc/netns/<ns>/<name>; returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).expect("write /etc/netns file");
        p
    }

    /// A resolver file for `ns` naming `nameserver` only.
    pub fn resolv_conf(ns: &Netns, nameserver: &str) -> EtcNetns {
        let etc = EtcNetns::new(ns);
        etc.file(
            "resolv.conf",
            &format!("nameserver {nameserver}\noptions timeout:2 attempts:2\n"),
        );
        etc
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raise this process's open-files limit to its hard limit; returns the new
/// limit. (The tests that hold thousands of sockets need it.)
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// A field of /proc/<pid>/status in KB (`"VmRSS:"`, `"RssAnon:"`); 0 when
/// missing.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    read_to_string(&format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `curl http://ADMIN/PATH` inside `ns` (an `--admin` endpoint there): (HTTP
/// status, body); (0, "") when nothing answered.
pub fn admin_get(ns: &Netns, admin: &str, path: &str) -> (u16, String) {
    let url = format!("http://{admin}{path}");
    let out = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `series` (`name` or `name{labels}`) in a
/// Prometheus scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
