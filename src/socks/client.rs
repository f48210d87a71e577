//! Dial through an upstream SOCKS server: CONNECT, UDP ASSOCIATE, auth. (issue 2)
//!
//! Contract used by TUN mode (keep these names):
//! - `Upstream::from_url(&str) -> Result<Upstream, UpstreamUrlError>` (socks4/4a/5/5h, percent-decoded userinfo,
//!   host resolved once by the caller via `Upstream::resolve`)
//! - `connect(&Upstream, &TargetAddr) -> Result<tokio::net::TcpStream, DialError>`
//! - `DialError` says why, so TUN mode can answer RST vs ICMP unreachable.

// PROVISIONAL (tun branch): stand-in until the server helper's client lands; replaced on merge.
#[derive(Debug)]
pub enum DialError {
    Refused,
    NetUnreachable,
    HostUnreachable,
    NotAllowed,
    TtlExpired,
    Timeout,
    CommandNotSupported,
    AddrTypeNotSupported,
    AuthFailed,
    ProxyUnreachable(std::io::Error),
    Protocol(String),
    General,
}
