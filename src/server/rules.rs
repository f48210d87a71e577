//! Access rules: which clients may use the server and which destinations it
//! may reach on their behalf; and the config file's per-user rules (Dante's
//! `socks pass`/`socks block`), evaluated in order, first match wins.
//!
//! Destinations are checked on the address actually dialed, after a name was
//! resolved, so `localhost` or a name pointing at 127.0.0.1 is refused like the
//! address itself (SSRF). IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are
//! checked as the IPv4 address they reach.

use crate::net::unmap;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The local address the kernel would use to reach `ip`.
pub(super) fn route_source(ip: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = match ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    // Connecting a UDP socket only selects a route; nothing is sent.
    s.connect((ip, 9)).ok()?;
    s.local_addr().ok().map(|a| unmap(a.ip()))
}

/// Is `ip` one of this host's own addresses (on any interface)? Linux picks a
/// local destination itself as the source address, which is what this asks.
pub(super) fn is_host_address(ip: IpAddr) -> bool {
    let ip = unmap(ip);
    route_source(ip) == Some(ip)
}

/// Destinations that reach the server host itself or its link-local
/// neighbours, refused unless `--allow-dest` covers them.
pub const DEFAULT_DENY: &[&str] = &[
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::1/128",
    "::/128",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, Clone)]
pub struct Rules {
    allow_client: Vec<IpNetwork>,
    allow_dest: Vec<IpNetwork>,
    deny_dest: Vec<IpNetwork>,
    default_deny: Vec<IpNetwork>,
    /// The config file's `[[rule]]` tables, in order; none: no such check.
    user_rules: Vec<UserRule>,
}

/// A `[[rule]]` table of the config file, as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleSpec {
    /// Named in the log line of each refusal [default: `rule N`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `pass` or `block` (also `allow`, `deny`).
    pub action: Action,
    /// Authenticated user names [default: anyone, unauthenticated too].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// `connect`, `bind`, `udp-associate` [default: all].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// Client networks (CIDR) [default: any].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    /// Destination networks (CIDR) [default: any].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Destination ports: `443` or `"8000-8100"` [default: any].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[serde(alias = "allow")]
    Pass,
    #[serde(alias = "deny")]
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    One(u16),
    Range(String),
}

/// A compiled `RuleSpec`.
#[derive(Debug, Clone)]
struct UserRule {
    name: String,
    pass: bool,
    users: Vec<String>,
    commands: Vec<u8>,
    from: Vec<IpNetwork>,
    to: Vec<IpNetwork>,
    ports: Vec<(u16, u16)>,
}

/// Who asks for what, as the per-user rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The authenticated user (never a SOCKS4 user id: it carries no
    /// password).
    pub user: Option<&'a str>,
    pub client: IpAddr,
    /// The SOCKS command (1 CONNECT, 2 BIND, 3 UDP ASSOCIATE).
    pub cmd: u8,
}

/// The per-user rule that refused a request: `name`, or the implicit last
/// one when rules exist and none matched.
pub const NO_RULE_MATCHED: &str = "default (no rule matched)";

fn command_code(c: &str) -> Result<u8, String> {
    match c {
        "connect" => Ok(1),
        "bind" => Ok(2),
        "udp-associate" | "udpassociate" => Ok(3),
        _ => Err(format!(
            "unknown command {c:?} (connect, bind, udp-associate)"
        )),
    }
}

fn port_range(p: &PortSpec) -> Result<(u16, u16), String> {
    let bad = || format!("{p:?} is not a port or a range (443, \"8000-8100\")");
    let (lo, hi) = match p {
        PortSpec::One(n) => (*n, *n),
        PortSpec::Range(s) => match s.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let n = s.trim().parse().map_err(|_| bad())?;
                (n, n)
            }
        },
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl UserRule {
    fn new(i: usize, s: &RuleSpec) -> Result<UserRule, String> {
        let name = s.name.clone().unwrap_or_else(|| format!("rule {}", i + 1));
        let at = |e: String| format!("rule {name:?}: {e}");
        let nets = |v: &[String]| {
            v.iter()
                .map(|c| parse_cidr(c))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(UserRule {
            pass: s.action == Action::Pass,
            users: s.users.clone(),
            commands: s
                .commands
                .iter()
                .map(|c| command_code(c))
                .collect::<Result<_, _>>()
                .map_err(at)?,
            from: nets(&s.from).map_err(at)?,
            to: nets(&s.to).map_err(at)?,
            ports: s
                .ports
                .iter()
                .map(port_range)
                .collect::<Result<_, _>>()
                .map_err(at)?,
            name,
        })
    }

    /// `dest`: the address to be dialed, None when not known (a BIND from
    /// anyone); a rule naming destinations or ports does not match then.
    fn matches(&self, who: &Subject<'_>, dest: Option<SocketAddr>) -> bool {
        let user_ok =
            self.users.is_empty() || who.user.is_some_and(|u| self.users.iter().any(|x| x == u));
        let cmd_ok = self.commands.is_empty() || self.commands.contains(&who.cmd);
        let from_ok = self.from.is_empty() || longest(&self.from, unmap(who.client)).is_some();
        let to_ok =
            self.to.is_empty() || dest.is_some_and(|d| longest(&self.to, unmap(d.ip())).is_some());
        let port_ok = self.ports.is_empty()
            || dest.is_some_and(|d| {
                self.ports
                    .iter()
                    .any(|&(lo, hi)| (lo..=hi).contains(&d.port()))
            });
        user_ok && cmd_ok && from_ok && to_ok && port_ok
    }
}

/// Parse a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (/32, /128).
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not an address or CIDR: {e}"))?;
    // A mapped network is matched against unmapped addresses: store it as IPv4.
    if let IpNetwork::V6(n) = net {
        if let Some(v4) = n.ip().to_ipv4_mapped() {
            if n.prefix() >= 96 {
                return IpNetwork::new(IpAddr::V4(v4), n.prefix() - 96).map_err(|e| e.to_string());
            }
        }
    }
    Ok(net)
}

fn longest(nets: &[IpNetwork], ip: IpAddr) -> Option<u8> {
    nets.iter()
        .filter(|n| n.contains(ip))
        .map(|n| n.prefix())
        .max()
}

impl Rules {
    pub fn new(
        allow_client: &[String],
        allow_dest: &[String],
        deny_dest: &[String],
    ) -> Result<Rules, String> {
        let p = |v: &[String]| {
            v.iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Rules {
            allow_client: p(allow_client)?,
            allow_dest: p(allow_dest)?,
            deny_dest: p(deny_dest)?,
            default_deny: DEFAULT_DENY
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<_, _>>()?,
            user_rules: Vec::new(),
        })
    }

    /// Add the config file's per-user rules, checked in order.
    pub fn with_user_rules(mut self, specs: &[RuleSpec]) -> Result<Rules, String> {
        self.user_rules = specs
            .iter()
            .enumerate()
            .map(|(i, s)| UserRule::new(i, s))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    pub fn user_rule_count(&self) -> usize {
        self.user_rules.len()
    }

    /// The per-user rules' verdict on `who` reaching `dest`: the first rule
    /// that matches decides; with rules and none matching, refused. Err is
    /// the name of the rule that refused.
    pub fn user_verdict(&self, who: &Subject<'_>, dest: Option<SocketAddr>) -> Result<(), &str> {
        if self.user_rules.is_empty() {
            return Ok(());
        }
        match self.user_rules.iter().find(|r| r.matches(who, dest)) {
            Some(r) if r.pass => Ok(()),
            Some(r) => Err(&r.name),
            None => Err(NO_RULE_MATCHED),
        }
    }

    /// True when some `--allow-client` restricts who may connect.
    pub fn restricts_clients(&self) -> bool {
        !self.allow_client.is_empty()
    }

    /// May this client use the server? Without `--allow-client`, anyone who
    /// can reach the listener may (and authentication decides).
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        self.allow_client.is_empty() || longest(&self.allow_client, unmap(ip)).is_some()
    }

    /// May the server dial `ip`? `server_ip` is the address the client reached
    /// the server on: dialing it would reach the server host's own services.
    ///
    /// Order: among `--allow-dest` and `--deny-dest` the most specific network
    /// wins (a tie goes to deny); when neither matches, the default deny list
    /// and the server's own address are refused and everything else allowed.
    pub fn dest_allowed(&self, ip: IpAddr, server_ip: Option<IpAddr>) -> bool {
        let ip = unmap(ip);
        match (longest(&self.allow_dest, ip), longest(&self.deny_dest, ip)) {
            (Some(a), Some(d)) => return a > d,
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (None, None) => {}
        }
        if server_ip.is_some_and(|s| unmap(s) == ip) {
            return false;
        }
        longest(&self.default_deny, ip).is_none()
    }

    /// May the server reach `ip`, one of the server host's own addresses
    /// (any interface, not only the one the client came in on)? Only when
    /// `--allow-dest` says so: services bound to 0.0.0.0 on the host answer
    /// on every local address (SSRF).
    pub fn host_address_allowed(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        match (longest(&self.allow_dest, ip), longest(&self.deny_dest, ip)) {
            (Some(a), Some(d)) => a > d,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Rules::new(&[], &v(allow), &v(deny)).unwrap()
    }

    #[test]
    fn default_deny_list_including_mapped_forms() {
        let r = rules(&[], &[]);
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:169.254.169.254",
            "::ffff:224.0.0.1",
        ] {
            assert!(!r.dest_allowed(ip(bad), None), "{bad} allowed");
        }
        for good in [
            "203.0.113.2",
            "198.51.100.7",
            "2001:db8::2",
            "::ffff:203.0.113.2",
            "10.1.2.3",
        ] {
            assert!(r.dest_allowed(ip(good), None), "{good} refused");
        }
    }

    #[test]
    fn server_own_address_is_refused() {
        let r = rules(&[], &[]);
        assert!(!r.dest_allowed(ip("198.51.100.1"), Some(ip("198.51.100.1"))));
        assert!(!r.dest_allowed(ip("::ffff:198.51.100.1"), Some(ip("198.51.100.1"))));
        assert!(r.dest_allowed(ip("198.51.100.2"), Some(ip("198.51.100.1"))));
        let r = rules(&["198.51.100.1"], &[]);
        assert!(r.dest_allowed(ip("198.51.100.1"), Some(ip("198.51.100.1"))));
    }

    #[test]
    fn host_addresses_need_allow_dest() {
        let r = rules(&[], &[]);
        assert!(!r.host_address_allowed(ip("198.51.100.1")));
        let r = rules(&["198.51.100.0/24"], &["198.51.100.1"]);
        assert!(!r.host_address_allowed(ip("198.51.100.1")));
        assert!(r.host_address_allowed(ip("198.51.100.2")));
        assert!(r.host_address_allowed(ip("::ffff:198.51.100.2")));
        // Loopback is always one of ours; a public documentation address never.
        assert!(is_host_address(ip("127.0.0.1")));
        assert!(is_host_address(ip("::ffff:127.0.0.1")));
        assert!(!is_host_address(ip("192.0.2.1")));
    }

    #[test]
    fn allow_overrides_default_and_most_specific_wins() {
        let r = rules(
            &["127.0.0.1/32", "203.0.113.5"],
            &["203.0.113.0/24", "198.51.100.0/24"],
        );
        assert!(r.dest_allowed(ip("127.0.0.1"), None));
        assert!(r.dest_allowed(ip("::ffff:127.0.0.1"), None));
        assert!(!r.dest_allowed(ip("127.0.0.2"), None));
        assert!(r.dest_allowed(ip("203.0.113.5"), None));
        assert!(!r.dest_allowed(ip("203.0.113.6"), None));
        assert!(!r.dest_allowed(ip("198.51.100.9"), None));
        // A mapped CIDR means the IPv4 network.
        let r = rules(&["::ffff:127.0.0.0/104"], &[]);
        assert!(r.dest_allowed(ip("127.9.9.9"), None));
    }

    #[test]
    fn clients() {
        let r = Rules::new(&["198.51.100.0/24".into()], &[], &[]).unwrap();
        assert!(r.restricts_clients());
        assert!(r.client_allowed(ip("198.51.100.2")));
        assert!(r.client_allowed(ip("::ffff:198.51.100.2")));
        assert!(!r.client_allowed(ip("203.0.113.2")));
        assert!(Rules::new(&[], &[], &[])
            .unwrap()
            .client_allowed(ip("203.0.113.2")));
        assert!(Rules::new(&["nonsense".into()], &[], &[]).is_err());
    }

    fn spec(toml_text: &str) -> Vec<RuleSpec> {
        #[derive(serde::Deserialize)]
        struct Doc {
            rule: Vec<RuleSpec>,
        }
        toml::from_str::<Doc>(toml_text).unwrap().rule
    }

    #[test]
    fn user_rules_first_match_wins() {
        let r = Rules::new(&[], &[], &[])
            .unwrap()
            .with_user_rules(&spec(
                r#"
                [[rule]]
                name = "bob-no-web"
                action = "block"
                users = ["bob"]
                to = ["203.0.113.0/24"]
                ports = [80, "8000-8100"]
                [[rule]]
                name = "no-bind"
                action = "deny"
                commands = ["bind"]
                [[rule]]
                name = "lan"
                action = "allow"
                from = ["198.51.100.0/24"]
                "#,
            ))
            .unwrap();
        let who = |user, client: &str, cmd| Subject {
            user,
            client: ip(client),
            cmd,
        };
        let to = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let lan = "198.51.100.9";
        assert_eq!(
            r.user_verdict(&who(Some("bob"), lan, 1), to("203.0.113.2:80")),
            Err("bob-no-web")
        );
        assert_eq!(
            r.user_verdict(&who(Some("bob"), lan, 1), to("203.0.113.2:8050")),
            Err("bob-no-web")
        );
        assert_eq!(
            r.user_verdict(&who(Some("bob"), lan, 1), to("203.0.113.2:443")),
            Ok(())
        );
        assert_eq!(
            r.user_verdict(&who(Some("alice"), lan, 1), to("203.0.113.2:80")),
            Ok(())
        );
        assert_eq!(
            r.user_verdict(&who(Some("alice"), lan, 2), None),
            Err("no-bind")
        );
        // From elsewhere no rule matches: refused by the implicit last rule.
        assert_eq!(
            r.user_verdict(&who(Some("alice"), "192.0.2.1", 1), to("203.0.113.2:80")),
            Err(NO_RULE_MATCHED)
        );
        // Unnamed rules are numbered; no rules, no check.
        let r2 = Rules::new(&[], &[], &[])
            .unwrap()
            .with_user_rules(&spec("[[rule]]\naction = \"block\"\n"))
            .unwrap();
        assert_eq!(r2.user_verdict(&who(None, lan, 1), None), Err("rule 1"));
        assert_eq!(
            rules(&[], &[]).user_verdict(&who(None, lan, 1), None),
            Ok(())
        );
        for bad in [
            "[[rule]]\naction = \"pass\"\nports = [\"90-80\"]\n",
            "[[rule]]\naction = \"pass\"\nto = [\"x\"]\n",
        ] {
            assert!(Rules::new(&[], &[], &[])
                .unwrap()
                .with_user_rules(&spec(bad))
                .is_err());
        }
    }
}
