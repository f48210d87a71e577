//! `sockstun server`: a SOCKS4, SOCKS4a and SOCKS5 server.
//!
//! - `mod.rs`: configuration, listeners, the accept loop and the client limit;
//! - `session.rs`: one client: handshake, authentication, dispatch, log line;
//! - `rules.rs`: who may connect and where to;
//! - `connect.rs`, `bind.rs`, `udp.rs`: the three commands.

mod bind;
mod connect;
pub mod rules;
mod session;
mod udp;

use crate::cli::ServerArgs;
use anyhow::{bail, Context as _};
use rules::Rules;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// The validated configuration of a server.
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// User name → password. Not `Debug`: never log a password.
    users: HashMap<String, Vec<u8>>,
    pub rules: Rules,
    pub max_clients: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub bind_timeout: Duration,
}

impl Config {
    pub fn from_args(args: &ServerArgs) -> anyhow::Result<Config> {
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
            .map_err(anyhow::Error::msg)?;
        if args.listen.is_empty() {
            bail!("no --listen address");
        }
        if args.max_clients == 0 {
            bail!("--max-clients must be at least 1");
        }
        // Safe by default: an open proxy on a reachable address is the most
        // common SOCKS misconfiguration.
        for l in &args.listen {
            if !crate::socks::codec::unmap(l.ip()).is_loopback()
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
            max_clients: args.max_clients,
            handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
            bind_timeout: Duration::from_secs(args.bind_timeout.max(1)),
        })
    }

    pub fn auth_required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Check credentials in time independent of where the password differs.
    fn check_password(&self, user: &str, password: &[u8]) -> bool {
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

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 can then both be listened on, each explicitly.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Run the server until SIGINT/SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(Config::from_args(&args)?);
    if let Err(e) = crate::net::raise_fd_limit() {
        debug!("could not raise the open-file limit: {e}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let r = rt.block_on(serve(cfg));
    // Do not wait for name lookups still running on the blocking pool.
    rt.shutdown_timeout(Duration::from_millis(500));
    r
}

/// Bind every listener, then serve until SIGINT/SIGTERM.
pub async fn serve(cfg: Arc<Config>) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for &addr in &cfg.listen {
        let l = bind_listener(addr).with_context(|| format!("listen on {addr}"))?;
        info!(
            "listening on {} (auth {}, max {} clients)",
            l.local_addr().unwrap_or(addr),
            if cfg.auth_required() {
                "required"
            } else {
                "none"
            },
            cfg.max_clients
        );
        listeners.push(l);
    }
    let slots = Arc::new(Semaphore::new(cfg.max_clients));
    // Refusing over the limit costs a task each; bound those too.
    let refusers = Arc::new(Semaphore::new(64));
    for l in listeners {
        tokio::spawn(accept_loop(l, cfg.clone(), slots.clone(), refusers.clone()));
    }
    shutdown_signal().await;
    info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn accept_loop(
    l: TcpListener,
    cfg: Arc<Config>,
    slots: Arc<Semaphore>,
    refusers: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !cfg.rules.client_allowed(peer.ip()) {
            info!(client = %peer, outcome = "client not allowed", "session");
            continue;
        }
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    session::handle(cfg, stream, peer).await;
                    drop(permit);
                });
            }
            Err(_) => match refusers.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        refuse_busy(stream).await;
                        info!(client = %peer, outcome = "refused: too many clients", "session");
                        drop(permit);
                    });
                }
                Err(_) => debug!(client = %peer, "refused: too many clients (closed at once)"),
            },
        }
    }
}

/// Over the client limit: answer the first message with a well-formed
/// refusal (SOCKS5: no acceptable method; SOCKS4: rejected) and close.
async fn refuse_busy(mut s: TcpStream) {
    use crate::socks::codec::{encode_method_choice, encode_socks4_reply, method, rep4};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = [0u8; 1];
    let ver = tokio::time::timeout(Duration::from_secs(1), s.read(&mut first)).await;
    let reply: &[u8] = match (ver, first[0]) {
        (Ok(Ok(1)), 5) => &encode_method_choice(method::NO_ACCEPTABLE),
        (Ok(Ok(1)), 4) => {
            &encode_socks4_reply(rep4::REJECTED, std::net::SocketAddrV4::new(0.into(), 0))
        }
        _ => &[],
    };
    let _ = s.write_all(reply).await;
    session::close_gently(s).await;
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
        let e = Config::from_args(&args(&["--listen", "0.0.0.0:1080"]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--allow-client 0.0.0.0/0"), "{e}");
        assert!(Config::from_args(&args(&["--listen", "[::]:1080"])).is_err());
        assert!(
            Config::from_args(&args(&[])).is_ok(),
            "loopback default must start"
        );
        assert!(Config::from_args(&args(&["--listen", "[::1]:1080"])).is_ok());
        assert!(Config::from_args(&args(&["--listen", "0.0.0.0:1080", "--user", "a:b"])).is_ok());
        assert!(Config::from_args(&args(&[
            "--listen",
            "0.0.0.0:1080",
            "--allow-client",
            "10.0.0.0/8"
        ]))
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
        let c = Config::from_args(&args(&[
            "--user",
            "alice:s3cret",
            "--users-file",
            f.to_str().unwrap(),
        ]))
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
            assert!(Config::from_args(&args(&["--user", bad])).is_err(), "{bad}");
        }
        assert!(Config::from_args(&args(&["--allow-dest", "not-a-cidr"])).is_err());
        assert!(Config::from_args(&args(&["--max-clients", "0"])).is_err());
    }
}
