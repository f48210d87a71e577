//! tinyproxy (Debian's `tinyproxy`), the HTTP CONNECT proxy of the HTTP
//! upstream tests, in the proxy namespace of a `Topology`.
#![allow(dead_code)]

use super::*;
use std::time::Duration;

pub const TINYPROXY_PORT: u16 = 8888;

/// `http://[user:password@]PROXY_V4:TINYPROXY_PORT`.
pub fn tinyproxy_url(cred: Option<&str>) -> String {
    match cred {
        Some(c) => format!("http://{c}@{PROXY_V4}:{TINYPROXY_PORT}"),
        None => format!("http://{PROXY_V4}:{TINYPROXY_PORT}"),
    }
}

/// tinyproxy in the foreground in `ns`, on every address of the namespace
/// at `TINYPROXY_PORT`, serving the client networks of `Topology`, CONNECT
/// to any port, with `BasicAuth USER PASSWORD` when `auth` is given. It logs
/// every request (`LogLevel Info`) to the Proc's log. Returns once it
/// listens. Names are resolved with the namespace's /etc/netns files
/// (`EtcNetns`), made before this is called.
pub fn start_tinyproxy(ns: &Netns, dir: &TempDir, auth: Option<(&str, &str)>) -> Proc {
    let conf = dir.file("tinyproxy.conf");
    // No User: it stays root (the test's own namespace). No LogFile: stdout.
    // No ConnectPort: CONNECT to every port.
    let mut c = format!(
        "Port {TINYPROXY_PORT}\nTimeout 600\nMaxClients 200\nLogLevel Info\n\
         Allow 198.51.100.0/24\nAllow 2001:db8:1::/64\nDisableViaHeader Yes\n"
    );
    if let Some((user, password)) = auth {
        c += &format!("BasicAuth {user} {password}\n");
    }
    std::fs::write(&conf, c).expect("write tinyproxy.conf");
    let mut p = ns.spawn(&["tinyproxy", "-d", "-c", &conf]);
    let up = wait_until(Duration::from_secs(10), || {
        tcp_listening(ns, TINYPROXY_PORT) || !p.is_running()
    });
    assert!(
        up && p.is_running(),
        "tinyproxy did not start:\n{}",
        p.log()
    );
    p
}
