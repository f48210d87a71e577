//! A proxy as configured (`--proxy`): `Proxy`, its protocol, and its URL,
//! `scheme://[user[:password]@]host[:port][/]`, with RFC 3986
//! percent-decoding of the credentials. An error text never shows what may
//! be a password. `socks::client` and `upstream::http` dial through a `Proxy`.

use crate::net::SocketOpts;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// The protocol spoken to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// IPv4 destinations only; a name cannot be sent (and is never resolved locally).
    Socks4,
    /// SOCKS4 with names sent to the proxy.
    Socks4a,
    /// SOCKS5; names are sent to the proxy.
    Socks5,
    /// SOCKS5, names resolved by the proxy. On the wire the same as `Socks5`
    /// here, since sockstun never resolves a target name itself.
    Socks5h,
    /// HTTP CONNECT (RFC 9110 section 9.3.6): TCP only; names are sent to
    /// the proxy.
    Http,
}

impl ProxyKind {
    pub fn is_socks5(self) -> bool {
        matches!(self, ProxyKind::Socks5 | ProxyKind::Socks5h)
    }

    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Socks4 => "socks4",
            ProxyKind::Socks4a => "socks4a",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
            ProxyKind::Http => "http",
        }
    }
}

/// A proxy server. Deliberately no `Debug` derive: `auth` holds a
/// password. Use `Display` (no password) for logs.
#[derive(Clone)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// The proxy's addresses, tried in order. Filled by `resolve` (or by
    /// `from_url` when the host is an IP literal).
    pub addrs: Vec<SocketAddr>,
    /// Username and password (SOCKS5, RFC 1929; HTTP Basic, RFC 7617) or user
    /// id (SOCKS4, password ignored).
    pub auth: Option<(String, String)>,
    pub opts: SocketOpts,
    /// Limit for the TCP connect to the proxy and, separately, for the SOCKS
    /// handshake (which includes the proxy's own connect to the target).
    pub connect_timeout: Duration,
    /// SOCKS5: send the greeting, the RFC 1929 credentials and the request in
    /// one write instead of waiting for each answer (one round trip to the
    /// proxy instead of two or three). RFC 1928 does not forbid it and dante
    /// and `sockstun server` parse incrementally, but servers that read the
    /// greeting with one large read and drop the rest (microsocks) then hang:
    /// true forces it on every dial (`--socks-pipeline`).
    pub pipeline: bool,
    /// SOCKS5, `pipeline` off: learn whether the proxy takes a pipelined
    /// handshake and pipeline when it does (`upstream::pipelining`; TUN
    /// mode's default, `--no-socks-pipeline` turns it off).
    pub learn_pipeline: bool,
    /// Connections kept ready for new flows (`upstream::pool`, `--warm`);
    /// 0: none.
    pub warm: usize,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.scheme())?;
        if let Some((u, _)) = &self.auth {
            write!(f, "{u}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Proxy {
    /// Resolve the proxy's host name (blocking; call once at start). The
    /// proxy's own name is resolved locally, necessarily: this is not a leak of
    /// a target name.
    pub fn resolve(&mut self) -> io::Result<()> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            self.addrs = vec![SocketAddr::new(ip, self.port)];
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no address", self.host),
            ));
        }
        self.addrs = addrs;
        Ok(())
    }
}

impl Proxy {
    /// A TCP connection to the first of the proxy's addresses that answers,
    /// each tried for `connect_timeout`; else the last error.
    pub async fn connect_tcp(&self) -> io::Result<tokio::net::TcpStream> {
        // Built only on failure: an `io::Error` with a message allocates, and
        // this runs once per connection.
        let mut last = None;
        for &addr in &self.addrs {
            match tokio::time::timeout(self.connect_timeout, self.opts.connect_tcp(addr)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "proxy address not resolved")
        }))
    }
}

/// A malformed proxy URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// No `scheme://`.
    MissingScheme,
    /// A scheme other than socks4, socks4a, socks5, socks5h, http.
    UnknownScheme(String),
    MissingHost,
    /// An IPv6 address without brackets, or an unclosed bracket. The text is
    /// cut at its first ':' when it may be `user:password` (see `from_url`).
    BadHost(String),
    /// The port text, or None when it may be a password.
    BadPort(Option<String>),
    /// A path, query or fragment after host:port; None when it may be part
    /// of a password.
    TrailingGarbage(Option<String>),
    /// A bad `%XX` escape, or userinfo that is not UTF-8 once decoded.
    BadEscape,
    /// A username or password longer than 255 bytes (RFC 1929 limit).
    CredentialsTooLong,
    /// Credentials the dialect cannot carry: an empty SOCKS5 username (RFC
    /// 1929 needs 1 to 255 bytes), a NUL in a SOCKS4 user id (it ends the
    /// field). Refused here rather than failing every connection later.
    UnusableCredentials(&'static str),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::MissingScheme => write!(f, "missing scheme (expected socks5://host:port)"),
            UrlError::UnknownScheme(s) => {
                write!(
                    f,
                    "unknown scheme {s:?} (use socks4, socks4a, socks5, socks5h or http)"
                )
            }
            UrlError::MissingHost => write!(f, "missing host"),
            UrlError::BadHost(h) => {
                write!(f, "bad host {h:?} (write IPv6 addresses as [addr]:port)")
            }
            UrlError::BadPort(Some(p)) => write!(f, "bad port {p:?}"),
            UrlError::BadPort(None) => write!(f, "bad port (not shown: {HIDDEN})"),
            UrlError::TrailingGarbage(Some(s)) => write!(f, "unexpected {s:?} after host:port"),
            UrlError::TrailingGarbage(None) => {
                write!(f, "unexpected path after host:port (not shown: {HIDDEN})")
            }
            UrlError::BadEscape => write!(f, "bad percent-escape in user:password"),
            UrlError::CredentialsTooLong => write!(f, "username or password longer than 255 bytes"),
            UrlError::UnusableCredentials(why) => write!(f, "unusable credentials: {why}"),
        }
    }
}

impl std::error::Error for UrlError {}

const HIDDEN: &str = "without '@', user:password would be read as host:port";

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits (RFC 3986 §2.1); from_str_radix alone would
            // also take a sign ("%+1").
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .ok_or(UrlError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::BadEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::BadEscape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::BadEscape)
}

/// `user[:password]`, percent-decoded, if `kind` can send it.
fn credentials(kind: ProxyKind, userinfo: &str) -> Result<(String, String), UrlError> {
    let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (u, p) = (percent_decode(u)?, percent_decode(p)?);
    if u.len() > 255 || p.len() > 255 {
        return Err(UrlError::CredentialsTooLong);
    }
    if kind.is_socks5() && u.is_empty() {
        return Err(UrlError::UnusableCredentials(
            "a SOCKS5 username must not be empty",
        ));
    }
    if kind == ProxyKind::Http && u.contains(':') {
        return Err(UrlError::UnusableCredentials(
            "an HTTP Basic user-id cannot hold a colon (RFC 7617)",
        ));
    }
    let control = |s: &str| s.chars().any(char::is_control);
    if kind == ProxyKind::Http && (control(&u) || control(&p)) {
        return Err(UrlError::UnusableCredentials(
            "HTTP Basic credentials cannot hold control characters (RFC 7617 section 2)",
        ));
    }
    if matches!(kind, ProxyKind::Socks4 | ProxyKind::Socks4a) && u.contains('\0') {
        return Err(UrlError::UnusableCredentials(
            "a SOCKS4 user id cannot hold a NUL byte",
        ));
    }
    Ok((u, p))
}

impl Proxy {
    /// Parse `scheme://[user[:password]@]host[:port][/]`; the port defaults to
    /// 1080. The host is not resolved here (see `resolve`), except that an IP
    /// literal fills `addrs` at once.
    pub fn from_url(url: &str) -> Result<Proxy, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::MissingScheme)?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "socks4" => ProxyKind::Socks4,
            "socks4a" => ProxyKind::Socks4a,
            "socks5" => ProxyKind::Socks5,
            "socks5h" => ProxyKind::Socks5h,
            "http" => ProxyKind::Http,
            other => return Err(UrlError::UnknownScheme(other.to_string())),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        // Without '@', `alice:s3cret` reads as host:port: error texts must not
        // echo what may be a password (it would end up in logs and terminals).
        let secret = userinfo.is_none() && hostport.contains(':');
        let shown = |s: &str| match s.find(':') {
            Some(i) if secret => format!("{}:...", &s[..i]),
            _ => s.to_string(),
        };
        if let Some(i) = hostport.find(['/', '?', '#']) {
            return Err(UrlError::TrailingGarbage(
                (!secret).then(|| hostport[i..].to_string()),
            ));
        }
        let auth = userinfo.map(|ui| credentials(kind, ui)).transpose()?;
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| UrlError::BadHost(shown(hostport)))?;
            if h.parse::<Ipv6Addr>().is_err() {
                return Err(UrlError::BadHost(shown(h)));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| UrlError::BadPort((!secret).then(|| p.to_string())))?,
                ),
            };
            (h.to_string(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h.to_string(), Some(p)),
                Some(_) => return Err(UrlError::BadHost(shown(hostport))),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let port = match port {
            None => 1080,
            // Digits only (RFC 3986 §3.2.3): parse() would also take "+80".
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(UrlError::BadPort((!secret).then(|| p.to_string()))),
            },
        };
        let addrs = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => Vec::new(),
        };
        Ok(Proxy {
            kind,
            host,
            port,
            addrs,
            auth,
            opts: SocketOpts::default(),
            connect_timeout: Duration::from_secs(10),
            pipeline: false,
            learn_pipeline: false,
            warm: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Proxy::from_url("socks5://198.51.100.1:1080").unwrap();
        assert_eq!(
            (u.kind, u.host.as_str(), u.port),
            (ProxyKind::Socks5, "198.51.100.1", 1080)
        );
        assert_eq!(u.addrs, vec!["198.51.100.1:1080".parse().unwrap()]);
        assert!(u.auth.is_none());

        let u = Proxy::from_url("socks5h://us%40er:p%3Aa%20ss@[2001:db8::1]:9050/").unwrap();
        assert_eq!(u.kind, ProxyKind::Socks5h);
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, 9050);
        assert_eq!(u.auth, Some(("us@er".into(), "p:a ss".into())));
        assert_eq!(u.to_string(), "socks5h://us@er:***@[2001:db8::1]:9050");

        let u = Proxy::from_url("SOCKS4a://proxy.test").unwrap();
        assert_eq!((u.kind, u.port), (ProxyKind::Socks4a, 1080));
        assert!(u.addrs.is_empty());
        assert_eq!(
            Proxy::from_url("socks4://u@h:1").unwrap().auth,
            Some(("u".into(), "".into()))
        );
        let h = Proxy::from_url("http://al%40ce:s3:cret@[2001:db8::7]:3128").unwrap();
        assert_eq!(
            (h.kind, h.host.as_str(), h.port),
            (ProxyKind::Http, "2001:db8::7", 3128)
        );
        assert_eq!(h.auth, Some(("al@ce".into(), "s3:cret".into())));
        assert_eq!(h.to_string(), "http://al@ce:***@[2001:db8::7]:3128");

        let e = Proxy::from_url("http://al%3Aice@proxy.test").err().unwrap();
        assert!(matches!(e, UrlError::UnusableCredentials(_)), "{e}");
        let u = Proxy::from_url("HTTP://user:p%3Aw@[2001:db8::1]:3128/").unwrap();
        assert_eq!(
            (u.kind, u.host.as_str(), u.port),
            (ProxyKind::Http, "2001:db8::1", 3128)
        );
        assert_eq!(u.auth, Some(("user".into(), "p:w".into())));
        assert_eq!(Proxy::from_url("http://h").unwrap().port, 1080);

        for bad in [
            "198.51.100.1:1080",
            "https://h:1",
            "http://a%3Ab:c@h:1",
            "socks5://",
            "socks5://h:0",
            "socks5://h:70000",
            "socks5://2001:db8::1:1080",
            "socks5://[2001:db8::1:1080",
            "socks5://[nothex]:1",
            "socks5://h:1/path",
            "socks5://u:%zz@h:1",
        ] {
            assert!(Proxy::from_url(bad).is_err(), "{bad} accepted");
        }
    }

    /// Without '@', userinfo reads as host:port: no error may echo the
    /// password.
    #[test]
    fn url_errors_never_echo_a_password() {
        for url in [
            "socks5://alice:s3cret",
            "socks5://alice:s3cret/x",
            "socks5://alice:s3c:ret",
            "socks5://alice:s3cret?",
            "socks5://[alice:s3cret",
            "socks5://[alice:s3cret]:1",
            "socks5://[::1]s3cret",
            "socks5://[::1]:s3cret",
        ] {
            let e = Proxy::from_url(url).err().expect(url).to_string();
            assert!(!e.contains("s3c"), "{url}: {e}");
        }
        // With '@' the authority holds no credentials: its text helps.
        let e = Proxy::from_url("socks5://a:b@h:port").err().unwrap();
        assert!(e.to_string().contains("\"port\""), "{e}");
    }

    /// Found by fuzz/fuzz_targets/proxy_url.rs: URLs that parsed although
    /// their credentials cannot be sent (every connection would then fail
    /// with a misleading error) or their syntax is not RFC 3986's.
    #[test]
    fn url_fuzz_findings_are_refused() {
        for url in [
            // The fuzzer's input: a NUL in a SOCKS4 user id.
            "socks4://198\0\x11\0\x001CCAFCCCCC00>1:@1080",
            "socks4a://u%00x@h:1",
            // RFC 1929: ULEN is at least 1.
            "socks5://:pw@h",
            "socks5h://@h:1",
            // An escape is two hex digits, a port only digits.
            "socks5://u:%+1@h",
            "socks5://h:+80",
            // The fuzzer's input once http:// came: control characters in
            // HTTP Basic credentials (RFC 7617 section 2).
            "http://Jockx\x00@3/@3so0roxy..ee:2:1\x08\x08\x08\x08\x08\x08\x08\x08\x08D\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08@\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08z\x00\x00\x001",
            "http://u:p%0A@h:1",
            "http://u%7F:p@h:1",
        ] {
            assert!(Proxy::from_url(url).is_err(), "{url:?} accepted");
        }
        // What stays valid: an empty SOCKS4 user id, an empty SOCKS5 password.
        assert!(Proxy::from_url("socks4://@h:1").is_ok());
        assert!(Proxy::from_url("socks5://u:@h:1").is_ok());
        assert!(Proxy::from_url("http://u:@h:1").is_ok());
        assert!(Proxy::from_url("http://:p@h:1").is_ok());
    }
}
