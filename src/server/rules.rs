//! Access rules: which clients may use the server and which destinations it
//! may reach on their behalf.
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
        })
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
}
