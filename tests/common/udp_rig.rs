//! Fixtures of the UDP and DNS end-to-end tests (tests/udp_*.rs, tests/dns_*.rs):
//! the standard topology with an upstream proxy, dnsmasq as the resolver on
//! the target's side, UDP echo servers, and `sockstun tun` in the client.
#![allow(dead_code)]

use super::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// The resolver every client uses: dnsmasq on the target, reachable only
/// through the proxy (and answered in-process by sockstun in virtual mode).
pub const RESOLVER: &str = TARGET_V4;
pub const TUN_MTU: &str = "1500";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Dante,
    Sockstun,
    Microsocks,
}

/// Everything a UDP/DNS end-to-end test runs in. Field order is drop order:
/// processes first, then the namespaces.
pub struct Env {
    pub tun: Proc,
    pub upstream: Proc,
    pub dnsmasq: Proc,
    pub echo: Vec<UdpEcho>,
    pub http: Vec<Http>,
    pub etc: Vec<EtcNetns>,
    pub dir: TempDir,
    pub dev: String,
    pub topo: Topology,
}

pub fn start_dnsmasq(ns: &Netns, dir: &TempDir) -> Proc {
    start_dnsmasq_on(
        ns,
        dir,
        TARGET_V4,
        &[
            &format!("--address=/web.test/{TARGET_V4}"),
            &format!("--address=/web.test/{TARGET_V6}"),
            &format!("--address=/echo.test/{TARGET_V4}"),
            "--mx-host=mail.test,mx.mail.test,10",
            "--txt-record=txt.test,hello sockstun",
        ],
    )
}

/// dnsmasq in `ns` answering on `listen` alone (port 53, UDP and TCP) from
/// `records` (dnsmasq options), logging every query; once it listens.
pub fn start_dnsmasq_on(ns: &Netns, dir: &TempDir, listen: &str, records: &[&str]) -> Proc {
    let pid = dir.file(&format!("dnsmasq-{listen}.pid"));
    let mut cmd = vec![
        "dnsmasq",
        // Not --no-daemon: that mode serves TCP in the main process and
        // stops answering UDP while a TCP connection stays open.
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--log-queries",
        "--bind-interfaces",
    ];
    let (pid_arg, listen_arg) = (
        format!("--pid-file={pid}"),
        format!("--listen-address={listen}"),
    );
    cmd.extend([pid_arg.as_str(), listen_arg.as_str()]);
    cmd.extend_from_slice(records);
    let p = ns.spawn(&cmd);
    assert!(
        wait_until(Duration::from_secs(10), || {
            String::from_utf8_lossy(&ns.exec(&["ss", "-Hlun", "sport = :53"]).stdout)
                .contains(listen)
        }),
        "dnsmasq on {listen} did not start"
    );
    p
}

pub fn start_upstream(kind: Upstream, ns: &Netns, dir: &TempDir) -> Proc {
    let p = match kind {
        Upstream::Dante => Dante {
            internal: &[PROXY_V4, PROXY_V6],
            external: &[PROXY_TARGET_SIDE_V4, "2001:db8:2::1"],
            client_rule: &[],
            socks_rule: &[DANTE_UDP, "log: connect disconnect"],
            log_file: true,
            mothers: None,
        }
        .start(ns, dir),
        Upstream::Sockstun => start_server(
            ns,
            Some("debug"),
            &[
                "--listen",
                &format!("{PROXY_V4}:1080"),
                "--listen",
                &format!("[{PROXY_V6}]:1080"),
                "--allow-client",
                "198.51.100.0/24",
                "--allow-client",
                "2001:db8:1::/64",
            ],
        ),
        Upstream::Microsocks => ns.spawn(&["microsocks", "-i", PROXY_V4, "-p", "1080"]),
    };
    assert!(
        wait_until(Duration::from_secs(10), || tcp_listening(ns, 1080)),
        "{kind:?} did not start"
    );
    p
}

/// The upstream's log (dante writes its own file; the others log to the Proc's).
pub fn upstream_log(env: &Env) -> String {
    let dante = read_to_string(&env.dir.file("danted.log"));
    dante + &env.upstream.log()
}

/// The whole environment: topology, dnsmasq, echo servers on ports 7 and 9
/// (v4 and v6), an HTTP server on port 80, the upstream, and sockstun tun.
pub fn env(tag: &str, kind: Upstream, tun_args: &[&str]) -> Env {
    let topo = Topology::new(tag);
    let dir = TempDir::new(tag);
    let etc = vec![
        EtcNetns::resolv_conf(&topo.client, RESOLVER),
        EtcNetns::resolv_conf(&topo.proxy, RESOLVER),
    ];
    let dnsmasq = start_dnsmasq(&topo.target, &dir);
    let echo = vec![
        UdpEcho::start(&topo.target, &format!("{TARGET_V4}:7")),
        UdpEcho::start(&topo.target, &format!("{TARGET_V4}:9")),
        UdpEcho::start(&topo.target, &format!("[{TARGET_V6}]:7")),
    ];
    let http = vec![
        Http::start(
            &topo.target,
            &format!("{TARGET_V4}:80"),
            "hello from web.test\n",
        ),
        Http::start(
            &topo.target,
            &format!("[{TARGET_V6}]:80"),
            "hello from web.test\n",
        ),
    ];
    let upstream = start_upstream(kind, &topo.proxy, &dir);
    let dev = uniq("tu");
    // `sockstun tun` in the client namespace with default routes into it.
    let proxy = format!("socks5://{PROXY_V4}:1080");
    let mut args = vec!["--ipv4", TUN_V4, "--ipv6", TUN_V6, "--mtu", TUN_MTU];
    args.extend_from_slice(tun_args);
    let tun = start_tun(&topo.client, "info,sockstun=debug", &proxy, &dev, &args);
    topo.route_default_via_tun(&dev);
    Env {
        tun,
        upstream,
        dnsmasq,
        echo,
        http,
        etc,
        dir,
        dev,
        topo,
    }
}

/// `dig` in the client namespace; returns (success, stdout).
pub fn dig(env: &Env, args: &[&str]) -> (bool, String) {
    let mut cmd = vec!["dig", "+time=3", "+tries=2"];
    cmd.extend_from_slice(args);
    let out = env.topo.client.exec(&cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Send `n` numbered datagrams of `size` bytes from one socket in `ns` to
/// `dst`, at most `window` unanswered at a time; returns how many came back
/// intact from `dst`.
pub fn echo_round_trips(
    ns: &Netns,
    bind: &str,
    dst: &str,
    n: u32,
    size: usize,
    window: u32,
) -> u32 {
    let bind: SocketAddr = bind.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    ns.run_in(move || {
        let s = UdpSocket::bind(bind).expect("bind client");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let payload = |i: u32| -> Vec<u8> {
            let mut p = i.to_be_bytes().to_vec();
            p.extend((0..size.saturating_sub(4)).map(|j| (i as usize * 31 + j) as u8));
            p
        };
        let (mut sent, mut ok) = (0u32, 0u32);
        let mut buf = vec![0u8; 65536];
        while ok < n {
            while sent < n && sent - ok < window {
                s.send_to(&payload(sent), dst).expect("send");
                sent += 1;
            }
            match s.recv_from(&mut buf) {
                Ok((len, from)) => {
                    if from != dst || len < 4 {
                        continue;
                    }
                    let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if i < n && buf[..len] == payload(i)[..] {
                        ok += 1;
                    }
                }
                Err(_) => break,
            }
        }
        ok
    })
}

/// tcpdump on the client's veth (c0), writing a capture file; stopped by `finish`.
pub struct Capture {
    proc: Proc,
    file: String,
}

impl Capture {
    pub fn start(env: &Env) -> Capture {
        let file = env.dir.file("c0.pcap");
        let proc = env.topo.client.spawn(&[
            "tcpdump",
            "-i",
            "c0",
            "-n",
            "-U",
            "--immediate-mode",
            "-w",
            &file,
        ]);
        assert!(
            wait_until(Duration::from_secs(10), || proc
                .log()
                .contains("listening on")),
            "tcpdump did not start:\n{}",
            proc.log()
        );
        Capture { proc, file }
    }

    /// Stop the capture; returns the packets matching `filter`, one per line.
    pub fn finish(mut self, filters: &[&str]) -> Vec<String> {
        self.proc.signal(libc::SIGINT);
        assert!(
            self.proc.wait_exit(Duration::from_secs(10)).is_some(),
            "tcpdump did not stop"
        );
        filters
            .iter()
            .map(|f| {
                let out = std::process::Command::new("tcpdump")
                    .args(["-r", &self.file, "-n", f])
                    .output()
                    .expect("tcpdump -r");
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
            .collect()
    }
}

/// `curl http://web.test/` in the client namespace (resolved through the
/// TUN); asserts it fetched the page.
pub fn curl_web(env: &Env, what: &str) {
    let out = env
        .topo
        .client
        .exec(&["curl", "-sS", "--max-time", "10", "http://web.test/"]);
    assert!(
        out.status.success(),
        "{what}: curl http://web.test/ failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.tun.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from web.test\n"
    );
}

/// `dig +short @RESOLVER NAME TYPE [extra]`; asserts dig succeeded and
/// returns the first answer line.
pub fn dig_short(env: &Env, name: &str, qtype: &str, extra: &[&str]) -> String {
    let server = format!("@{RESOLVER}");
    let mut args = vec!["+short", server.as_str(), name, qtype];
    args.extend_from_slice(extra);
    let (ok, out) = dig(env, &args);
    assert!(ok, "dig {name} {qtype} failed: {out}\n{}", env.tun.log());
    out.lines().next().unwrap_or("").trim().to_string()
}
