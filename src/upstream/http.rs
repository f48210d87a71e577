//! [`Upstream`] over an HTTP proxy: TCP through CONNECT (RFC 9110 section
//! 9.3.6), Basic authentication (RFC 7617). No UDP.
//!
//! The request is `CONNECT host:port HTTP/1.1` in the authority form (RFC
//! 9112 section 3.2.3: an IPv6 address in brackets, a name as given, never
//! resolved here), the same authority in `Host`, and `Proxy-Authorization:
//! Basic base64(user:password)` when the URL has credentials. The response
//! head is read incrementally, at most [`MAX_HEAD`] bytes, under the proxy's
//! `connect_timeout`, and parsed with `httparse`; interim `1xx` heads are
//! skipped (RFC 9110 section 15.2). After a `2xx` the connection is the
//! tunnel: bytes that came in after the head are the target's and are read
//! first (RFC 9110 section 9.3.6; a `Content-Length` there is ignored, as it
//! must be).
//!
//! Any other status is the proxy's answer, mapped onto the error every
//! upstream reports (`upstream::Error`), so TUN mode answers the
//! application as a direct connection would have failed (`tun::dialer`):
//!
//! | status | error | the application sees |
//! |---|---|---|
//! | 401, 407 | `AuthFailed` | RST |
//! | 403 | `NotAllowed` | ICMP administratively prohibited |
//! | 405, 501 | `CommandNotSupported` | RST |
//! | 500, 502 | `Refused` | RST ("connection refused") |
//! | 503 | `HostUnreachable` | ICMP host unreachable |
//! | 504 | `TtlExpired` | ICMP host unreachable |
//! | other 1xx-5xx (101, 3xx, 4xx) | `General` | RST |
//! | malformed, too long, closed mid-head | `Protocol` | RST |
//! | no answer within `connect_timeout` | `Timeout` | ICMP host unreachable |
//!
//! Why: 407 is the RFC 9110 (section 15.5.8) answer to missing or wrong
//! proxy credentials, but tinyproxy answers a *wrong* password with 401
//! (15.5.2): for a CONNECT, which has no origin to authenticate to, both can
//! only mean our credentials. 403 (15.5.4) is a refusal by the proxy's
//! rules, as SOCKS reply 0x02. 405 (15.5.6) and 501 (15.6.2) say the proxy
//! does not do CONNECT (tinyproxy answers an unknown method with 501). For
//! a CONNECT the only inbound server is the target, so a 5xx about it is
//! the target's answer relayed: 502 (15.6.3, "invalid response from an
//! inbound server") is what mitmproxy and Caddy's forward proxy send for a
//! refused connect, and tinyproxy sends 500 "Unable to connect" (15.6.1)
//! for a closed port, an unreachable host and a name it cannot resolve
//! alike: both become `Refused`, so the application gets the RST a closed
//! port gives, and an upstream group does not take a closed port for a dead
//! proxy. 503 (15.6.4) is Squid's answer when the connect or the name
//! lookup fails (and Apache's for a failed connect): ICMP host unreachable
//! also fails at once and lets Happy Eyeballs try the other address. 504
//! (15.6.5, no timely answer from the inbound server) is the target timing
//! out at the proxy: `TtlExpired`, SOCKS's code for it, kept apart from
//! `Timeout`, which is the proxy itself saying nothing.
//!
//! An error text never holds the password: the errors are our own words,
//! and the proxy's reason phrase is only logged (at debug) without it.

use super::seam::{Associated, BoxFuture, Connected, Error, Upstream};
use crate::proxy::Proxy;
use crate::socks::client::ProxyStream;
use crate::socks::TargetAddr;
use base64::Engine as _;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most the proxy may send before its final response head ends
/// (interim heads included): past it, the answer is a protocol error.
pub const MAX_HEAD: usize = 8 * 1024;

/// Header fields parsed per head (httparse needs a bound; a CONNECT answer
/// has a handful).
const MAX_HEADERS: usize = 64;

/// An HTTP proxy: its address, credentials and socket options.
pub struct Http {
    proxy: Proxy,
    /// Its URL without the password, for log lines.
    name: Arc<str>,
}

impl Http {
    pub fn new(proxy: Proxy) -> Http {
        let name = proxy.to_string().into();
        Http { proxy, name }
    }
}

impl fmt::Display for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Upstream for Http {
    fn connect<'a>(&'a self, target: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        Box::pin(async move {
            let s = connect(&self.proxy, target).await?;
            Ok(Connected {
                stream: Box::new(s),
                via: self.name.clone(),
            })
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        Box::pin(async { Err(Error::CommandNotSupported) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(probe(&self.proxy))
    }

    fn carries_names(&self) -> bool {
        true
    }

    fn carries_udp(&self) -> bool {
        false
    }
}

/// CONNECT to `target` through the HTTP proxy `up`: the tunnel, with the
/// target's bytes that came in with the response read first.
pub async fn connect(up: &Proxy, target: &TargetAddr) -> Result<ProxyStream, Error> {
    // A target that cannot be written is refused before anything is sent.
    let req = request(up, target)?;
    // TCP_NODELAY is set on every socket towards the proxy (`SocketOpts`):
    // the request leaves in one segment, at once.
    let mut s = up.connect_tcp().await.map_err(Error::ProxyUnreachable)?;
    match tokio::time::timeout(up.connect_timeout, exchange(&mut s, &req, up, target)).await {
        Ok(Ok(early)) => Ok(ProxyStream::new(s, early)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Timeout),
    }
}

/// The CONNECT exchange on an open connection to the proxy: the request
/// written, the response read. Returns the target's bytes that came after
/// the response head (they come before anything still in `s`).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    up: &Proxy,
    target: &TargetAddr,
) -> Result<Vec<u8>, Error> {
    let req = request(up, target)?;
    exchange(s, &req, up, target).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
    up: &Proxy,
    target: &TargetAddr,
) -> Result<Vec<u8>, Error> {
    s.write_all(req).await.map_err(io_err)?;
    let head = read_response(s).await?;
    match status_error(head.code) {
        None => Ok(head.early),
        Some(e) => {
            tracing::debug!(
                "{up}: CONNECT {target} answered {} {}",
                head.code,
                shown_reason(&head.reason, up)
            );
            Err(e)
        }
    }
}

/// Check that the proxy answers: connect, then close cleanly. An HTTP proxy
/// has no greeting, so credentials are only checked by a real CONNECT.
pub async fn probe(up: &Proxy) -> Result<(), Error> {
    let mut s = up.connect_tcp().await.map_err(Error::ProxyUnreachable)?;
    // Nothing was sent or received: closing sends a FIN.
    let _ = s.shutdown().await;
    Ok(())
}

/// The CONNECT request for `target`.
pub fn request(up: &Proxy, target: &TargetAddr) -> Result<Vec<u8>, Error> {
    let authority = authority(target)?;
    let mut r = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, password)) = &up.auth {
        // RFC 7617 section 2: user-id ":" password, UTF-8 (section 2.1),
        // base64 with padding (RFC 4648 section 4). `Proxy::from_url`
        // refuses a user-id with a colon.
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        r.push_str("Proxy-Authorization: Basic ");
        r.push_str(&token);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    Ok(r.into_bytes())
}

/// `host:port` as CONNECT's request target (RFC 9112 section 3.2.3): an
/// IPv6 address in brackets (RFC 3986 section 3.2.2, without a zone), a name
/// as given.
fn authority(target: &TargetAddr) -> Result<String, Error> {
    match target {
        TargetAddr::Ip(SocketAddr::V4(a)) => Ok(format!("{}:{}", a.ip(), a.port())),
        TargetAddr::Ip(SocketAddr::V6(a)) => Ok(format!("[{}]:{}", a.ip(), a.port())),
        TargetAddr::Domain(name, port) if is_reg_name(name) => Ok(format!("{name}:{port}")),
        // A name with a space, a colon, a CR or LF would change the request
        // (or smuggle a header line into it): never sent.
        TargetAddr::Domain(..) => Err(Error::AddrTypeNotSupported),
    }
}

/// A host name that is an RFC 3986 reg-name (section 3.2.2) without
/// percent-escapes: unreserved characters and sub-delims, 1 to 255 bytes.
fn is_reg_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b))
}

/// What a final response status means for the CONNECT: None for a tunnel
/// (2xx), else the error (the table and reasons are at the top of this file).
pub fn status_error(code: u16) -> Option<Error> {
    Some(match code {
        200..=299 => return None,
        401 | 407 => Error::AuthFailed,
        403 => Error::NotAllowed,
        405 | 501 => Error::CommandNotSupported,
        500 | 502 => Error::Refused,
        503 => Error::HostUnreachable,
        504 => Error::TtlExpired,
        100..=599 => Error::General,
        // RFC 9110 section 15: three digits, 100 to 599.
        _ => return Some(proto(format!("status code {code} is not 100-599"))),
    })
}

/// A final response head, and what came after it.
struct Head {
    code: u16,
    reason: String,
    /// The target's first bytes (read with the head).
    early: Vec<u8>,
}

/// Read the proxy's response heads up to the end of the final one, reading
/// no more than `MAX_HEAD` bytes in all. A head is parsed only when a blank
/// line has come in (so a response trickling in a byte at a time is not
/// parsed again for every byte), and parsed whole at the end of the stream
/// or of the bound, so a malformed head is reported as such however it was
/// cut into reads.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Result<Head, Error> {
    let mut buf = vec![0u8; MAX_HEAD];
    // Bytes read; where the current head starts (after interim heads); how
    // far no blank line can end unseen.
    let (mut len, mut start, mut scanned) = (0usize, 0usize, 0usize);
    loop {
        if len == MAX_HEAD {
            parse_head(&buf[start..len])?;
            return Err(proto(format!("response head longer than {MAX_HEAD} bytes")));
        }
        let n = s.read(&mut buf[len..]).await.map_err(io_err)?;
        if n == 0 {
            parse_head(&buf[start..len])?;
            return Err(proto(
                "proxy closed the connection before the end of its response",
            ));
        }
        len += n;
        // A blank line ("\n\n" or "\n\r\n") ending in the new bytes may end
        // a head: look from two bytes before them.
        while ends_a_line_pair(&buf[scanned.saturating_sub(2).max(start)..len]) {
            let Some((code, reason, end)) = parse_head(&buf[start..len])? else {
                break;
            };
            if (100..200).contains(&code) && code != 101 {
                // Interim (RFC 9110 section 15.2): the final head follows.
                start += end;
                scanned = start;
                continue;
            }
            return Ok(Head {
                code,
                reason,
                early: buf[start + end..len].to_vec(),
            });
        }
        scanned = len;
    }
}

fn ends_a_line_pair(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
}

/// One response head at the start of `b`: its status code, reason phrase
/// and length, or None when it has not ended yet.
fn parse_head(b: &[u8]) -> Result<Option<(u16, String, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(b) {
        Ok(httparse::Status::Complete(n)) => {
            // A complete head always has a code.
            let code = r
                .code
                .ok_or_else(|| proto("response without a status code"))?;
            Ok(Some((code, r.reason.unwrap_or("").to_string(), n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(proto(format!("malformed response: {e}"))),
    }
}

/// The proxy's reason phrase for a log line: printable ASCII, at most 80
/// characters, and never our password (a proxy could echo anything).
fn shown_reason(reason: &str, up: &Proxy) -> String {
    let r: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect();
    match &up.auth {
        Some((_, p)) if !p.is_empty() && r.contains(p.as_str()) => "(not shown)".into(),
        _ => r,
    }
}

fn proto(e: impl fmt::Display) -> Error {
    Error::Protocol(e.to_string())
}

fn io_err(e: io::Error) -> Error {
    Error::Protocol(format!("CONNECT: {e}"))
}

#[cfg(test)]
mod tests;
