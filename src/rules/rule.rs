//! What a rule is: its matches, its action, and what a flow must be for
//! it to hold (`Query`).

use ipnetwork::IpNetwork;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Where a flow goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Through the proxies: `--proxy`'s (None), or the named `--group`'s.
    Proxy(Option<Arc<str>>),
    /// From the host itself, with the proxy sockets' `--fwmark` and
    /// `--bind-interface`.
    Direct,
    /// Refused at once: TCP gets a RST, UDP an ICMP port unreachable.
    Block,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Proxy(None) => f.write_str("proxy"),
            Action::Proxy(Some(g)) => write!(f, "proxy:{g}"),
            Action::Direct => f.write_str("direct"),
            Action::Block => f.write_str("block"),
        }
    }
}

/// A group's name: letters, digits, `-` and `_` (it is written in rules).
pub fn group_name(s: &str) -> Result<Arc<str>, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(Arc::from(s))
    } else {
        Err(format!(
            "{s:?} is not a group name (letters, digits, - and _)"
        ))
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Action, String> {
        let s = s.trim();
        let (verb, group) = match s.split_once(':') {
            Some((v, g)) => (v, Some(g)),
            None => (s, None),
        };
        match (verb.to_ascii_lowercase().as_str(), group) {
            ("proxy", None) => Ok(Action::Proxy(None)),
            ("proxy", Some(g)) => Ok(Action::Proxy(Some(group_name(g)?))),
            ("direct", None) => Ok(Action::Direct),
            ("block", None) => Ok(Action::Block),
            _ => Err(format!(
                "unknown action {s:?} (actions: proxy, proxy:GROUP, direct, block)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The name exactly (lower case, no trailing dot).
    Domain(Box<str>),
    /// The name or any name below it.
    Suffix(Box<str>),
    /// The name contains this.
    Keyword(Box<str>),
    /// The destination address (a real one: a name has none).
    Cidr(IpNetwork),
    /// The destination port, inclusive range.
    Port(u16, u16),
    Proto(Proto),
    /// The source address (the LAN client, in gateway mode).
    Src(IpNetwork),
}

/// A rule: its matches (all must hold), its action, and where it was
/// written, for the flow's log line (`--rule 2`, `rules.txt:14`).
#[derive(Debug, Clone)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
    pub origin: Arc<str>,
}

impl Rule {
    /// Whether every match of the rule holds for `q`.
    pub fn holds(&self, q: &Query<'_>) -> bool {
        self.matches.iter().all(|m| matches(m, q))
    }
}

fn in_net(net: &IpNetwork, ip: IpAddr) -> bool {
    net.contains(crate::net::unmap(ip))
}

fn matches(m: &Match, q: &Query<'_>) -> bool {
    match m {
        Match::Domain(d) => q.name == Some(&**d),
        Match::Suffix(s) => q.name.is_some_and(|n| is_suffix(n, s)),
        Match::Keyword(k) => q.name.is_some_and(|n| n.contains(&**k)),
        Match::Cidr(net) => q.dst.is_some_and(|ip| in_net(net, ip)),
        Match::Port(lo, hi) => q.port.is_some_and(|p| (*lo..=*hi).contains(&p)),
        Match::Proto(p) => q.proto == *p,
        Match::Src(net) => q.src.is_some_and(|ip| in_net(net, ip)),
    }
}

/// `name` is `suffix` or a name below it (on a label boundary).
fn is_suffix(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|head| head.is_empty() || head.ends_with('.'))
}

/// What is known of a new flow when its way is chosen.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The name behind the destination (the virtual DNS handed out its fake
    /// address), lower case without a trailing dot; None for a real address.
    pub name: Option<&'a str>,
    /// The destination address when it is a real one.
    pub dst: Option<IpAddr>,
    pub port: Option<u16>,
    pub proto: Proto,
    pub src: Option<IpAddr>,
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Domain(d) => write!(f, "domain:{d}"),
            Match::Suffix(s) => write!(f, "suffix:{s}"),
            Match::Keyword(k) => write!(f, "keyword:{k}"),
            Match::Cidr(n) => write!(f, "cidr:{n}"),
            Match::Port(lo, hi) if lo == hi => write!(f, "port:{lo}"),
            Match::Port(lo, hi) => write!(f, "port:{lo}-{hi}"),
            Match::Proto(p) => write!(f, "{p}"),
            Match::Src(n) => write!(f, "src:{n}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.matches.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{m}")?;
        }
        write!(f, " => {}", self.action)
    }
}
