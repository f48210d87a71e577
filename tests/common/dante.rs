//! dante-server (danted) as an upstream SOCKS server. One configuration
//! template for every test: no authentication, privileged root and
//! unprivileged nobody, every client and destination passed; what varies
//! (addresses, outgoing side, rules' commands and logging, where it logs) is
//! a field of `Dante`.
#![allow(dead_code)]

use super::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The port dante listens on in every test.
pub const DANTE_PORT: u16 = 1080;

/// `command:` of a `socks pass` rule that relays UDP too.
pub const DANTE_UDP: &str = "command: connect udpassociate udpreply";

/// A dante-server to start in a namespace.
pub struct Dante<'a> {
    /// Addresses it listens on (port `DANTE_PORT`).
    pub internal: &'a [&'a str],
    /// Interfaces or addresses it connects out from.
    pub external: &'a [&'a str],
    /// Extra lines of the `client pass` rule (e.g. `log: connect error`).
    pub client_rule: &'a [&'a str],
    /// Extra lines of the `socks pass` rule (e.g. `DANTE_UDP`).
    pub socks_rule: &'a [&'a str],
    /// Log to `danted.log` in the directory instead of stderr (the `Proc`'s log).
    pub log_file: bool,
    /// Main processes (`-N`); dante's default when `None`.
    pub mothers: Option<u32>,
}

impl Dante<'_> {
    /// The configuration file's text; `dir` holds the log file, if any.
    pub fn conf(&self, dir: &TempDir) -> String {
        let mut c = String::new();
        if self.log_file {
            c += &format!("logoutput: {}\n", dir.file("danted.log"));
        } else {
            c += "logoutput: stderr\n";
        }
        for a in self.internal {
            c += &format!("internal: {a} port = {DANTE_PORT}\n");
        }
        for e in self.external {
            c += &format!("external: {e}\n");
        }
        c += "socksmethod: none\n\
              clientmethod: none\n\
              user.privileged: root\n\
              user.unprivileged: nobody\n";
        for (rule, extra) in [("client", self.client_rule), ("socks", self.socks_rule)] {
            c += &format!("{rule} pass {{\n from: 0/0 to: 0/0\n");
            for l in extra {
                c += &format!(" {l}\n");
            }
            c += "}\n";
        }
        c
    }

    /// Write the configuration into `dir` and start dante in `ns`; returns
    /// once it listens on every internal address (within 10 s; panics with
    /// its log otherwise).
    pub fn start(&self, ns: &Netns, dir: &TempDir) -> Proc {
        let conf = dir.file("danted.conf");
        std::fs::write(&conf, self.conf(dir)).expect("write danted.conf");
        let pid = dir.file("danted.pid");
        let mothers = self.mothers.map(|n| n.to_string());
        let mut cmd = vec!["danted", "-f", &conf, "-p", &pid];
        if let Some(n) = &mothers {
            cmd.extend_from_slice(&["-N", n]);
        }
        let p = ns.spawn(&cmd);
        for a in self.internal {
            let addr = SocketAddr::new(a.parse().expect("internal address"), DANTE_PORT);
            assert!(
                wait_until(Duration::from_secs(10), || tcp_listening_on(ns, addr)),
                "dante does not listen on {addr}:\n{}\n{}",
                p.log(),
                read_to_string(&dir.file("danted.log"))
            );
        }
        p
    }
}
