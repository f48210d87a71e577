//! One client connection: the SOCKS handshake (incremental, under the
//! handshake timeout), authentication, dispatch to the command, and the
//! session's single info log line.

use super::admit::Admitted;
use super::{bind, connect, udp, Config};
use crate::socks::codec::{self, cmd, method, CodecError, Parsed, Reply};
use crate::socks::handshake::{ReadError, Reader};
use crate::socks::TargetAddr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info};

/// The outcome of a client that greeted (and authenticated) and closed
/// cleanly without a request: a health check such as `sockstun tun`'s probe
/// of its upstream. Logged at debug, as it is no error.
const PROBE: &str = "probe: closed cleanly after the greeting";
/// A TCP health check: connected and closed without a byte.
const PROBE_BARE: &str = "probe: closed cleanly before a greeting";
const CLOSED_IN_HANDSHAKE: &str = "client closed during handshake";
/// Evicted, stalled, to make room for a newer connection.
const EVICTED: &str = "evicted: handshake stalled while others waited";

/// The dialect a client spoke, which decides the shape of every reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    V4,
    V5,
}

impl Proto {
    /// A complete failure reply (SOCKS4 answers every failure with 0x5B).
    pub fn failure(self, rep: Reply) -> Vec<u8> {
        match self {
            Proto::V4 => codec::encode_socks4_reply(
                rep.socks4(),
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            )
            .to_vec(),
            Proto::V5 => codec::encode_socks5_failure(rep.socks5()),
        }
    }

    /// A success reply carrying `bound`. SOCKS4 cannot carry an IPv6 address:
    /// it gets 0.0.0.0 and the port.
    pub fn success(self, bound: SocketAddr) -> Vec<u8> {
        match self {
            Proto::V4 => {
                let ip = match codec::unmap(bound.ip()) {
                    std::net::IpAddr::V4(v4) => v4,
                    std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                codec::encode_socks4_reply(
                    Reply::Succeeded.socks4(),
                    SocketAddrV4::new(ip, bound.port()),
                )
                .to_vec()
            }
            Proto::V5 => codec::encode_socks5_reply(Reply::Succeeded.socks5(), bound),
        }
    }
}

/// What the session's log line says.
pub(super) struct SessionLog {
    pub proto: &'static str,
    pub user: Option<String>,
    pub cmd: &'static str,
    pub dest: Option<TargetAddr>,
    /// The address actually dialed (CONNECT) or accepted (BIND).
    pub via: Option<SocketAddr>,
    /// Bytes client → destination and back.
    pub up: u64,
    pub down: u64,
}

/// The end every relaying command shares: send the success reply, pass on the
/// bytes the client pipelined behind its request, then relay until both sides
/// are done. Returns the outcome for the log line.
pub(super) async fn reply_and_relay(
    cfg: &Config,
    mut client: tokio::net::TcpStream,
    mut other: tokio::net::TcpStream,
    reply: &[u8],
    early: &[u8],
    log: &mut SessionLog,
    other_name: &str,
) -> String {
    use tokio::io::AsyncWriteExt;
    if let Err(e) = client.write_all(reply).await {
        return format!("client gone before reply: {e}");
    }
    if !early.is_empty() {
        if let Err(e) = other.write_all(early).await {
            return format!("{other_name} write failed: {e}");
        }
        log.up += early.len() as u64;
    }
    let idle = Some(cfg.idle_timeout);
    let st = crate::relay::relay_until(client, other, idle, cfg.stopped()).await;
    log.up += st.a_to_b;
    log.down += st.b_to_a;
    st.outcome.describe("client", other_name)
}

/// A parsed request, after authentication.
pub(super) struct Request {
    pub proto: Proto,
    pub cmd: u8,
    pub dest: TargetAddr,
}

/// Bytes read during the handshake (`socks::handshake::Reader`). Every
/// message is capped well below its size (SOCKS4 fields at 255 bytes, SOCKS5
/// fields by their length bytes).
type HsBuf = Reader<1024>;

/// The outcome of a handshake that ended because no message came.
fn lost(e: ReadError) -> String {
    match e {
        ReadError::Closed => CLOSED_IN_HANDSHAKE.into(),
        ReadError::Io(e) => format!("client error during handshake: {e}"),
        ReadError::TooLong => "handshake message too long".into(),
        // The callers below take the parser's errors themselves.
        ReadError::Codec(e) => format!("bad message: {e}"),
    }
}

/// Wait for the client's next bytes: true if it closed cleanly instead.
async fn at_eof(buf: &mut HsBuf, s: &mut TcpStream) -> Result<bool, String> {
    match buf.fill(s).await {
        Ok(()) => Ok(false),
        Err(ReadError::Closed) if buf.pending().is_empty() => Ok(true),
        Err(e) => Err(lost(e)),
    }
}

/// Read until `parse` yields a message or an error; consume the message.
async fn message<T>(
    buf: &mut HsBuf,
    s: &mut TcpStream,
    parse: impl Fn(&[u8]) -> Parsed<T>,
) -> Result<Result<T, CodecError>, String> {
    match buf.next(s, parse).await {
        Ok(m) => Ok(Ok(m)),
        Err(ReadError::Codec(e)) => Ok(Err(e)),
        Err(e) => Err(lost(e)),
    }
}

pub(super) async fn handle(
    cfg: Arc<Config>,
    live: super::Live,
    mut client: TcpStream,
    peer: SocketAddr,
    hs: Admitted,
) {
    let start = Instant::now();
    let local = client.local_addr().ok();
    let mut log = SessionLog {
        proto: "-",
        user: None,
        cmd: "-",
        dest: None,
        via: None,
        up: 0,
        down: 0,
    };
    let gate = live.0.clone();
    let body = async {
        let Admitted {
            ticket, evicted, ..
        } = hs;
        let hs = tokio::select! {
            r = tokio::time::timeout(cfg.handshake_timeout, handshake(&cfg, &mut client, &mut log)) => {
                r.unwrap_or_else(|_| Err("handshake timeout".to_string()))
            }
            _ = evicted => Err(EVICTED.to_string()),
        };
        drop(ticket);
        match hs {
            Err(why) => {
                close_gently(client).await;
                why
            }
            Ok((req, early)) => match gate.slots.clone().try_acquire_owned() {
                // Only relaying sessions hold a slot: a flood of handshakes
                // cannot take them.
                Err(_) => {
                    let rep = Reply::GeneralFailure;
                    refuse(client, req.proto, rep, "refused: too many clients".into()).await
                }
                Ok(_slot) => dispatch(&cfg, client, early, req, peer, local, &mut log).await,
            },
        }
    };
    // A relaying session sees the stop itself and returns its byte counts;
    // this catches the others (handshake, dial, BIND wait).
    let outcome = tokio::select! {
        biased;
        o = body => o,
        _ = cfg.stopped() => "shutdown".to_string(),
    };
    if [PROBE, PROBE_BARE, EVICTED].contains(&outcome.as_str()) {
        debug!(client = %peer, proto = %log.proto, outcome, "session");
        return;
    }
    let dest = log
        .dest
        .as_ref()
        .map_or_else(|| "-".to_string(), |d| d.to_string());
    let via = log.via.map_or_else(|| "-".to_string(), |v| v.to_string());
    // The user name and a domain are the client's bytes: escaped, so a CR/LF
    // cannot forge a log line (the fmt subscriber prints `%` fields raw).
    info!(
        client = %peer,
        proto = %log.proto,
        user = %Escaped(log.user.as_deref().unwrap_or("-")),
        cmd = %log.cmd,
        dest = %Escaped(&dest),
        via = %via,
        up = log.up,
        down = log.down,
        ms = start.elapsed().as_millis() as u64,
        outcome = %Escaped(&outcome),
        "session"
    );
}

/// Run the command of an admitted request; returns the outcome.
async fn dispatch(
    cfg: &Config,
    client: TcpStream,
    early: Vec<u8>,
    req: Request,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    log: &mut SessionLog,
) -> String {
    log.cmd = match req.cmd {
        cmd::CONNECT => "connect",
        cmd::BIND => "bind",
        _ => "udp-associate",
    };
    log.dest = Some(req.dest.clone());
    let server_ip = local.map(|l| l.ip());
    match req.cmd {
        cmd::CONNECT => connect::run(cfg, client, early, &req, server_ip, log).await,
        cmd::BIND => bind::run(cfg, client, early, &req, local, log).await,
        _ => udp::run(cfg, client, &req, peer, local, log).await,
    }
}

/// Send `reply`, then close without resetting: unread request bytes left in
/// the receive buffer would make close(2) send a RST that can destroy the
/// reply before the client reads it.
async fn reply_and_close(mut s: TcpStream, reply: &[u8]) {
    let _ = s.write_all(reply).await;
    close_gently(s).await;
}

pub(super) async fn close_gently(mut s: TcpStream) {
    let _ = s.shutdown().await;
    let mut sink = [0u8; 1024];
    while let Ok(n) = s.try_read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

async fn send(s: &mut TcpStream, b: &[u8]) -> Result<(), String> {
    s.write_all(b)
        .await
        .map_err(|e| format!("client error during handshake: {e}"))
}

/// Run the handshake up to a parsed, authorised request; also returns the
/// bytes the client sent after its request (optimistic data), which go to the
/// destination first. On a refusal the reply is sent here and the text of the
/// outcome returned. The handshake buffer lives only as long as this future,
/// not for the whole session.
async fn handshake(
    cfg: &Config,
    client: &mut TcpStream,
    log: &mut SessionLog,
) -> Result<(Request, Vec<u8>), String> {
    let mut buf = HsBuf::new();
    let req = handshake_in(cfg, client, &mut buf, log).await?;
    Ok((req, buf.pending().to_vec()))
}

/// The rest of a SOCKS4/4a handshake: one request, no authentication.
async fn socks4_request(
    cfg: &Config,
    client: &mut TcpStream,
    buf: &mut HsBuf,
    log: &mut SessionLog,
) -> Result<Request, String> {
    log.proto = "socks4";
    let req = match message(buf, client, codec::parse_socks4_request).await? {
        Ok(r) => r,
        Err(e) => {
            send(client, &Proto::V4.failure(Reply::GeneralFailure)).await?;
            return Err(format!("bad request: {e}"));
        }
    };
    if req.socks4a {
        log.proto = "socks4a";
    }
    if !req.user_id.is_empty() {
        log.user = Some(String::from_utf8_lossy(&req.user_id).into_owned());
    }
    log.dest = Some(req.dest.clone());
    if cfg.auth_required() {
        send(client, &Proto::V4.failure(Reply::GeneralFailure)).await?;
        return Err("refused: SOCKS4 carries no password and users are configured".into());
    }
    Ok(Request {
        proto: Proto::V4,
        cmd: req.cmd,
        dest: req.dest,
    })
}

async fn handshake_in(
    cfg: &Config,
    client: &mut TcpStream,
    buf: &mut HsBuf,
    log: &mut SessionLog,
) -> Result<Request, String> {
    if at_eof(buf, client).await? {
        return Err(PROBE_BARE.into());
    }
    match buf.pending()[0] {
        codec::SOCKS4_VERSION => socks4_request(cfg, client, buf, log).await,
        codec::SOCKS5_VERSION => {
            log.proto = "socks5";
            let methods = match message(buf, client, codec::parse_greeting).await? {
                Ok(m) => m,
                Err(e) => {
                    send(client, &codec::encode_method_choice(method::NO_ACCEPTABLE)).await?;
                    return Err(format!("bad greeting: {e}"));
                }
            };
            // GSSAPI is never chosen: a client offering only it gets 0xFF.
            let chosen = if cfg.auth_required() {
                if methods.contains(&method::USER_PASS) {
                    method::USER_PASS
                } else {
                    method::NO_ACCEPTABLE
                }
            } else if methods.contains(&method::NO_AUTH) {
                method::NO_AUTH
            } else {
                method::NO_ACCEPTABLE
            };
            send(client, &codec::encode_method_choice(chosen)).await?;
            if chosen == method::NO_ACCEPTABLE {
                return Err(format!(
                    "refused: no acceptable auth method in {methods:02x?}"
                ));
            }
            if chosen == method::USER_PASS {
                let creds = match message(buf, client, codec::parse_auth_request).await? {
                    Ok(c) => c,
                    Err(e) => {
                        send(client, &codec::encode_auth_reply(false)).await?;
                        return Err(format!("bad auth request: {e}"));
                    }
                };
                log.user = Some(creds.user.clone());
                let ok = cfg.check_password(&creds.user, &creds.password);
                send(client, &codec::encode_auth_reply(ok)).await?;
                if !ok {
                    return Err("refused: authentication failed".into());
                }
            }
            if buf.pending().is_empty() && at_eof(buf, client).await? {
                return Err(PROBE.into());
            }
            let req = match message(buf, client, codec::parse_socks5_request).await? {
                Ok(r) => r,
                Err(e) => {
                    let rep = match e {
                        CodecError::UnknownCommand(_) => Reply::CommandNotSupported,
                        CodecError::UnknownAddrType(_) => Reply::AddrTypeNotSupported,
                        _ => Reply::GeneralFailure,
                    };
                    send(client, &Proto::V5.failure(rep)).await?;
                    return Err(format!("bad request: {e}"));
                }
            };
            Ok(Request {
                proto: Proto::V5,
                cmd: req.cmd,
                dest: req.dest,
            })
        }
        v => Err(format!("not a SOCKS client (first byte 0x{v:02x})")),
    }
}

/// Reply a failure and close; returns the outcome text.
pub(super) async fn refuse(client: TcpStream, proto: Proto, rep: Reply, why: String) -> String {
    reply_and_close(client, &proto.failure(rep)).await;
    why
}

/// Displays a string with its control characters escaped (`\n`, `\u{1b}`),
/// everything else as is.
pub(crate) struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() {
                for e in c.escape_debug() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod escaped_tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            Escaped("alice\n2026-01-01 INFO session user=admin\r\u{1b}[2J\u{7f}").to_string(),
            "alice\\n2026-01-01 INFO session user=admin\\r\\u{1b}[2J\\u{7f}"
        );
        assert_eq!(Escaped("bücher.test:80").to_string(), "bücher.test:80");
    }
}
