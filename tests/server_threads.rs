//! `sockstun server` serves clients on several threads, each with a listener
//! of its own on the same port (SO_REUSEPORT): connections land on every
//! thread, the limits are the server's and not a thread's, and the port is
//! still the server's alone.
mod common;

use common::server_lab::*;
use common::*;
use std::io::Write;
use std::time::Duration;

const THREADS: usize = 3;

/// `sockstun server` with `THREADS` threads on PROXY, once it listens.
fn start(lab: &Lab, args: &[&str]) -> Proc {
    let bin = sockstun_bin();
    let threads = format!("TOKIO_WORKER_THREADS={THREADS}");
    let mut cmd = vec!["env", &threads, bin.to_str().unwrap(), "server"];
    cmd.extend_from_slice(&["--listen", PROXY, "--allow-dest", T4]);
    cmd.extend_from_slice(args);
    let mut p = lab.ns.spawn(&cmd);
    let ok = wait_until(Duration::from_secs(20), || {
        p.log().contains("listening on") || !p.is_running()
    });
    assert!(ok && p.is_running(), "server did not start: {}", p.log());
    p
}

/// Voluntary context switches of each thread named `server-N`: a thread
/// that serves connections one at a time sleeps in epoll between them.
fn server_threads(pid: u32) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("server-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        v.push((comm.trim().to_string(), n));
    }
    v.sort();
    v
}

#[test]
fn connections_are_served_on_every_thread() {
    if !require_root("connections_are_served_on_every_thread") {
        return;
    }
    let lab = Lab::new("sth");
    let srv = start(&lab, &[]);
    let pid = srv.child.id();
    let before = server_threads(pid);
    assert_eq!(before.len(), THREADS, "threads: {before:?}");
    // Each connection from a new source port: the kernel hashes the 4-tuple
    // to pick a listener, so 300 of them land on every one of 3 threads
    // (fewer than 30 on one: a chance far below 1e-15).
    for _ in 0..300 {
        let mut s = lab.tcp(PROXY);
        assert_eq!(socks5_connect(&mut s, &addr4(T4, ECHO))[1], 0);
        s.write_all(b"ping").unwrap();
        assert_eq!(read_n(&mut s, 4), b"ping");
    }
    let after = server_threads(pid);
    let served: Vec<_> = before
        .iter()
        .zip(&after)
        .map(|((name, b), (_, a))| (name.clone(), a - b))
        .collect();
    assert!(
        served.iter().all(|(_, n)| *n >= 30),
        "a thread served (almost) nothing: wake-ups per thread {served:?}"
    );
}

#[test]
fn max_clients_holds_across_threads() {
    if !require_root("max_clients_holds_across_threads") {
        return;
    }
    let lab = Lab::new("stm");
    let _srv = start(&lab, &["--max-clients", "4"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = lab.tcp(PROXY);
        assert_eq!(socks5_connect(&mut s, &addr4(T4, ECHO))[1], 0);
        held.push(s);
    }
    // Wherever the four sessions run, every thread refuses a fifth: 24
    // tries reach each of 3 listeners (all on one: a chance of 1e-11).
    for i in 0..24 {
        let mut s = lab.tcp(PROXY);
        s.write_all(&[5, 1, 0]).unwrap();
        assert_eq!(
            read_n(&mut s, 2),
            [5, 0xFF],
            "client {} over a limit of 4 was served",
            i + 5
        );
    }
    for mut s in held {
        s.write_all(b"still").unwrap();
        assert_eq!(read_n(&mut s, 5), b"still");
    }
}

#[test]
fn a_second_server_on_the_port_fails_to_start() {
    if !require_root("a_second_server_on_the_port_fails_to_start") {
        return;
    }
    let lab = Lab::new("stp");
    let _first = start(&lab, &[]);
    let threads = format!("TOKIO_WORKER_THREADS={THREADS}");
    let bin = sockstun_bin();
    let mut second = lab.ns.spawn(&[
        "env",
        &threads,
        bin.to_str().unwrap(),
        "server",
        "--listen",
        PROXY,
    ]);
    let status = second.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second server shares the port: {}",
        second.log()
    );
    assert!(second.log().contains("listen on"), "{}", second.log());
}
