//! Which source a reply from the proxy gets on its way back to the application.

use super::packet::same_family;
use crate::dns::pool::PoolPin;
use crate::socks::TargetAddr;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// A fake destination an association sent to, kept pinned while it lives.
pub(super) struct FakeDest {
    pub(super) fake: SocketAddr,
    pub(super) name: String,
    pub(super) port: u16,
    /// The address the proxy resolved the name to, once a reply told us.
    pub(super) resolved: Option<IpAddr>,
    pub(super) _pin: Option<std::sync::Arc<PoolPin>>,
}

/// The source address a reply must carry so the application recognises it
/// (a connected socket drops anything else), None to drop it.
///
/// A reply naming a domain comes from the fake address of that name. A reply
/// naming an address (the proxy resolved the name) comes from:
/// - that address, if the endpoint sent to it by address;
/// - the fake address whose name the proxy resolved to it, learnt from an
///   earlier reply;
/// - the one fake destination on that port still without a learnt address
///   (and it is learnt now); when several wait, which one the reply is for
///   cannot be told, and the reply is dropped rather than given a wrong source;
/// - else the address itself (full cone: a remote the endpoint never sent to).
pub(super) fn reply_source(
    from: &TargetAddr,
    fakes: &mut [FakeDest],
    ip_dsts: &HashSet<SocketAddr>,
    local: SocketAddr,
) -> Option<SocketAddr> {
    match from {
        TargetAddr::Domain(name, port) => fakes
            .iter()
            .rev()
            .find(|f| f.port == *port && f.name.eq_ignore_ascii_case(name))
            .map(|f| f.fake),
        TargetAddr::Ip(a) => {
            let a = SocketAddr::new(crate::net::unmap(a.ip()), a.port());
            let src = if ip_dsts.contains(&a) {
                a
            } else if let Some(f) = fakes
                .iter()
                .rev()
                .find(|f| f.port == a.port() && f.resolved == Some(a.ip()))
            {
                f.fake
            } else {
                let mut waiting = fakes
                    .iter_mut()
                    .filter(|f| f.port == a.port() && f.resolved.is_none());
                match (waiting.next(), waiting.next()) {
                    (None, _) => a,
                    (Some(f), None) => {
                        f.resolved = Some(a.ip());
                        f.fake
                    }
                    (Some(_), Some(_)) => return None,
                }
            };
            Some(same_family(src, local))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn fake(fake: &str, name: &str, port: u16) -> FakeDest {
        FakeDest {
            fake: sa(fake),
            name: name.into(),
            port,
            resolved: None,
            _pin: None,
        }
    }

    #[test]
    fn reply_sources() {
        let local = sa("198.18.0.1:5000");
        let none = HashSet::new();
        let mut fakes = vec![fake("198.19.0.1:7", "echo.test", 7)];
        // A name the application reached through a fake address.
        assert_eq!(
            reply_source(
                &TargetAddr::Domain("Echo.Test".into(), 7),
                &mut fakes,
                &none,
                local
            ),
            Some(sa("198.19.0.1:7"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Domain("other.test".into(), 7),
                &mut fakes,
                &none,
                local
            ),
            None
        );
        // The resolved address of that name, on the same port.
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.2:7")),
                &mut fakes,
                &none,
                local
            ),
            Some(sa("198.19.0.1:7"))
        );
        // Any other remote: as it is (full cone), mapped into the endpoint's family.
        assert_eq!(
            reply_source(&TargetAddr::Ip(sa("203.0.113.9:9")), &mut [], &none, local),
            Some(sa("203.0.113.9:9"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("[::ffff:203.0.113.9]:9")),
                &mut [],
                &none,
                local
            ),
            Some(sa("203.0.113.9:9"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.9:9")),
                &mut [],
                &none,
                sa("[fc00::1]:5")
            ),
            Some(sa("[::ffff:203.0.113.9]:9"))
        );
    }

    /// Two names on one port: each reply keeps the source of its own name.
    #[test]
    fn reply_sources_two_names_same_port() {
        let local = sa("198.18.0.1:5000");
        let none = HashSet::new();
        let (ip1, ip2) = (
            TargetAddr::Ip(sa("203.0.113.1:3478")),
            TargetAddr::Ip(sa("203.0.113.2:3478")),
        );
        // stun1 first, its reply, then stun2.
        let mut fakes = vec![fake("198.19.0.1:3478", "stun1.test", 3478)];
        assert_eq!(
            reply_source(&ip1, &mut fakes, &none, local),
            Some(sa("198.19.0.1:3478"))
        );
        fakes.push(fake("198.19.0.2:3478", "stun2.test", 3478));
        assert_eq!(
            reply_source(&ip2, &mut fakes, &none, local),
            Some(sa("198.19.0.2:3478"))
        );
        // stun1 again: not the most recent fake destination on that port.
        assert_eq!(
            reply_source(&ip1, &mut fakes, &none, local),
            Some(sa("198.19.0.1:3478"))
        );
        assert_eq!(
            reply_source(&ip2, &mut fakes, &none, local),
            Some(sa("198.19.0.2:3478"))
        );
        // Both sent before any reply: which name 203.0.113.1 answers for
        // cannot be told, so it is dropped rather than mislabelled.
        let mut fakes = vec![
            fake("198.19.0.1:3478", "stun1.test", 3478),
            fake("198.19.0.2:3478", "stun2.test", 3478),
        ];
        assert_eq!(reply_source(&ip1, &mut fakes, &none, local), None);
        // A name's reply naming the domain is always unambiguous.
        assert_eq!(
            reply_source(
                &TargetAddr::Domain("stun1.test".into(), 3478),
                &mut fakes,
                &none,
                local
            ),
            Some(sa("198.19.0.1:3478"))
        );
    }

    /// An address the application sent to by IP keeps its own source even
    /// when a name on the same port waits for replies.
    #[test]
    fn reply_sources_ip_destination_passes_through() {
        let local = sa("198.18.0.1:5000");
        let ip_dsts: HashSet<SocketAddr> = [sa("203.0.113.9:3478")].into();
        let mut fakes = vec![fake("198.19.0.1:3478", "stun.test", 3478)];
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.9:3478")),
                &mut fakes,
                &ip_dsts,
                local
            ),
            Some(sa("203.0.113.9:3478"))
        );
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("[::ffff:203.0.113.9]:3478")),
                &mut fakes,
                &ip_dsts,
                local
            ),
            Some(sa("203.0.113.9:3478"))
        );
        // The name's own reply still maps to its fake address.
        assert_eq!(
            reply_source(
                &TargetAddr::Ip(sa("203.0.113.5:3478")),
                &mut fakes,
                &ip_dsts,
                local
            ),
            Some(sa("198.19.0.1:3478"))
        );
    }
}
