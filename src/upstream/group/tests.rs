use super::*;
use crate::upstream::Association;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;

/// A proxy whose answers the test scripts; counts what it was asked.
struct Fake {
    name: &'static str,
    connect: Mutex<Vec<Result<(), Error>>>,
    associate_unsupported: bool,
    connects: AtomicU32,
    associates: AtomicU32,
}

fn fake(name: &'static str) -> Arc<Fake> {
    Arc::new(Fake {
        name,
        connect: Mutex::new(Vec::new()),
        associate_unsupported: false,
        connects: AtomicU32::new(0),
        associates: AtomicU32::new(0),
    })
}

impl Fake {
    /// The next connects answer these, in order; then Ok.
    fn script(&self, answers: Vec<Result<(), Error>>) {
        *self.connect.lock().unwrap() = answers;
    }
    fn connects(&self) -> u32 {
        self.connects.load(Ordering::Relaxed)
    }
}

impl fmt::Display for Fake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Upstream for Fake {
    fn connect<'a>(&'a self, _t: &'a TargetAddr) -> BoxFuture<'a, Result<Connected, Error>> {
        self.connects.fetch_add(1, Ordering::Relaxed);
        let mut s = self.connect.lock().unwrap();
        let r = if s.is_empty() { Ok(()) } else { s.remove(0) };
        Box::pin(async move {
            r?;
            let (a, _b) = tokio::io::duplex(64);
            Ok(Connected {
                stream: Box::new(a),
                via: self.name.into(),
            })
        })
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, Error>> {
        self.associates.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            if self.associate_unsupported {
                return Err(Error::CommandNotSupported);
            }
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let control = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            Ok(Associated {
                assoc: Association {
                    control,
                    relay: "127.0.0.1:9".parse().unwrap(),
                    socket,
                },
                via: self.name.into(),
            })
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn carries_names(&self) -> bool {
        true
    }

    fn carries_udp(&self) -> bool {
        true
    }
}

fn group(policy: Policy, members: &[&Arc<Fake>]) -> Group {
    let ups = members
        .iter()
        .map(|f| (*f).clone() as Arc<dyn Upstream>)
        .collect();
    Group::new(ups, policy, Duration::from_secs(5))
}

fn host(h: &str) -> TargetAddr {
    TargetAddr::Domain(h.into(), 443)
}

fn refused() -> Error {
    Error::ProxyUnreachable(std::io::ErrorKind::ConnectionRefused.into())
}

async fn via(g: &Group, t: &TargetAddr) -> Result<String, Error> {
    g.connect(t).await.map(|c| c.via.to_string())
}

#[tokio::test]
async fn a_dead_proxy_is_retried_around_then_skipped_while_down() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Failover, &[&a, &b]);
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
    a.script(vec![Err(refused())]);
    // The dial that meets the dead proxy goes on to the next.
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    assert_eq!(a.connects(), 2);
    // While its back-off lasts, nobody tries it.
    for _ in 0..10 {
        assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    }
    assert_eq!(a.connects(), 2, "a down proxy was tried");
    assert!(!g.members[0].usable());
    // Back: failover returns to it.
    g.members[0].succeeded();
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
}

#[tokio::test]
async fn the_targets_answer_is_not_retried_and_blames_nobody() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Failover, &[&a, &b]);
    a.script(vec![Err(Error::Refused)]);
    assert!(matches!(via(&g, &host("x")).await, Err(Error::Refused)));
    assert_eq!(b.connects(), 0, "the refusal was retried elsewhere");
    assert!(g.members[0].usable());
}

#[tokio::test]
async fn a_proxys_refusal_moves_on_without_putting_it_down() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Failover, &[&a, &b]);
    a.script(vec![Err(Error::NotAllowed)]);
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    assert!(g.members[0].usable());
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
}

#[tokio::test]
async fn refused_credentials_put_a_proxy_down() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Failover, &[&a, &b]);
    a.script(vec![Err(Error::AuthFailed)]);
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    assert!(!g.members[0].usable());
}

#[tokio::test]
async fn when_every_proxy_is_down_they_are_tried_anyway() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Failover, &[&a, &b]);
    a.script(vec![Err(refused())]);
    b.script(vec![Err(refused())]);
    assert!(via(&g, &host("x")).await.is_err());
    assert!(!g.members[0].usable() && !g.members[1].usable());
    // Soonest back first: a went down first.
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
}

#[tokio::test]
async fn round_robin_takes_turns_over_the_healthy_ones() {
    let (a, b, c) = (fake("a"), fake("b"), fake("c"));
    let g = group(Policy::RoundRobin, &[&a, &b, &c]);
    for _ in 0..30 {
        via(&g, &host("x")).await.unwrap();
    }
    assert_eq!((a.connects(), b.connects(), c.connects()), (10, 10, 10));
    b.script(vec![Err(refused())]);
    for _ in 0..31 {
        via(&g, &host("x")).await.unwrap();
    }
    // b failed once (its flow went on to c), then was skipped: a and c share.
    assert_eq!(b.connects(), 11);
    let (na, nc) = (a.connects() - 10, c.connects() - 10);
    assert!(na.abs_diff(nc) <= 2, "{na} / {nc}");
}

#[tokio::test]
async fn hash_keeps_a_host_on_one_proxy_and_moves_only_the_dead_ones_hosts() {
    let (a, b, c) = (fake("a"), fake("b"), fake("c"));
    let g = group(Policy::Hash, &[&a, &b, &c]);
    let hosts: Vec<TargetAddr> = (0..60).map(|i| host(&format!("h{i}.example"))).collect();
    let mut first = Vec::new();
    for h in &hosts {
        let v = via(&g, h).await.unwrap();
        for _ in 0..3 {
            assert_eq!(via(&g, h).await.unwrap(), v, "{h} moved");
        }
        // The port is not part of the key; case is not either.
        if let TargetAddr::Domain(n, _) = h {
            let other = TargetAddr::Domain(n.to_uppercase(), 80);
            assert_eq!(via(&g, &other).await.unwrap(), v);
        }
        first.push(v);
    }
    for n in ["a", "b", "c"] {
        assert!(
            first.iter().filter(|v| *v == n).count() >= 5,
            "{n} gets few hosts"
        );
    }
    // b goes down: its hosts move, nobody else's does.
    b.script(vec![Err(refused())]);
    for (h, v) in hosts.iter().zip(&first) {
        let now = via(&g, h).await.unwrap();
        if v != "b" {
            assert_eq!(&now, v, "{h} moved though its proxy is up");
        } else {
            assert_ne!(now, "b");
        }
    }
}

#[tokio::test]
async fn fastest_keeps_its_pick_until_another_is_clearly_faster() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Fastest, &[&a, &b]);
    g.members[0].set_latency(Duration::from_millis(20));
    g.members[1].set_latency(Duration::from_millis(10));
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    // a becomes a little faster: not enough to move.
    g.members[0].set_latency(Duration::from_millis(9));
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    // Clearly faster: move.
    g.members[0].set_latency(Duration::from_millis(5));
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
    // The pick down: the next fastest.
    a.script(vec![Err(refused())]);
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
    assert_eq!(via(&g, &host("x")).await.unwrap(), "b");
}

#[tokio::test]
async fn udp_skips_a_proxy_without_udp_associate_until_its_next_good_probe() {
    let a = Arc::new(Fake {
        associate_unsupported: true,
        ..Arc::try_unwrap(fake("a")).ok().unwrap()
    });
    let b = fake("b");
    let g = group(Policy::Failover, &[&a, &b]);
    assert_eq!(&*g.associate().await.unwrap().via, "b");
    assert_eq!(&*g.associate().await.unwrap().via, "b");
    assert_eq!(a.associates.load(Ordering::Relaxed), 1, "asked again");
    // TCP still goes to a: it is up.
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
    g.members[0].probe(None, Duration::from_secs(1)).await;
    assert!(g.members[0].carries_udp());
}

#[test]
fn policies_parse_as_written() {
    for p in ["failover", "round-robin", "hash", "fastest"] {
        assert_eq!(p.parse::<Policy>().unwrap().to_string(), p);
    }
    assert!("random".parse::<Policy>().is_err());
}

#[tokio::test]
async fn a_probe_brings_a_proxy_back_and_a_target_refusal_does_not_put_it_down() {
    let (a, b) = (fake("a"), fake("b"));
    let g = group(Policy::Failover, &[&a, &b]);
    let target = host("health.example");
    // The health target refuses: the proxy answered, so it is up.
    a.script(vec![Err(Error::Refused)]);
    g.members[0]
        .probe(Some(&target), Duration::from_secs(1))
        .await;
    assert!(g.members[0].usable());
    assert!(g.members[0].latency().is_some(), "no latency measured");
    // The proxy fails the probe's CONNECT itself: down.
    a.script(vec![Err(refused())]);
    g.members[0]
        .probe(Some(&target), Duration::from_secs(1))
        .await;
    assert!(!g.members[0].usable());
    // The next good probe brings it back at once, back-off or not.
    g.members[0]
        .probe(Some(&target), Duration::from_secs(1))
        .await;
    assert!(g.members[0].usable());
    assert_eq!(via(&g, &host("x")).await.unwrap(), "a");
}
