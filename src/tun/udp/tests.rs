use super::shared::*;
use super::*;
use crate::dns::pool::FakePool;
use crate::dns::DnsMode;
use crate::stack::PacketSink;
use crate::upstream::{self, Associated, BoxFuture, Connected};
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A SOCKS5 UDP relay in memory: echoes each datagram back from its
/// destination, or answers "BIG" with 2000 bytes.
struct FakeProxy {
    associations: AtomicUsize,
    unsupported: bool,
    /// Fail fast (refused, auth rejected).
    fail: AtomicBool,
    /// Never answer (blackholed).
    hang: bool,
    controls: Mutex<Vec<TcpStream>>,
}

impl fmt::Display for FakeProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fake proxy")
    }
}

impl Upstream for FakeProxy {
    fn connect<'a>(
        &'a self,
        _t: &'a TargetAddr,
    ) -> BoxFuture<'a, Result<Connected, upstream::Error>> {
        Box::pin(async { Err(upstream::Error::General) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), upstream::Error>> {
        Box::pin(async { Ok(()) })
    }

    fn carries_names(&self) -> bool {
        true
    }

    fn carries_udp(&self) -> bool {
        true
    }

    fn associate(&self) -> BoxFuture<'_, Result<Associated, upstream::Error>> {
        Box::pin(async move {
            self.associations.fetch_add(1, Ordering::SeqCst);
            if self.unsupported {
                return Err(upstream::Error::CommandNotSupported);
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(upstream::Error::Refused);
            }
            if self.hang {
                std::future::pending::<()>().await;
            }
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let control = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (server_side, _) = l.accept().await.unwrap();
            self.controls.lock().unwrap().push(server_side);
            let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let relay_addr = relay.local_addr().unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 70000];
                while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                    let Ok(h) = codec::parse_udp_header(&buf[..n]) else {
                        continue;
                    };
                    let mut out = Vec::new();
                    codec::encode_udp_header(&h.addr, &mut out).unwrap();
                    if &buf[h.header_len..n] == b"BIG" {
                        out.extend_from_slice(&[b'x'; 2000]);
                    } else {
                        out.extend_from_slice(&buf[h.header_len..n]);
                    }
                    let _ = relay.send_to(&out, from).await;
                }
            });
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            Ok(Associated {
                assoc: upstream::Association {
                    control,
                    relay: relay_addr,
                    socket,
                },
                via: "fake proxy".into(),
            })
        })
    }
}

#[derive(Default)]
struct Capture {
    pkts: Mutex<Vec<Vec<u8>>>,
}

impl PacketSink for Capture {
    fn send(&self, pkt: &[u8]) {
        self.pkts.lock().unwrap().push(pkt.to_vec());
    }
}

impl Capture {
    /// Wait for `n` packets in all; returns them parsed as (src, dst, payload).
    async fn wait(&self, n: usize) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        for _ in 0..200 {
            if self.pkts.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.pkts
            .lock()
            .unwrap()
            .iter()
            .map(|p| {
                let d = parse_udp(p).expect("valid packet with valid checksums");
                (d.src, d.dst, d.payload.to_vec())
            })
            .collect()
    }
}

fn relay(max: usize, unsupported: bool, dns: bool) -> (UdpRelay, Arc<FakeProxy>, Arc<Capture>) {
    relay_with(max, unsupported, dns, false, false)
}

fn relay_with(
    max: usize,
    unsupported: bool,
    dns: bool,
    fail: bool,
    hang: bool,
) -> (UdpRelay, Arc<FakeProxy>, Arc<Capture>) {
    let proxy = Arc::new(FakeProxy {
        associations: AtomicUsize::new(0),
        unsupported,
        fail: AtomicBool::new(fail),
        hang,
        controls: Mutex::new(Vec::new()),
    });
    let cap = Arc::new(Capture::default());
    let dns = dns.then(|| {
        let pool = Arc::new(FakePool::new("198.19.0.0/16".parse().unwrap(), None, &[]).unwrap());
        Arc::new(Dns::new(DnsMode::Virtual, None, Some(pool), proxy.clone()).unwrap())
    });
    let cfg = UdpConfig {
        timeout: Duration::from_secs(60),
        max_flows: max,
        mtu: 1500,
    };
    (
        UdpRelay::new(cfg, dns, proxy.clone(), None, cap.clone()),
        proxy,
        cap,
    )
}

fn pkt(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    build_udp(sa(src), sa(dst), payload, 1500).unwrap()
}

#[tokio::test]
async fn full_cone_one_association_many_remotes() {
    let (r, proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"one"));
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.3:9", b"two"));
    let got = cap.wait(2).await;
    assert_eq!(got.len(), 2);
    assert!(got.contains(&(sa("203.0.113.2:7"), sa("198.18.0.1:5000"), b"one".to_vec())));
    assert!(got.contains(&(sa("203.0.113.3:9"), sa("198.18.0.1:5000"), b"two".to_vec())));
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 1);
    assert_eq!(r.flows(), 1);
    // IPv6 endpoint: its own association.
    r.handle_packet(&pkt("[fc00:1::1]:5000", "[2001:db8:2::2]:7", b"six"));
    let got = cap.wait(3).await;
    assert!(got.contains(&(
        sa("[2001:db8:2::2]:7"),
        sa("[fc00:1::1]:5000"),
        b"six".to_vec()
    )));
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bounded_oldest_idle_evicted() {
    let (r, _proxy, cap) = relay(3, false, false);
    for i in 0..10 {
        r.handle_packet(&pkt(
            &format!("198.18.0.1:{}", 6000 + i),
            "203.0.113.2:7",
            b"x",
        ));
        assert!(r.flows() <= 3);
        cap.wait(i + 1).await;
    }
    assert_eq!(r.stats().flows_evicted.load(Ordering::Relaxed), 7);
    assert_eq!(r.stats().flows_opened.load(Ordering::Relaxed), 10);
    // The three most recent survive.
    let t = r.shared.table();
    for i in 7..10 {
        assert!(t.flows.contains_key(&(
            sa(&format!("198.18.0.1:{}", 6000 + i)),
            shared::WayKey::Proxy(None)
        )));
    }
}

#[tokio::test]
async fn dead_control_connection_is_reestablished() {
    let (r, proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
    cap.wait(1).await;
    // The proxy closes the control connection: the association is gone.
    proxy.controls.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"b"));
    let got = cap.wait(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_udp_associate_is_remembered() {
    let (r, proxy, cap) = relay(16, true, true);
    for p in 0..5 {
        r.handle_packet(&pkt(
            &format!("198.18.0.1:{}", 5000 + p),
            "203.0.113.2:7",
            b"a",
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.associations.load(Ordering::SeqCst),
        1,
        "asked once, then backed off"
    );
    assert_eq!(r.stats().dropped_unsupported.load(Ordering::Relaxed), 5);
    // DNS still answered.
    let q = crate::dns::message::tests::query(1, "web.test", 1);
    r.handle_packet(&pkt("198.18.0.1:5353", "203.0.113.2:53", &q));
    let got = cap.wait(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, sa("203.0.113.2:53"));
    assert_eq!(&got[0].2[got[0].2.len() - 4..], &[198, 19, 0, 1]);
}

#[tokio::test]
async fn fake_destination_goes_by_name_and_replies_from_fake() {
    let (r, _proxy, cap) = relay(16, false, true);
    let q = crate::dns::message::tests::query(1, "echo.test", 1);
    r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q));
    cap.wait(1).await;
    r.handle_packet(&pkt("198.18.0.1:5000", "198.19.0.1:7", b"hi"));
    let got = cap.wait(2).await;
    // The fake proxy echoes with the header it got: a domain; the reply comes from the fake address.
    assert_eq!(
        got[1],
        (sa("198.19.0.1:7"), sa("198.18.0.1:5000"), b"hi".to_vec())
    );
    // An address no answer handed out is dropped.
    r.handle_packet(&pkt("198.18.0.1:5000", "198.19.3.3:7", b"hi"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cap.wait(2).await.len(), 2);
}

/// Datagrams to a fake address after the first find its name in the
/// table's own memory: the fake pool, shared by every queue of the device,
/// is not locked per datagram.
#[tokio::test]
async fn datagrams_to_a_fake_address_do_not_lock_the_pool() {
    let (r, _proxy, cap) = relay(16, false, true);
    let q = crate::dns::message::tests::query(1, "echo.test", 1);
    r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q));
    cap.wait(1).await;
    r.handle_packet(&pkt("198.18.0.1:5000", "198.19.0.1:7", b"0"));
    cap.wait(2).await;
    let pool = r.shared.dns.as_ref().unwrap().pool().unwrap().clone();
    let before = pool.locks.load(Ordering::Relaxed);
    for i in 1..=50u8 {
        r.handle_packet(&pkt("198.18.0.1:5000", "198.19.0.1:7", &[i]));
    }
    let got = cap.wait(52).await;
    assert_eq!(got.len(), 52);
    assert!(got[2..].iter().all(|g| g.0 == sa("198.19.0.1:7")));
    assert_eq!(
        pool.locks.load(Ordering::Relaxed),
        before,
        "the pool was locked per datagram"
    );
}

#[tokio::test]
async fn oversize_reply_dropped_and_counted() {
    let (r, _proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"BIG"));
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"small"));
    let got = cap.wait(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, b"small");
    assert_eq!(r.stats().dropped_oversize.load(Ordering::Relaxed), 1);
}

/// A minimal SOCKS5 server for UDP ASSOCIATE: replies `rep` with BND 0.0.0.0:`port`.
async fn socks5_udp_server(rep: u8, port: u16) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut b = [0u8; 3];
        c.read_exact(&mut b).await.unwrap();
        c.write_all(&[5, 0]).await.unwrap();
        let mut req = [0u8; 10];
        c.read_exact(&mut req).await.unwrap();
        assert_eq!(req[1], 3, "UDP ASSOCIATE");
        let p = port.to_be_bytes();
        c.write_all(&[5, rep, 0, 1, 0, 0, 0, 0, p[0], p[1]])
            .await
            .unwrap();
        // Hold the control connection open until the client closes it.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
    });
    addr
}

#[tokio::test]
async fn socks_associator_fixes_unspecified_relay_and_maps_0x07() {
    let addr = socks5_udp_server(0, 4242).await;
    let up = upstream::socks::Socks::from_url(&format!("socks5://{addr}")).unwrap();
    let a = up.associate().await.unwrap().assoc;
    // BND.ADDR 0.0.0.0: the relay is at the proxy's own address.
    assert_eq!(a.relay, sa("127.0.0.1:4242"));

    let addr = socks5_udp_server(7, 0).await;
    let up = upstream::socks::Socks::from_url(&format!("socks5://{addr}")).unwrap();
    match up.associate().await {
        Err(upstream::Error::CommandNotSupported) => {}
        Err(e) => panic!("0x07 not recognised: {e:?}"),
        Ok(_) => panic!("0x07 accepted"),
    }
}

/// An association that only carried DNS expires sooner than others.
#[tokio::test(start_paused = true)]
async fn dns_only_associations_expire_sooner() {
    let (r, _proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5353", "203.0.113.2:53", b"q"));
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"x"));
    assert_eq!(cap.wait(2).await.len(), 2);
    assert_eq!(r.flows(), 2);
    tokio::time::sleep(DNS_UDP_TIMEOUT + Duration::from_secs(1)).await;
    assert_eq!(
        r.flows(),
        1,
        "the DNS-only association outlived {DNS_UDP_TIMEOUT:?}"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.flows(), 0, "the idle association outlived --udp-timeout");
}

#[tokio::test]
async fn malformed_packets_dropped() {
    let (r, proxy, cap) = relay(16, false, true);
    r.handle_packet(&[0x45, 0, 0]);
    r.handle_packet(&[]);
    let mut bad = pkt("198.18.0.1:5000", "203.0.113.2:7", b"a");
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    r.handle_packet(&bad);
    // A malformed DNS query gets FORMERR, a runt nothing.
    let q = crate::dns::message::tests::query(9, "web.test", 1);
    r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q[..14]));
    r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q[..3]));
    let got = cap.wait(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2[3] & 0xF, 1);
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 0);
    assert_eq!(r.stats().dropped_other.load(Ordering::Relaxed), 3);
}

/// Let spawned tasks run (paused clock: only a little time passes).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A proxy that refuses: one attempt, then datagrams are dropped and
/// counted until the backoff (1 s, then 2 s, ...) ends; not a TCP
/// connection per datagram.
#[tokio::test(start_paused = true)]
async fn failed_associate_backs_off() {
    let (r, proxy, cap) = relay_with(16, false, false, true, false);
    let attempts = || proxy.associations.load(Ordering::SeqCst);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
    settle().await;
    assert_eq!(attempts(), 1);
    assert_eq!(r.flows(), 0, "the failed flow ended");
    for i in 0..50 {
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
        r.handle_packet(&pkt(
            &format!("198.18.0.1:{}", 6000 + i),
            "203.0.113.2:7",
            b"a",
        ));
        settle().await;
    }
    assert_eq!(attempts(), 1, "a new UDP ASSOCIATE per datagram");
    assert_eq!(r.flows(), 0);
    assert_eq!(r.stats().dropped_backoff.load(Ordering::Relaxed), 101);
    // After the first backoff one more attempt, then twice as long.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
    settle().await;
    assert_eq!(attempts(), 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"a"));
    settle().await;
    assert_eq!(attempts(), 2, "the second backoff is longer");
    // The proxy is back: the next attempt after the backoff succeeds,
    // and a success resets the backoff.
    proxy.fail.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"ok"));
    let got = cap.wait(1).await;
    assert_eq!(got[0].2, b"ok");
    assert_eq!(attempts(), 3);
    assert_eq!(r.shared.backoff.failed_until.load(Ordering::Relaxed), 0);
}

/// A blackholed proxy: the queue of a flow that is still associating
/// holds a few datagrams by bytes, not 64 of any size.
#[tokio::test]
async fn connecting_queue_is_bounded_by_bytes() {
    let (r, proxy, _cap) = relay_with(16, false, false, false, true);
    let big = vec![1u8; 1400];
    for _ in 0..200 {
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", &big));
    }
    settle().await;
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 1);
    let queued = r.shared.queued.load(Ordering::Relaxed);
    assert!(queued <= CONNECTING_QUEUE_BYTES, "{queued} bytes queued");
    let kept = CONNECTING_QUEUE_BYTES / (1400 + QUEUE_OVERHEAD);
    assert_eq!(
        r.stats().dropped_queue_full.load(Ordering::Relaxed),
        200 - kept as u64
    );
    // Evicting the flow gives its queue room back.
    r.shared.table().flows.clear();
    for _ in 0..200 {
        if r.shared.queued.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.shared.queued.load(Ordering::Relaxed), 0);
}

/// A burst towards a live association is queued, not dropped at 64.
#[tokio::test]
async fn burst_to_live_association_is_queued() {
    let (r, _proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"first"));
    cap.wait(1).await;
    // handle_packet never yields: the flow task sees the burst only after it.
    for _ in 0..1000 {
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", &[2u8; 100]));
    }
    assert_eq!(r.stats().dropped_queue_full.load(Ordering::Relaxed), 0);
    for _ in 0..400 {
        if r.stats().datagrams_out.load(Ordering::Relaxed) == 1001 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.stats().datagrams_out.load(Ordering::Relaxed), 1001);
    assert_eq!(r.shared.queued.load(Ordering::Relaxed), 0);
}

/// `/flows` of an association: its endpoint, first destination (the name
/// behind a fake one), proxy and counts each way; "associating" until the
/// proxy answers.
#[tokio::test]
async fn snapshot_shows_each_association_with_its_counts() {
    let (r, _proxy, cap) = relay(16, false, true);
    let q = crate::dns::message::tests::query(1, "echo.test", 1);
    r.handle_packet(&pkt("198.18.0.1:5353", "198.18.0.2:53", &q));
    cap.wait(1).await;
    for _ in 0..3 {
        r.handle_packet(&pkt("198.18.0.1:5000", "198.19.0.1:7", b"hi!"));
    }
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"x"));
    cap.wait(5).await;
    let s = r.snapshot();
    assert_eq!(s.len(), 1, "{s:?}");
    let f = &s[0];
    assert_eq!(f.local, sa("198.18.0.1:5000"));
    assert_eq!(f.destination, Some(sa("198.19.0.1:7")));
    assert_eq!(f.name.as_deref(), Some("echo.test"));
    assert_eq!(f.via.as_deref(), Some("fake proxy"));
    assert_eq!((f.datagrams_out, f.bytes_out), (4, 10));
    assert_eq!((f.datagrams_in, f.bytes_in), (4, 10));
    assert!(f.live);

    let (r, _proxy, _cap) = relay_with(16, false, false, false, true);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"x"));
    let s = r.snapshot();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].destination, s[0].via.as_deref()), (None, None));
    assert!(!s[0].live);
}

/// Once an association is live and has sent to a destination, the next
/// datagram to it leaves from `handle_packet` itself (the stack task), not
/// through the queue and the association's task.
#[tokio::test]
async fn known_destination_is_sent_from_the_stack_task() {
    let (r, _proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"first"));
    cap.wait(1).await;
    let out = || r.stats().datagrams_out.load(Ordering::Relaxed);
    assert_eq!(out(), 1);
    // No await between: the association's task cannot have run.
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"second"));
    assert_eq!(out(), 2, "sent on the fast path");
    assert_eq!(r.shared.queued.load(Ordering::Relaxed), 0);
    // A destination the association has not sent to yet goes to its task.
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.3:9", b"third"));
    assert_eq!(out(), 2);
    let got = cap.wait(3).await;
    assert_eq!(
        got[1],
        (
            sa("203.0.113.2:7"),
            sa("198.18.0.1:5000"),
            b"second".to_vec()
        )
    );
    assert_eq!(
        got[2],
        (
            sa("203.0.113.3:9"),
            sa("198.18.0.1:5000"),
            b"third".to_vec()
        )
    );
}

/// A burst mixing a known destination (fast path) with new ones (queued for
/// the task) reaches the relay in the order the application sent it: the
/// fast path never overtakes what is queued.
#[tokio::test]
async fn burst_is_relayed_in_order() {
    let (r, _proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", &[0, 0]));
    cap.wait(1).await;
    let n = 300u16;
    for i in 1..=n {
        let dst = match i % 10 {
            0 => format!("203.0.113.{}:7", 10 + i / 10),
            _ => "203.0.113.2:7".to_string(),
        };
        r.handle_packet(&pkt("198.18.0.1:5000", &dst, &i.to_be_bytes()));
    }
    let got = cap.wait(n as usize + 1).await;
    let seq: Vec<u16> = got
        .iter()
        .map(|(_, _, p)| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    assert_eq!(seq, (0..=n).collect::<Vec<_>>());
}

/// A reply is built into its TUN packet where it was received: source, port
/// and payload as the relay's header says, for IPv4 and IPv6 endpoints, and
/// several replies read in one wake-up all come back.
#[tokio::test]
async fn replies_built_in_place_v4_and_v6() {
    let (r, _proxy, cap) = relay(16, false, false);
    r.handle_packet(&pkt("[fc00:1::1]:5000", "[2001:db8:2::2]:7", b"v6"));
    r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", b"v4"));
    cap.wait(2).await;
    for i in 0..50u8 {
        r.handle_packet(&pkt("198.18.0.1:5000", "203.0.113.2:7", &[i; 300]));
    }
    let got = cap.wait(52).await;
    assert!(got.contains(&(
        sa("[2001:db8:2::2]:7"),
        sa("[fc00:1::1]:5000"),
        b"v6".to_vec()
    )));
    let v4: Vec<_> = got
        .iter()
        .filter(|g| g.1 == sa("198.18.0.1:5000"))
        .collect();
    assert_eq!(v4.len(), 51);
    for (i, g) in v4[1..].iter().enumerate() {
        assert_eq!(g.0, sa("203.0.113.2:7"));
        assert_eq!(g.2, vec![i as u8; 300]);
    }
}

/// `--dns udp`: queries from many endpoints (each its own source port, all
/// with the same id) share one association, and each endpoint gets its own
/// answer, with its own id, from the server it asked.
#[tokio::test]
async fn dns_queries_share_one_association() {
    let (_, proxy, cap) = relay(16, false, false);
    let dns = Arc::new(Dns::new(DnsMode::Udp, None, None, proxy.clone()).unwrap());
    let cfg = UdpConfig {
        timeout: Duration::from_secs(60),
        max_flows: 16,
        mtu: 1500,
    };
    let r = UdpRelay::new(cfg, Some(dns), proxy.clone(), None, cap.clone());
    let q = |i: u16| crate::dns::message::tests::query(0x4242, &format!("n{i}.test"), 1);
    let ask = |i: u16| {
        let src = format!("198.18.0.1:{}", 40000 + i);
        r.handle_packet(&pkt(&src, "203.0.113.53:53", &q(i)));
    };
    ask(0);
    cap.wait(1).await;
    // The rest while the association is live: sent from the stack task.
    for i in 1..50 {
        ask(i);
    }
    let got = cap.wait(50).await;
    assert_eq!(got.len(), 50);
    for (src, dst, payload) in got {
        assert_eq!(src, sa("203.0.113.53:53"));
        let i = dst.port() - 40000;
        assert_eq!(payload, q(i), "answer of endpoint {i}");
    }
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 1);
    // Not a query (QR set), or not to port 53: the endpoint's own association.
    let mut resp = q(99);
    resp[2] |= 0x80;
    r.handle_packet(&pkt("198.18.0.1:41000", "203.0.113.53:53", &resp));
    cap.wait(51).await;
    assert_eq!(proxy.associations.load(Ordering::SeqCst), 2);
}
