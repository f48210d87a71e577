//! The server's configuration: `ServerArgs` validated once at start, with
//! the limits sized from the open-file limit and the user table.

use super::rules::Rules;
use super::stop;
use crate::cli::ServerArgs;
use anyhow::{bail, Context as _};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::warn;

/// The validated configuration of a server.
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// User name → password. Not `Debug`: never log a password.
    users: HashMap<String, Vec<u8>>,
    pub rules: Rules,
    /// Relaying sessions (after the handshake).
    pub max_clients: usize,
    /// Connections in their handshake, and one source's share of them
    /// (admit.rs).
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub bind_timeout: Duration,
    /// Set once at SIGINT/SIGTERM: every session ends and logs its line.
    /// Shared by every configuration a reload makes, so sessions started
    /// under an older one stop too.
    pub(super) stop: std::sync::Arc<stop::Stop>,
}

/// Descriptors kept aside for listeners, logs, name lookups, the runtime and
/// the pool of tasks that refuse clients over the limit (64).
const FD_RESERVE: u64 = 128;

/// The default number of relaying sessions for `fd_limit` descriptors: a
/// CONNECT session holds two (client and destination), a handshake one, and
/// handshakes get a quarter of the sessions' count: 2C + C/4 = 9C/4. (A UDP
/// association holds up to four, a BIND three while it waits: a server full
/// of those meets the descriptor limit first, and accept backs off. A relay
/// holds a pipe, two more, per direction only while bytes move, from
/// `FD_RESERVE`; with no descriptor for one it copies instead.)
fn default_clients(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(FD_RESERVE) * 4 / 9).max(16) as usize
}

impl Config {
    /// `fd_limit`: the open-file limit in force, which sizes the defaults.
    pub fn from_args(args: &ServerArgs, fd_limit: u64) -> anyhow::Result<Config> {
        let mut users = HashMap::new();
        for u in &args.users {
            let (name, pass) = parse_user(u).context("--user")?;
            users.insert(name, pass);
        }
        if let Some(path) = &args.users_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--users-file {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() || line.trim_start().starts_with('#') {
                    continue;
                }
                let (name, pass) = parse_user(line)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))?;
                users.insert(name, pass);
            }
        }
        let rules = Rules::new(&args.allow_client, &args.allow_dest, &args.deny_dest)
            .and_then(|r| r.with_user_rules(&args.rules))
            .map_err(anyhow::Error::msg)?;
        if args.listen.is_empty() {
            bail!("no --listen address");
        }
        let max_clients = args
            .max_clients
            .unwrap_or_else(|| default_clients(fd_limit));
        let max_handshakes = args.max_handshakes.unwrap_or((max_clients / 4).max(16));
        // Half: when the budget is full, one address never holds more than
        // the rest of the world.
        let per_source = args
            .max_handshakes_per_source
            .unwrap_or((max_handshakes / 2).max(1));
        let need = 2 * max_clients as u64 + max_handshakes as u64 + FD_RESERVE;
        if need > fd_limit {
            warn!(
                "--max-clients {max_clients} and --max-handshakes {max_handshakes} need about {need} \
                 descriptors; the limit is {fd_limit}: past it, accept waits for descriptors to free"
            );
        }
        for (flag, v) in [
            ("--max-clients", max_clients),
            ("--max-handshakes", max_handshakes),
            ("--max-handshakes-per-source", per_source),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        // Safe by default: an open proxy on a reachable address is the most
        // common SOCKS misconfiguration.
        for l in &args.listen {
            if !crate::net::unmap(l.ip()).is_loopback()
                && users.is_empty()
                && !rules.restricts_clients()
            {
                bail!(
                    "refusing to listen on {l} without authentication or client restriction: anyone who can \
                     reach it could use it as an open proxy. Add --user NAME:PASSWORD (or --users-file FILE), \
                     or restrict clients with --allow-client CIDR. To run an open proxy on purpose, say so: \
                     --allow-client 0.0.0.0/0 --allow-client ::/0"
                );
            }
        }
        Ok(Config {
            listen: args.listen.clone(),
            users,
            rules,
            max_clients,
            max_handshakes,
            max_handshakes_per_source: per_source,
            handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
            bind_timeout: Duration::from_secs(args.bind_timeout.max(1)),
            stop: Default::default(),
        })
    }

    /// Completes once the server is shutting down.
    pub fn stopped(&self) -> stop::StopWait<'_> {
        self.stop.wait()
    }

    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Check credentials in time independent of where the password differs.
    pub(super) fn check_password(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(p) => {
                let mut diff = u8::from(p.len() != password.len());
                for (a, b) in p.iter().zip(password.iter()) {
                    diff |= a ^ b;
                }
                diff == 0
            }
            None => false,
        }
    }
}

fn parse_user(s: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let Some((name, pass)) = s.split_once(':') else {
        bail!("expected NAME:PASSWORD");
    };
    if name.is_empty() || name.len() > 255 || pass.len() > 255 {
        bail!("user name must be 1 to 255 bytes, password at most 255 (RFC 1929)");
    }
    Ok((name.to_string(), pass.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServerArgs {
        let mut v = vec!["sockstun", "server"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Server(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn open_proxy_refused_unless_asked_for() {
        let e = Config::from_args(&args(&["--listen", "0.0.0.0:1080"]), 1024)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--allow-client 0.0.0.0/0"), "{e}");
        assert!(Config::from_args(&args(&["--listen", "[::]:1080"]), 1024).is_err());
        assert!(
            Config::from_args(&args(&[]), 1024).is_ok(),
            "loopback default must start"
        );
        assert!(Config::from_args(&args(&["--listen", "[::1]:1080"]), 1024).is_ok());
        assert!(
            Config::from_args(&args(&["--listen", "0.0.0.0:1080", "--user", "a:b"]), 1024).is_ok()
        );
        assert!(Config::from_args(
            &args(&["--listen", "0.0.0.0:1080", "--allow-client", "10.0.0.0/8"]),
            1024
        )
        .is_ok());
    }

    #[test]
    fn users_and_passwords() {
        let f = std::env::temp_dir().join(format!("sockstun-users-{}", std::process::id()));
        std::fs::write(
            &f,
            "# comment\n\n  # indented comment\nerin:pa:ss\r\nfrank:\n",
        )
        .unwrap();
        let c = Config::from_args(
            &args(&[
                "--user",
                "alice:s3cret",
                "--users-file",
                f.to_str().unwrap(),
            ]),
            1024,
        )
        .unwrap();
        let _ = std::fs::remove_file(&f);
        assert!(c.auth_required());
        assert!(c.check_password("alice", b"s3cret"));
        assert!(!c.check_password("alice", b"s3cre"));
        assert!(!c.check_password("alice", b"s3cret!"));
        assert!(!c.check_password("alice", b""));
        assert!(
            c.check_password("erin", b"pa:ss"),
            "a password may contain ':'"
        );
        assert!(c.check_password("frank", b""));
        assert!(!c.check_password("nobody", b""));
        for bad in ["nocolon", ":nouser"] {
            assert!(
                Config::from_args(&args(&["--user", bad]), 1024).is_err(),
                "{bad}"
            );
        }
        assert!(Config::from_args(&args(&["--allow-dest", "not-a-cidr"]), 1024).is_err());
        assert!(Config::from_args(&args(&["--max-clients", "0"]), 1024).is_err());
        assert!(Config::from_args(&args(&["--max-handshakes", "0"]), 1024).is_err());
    }

    #[test]
    fn budgets_follow_the_descriptor_limit() {
        let c = Config::from_args(&args(&[]), 20_000).unwrap();
        assert_eq!((c.max_clients, c.max_handshakes), (8832, 2208));
        assert_eq!(c.max_handshakes_per_source, 1104);
        // Sessions (2 descriptors), handshakes (1) and the reserve fit.
        assert!(2 * c.max_clients + c.max_handshakes + FD_RESERVE as usize <= 20_000);
        // A quarter of the sessions given, as --help says.
        let c = Config::from_args(&args(&["--max-clients", "0x400"]), 1024).unwrap();
        assert_eq!((c.max_clients, c.max_handshakes), (1024, 256));
        assert_eq!(default_clients(0), 16);
    }
}
