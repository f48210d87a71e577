//! Rule text: `MATCH [MATCH...] => ACTION`, matches separated by spaces or
//! commas (all must hold). `--rules-file`: one rule a line, `#` comments.

use super::rule::{Action, Match, Proto, Rule};
use ipnetwork::IpNetwork;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

const MATCHES: &str =
    "domain:NAME, suffix:NAME, keyword:TEXT, cidr:NET, port:N[-M], src:NET, tcp, udp";

/// Why a rule could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    NoArrow,
    NoMatch,
    UnknownMatch(String),
    BadName(String),
    EmptyKeyword,
    BadNet(String),
    BadPort(String),
    BadAction(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoArrow => write!(f, "expected `MATCH... => ACTION`"),
            ParseError::NoMatch => write!(
                f,
                "a rule needs at least one match (--default-action is for everything else)"
            ),
            ParseError::UnknownMatch(m) => write!(f, "unknown match {m:?} (matches: {MATCHES})"),
            ParseError::BadName(n) => write!(f, "{n:?} is not a domain name"),
            ParseError::EmptyKeyword => write!(f, "keyword: needs some text"),
            ParseError::BadNet(n) => write!(f, "{n:?} is not an address or ADDR/PREFIX"),
            ParseError::BadPort(p) => {
                write!(
                    f,
                    "{p:?} is not a port or range (1-65535, as 443 or 8000-9000)"
                )
            }
            ParseError::BadAction(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ParseError {}

/// A name as rules compare it: lower case, no trailing dot, made of labels
/// of letters, digits, `-` and `_` (seen in SRV-style and some CDN names).
fn name(s: &str) -> Result<Box<str>, ParseError> {
    let n = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(n.into())
    } else {
        Err(ParseError::BadName(s.into()))
    }
}

/// An address or network; host bits are cleared (`10.1.2.3/8` is
/// 10.0.0.0/8, as iptables and nft read it).
fn net(s: &str) -> Result<IpNetwork, ParseError> {
    let bad = || ParseError::BadNet(s.into());
    let n: IpNetwork = match s.parse::<IpAddr>() {
        Ok(ip) => IpNetwork::from(ip),
        Err(_) => s.parse().map_err(|_| bad())?,
    };
    // An IPv4-mapped network is the IPv4 one it maps (flows are compared
    // unmapped: as written it would never match).
    let n = match n {
        IpNetwork::V6(v6) if v6.prefix() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNetwork::new(v4.into(), v6.prefix() - 96).map_err(|_| bad())?,
            None => n,
        },
        _ => n,
    };
    IpNetwork::new(n.network(), n.prefix()).map_err(|_| bad())
}

fn port(s: &str) -> Result<Match, ParseError> {
    let bad = || ParseError::BadPort(s.into());
    let one = |p: &str| match crate::cli::number::<u16>(p) {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => (one(s)?, one(s)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(Match::Port(lo, hi))
}

fn one_match(tok: &str) -> Result<Match, ParseError> {
    let lower = tok.to_ascii_lowercase();
    match lower.as_str() {
        "tcp" => return Ok(Match::Proto(Proto::Tcp)),
        "udp" => return Ok(Match::Proto(Proto::Udp)),
        _ => {}
    }
    let Some((kind, value)) = tok.split_once(':') else {
        return Err(ParseError::UnknownMatch(tok.into()));
    };
    match kind.to_ascii_lowercase().as_str() {
        "domain" => Ok(Match::Domain(name(value)?)),
        // `.example.org` reads as the suffix it means.
        "suffix" => Ok(Match::Suffix(name(
            value.strip_prefix('.').unwrap_or(value),
        )?)),
        "keyword" if value.is_empty() => Err(ParseError::EmptyKeyword),
        "keyword" => Ok(Match::Keyword(value.to_ascii_lowercase().into())),
        "cidr" => Ok(Match::Cidr(net(value)?)),
        "src" => Ok(Match::Src(net(value)?)),
        "port" => port(value),
        _ => Err(ParseError::UnknownMatch(tok.into())),
    }
}

/// One rule's matches and action, from `MATCH... => ACTION`.
pub fn parse_rule(text: &str) -> Result<(Vec<Match>, Action), ParseError> {
    let (lhs, rhs) = text.split_once("=>").ok_or(ParseError::NoArrow)?;
    let action = rhs
        .trim()
        .parse::<Action>()
        .map_err(ParseError::BadAction)?;
    let matches = lhs
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(one_match)
        .collect::<Result<Vec<_>, _>>()?;
    if matches.is_empty() {
        return Err(ParseError::NoMatch);
    }
    Ok((matches, action))
}

/// The rules of a `--rules-file` (`label` names it in errors and in each
/// rule's origin, `label:LINE`).
pub fn parse_file(label: &str, text: &str) -> Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (matches, action) = parse_rule(line).map_err(|e| format!("{label}:{}: {e}", n + 1))?;
        out.push(Rule {
            matches,
            action,
            origin: Arc::from(format!("{label}:{}", n + 1)),
        });
    }
    Ok(out)
}

/// A destination of `--rules-test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestTarget {
    /// Lower case.
    pub name: Option<String>,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

/// The destination of `--rules-test`: `NAME`, `ADDR`, `NAME:PORT`,
/// `ADDR:PORT` or `[V6]:PORT`.
pub fn parse_target(s: &str) -> Result<TestTarget, String> {
    let s = s.trim();
    let addr = |a: IpAddr, port| TestTarget {
        name: None,
        addr: Some(a),
        port,
    };
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(addr(sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Ok(addr(ip, None));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let p = crate::cli::number::<u16>(p).map_err(|e| format!("port: {e}"))?;
            (h, Some(p))
        }
        None => (s, None),
    };
    let n = name(host).map_err(|e| e.to_string())?;
    Ok(TestTarget {
        name: Some(n.into()),
        addr: None,
        port,
    })
}
