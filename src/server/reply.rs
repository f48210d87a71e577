//! What the commands share: the parsed request, why a request is refused
//! (`Refusal`, one typed enum, each with its reply code), the reply each
//! dialect gets, the session's log record, and the tail every relaying
//! command ends with (reply, early data, relay).

use super::config::Config;
use crate::socks::codec::{self, method, CodecError, Reply};
use crate::socks::TargetAddr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
                let ip = match crate::net::unmap(bound.ip()) {
                    IpAddr::V4(v4) => v4,
                    IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
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

/// Who asks, for the per-user rules: the user only when authenticated (a
/// SOCKS4 user id carries no password).
pub(super) fn who_of(cfg: &Config, log: &SessionLog) -> Option<String> {
    log.user.clone().filter(|_| cfg.auth_required())
}

/// A parsed request, after authentication.
pub(super) struct Request {
    pub proto: Proto,
    pub cmd: u8,
    pub dest: TargetAddr,
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
    /// How much of `up` and `down` went by splice (never through user space).
    pub spliced_up: u64,
    pub spliced_down: u64,
    /// UDP datagrams relayed client → destination and back (UDP ASSOCIATE).
    pub datagrams_up: u64,
    pub datagrams_down: u64,
}

impl SessionLog {
    pub fn new() -> SessionLog {
        SessionLog {
            proto: "-",
            user: None,
            cmd: "-",
            dest: None,
            via: None,
            up: 0,
            down: 0,
            spliced_up: 0,
            spliced_down: 0,
            datagrams_up: 0,
            datagrams_down: 0,
        }
    }

    /// Add what a relay moved.
    pub fn count(&mut self, st: &crate::relay::RelayStats) {
        self.up += st.a_to_b;
        self.down += st.b_to_a;
        self.spliced_up += st.a_to_b_spliced;
        self.spliced_down += st.b_to_a_spliced;
    }
}

/// Why the server refused a request: the reply code the client gets
/// (`reply`, in its dialect through `Proto::failure`) and the session's
/// outcome (`Display`, the text operators grep for).
#[derive(Debug)]
pub(super) enum Refusal {
    /// Every session slot is taken.
    TooManyClients,
    /// A request the codec cannot parse.
    BadRequest(CodecError),
    /// SOCKS4 has no password field, and users are configured.
    Socks4WithUsers,
    /// The destination's name (or the BIND peer's) did not resolve.
    CannotResolve(io::Error),
    /// The rules refuse every address of the destination.
    DestNotAllowed,
    /// A per-user rule of the config file refused it (the rule's name).
    Rule(String),
    /// No address of the destination answered; the last error.
    ConnectFailed(io::Error),
    /// The destination is one of this host's addresses (not allowed by
    /// `--allow-dest`).
    DestIsThisHost,
    /// The rules refuse the BIND peer.
    PeerNotAllowed,
    /// The client's connection has no local address to bind or relay on.
    NoLocalAddress,
    /// A SOCKS4 BIND reply cannot carry the IPv6 address it would listen on.
    Socks4BindNeedsIpv4,
    /// The BIND listener could not be made.
    Bind(io::Error),
    Accept(io::Error),
    /// No BIND peer (from the expected address) connected in time.
    NoBindPeer {
        waited: Duration,
        strangers: u32,
    },
    /// The UDP relay socket could not be made.
    UdpBind(io::Error),
}

impl Refusal {
    /// The reply code (RFC 1928 §6; SOCKS4 gets 0x5B for every one of them).
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::BadRequest(CodecError::UnknownCommand(_)) => Reply::CommandNotSupported,
            Refusal::BadRequest(CodecError::UnknownAddrType(_)) => Reply::AddrTypeNotSupported,
            Refusal::CannotResolve(_) => Reply::HostUnreachable,
            Refusal::DestNotAllowed
            | Refusal::Rule(_)
            | Refusal::DestIsThisHost
            | Refusal::PeerNotAllowed => Reply::NotAllowed,
            Refusal::ConnectFailed(e) => Reply::for_connect_error(e),
            Refusal::NoBindPeer { .. } => Reply::TtlExpired,
            Refusal::TooManyClients
            | Refusal::BadRequest(_)
            | Refusal::Socks4WithUsers
            | Refusal::NoLocalAddress
            | Refusal::Socks4BindNeedsIpv4
            | Refusal::Bind(_)
            | Refusal::Accept(_)
            | Refusal::UdpBind(_) => Reply::GeneralFailure,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyClients => write!(f, "refused: too many clients"),
            Refusal::BadRequest(e) => write!(f, "bad request: {e}"),
            Refusal::Socks4WithUsers => {
                write!(
                    f,
                    "refused: SOCKS4 carries no password and users are configured"
                )
            }
            Refusal::CannotResolve(e) => write!(f, "cannot resolve: {e}"),
            Refusal::DestNotAllowed => write!(f, "refused: destination not allowed"),
            Refusal::Rule(name) => write!(f, "refused by rule {name:?}"),
            Refusal::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            Refusal::DestIsThisHost => write!(f, "refused: destination is this host"),
            Refusal::PeerNotAllowed => write!(f, "refused: peer not allowed"),
            Refusal::NoLocalAddress => write!(f, "no local address"),
            Refusal::Socks4BindNeedsIpv4 => write!(f, "SOCKS4 BIND needs IPv4"),
            Refusal::Bind(e) => write!(f, "bind: {e}"),
            Refusal::Accept(e) => write!(f, "accept: {e}"),
            Refusal::NoBindPeer { waited, strangers } => write!(
                f,
                "no BIND peer within {waited:?} ({strangers} unexpected refused)"
            ),
            Refusal::UdpBind(e) => write!(f, "udp bind: {e}"),
        }
    }
}

/// Reply the refusal in the client's dialect and close; returns the outcome.
pub(super) async fn refuse(client: TcpStream, proto: Proto, why: Refusal) -> String {
    reply_and_close(client, &proto.failure(why.reply())).await;
    why.to_string()
}

/// A session ready to relay: the success reply and the bytes the client
/// pipelined behind its request went out. `other` is the CONNECT target or
/// the BIND peer, named `other_name` in the log line.
pub(super) struct Relaying {
    pub client: TcpStream,
    pub other: TcpStream,
    pub other_name: &'static str,
}

/// What every relaying command does before the relay: send the success
/// reply, then pass on the bytes the client pipelined behind its request.
/// `Err`: the session ended here, with that outcome for the log line.
pub(super) async fn reply_for_relay(
    mut client: TcpStream,
    mut other: TcpStream,
    reply: &[u8],
    early: &[u8],
    log: &mut SessionLog,
    other_name: &'static str,
) -> Result<Relaying, String> {
    if let Err(e) = client.write_all(reply).await {
        return Err(format!("client gone before reply: {e}"));
    }
    if !early.is_empty() {
        if let Err(e) = other.write_all(early).await {
            return Err(format!("{other_name} write failed: {e}"));
        }
        log.up += early.len() as u64;
    }
    Ok(Relaying {
        client,
        other,
        other_name,
    })
}

/// Over the client limit: answer the first message with a well-formed
/// refusal (SOCKS5: no acceptable method; SOCKS4: rejected) and close.
pub(super) async fn refuse_busy(mut s: TcpStream) {
    let mut first = [0u8; 1];
    let ver = tokio::time::timeout(Duration::from_secs(1), s.read(&mut first)).await;
    let reply: Vec<u8> = match (ver, first[0]) {
        (Ok(Ok(1)), 5) => codec::encode_method_choice(method::NO_ACCEPTABLE).to_vec(),
        (Ok(Ok(1)), 4) => Proto::V4.failure(Refusal::TooManyClients.reply()),
        _ => Vec::new(),
    };
    reply_and_close(s, &reply).await;
}

/// Send `reply`, then close without resetting: unread request bytes left in
/// the receive buffer would make close(2) send a RST that can destroy the
/// reply before the client reads it.
pub(super) async fn reply_and_close(mut s: TcpStream, reply: &[u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes each dialect gets for a refusal, as before refusals were
    /// typed: SOCKS4 0x5B whatever the reason, SOCKS5 the reason's code.
    #[test]
    fn refusal_replies() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let cases = [
            (Refusal::TooManyClients, 0x01),
            (Refusal::BadRequest(CodecError::UnknownCommand(9)), 0x07),
            (Refusal::BadRequest(CodecError::UnknownAddrType(9)), 0x08),
            (Refusal::BadRequest(CodecError::BadDomain), 0x01),
            (Refusal::CannotResolve(io::Error::other("x")), 0x04),
            (Refusal::DestNotAllowed, 0x02),
            (Refusal::Rule("r".into()), 0x02),
            (Refusal::ConnectFailed(refused), 0x05),
            (Refusal::ConnectFailed(io::ErrorKind::TimedOut.into()), 0x06),
            (Refusal::DestIsThisHost, 0x02),
            (
                Refusal::NoBindPeer {
                    waited: Duration::from_secs(1),
                    strangers: 2,
                },
                0x06,
            ),
            (Refusal::UdpBind(io::Error::other("x")), 0x01),
        ];
        for (r, code) in cases {
            assert_eq!(
                Proto::V5.failure(r.reply()),
                [5, code, 0, 1, 0, 0, 0, 0, 0, 0],
                "{r}"
            );
            assert_eq!(
                Proto::V4.failure(r.reply()),
                [0, 0x5B, 0, 0, 0, 0, 0, 0],
                "{r}"
            );
        }
        let r = Refusal::NoBindPeer {
            waited: Duration::from_secs(120),
            strangers: 2,
        };
        assert_eq!(
            r.to_string(),
            "no BIND peer within 120s (2 unexpected refused)"
        );
    }
}
