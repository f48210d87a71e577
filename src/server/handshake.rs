//! The server's side of the SOCKS handshake, read incrementally
//! (`socks::handshake::Reader`): the first byte picks the dialect, then the
//! SOCKS4/4a request, or the SOCKS5 greeting, RFC 1929 authentication and
//! request. Every refusal is answered here, in the client's dialect.

use super::config::Config;
use super::reply::{Proto, Refusal, Request, SessionLog};
use crate::socks::codec::{self, method, CodecError, Parsed};
use crate::socks::handshake::{ReadError, Reader};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The outcome of a client that greeted (and authenticated) and closed
/// cleanly without a request: a health check such as `sockstun tun`'s probe
/// of its upstream. Logged at debug, as it is no error.
pub(super) const PROBE: &str = "probe: closed cleanly after the greeting";
/// A TCP health check: connected and closed without a byte.
pub(super) const PROBE_BARE: &str = "probe: closed cleanly before a greeting";
const CLOSED_IN_HANDSHAKE: &str = "client closed during handshake";

/// Bytes read during the handshake. Every message is capped well below its
/// size (SOCKS4 fields at 255 bytes, SOCKS5 fields by their length bytes).
type HsBuf = Reader<1024>;

/// Run the handshake up to a parsed, authorised request; also returns the
/// bytes the client sent after its request (optimistic data), which go to the
/// destination first. On a refusal the reply is sent here and the text of the
/// outcome returned. The handshake buffer lives only as long as this future,
/// not for the whole session.
pub(super) async fn handshake(
    cfg: &Config,
    client: &mut TcpStream,
    log: &mut SessionLog,
) -> Result<(Request, Vec<u8>), String> {
    let mut buf = HsBuf::new();
    let req = handshake_in(cfg, client, &mut buf, log).await?;
    Ok((req, buf.pending().to_vec()))
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
            greet_and_authenticate(cfg, client, buf, log).await?;
            if buf.pending().is_empty() && at_eof(buf, client).await? {
                return Err(PROBE.into());
            }
            let req = match message(buf, client, codec::parse_socks5_request).await? {
                Ok(r) => r,
                Err(e) => return refused(client, Proto::V5, Refusal::BadRequest(e)).await,
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
        Err(e) => return refused(client, Proto::V4, Refusal::BadRequest(e)).await,
    };
    if req.socks4a {
        log.proto = "socks4a";
    }
    if !req.user_id.is_empty() {
        log.user = Some(String::from_utf8_lossy(&req.user_id).into_owned());
    }
    log.dest = Some(req.dest.clone());
    if cfg.auth_required() {
        return refused(client, Proto::V4, Refusal::Socks4WithUsers).await;
    }
    Ok(Request {
        proto: Proto::V4,
        cmd: req.cmd,
        dest: req.dest,
    })
}

/// The SOCKS5 greeting, and the RFC 1929 exchange when users are configured.
async fn greet_and_authenticate(
    cfg: &Config,
    client: &mut TcpStream,
    buf: &mut HsBuf,
    log: &mut SessionLog,
) -> Result<(), String> {
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
    Ok(())
}

/// Answer a refused request in the client's dialect; the refusal is the
/// outcome (unless the answer cannot be sent).
async fn refused<T>(client: &mut TcpStream, proto: Proto, why: Refusal) -> Result<T, String> {
    send(client, &proto.failure(why.reply())).await?;
    Err(why.to_string())
}

async fn send(s: &mut TcpStream, b: &[u8]) -> Result<(), String> {
    s.write_all(b)
        .await
        .map_err(|e| format!("client error during handshake: {e}"))
}

/// The outcome of a handshake that ended because no message came.
fn lost(e: ReadError) -> String {
    match e {
        ReadError::Closed => CLOSED_IN_HANDSHAKE.into(),
        ReadError::Io(e) => format!("client error during handshake: {e}"),
        ReadError::TooLong => "handshake message too long".into(),
        // `message` hands the parser's errors to its caller, which answers.
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
