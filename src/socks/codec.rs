//! SOCKS wire format: SOCKS4, SOCKS4a, SOCKS5 (RFC 1928) and username/password
//! authentication (RFC 1929). No I/O.
//!
//! Every parser takes the bytes received so far and returns
//! - `Ok(None)`: the message is not complete yet, read more and call again;
//! - `Ok(Some((message, consumed)))`: a whole message, `consumed` bytes long;
//! - `Err(CodecError)`: the bytes can never become a valid message.
//!
//! So a greeting split over two reads parses like one that arrived whole, and a
//! peer can never make us buffer more than the caps below.

use super::TargetAddr;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

pub const SOCKS4_VERSION: u8 = 0x04;
pub const SOCKS5_VERSION: u8 = 0x05;
/// RFC 1929 §2: the version of the username/password subnegotiation.
pub const AUTH_VERSION: u8 = 0x01;

/// Longest SOCKS4 USERID (or SOCKS4a host name) we accept; the spec sets none,
/// so we cap it to bound what a client can make us buffer.
pub const SOCKS4_MAX_FIELD: usize = 255;

/// RFC 1928 §3 method numbers.
pub mod method {
    pub const NO_AUTH: u8 = 0x00;
    pub const GSSAPI: u8 = 0x01;
    pub const USER_PASS: u8 = 0x02;
    pub const NO_ACCEPTABLE: u8 = 0xFF;
}

/// RFC 1928 §4 commands (SOCKS4 uses 1 and 2 with the same meaning).
pub mod cmd {
    pub const CONNECT: u8 = 0x01;
    pub const BIND: u8 = 0x02;
    pub const UDP_ASSOCIATE: u8 = 0x03;
}

/// RFC 1928 §5 address types.
pub mod atyp {
    pub const IPV4: u8 = 0x01;
    pub const DOMAIN: u8 = 0x03;
    pub const IPV6: u8 = 0x04;
}

/// What the reply to a request says, with its code in each dialect: the one
/// table of reply codes. SOCKS5 (RFC 1928 §6) has a code per reason and the
/// enum's values are those codes; SOCKS4 has one success code (0x5A), one
/// failure code (0x5B, "rejected or failed") and two identd failures (0x5C,
/// 0x5D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    /// Not allowed by the server's rules.
    NotAllowed = 0x02,
    NetUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddrTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply for a failed outgoing connection, from its errno: what the
    /// server answers, and how TUN mode's direct dials fail.
    pub fn for_connect_error(e: &std::io::Error) -> Reply {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Reply::ConnectionRefused,
            Some(libc::ENETUNREACH) => Reply::NetUnreachable,
            Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => Reply::HostUnreachable,
            Some(libc::ETIMEDOUT) => Reply::TtlExpired,
            _ if e.kind() == std::io::ErrorKind::TimedOut => Reply::TtlExpired,
            _ => Reply::GeneralFailure,
        }
    }

    /// The SOCKS5 REP byte.
    pub fn socks5(self) -> u8 {
        self as u8
    }

    /// A SOCKS5 REP byte; None for a code RFC 1928 does not define.
    pub fn from_socks5(code: u8) -> Option<Reply> {
        Some(match code {
            0x00 => Reply::Succeeded,
            0x01 => Reply::GeneralFailure,
            0x02 => Reply::NotAllowed,
            0x03 => Reply::NetUnreachable,
            0x04 => Reply::HostUnreachable,
            0x05 => Reply::ConnectionRefused,
            0x06 => Reply::TtlExpired,
            0x07 => Reply::CommandNotSupported,
            0x08 => Reply::AddrTypeNotSupported,
            _ => return None,
        })
    }

    /// The SOCKS4 CD byte: granted, or rejected for every failure (SOCKS4
    /// has no reasons).
    pub fn socks4(self) -> u8 {
        match self {
            Reply::Succeeded => 0x5A,
            _ => 0x5B,
        }
    }

    /// A SOCKS4 CD byte; None for a code SOCKS4 does not define. Rejected
    /// (0x5B) reads as refused; the identd failures (0x5C: no identd, 0x5D:
    /// the user ids differ) as not allowed.
    pub fn from_socks4(code: u8) -> Option<Reply> {
        match code {
            0x5A => Some(Reply::Succeeded),
            0x5B => Some(Reply::ConnectionRefused),
            0x5C | 0x5D => Some(Reply::NotAllowed),
            _ => None,
        }
    }
}

/// Why bytes can never become a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The version byte is not the one this message must carry.
    BadVersion(u8),
    /// A SOCKS5 greeting with NMETHODS = 0 (RFC 1928 §3 needs at least one).
    NoMethods,
    /// A command we do not know. The server answers 0x07 (SOCKS5) / 0x5B (SOCKS4).
    UnknownCommand(u8),
    /// An address type we do not know. The server answers 0x08.
    UnknownAddrType(u8),
    /// A domain name of length 0, with a control character (NUL, CR, LF, DEL
    /// ...), or not UTF-8.
    BadDomain,
    /// A reserved byte that must be 0x00 is not.
    BadReserved(u8),
    /// A field longer than its cap (SOCKS4 USERID or SOCKS4a host name).
    TooLong,
    /// RFC 1929: empty username (ULEN must be at least 1).
    EmptyUsername,
    /// RFC 1929: a username that is not UTF-8.
    BadUsername,
    /// A datagram too short for its header.
    Truncated,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BadVersion(v) => write!(f, "unexpected version byte 0x{v:02x}"),
            CodecError::NoMethods => write!(f, "greeting offers no methods"),
            CodecError::UnknownCommand(c) => write!(f, "unknown command 0x{c:02x}"),
            CodecError::UnknownAddrType(a) => write!(f, "unknown address type 0x{a:02x}"),
            CodecError::BadDomain => write!(f, "empty or malformed domain name"),
            CodecError::BadReserved(r) => write!(f, "reserved byte is 0x{r:02x}, not 0"),
            CodecError::TooLong => write!(f, "field too long"),
            CodecError::EmptyUsername => write!(f, "empty username"),
            CodecError::BadUsername => write!(f, "username is not UTF-8"),
            CodecError::Truncated => write!(f, "datagram shorter than its header"),
        }
    }
}

impl std::error::Error for CodecError {}

pub type Parsed<T> = Result<Option<(T, usize)>, CodecError>;

// ---------------------------------------------------------------------------
// Addresses (RFC 1928 §5): ATYP, ADDR, PORT

/// Parse `ATYP ADDR PORT` at the start of `b`.
pub fn parse_addr(b: &[u8]) -> Parsed<TargetAddr> {
    let Some(&t) = b.first() else {
        return Ok(None);
    };
    match t {
        atyp::IPV4 => {
            if b.len() < 7 {
                return Ok(None);
            }
            let ip = Ipv4Addr::new(b[1], b[2], b[3], b[4]);
            let port = u16::from_be_bytes([b[5], b[6]]);
            Ok(Some((TargetAddr::Ip(SocketAddr::new(ip.into(), port)), 7)))
        }
        atyp::IPV6 => {
            if b.len() < 19 {
                return Ok(None);
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            let port = u16::from_be_bytes([b[17], b[18]]);
            let sa = SocketAddrV6::new(Ipv6Addr::from(o), port, 0, 0);
            Ok(Some((TargetAddr::Ip(sa.into()), 19)))
        }
        atyp::DOMAIN => {
            let Some(&len) = b.get(1) else {
                return Ok(None);
            };
            let len = len as usize;
            if len == 0 {
                return Err(CodecError::BadDomain);
            }
            if b.len() < 2 + len + 2 {
                return Ok(None);
            }
            let name = domain(&b[2..2 + len])?;
            let port = u16::from_be_bytes([b[2 + len], b[3 + len]]);
            Ok(Some((TargetAddr::Domain(name, port), 4 + len)))
        }
        other => Err(CodecError::UnknownAddrType(other)),
    }
}

/// No DNS name has control characters, and a CR/LF would forge log lines.
fn bad_domain(raw: &[u8]) -> bool {
    raw.is_empty() || raw.iter().any(|&c| c < 0x20 || c == 0x7f)
}

fn domain(raw: &[u8]) -> Result<String, CodecError> {
    if bad_domain(raw) {
        return Err(CodecError::BadDomain);
    }
    String::from_utf8(raw.to_vec()).map_err(|_| CodecError::BadDomain)
}

/// Append `ATYP ADDR PORT`. A domain longer than 255 bytes cannot be carried.
pub fn encode_addr(addr: &TargetAddr, out: &mut Vec<u8>) -> Result<(), CodecError> {
    match addr {
        TargetAddr::Ip(SocketAddr::V4(a)) => {
            out.push(atyp::IPV4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        TargetAddr::Ip(SocketAddr::V6(a)) => {
            out.push(atyp::IPV6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        TargetAddr::Domain(d, port) => {
            if bad_domain(d.as_bytes()) {
                return Err(CodecError::BadDomain);
            }
            let len = u8::try_from(d.len()).map_err(|_| CodecError::TooLong)?;
            out.push(atyp::DOMAIN);
            out.push(len);
            out.extend_from_slice(d.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// SOCKS5 method negotiation (RFC 1928 §3)

/// `VER NMETHODS METHODS...` from the client.
pub fn parse_greeting(b: &[u8]) -> Parsed<Vec<u8>> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != SOCKS5_VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    let Some(&n) = b.get(1) else {
        return Ok(None);
    };
    if n == 0 {
        return Err(CodecError::NoMethods);
    }
    let n = n as usize;
    if b.len() < 2 + n {
        return Ok(None);
    }
    Ok(Some((b[2..2 + n].to_vec(), 2 + n)))
}

pub fn encode_greeting(methods: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + methods.len());
    v.push(SOCKS5_VERSION);
    v.push(methods.len() as u8);
    v.extend_from_slice(methods);
    v
}

/// `VER METHOD` from the server.
pub fn parse_method_choice(b: &[u8]) -> Parsed<u8> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] != SOCKS5_VERSION {
        return Err(CodecError::BadVersion(b[0]));
    }
    Ok(Some((b[1], 2)))
}

pub fn encode_method_choice(m: u8) -> [u8; 2] {
    [SOCKS5_VERSION, m]
}

// ---------------------------------------------------------------------------
// Username/password (RFC 1929)

/// The credentials a client sent. `Debug` hides the password: never log one.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// `VER ULEN UNAME PLEN PASSWD`. The username must be UTF-8 (it is logged);
/// the password is kept as bytes.
pub fn parse_auth_request(b: &[u8]) -> Parsed<Credentials> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != AUTH_VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    let Some(&ulen) = b.get(1) else {
        return Ok(None);
    };
    let ulen = ulen as usize;
    if ulen == 0 {
        return Err(CodecError::EmptyUsername);
    }
    let Some(&plen) = b.get(2 + ulen) else {
        return Ok(None);
    };
    let plen = plen as usize;
    let total = 3 + ulen + plen;
    if b.len() < total {
        return Ok(None);
    }
    let user = String::from_utf8(b[2..2 + ulen].to_vec()).map_err(|_| CodecError::BadUsername)?;
    Ok(Some((
        Credentials {
            user,
            password: b[3 + ulen..total].to_vec(),
        },
        total,
    )))
}

pub fn encode_auth_request(user: &str, password: &str) -> Result<Vec<u8>, CodecError> {
    let ulen = u8::try_from(user.len()).map_err(|_| CodecError::TooLong)?;
    let plen = u8::try_from(password.len()).map_err(|_| CodecError::TooLong)?;
    if ulen == 0 {
        return Err(CodecError::EmptyUsername);
    }
    let mut v = Vec::with_capacity(3 + user.len() + password.len());
    v.push(AUTH_VERSION);
    v.push(ulen);
    v.extend_from_slice(user.as_bytes());
    v.push(plen);
    v.extend_from_slice(password.as_bytes());
    Ok(v)
}

/// `VER STATUS`; RFC 1929 §2: the version is 0x01 and 0x00 means success.
pub fn encode_auth_reply(ok: bool) -> [u8; 2] {
    [AUTH_VERSION, if ok { 0x00 } else { 0x01 }]
}

/// Returns true when the server accepted the credentials.
pub fn parse_auth_reply(b: &[u8]) -> Parsed<bool> {
    if b.len() < 2 {
        return Ok(None);
    }
    // Some old servers answer with version 0x05 here; accept it, the status
    // byte is what matters.
    if b[0] != AUTH_VERSION && b[0] != SOCKS5_VERSION {
        return Err(CodecError::BadVersion(b[0]));
    }
    Ok(Some((b[1] == 0x00, 2)))
}

// ---------------------------------------------------------------------------
// SOCKS5 requests and replies (RFC 1928 §4, §6)

/// A SOCKS5 request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks5Request {
    pub cmd: u8,
    pub dest: TargetAddr,
}

/// Parse a request. An unknown command is reported as soon as the command byte
/// arrives (the server answers 0x07 and closes), an unknown address type as
/// soon as the ATYP byte arrives (0x08).
pub fn parse_socks5_request(b: &[u8]) -> Parsed<Socks5Request> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != SOCKS5_VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    let Some(&c) = b.get(1) else {
        return Ok(None);
    };
    if !matches!(c, cmd::CONNECT | cmd::BIND | cmd::UDP_ASSOCIATE) {
        return Err(CodecError::UnknownCommand(c));
    }
    if b.len() < 3 {
        return Ok(None);
    }
    // RFC 1928 says RSV is 0x00; being lenient costs nothing here and some
    // clients leave garbage in it.
    match parse_addr(&b[3..])? {
        None => Ok(None),
        Some((dest, n)) => Ok(Some((Socks5Request { cmd: c, dest }, 3 + n))),
    }
}

pub fn encode_socks5_request(c: u8, dest: &TargetAddr) -> Result<Vec<u8>, CodecError> {
    let mut v = Vec::with_capacity(22);
    v.extend_from_slice(&[SOCKS5_VERSION, c, 0x00]);
    encode_addr(dest, &mut v)?;
    Ok(v)
}

/// A complete reply `VER REP RSV ATYP BND.ADDR BND.PORT` (10 or 22 bytes).
/// Failures carry a bound address too: clients that read a fixed-size reply
/// must not hang on a short one.
pub fn encode_socks5_reply(rep: u8, bound: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(22);
    v.extend_from_slice(&[SOCKS5_VERSION, rep, 0x00]);
    // An IP address always encodes.
    let _ = encode_addr(&TargetAddr::Ip(bound), &mut v);
    v
}

/// A failure reply with an all-zero IPv4 bound address.
pub fn encode_socks5_failure(rep: u8) -> Vec<u8> {
    encode_socks5_reply(rep, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks5Reply {
    pub rep: u8,
    pub bound: TargetAddr,
}

pub fn parse_socks5_reply(b: &[u8]) -> Parsed<Socks5Reply> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != SOCKS5_VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    if b.len() < 3 {
        return Ok(None);
    }
    match parse_addr(&b[3..])? {
        None => Ok(None),
        Some((bound, n)) => Ok(Some((Socks5Reply { rep: b[1], bound }, 3 + n))),
    }
}

// ---------------------------------------------------------------------------
// SOCKS4 and SOCKS4a

/// `VN CD DSTPORT DSTIP USERID NUL [HOST NUL]`. For SOCKS4a (DSTIP 0.0.0.x
/// with x != 0) `dest` is the host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks4Request {
    pub cmd: u8,
    pub dest: TargetAddr,
    pub user_id: Vec<u8>,
    /// True when the request used the SOCKS4a extension.
    pub socks4a: bool,
}

/// SOCKS4a: "0.0.0.x with x nonzero" means a host name follows. 0.0.0.0 is
/// not the marker (it is just an invalid destination).
pub fn is_socks4a_marker(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 0 && o[1] == 0 && o[2] == 0 && o[3] != 0
}

fn nul_terminated(b: &[u8]) -> Result<Option<usize>, CodecError> {
    match b.iter().take(SOCKS4_MAX_FIELD + 1).position(|&x| x == 0) {
        Some(i) => Ok(Some(i)),
        None if b.len() > SOCKS4_MAX_FIELD => Err(CodecError::TooLong),
        None => Ok(None),
    }
}

pub fn parse_socks4_request(b: &[u8]) -> Parsed<Socks4Request> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != SOCKS4_VERSION {
        return Err(CodecError::BadVersion(ver));
    }
    let Some(&c) = b.get(1) else {
        return Ok(None);
    };
    if !matches!(c, cmd::CONNECT | cmd::BIND) {
        return Err(CodecError::UnknownCommand(c));
    }
    if b.len() < 8 {
        return Ok(None);
    }
    let port = u16::from_be_bytes([b[2], b[3]]);
    let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
    let Some(ulen) = nul_terminated(&b[8..])? else {
        return Ok(None);
    };
    let user_id = b[8..8 + ulen].to_vec();
    let mut used = 8 + ulen + 1;
    let socks4a = is_socks4a_marker(ip);
    let dest = if socks4a {
        let rest = &b[used..];
        let Some(hlen) = nul_terminated(rest)? else {
            return Ok(None);
        };
        let name = domain(&rest[..hlen])?;
        used += hlen + 1;
        TargetAddr::Domain(name, port)
    } else {
        TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    };
    Ok(Some((
        Socks4Request {
            cmd: c,
            dest,
            user_id,
            socks4a,
        },
        used,
    )))
}

/// Build a SOCKS4 request; a domain destination uses SOCKS4a (DSTIP 0.0.0.1).
/// An IPv6 destination cannot be carried.
pub fn encode_socks4_request(
    c: u8,
    dest: &TargetAddr,
    user_id: &[u8],
) -> Result<Vec<u8>, CodecError> {
    if user_id.contains(&0) || user_id.len() > SOCKS4_MAX_FIELD {
        return Err(CodecError::TooLong);
    }
    let mut v = Vec::with_capacity(16 + user_id.len());
    v.extend_from_slice(&[SOCKS4_VERSION, c]);
    match dest {
        TargetAddr::Ip(SocketAddr::V4(a)) => {
            v.extend_from_slice(&a.port().to_be_bytes());
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(user_id);
            v.push(0);
        }
        TargetAddr::Ip(SocketAddr::V6(_)) => return Err(CodecError::UnknownAddrType(atyp::IPV6)),
        TargetAddr::Domain(d, port) => {
            if bad_domain(d.as_bytes()) {
                return Err(CodecError::BadDomain);
            }
            if d.len() > SOCKS4_MAX_FIELD {
                return Err(CodecError::TooLong);
            }
            v.extend_from_slice(&port.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(user_id);
            v.push(0);
            v.extend_from_slice(d.as_bytes());
            v.push(0);
        }
    }
    Ok(v)
}

/// `VN=0 CD DSTPORT DSTIP` (8 bytes).
pub fn encode_socks4_reply(code: u8, bound: SocketAddrV4) -> [u8; 8] {
    let p = bound.port().to_be_bytes();
    let o = bound.ip().octets();
    [0x00, code, p[0], p[1], o[0], o[1], o[2], o[3]]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socks4Reply {
    pub code: u8,
    pub bound: SocketAddrV4,
}

pub fn parse_socks4_reply(b: &[u8]) -> Parsed<Socks4Reply> {
    if b.len() < 8 {
        return Ok(None);
    }
    if b[0] != 0x00 {
        return Err(CodecError::BadVersion(b[0]));
    }
    let port = u16::from_be_bytes([b[2], b[3]]);
    let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
    Ok(Some((
        Socks4Reply {
            code: b[1],
            bound: SocketAddrV4::new(ip, port),
        },
        8,
    )))
}

// ---------------------------------------------------------------------------
// SOCKS5 UDP request header (RFC 1928 §7): RSV RSV FRAG ATYP DST.ADDR DST.PORT

/// A parsed UDP header: the fragment number and the address; the payload
/// starts at `header_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    pub frag: u8,
    pub addr: TargetAddr,
    pub header_len: usize,
}

/// Parse the header of a whole datagram (a datagram is never "incomplete":
/// a short one is an error).
pub fn parse_udp_header(d: &[u8]) -> Result<UdpHeader, CodecError> {
    if d.len() < 4 {
        return Err(CodecError::Truncated);
    }
    if d[0] != 0 || d[1] != 0 {
        return Err(CodecError::BadReserved(if d[0] != 0 { d[0] } else { d[1] }));
    }
    match parse_addr(&d[3..])? {
        Some((addr, n)) => Ok(UdpHeader {
            frag: d[2],
            addr,
            header_len: 3 + n,
        }),
        None => Err(CodecError::Truncated),
    }
}

/// Append the header for an unfragmented datagram (FRAG = 0).
pub fn encode_udp_header(addr: &TargetAddr, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.extend_from_slice(&[0, 0, 0]);
    encode_addr(addr, out)
}

/// The header `encode_udp_header` makes for an IP address, in a fixed array
/// (its length beside it): for a relay that writes it in front of a payload
/// already in place, with no buffer to grow.
pub fn udp_header_ip(addr: SocketAddr) -> ([u8; 22], usize) {
    let mut h = [0u8; 22];
    let n = match addr {
        SocketAddr::V4(a) => {
            h[3] = atyp::IPV4;
            h[4..8].copy_from_slice(&a.ip().octets());
            8
        }
        SocketAddr::V6(a) => {
            h[3] = atyp::IPV6;
            h[4..20].copy_from_slice(&a.ip().octets());
            20
        }
    };
    h[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    (h, n + 2)
}

/// Length of the header `encode_udp_header` writes for `addr`.
pub fn udp_header_len(addr: &TargetAddr) -> usize {
    match addr {
        TargetAddr::Ip(SocketAddr::V4(_)) => 10,
        TargetAddr::Ip(SocketAddr::V6(_)) => 22,
        TargetAddr::Domain(d, _) => 7 + d.len(),
    }
}

#[cfg(test)]
mod tests;
