//! The stack driven by in-memory packets: a hand-made TCP client on one side,
//! a fake dialer on the other.

use super::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// UDP is not under test here: dropped.
pub(super) struct NoUdp;

impl UdpHandler for NoUdp {
    fn on_packet(&self, _packet: &[u8]) {}
}

/// Dials by handing the test the far end of a pipe, after the test says go.
struct FakeDialer {
    dials: AtomicUsize,
    verdict: Mutex<Option<oneshot::Receiver<Result<(), Refusal>>>>,
    far: Mutex<Option<oneshot::Sender<DuplexStream>>>,
}

impl Dialer for FakeDialer {
    fn dial(&self, _src: SocketAddr, _dst: SocketAddr) -> DialFuture {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let verdict = self.verdict.lock().unwrap().take();
        let far = self.far.lock().unwrap().take();
        Box::pin(async move {
            let v = match verdict {
                Some(rx) => rx.await.unwrap_or(Err(Refusal::Reset)),
                None => Err(Refusal::Reset),
            };
            v.map_err(|answer| DialFailed::new(answer, "refused by the test"))?;
            let (a, b) = tokio::io::duplex(1 << 16);
            if let Some(far) = far {
                let _ = far.send(b);
            }
            Ok(Dialed {
                stream: Box::new(a),
                via: "test".into(),
                note: Default::default(),
            })
        })
    }
}

struct Harness {
    inject: mpsc::UnboundedSender<Vec<u8>>,
    out: mpsc::UnboundedReceiver<Vec<u8>>,
    dialer: Arc<FakeDialer>,
    verdict: Option<oneshot::Sender<Result<(), Refusal>>>,
    far: Option<oneshot::Receiver<DuplexStream>>,
    _stop: oneshot::Sender<()>,
    stats: Arc<StackStats>,
    sink: Arc<phy::MemSink>,
}

fn start() -> Harness {
    start_with(StackConfig::default())
}

fn start_with(cfg: StackConfig) -> Harness {
    let (vtx, vrx) = oneshot::channel();
    let (ftx, frx) = oneshot::channel();
    let dialer = Arc::new(FakeDialer {
        dials: AtomicUsize::new(0),
        verdict: Mutex::new(Some(vrx)),
        far: Mutex::new(Some(ftx)),
    });
    let (src, sink, inject, out) = phy::pair();
    let stack = Stack::new(cfg, dialer.clone(), Arc::new(NoUdp), sink.clone());
    let stats = stack.stats();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(stack.run(src, async move {
        let _ = stop_rx.await;
    }));
    Harness {
        inject,
        out,
        dialer,
        verdict: Some(vtx),
        far: Some(frx),
        _stop: stop_tx,
        stats,
        sink,
    }
}

const CLIENT: &str = "198.18.0.1:40000";
const SERVER: &str = "203.0.113.2:80";
const CLIENT6: &str = "[fd00::1]:40000";
const SERVER6: &str = "[2001:db8:2::2]:80";

fn ip(a: SocketAddr) -> IpAddress {
    a.ip().into()
}

/// Build an IP+TCP packet from the application.
pub(super) fn seg(
    src: SocketAddr,
    dst: SocketAddr,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: if control == TcpControl::Syn {
            Some(7)
        } else {
            None
        },
        max_seg_size: if control == TcpControl::Syn {
            Some(1460)
        } else {
            None
        },
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let iprepr = IpRepr::new(ip(src), ip(dst), IpProtocol::Tcp, tcp.buffer_len(), 64);
    let mut buf = vec![0u8; iprepr.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    iprepr.emit(&mut buf[..], &caps);
    let hl = iprepr.header_len();
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut buf[hl..]),
        &ip(src),
        &ip(dst),
        &caps,
    );
    buf
}

#[derive(Debug, Clone)]
struct Out {
    proto: IpProtocol,
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    rst: bool,
    fin: bool,
    seq: u32,
    ackn: u32,
    payload: Vec<u8>,
    icmp_type: u8,
}

fn parse(p: &[u8]) -> Out {
    let (s, d, proto, payload): (IpAddress, IpAddress, IpProtocol, &[u8]) = match p[0] >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(p).unwrap();
            let hl = ip.header_len() as usize;
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                ip.next_header(),
                &p[hl..ip.total_len() as usize],
            )
        }
        _ => {
            let ip = Ipv6Packet::new_checked(p).unwrap();
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                ip.next_header(),
                &p[40..],
            )
        }
    };
    if proto != IpProtocol::Tcp {
        return Out {
            proto,
            src: SocketAddr::new(s.into(), 0),
            dst: SocketAddr::new(d.into(), 0),
            syn: false,
            ack: false,
            rst: false,
            fin: false,
            seq: 0,
            ackn: 0,
            payload: payload.to_vec(),
            icmp_type: payload[0],
        };
    }
    let t = TcpPacket::new_checked(payload).unwrap();
    assert!(t.verify_checksum(&s, &d), "bad TCP checksum from the stack");
    Out {
        proto,
        src: SocketAddr::new(s.into(), t.src_port()),
        dst: SocketAddr::new(d.into(), t.dst_port()),
        syn: t.syn(),
        ack: t.ack(),
        rst: t.rst(),
        fin: t.fin(),
        seq: t.seq_number().0 as u32,
        ackn: t.ack_number().0 as u32,
        payload: t.payload().to_vec(),
        icmp_type: 0,
    }
}

impl Harness {
    async fn next(&mut self) -> Out {
        let p = timeout(Duration::from_secs(5), self.out.recv())
            .await
            .expect("stack sent nothing")
            .expect("stack gone");
        parse(&p)
    }
    fn send(&self, p: Vec<u8>) {
        self.inject.send(p).unwrap();
    }
    async fn quiet(&mut self) -> bool {
        timeout(Duration::from_millis(200), self.out.recv())
            .await
            .is_err()
    }
}

async fn handshake(h: &mut Harness, c: SocketAddr, s: SocketAddr) -> (u32, u32, DuplexStream) {
    h.send(seg(c, s, TcpControl::Syn, 1000, None, &[]));
    // A retransmitted SYN while dialing reaches the same flow: one dial.
    h.send(seg(c, s, TcpControl::Syn, 1000, None, &[]));
    assert!(h.quiet().await, "SYN-ACK before the proxy said yes");
    assert_eq!(h.dialer.dials.load(Ordering::SeqCst), 1);
    h.verdict.take().unwrap().send(Ok(())).unwrap();
    let sa = h.next().await;
    assert!(sa.syn && sa.ack && !sa.rst, "{sa:?}");
    assert_eq!((sa.src, sa.dst, sa.ackn), (s, c, 1001));
    h.send(seg(c, s, TcpControl::None, 1001, Some(sa.seq + 1), &[]));
    let far = timeout(Duration::from_secs(5), h.far.take().unwrap())
        .await
        .unwrap()
        .unwrap();
    (1001, sa.seq + 1, far)
}

#[tokio::test]
async fn data_and_fin_both_ways_v4() {
    data_and_fin_both_ways(CLIENT.parse().unwrap(), SERVER.parse().unwrap()).await;
}

#[tokio::test]
async fn data_and_fin_both_ways_v6() {
    data_and_fin_both_ways(CLIENT6.parse().unwrap(), SERVER6.parse().unwrap()).await;
}

async fn data_and_fin_both_ways(c: SocketAddr, s: SocketAddr) {
    let mut h = start();
    let (mut cseq, sseq, mut far) = handshake(&mut h, c, s).await;
    // Application -> far side.
    h.send(seg(c, s, TcpControl::Psh, cseq, Some(sseq), b"hello"));
    cseq += 5;
    let mut buf = [0u8; 5];
    timeout(Duration::from_secs(5), far.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello");
    // Far side -> application.
    far.write_all(b"world!").await.unwrap();
    let mut got = Vec::new();
    let mut sseq2 = sseq;
    while got.len() < 6 {
        let o = h.next().await;
        if !o.payload.is_empty() {
            assert_eq!(o.seq, sseq2);
            sseq2 += o.payload.len() as u32;
            got.extend_from_slice(&o.payload);
        }
    }
    assert_eq!(got, b"world!");
    // Application half-closes; the far side reads EOF but can still answer.
    h.send(seg(c, s, TcpControl::Fin, cseq, Some(sseq2), &[]));
    cseq += 1;
    let mut rest = Vec::new();
    timeout(Duration::from_secs(5), far.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    far.write_all(b"late").await.unwrap();
    far.shutdown().await.unwrap();
    let mut late = Vec::new();
    let mut fin_seen = false;
    while !fin_seen {
        let o = h.next().await;
        assert!(!o.rst, "unexpected RST {o:?}");
        late.extend_from_slice(&o.payload);
        if o.fin {
            fin_seen = true;
            sseq2 = o.seq + o.payload.len() as u32 + 1;
        }
    }
    assert_eq!(late, b"late");
    h.send(seg(c, s, TcpControl::None, cseq, Some(sseq2), &[]));
    // The closed flow is reclaimed.
    let stats = h.stats.clone();
    let ok = timeout(Duration::from_secs(5), async {
        while stats.tcp_active.load(Ordering::Relaxed) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "flow not reclaimed");
}

#[tokio::test]
async fn refusal_is_rst() {
    let mut h = start();
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    h.send(seg(c, s, TcpControl::Syn, 5000, None, &[]));
    assert!(h.quiet().await);
    h.verdict.take().unwrap().send(Err(Refusal::Reset)).unwrap();
    let o = h.next().await;
    assert!(o.rst && o.ack && !o.syn, "{o:?}");
    assert_eq!((o.src, o.dst, o.ackn), (s, c, 5001));
    assert_eq!(h.stats.tcp_active.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn unreachable_is_icmp_v4() {
    let mut h = start();
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    h.send(seg(c, s, TcpControl::Syn, 5000, None, &[]));
    h.verdict
        .take()
        .unwrap()
        .send(Err(Refusal::Unreachable(Unreachable::Host)))
        .unwrap();
    let o = h.next().await;
    assert_eq!(o.proto, IpProtocol::Icmp);
    assert_eq!(o.icmp_type, 3, "destination unreachable");
    assert_eq!(o.payload[1], 1, "host unreachable");
    assert_eq!((o.src.ip(), o.dst.ip()), (s.ip(), c.ip()));
}

#[tokio::test]
async fn unreachable_is_icmp_v6() {
    let mut h = start();
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT6.parse().unwrap(), SERVER6.parse().unwrap());
    h.send(seg(c, s, TcpControl::Syn, 5000, None, &[]));
    h.verdict
        .take()
        .unwrap()
        .send(Err(Refusal::Unreachable(Unreachable::Prohibited)))
        .unwrap();
    let o = h.next().await;
    assert_eq!(o.proto, IpProtocol::Icmpv6);
    assert_eq!(o.icmp_type, 1, "destination unreachable");
    assert_eq!(o.payload[1], 1, "administratively prohibited");
}

#[tokio::test]
async fn stray_segment_gets_rst_and_other_protocols_are_counted() {
    let mut h = start();
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    h.send(seg(c, s, TcpControl::None, 7, Some(99), b"x"));
    let o = h.next().await;
    assert!(o.rst, "{o:?}");
    assert_eq!(h.dialer.dials.load(Ordering::SeqCst), 0);
    // An ICMP echo request: dropped, counted, not answered.
    let mut ping = seg(c, s, TcpControl::None, 7, Some(99), b"x");
    ping[9] = 1;
    h.send(ping);
    h.send(vec![0x45, 0, 0]);
    assert!(h.quiet().await);
    assert_eq!(h.stats.other_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(h.stats.malformed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn far_side_reset_is_rst() {
    let mut h = start();
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let (cseq, sseq, far) = handshake(&mut h, c, s).await;
    let _ = cseq;
    let _ = sseq;
    // Dropping the far end ends the relay (EOF); then the application's
    // RST must reclaim the flow at once.
    drop(far);
    let o = h.next().await;
    assert!(o.fin, "far side EOF becomes FIN: {o:?}");
    h.send(seg(c, s, TcpControl::Rst, cseq, None, &[]));
    let stats = h.stats.clone();
    let ok = timeout(Duration::from_secs(5), async {
        while stats.tcp_active.load(Ordering::Relaxed) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "reset flow not reclaimed");
}

#[test]
fn packet_batch_packs_small_packets_and_bounds_large_mtu() {
    // MTU 65000: the buffer holds four full packets, not 64.
    let mut b = PacketBatch::new(65000, 64);
    let mut full = 0;
    while let Some(slot) = b.slot_mut() {
        slot[0] = full as u8;
        b.commit(65000);
        full += 1;
    }
    assert_eq!(full, 4);
    assert!(b.is_full());
    assert_eq!(b.get(3).len(), 65000);
    assert_eq!(b.get(3)[0], 3);
    // Small packets are packed: the count limit, not the bytes, ends the batch.
    b.clear();
    assert!(b.is_empty());
    let mut n = 0;
    while let Some(slot) = b.slot_mut() {
        slot[..2].copy_from_slice(&[n as u8, 0xab]);
        b.commit(52);
        n += 1;
    }
    assert_eq!(n, 64);
    for i in 0..64 {
        assert_eq!(b.get(i).len(), 52);
        assert_eq!(&b.get(i)[..2], &[i as u8, 0xab]);
    }
    // A read longer than the slot is cut to the slot.
    let mut b = PacketBatch::new(1500, 2);
    b.slot_mut().unwrap();
    b.commit(9000);
    assert_eq!(b.get(0).len(), 1500);
}

async fn wait_reclaimed(stats: &StackStats) -> bool {
    timeout(Duration::from_secs(10), async {
        while stats.tcp_active.load(Ordering::Relaxed) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}

fn short_dead_peer() -> StackConfig {
    StackConfig {
        dead_peer_timeout: Duration::from_millis(300),
        ..StackConfig::default()
    }
}

#[tokio::test]
async fn handshake_never_completed_is_reclaimed() {
    let mut h = start_with(short_dead_peer());
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    h.send(seg(c, s, TcpControl::Syn, 1000, None, &[]));
    h.verdict.take().unwrap().send(Ok(())).unwrap();
    let sa = h.next().await;
    assert!(sa.syn && sa.ack, "{sa:?}");
    assert_eq!(h.stats.tcp_active.load(Ordering::Relaxed), 1);
    // The application never acknowledges the SYN-ACK (a spoofed source, a host gone).
    assert!(
        wait_reclaimed(&h.stats).await,
        "half-open flow kept forever"
    );
}

#[tokio::test]
async fn peer_that_stops_acknowledging_is_reclaimed() {
    let mut h = start_with(short_dead_peer());
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let (_cseq, _sseq, mut far) = handshake(&mut h, c, s).await;
    // Data the application never acknowledges: smoltcp would retransmit forever.
    far.write_all(b"hello").await.unwrap();
    assert!(
        wait_reclaimed(&h.stats).await,
        "flow of a silent peer kept forever"
    );
}

/// Exchange `n` bytes each way on an open flow, checking every byte.
async fn exchange(
    h: &mut Harness,
    (c, s): (SocketAddr, SocketAddr),
    cseq: &mut u32,
    sseq: &mut u32,
    far: &mut DuplexStream,
    fill: u8,
) {
    let data = vec![fill; 1000];
    h.send(seg(c, s, TcpControl::Psh, *cseq, Some(*sseq), &data));
    *cseq += data.len() as u32;
    let mut buf = vec![0u8; data.len()];
    timeout(Duration::from_secs(5), far.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, data);
    far.write_all(&data).await.unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let o = h.next().await;
        if !o.payload.is_empty() {
            assert_eq!(o.seq, *sseq);
            *sseq += o.payload.len() as u32;
            got.extend_from_slice(&o.payload);
        }
    }
    assert_eq!(got, data);
    // Acknowledge it, so the transmit ring runs empty.
    h.send(seg(c, s, TcpControl::None, *cseq, Some(*sseq), &[]));
}

#[tokio::test]
async fn idle_flow_releases_its_rings_and_keeps_working() {
    let mut h = start_with(StackConfig {
        release_idle: Duration::from_millis(50),
        ..StackConfig::default()
    });
    let cs: (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let (mut cseq, mut sseq, mut far) = handshake(&mut h, cs.0, cs.1).await;
    exchange(&mut h, cs, &mut cseq, &mut sseq, &mut far, b'a').await;
    let stats = h.stats.clone();
    let released = |n| {
        let stats = stats.clone();
        async move {
            timeout(Duration::from_secs(5), async {
                while stats.rings_released.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(released(1).await, "idle flow did not release its rings");
    // Released pages read back as zeros: the flow must still carry data
    // intact, and be released again once idle.
    exchange(&mut h, cs, &mut cseq, &mut sseq, &mut far, b'b').await;
    exchange(&mut h, cs, &mut cseq, &mut sseq, &mut far, b'c').await;
    assert!(
        released(2).await,
        "flow not released after its second idle spell"
    );
    assert_eq!(h.stats.tcp_active.load(Ordering::Relaxed), 1);
}

/// Data beyond a gap sits in the receive ring without showing in
/// `recv_queue`: a flow holding such data must not give its pages back, or
/// the bytes would read as zeros once the gap is filled.
#[tokio::test]
async fn out_of_order_data_keeps_the_rings() {
    let mut h = start_with(StackConfig {
        release_idle: Duration::from_millis(20),
        ..StackConfig::default()
    });
    let cs: (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let (mut cseq, mut sseq, mut far) = handshake(&mut h, cs.0, cs.1).await;
    // Some data first, so the flow is one the sweep looks at.
    exchange(&mut h, cs, &mut cseq, &mut sseq, &mut far, b'a').await;
    let first: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8 + 1).collect();
    let second: Vec<u8> = (0..1000u32).map(|i| (i % 241) as u8 + 1).collect();
    // The second segment arrives, the first is "lost".
    h.send(seg(
        cs.0,
        cs.1,
        TcpControl::Psh,
        cseq + 1000,
        Some(sseq),
        &second,
    ));
    // Let the sweep look at the flow: one pass clears "busy" (the exchange),
    // the next finds it idle with empty queues. (It stops sweeping once the
    // flow is off its list, so this waits for at most two passes.)
    let stats = h.stats.clone();
    let before = stats.sweeps.load(Ordering::Relaxed);
    let _ = timeout(Duration::from_secs(2), async {
        while stats.sweeps.load(Ordering::Relaxed) < before + 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The retransmission fills the gap: all 2000 bytes, none of them zero.
    h.send(seg(cs.0, cs.1, TcpControl::Psh, cseq, Some(sseq), &first));
    let mut got = vec![0u8; 2000];
    timeout(Duration::from_secs(5), far.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..1000], &first[..]);
    assert_eq!(&got[1000..], &second[..], "data beyond the gap was lost");
}

/// Segment offload: our SYN-ACK still advertises the device's MSS (with a
/// valid checksum), smoltcp sends segments larger than the application's
/// MSS, and each goes to the sink with that MSS for cutting.
#[tokio::test]
async fn segment_offload_sends_large_segments_with_the_apps_mss() {
    let mut h = start_with(StackConfig {
        mtu: 1500,
        segment_offload: true,
        ..StackConfig::default()
    });
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    h.send(seg(c, s, TcpControl::Syn, 1000, None, &[]));
    h.verdict.take().unwrap().send(Ok(())).unwrap();
    let raw = timeout(Duration::from_secs(5), h.out.recv())
        .await
        .unwrap()
        .unwrap();
    let ipp = Ipv4Packet::new_checked(&raw[..]).unwrap();
    let tcpp = TcpPacket::new_checked(ipp.payload()).unwrap();
    // Parsing with default capabilities verifies the checksum.
    let repr = TcpRepr::parse(&tcpp, &ip(s), &ip(c), &ChecksumCapabilities::default())
        .expect("SYN-ACK with a valid checksum");
    assert_eq!(repr.max_seg_size, Some(1460), "advertised MSS");
    let sa = parse(&raw);
    h.send(seg(c, s, TcpControl::None, 1001, Some(sa.seq + 1), &[]));
    let mut far = timeout(Duration::from_secs(5), h.far.take().unwrap())
        .await
        .unwrap()
        .unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    far.write_all(&data).await.unwrap();
    let mut got = Vec::new();
    let mut biggest = 0;
    let mut next = sa.seq + 1;
    while got.len() < data.len() {
        let o = h.next().await;
        biggest = biggest.max(o.payload.len());
        // In order only (a retransmission repeats bytes); acknowledge each.
        if o.seq == next && !o.payload.is_empty() {
            next += o.payload.len() as u32;
            got.extend_from_slice(&o.payload);
            h.send(seg(c, s, TcpControl::None, 1001, Some(next), &[]));
        }
    }
    assert!(got == data, "data differs");
    assert!(biggest > 1460, "largest segment {biggest}: not offloaded");
    let mss = h.sink.segmented.lock().unwrap().clone();
    assert!(!mss.is_empty() && mss.iter().all(|m| *m == 1460), "{mss:?}");
}

/// Thousands of malformed and mangled packets (random bytes behind an IPv4 or
/// IPv6 version nibble, other flows' segments cut short or with header bytes
/// overwritten) neither stop the stack nor disturb a live flow beside them.
#[tokio::test]
async fn garbage_never_hurts_a_live_flow() {
    let mut h = start();
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT.parse().unwrap(), SERVER.parse().unwrap());
    let (mut cseq, sseq, mut far) = handshake(&mut h, c, s).await;
    // Deterministic: a failure replays the same packets.
    let mut r = crate::test_rng::TestRng::new(0x9e37_79b9_7f4a_7c15);
    // Another flow's packets: any one to three bytes overwritten cannot turn
    // them into the live flow's (its addresses and ports differ in more).
    let (c2, s2): (SocketAddr, SocketAddr) = (
        "198.18.0.9:41000".parse().unwrap(),
        "203.0.113.7:81".parse().unwrap(),
    );
    let (c6, s6): (SocketAddr, SocketAddr) = (
        "[fd00::9]:41000".parse().unwrap(),
        "[2001:db8:2::7]:81".parse().unwrap(),
    );
    let bases = [
        seg(c2, s2, TcpControl::Syn, 5, None, &[]),
        seg(c2, s2, TcpControl::Psh, 6, Some(77), b"payload bytes"),
        seg(c6, s6, TcpControl::Syn, 5, None, &[]),
        seg(c6, s6, TcpControl::Fin, 6, Some(77), b"v6 payload"),
    ];
    for _ in 0..3000 {
        let p = match r.below(3) {
            0 => {
                let mut p: Vec<u8> = (0..r.below(120)).map(|_| r.below(256) as u8).collect();
                if let Some(b) = p.first_mut() {
                    *b = (*b & 0x0f) | if r.below(2) == 0 { 0x40 } else { 0x60 };
                }
                p
            }
            1 => {
                let b = &bases[r.below(bases.len())];
                b[..r.below(b.len())].to_vec()
            }
            _ => {
                let mut p = bases[r.below(bases.len())].clone();
                for _ in 0..=r.below(3) {
                    let i = r.below(p.len().min(80));
                    p[i] = r.below(256) as u8;
                }
                p
            }
        };
        h.send(p);
    }
    // The live flow still carries data both ways, after all of that.
    h.send(seg(c, s, TcpControl::Psh, cseq, Some(sseq), b"still here"));
    cseq += 10;
    let mut buf = [0u8; 10];
    timeout(Duration::from_secs(10), far.read_exact(&mut buf))
        .await
        .expect("the live flow's data did not arrive")
        .unwrap();
    assert_eq!(&buf, b"still here");
    far.write_all(b"and back").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        let o = h.next().await;
        if (o.src, o.dst) == (s, c) {
            assert!(!o.rst, "the live flow was reset: {o:?}");
            got.extend_from_slice(&o.payload);
        }
    }
    assert_eq!(got, b"and back");
    assert!(h.stats.malformed.load(Ordering::Relaxed) > 100);
    let _ = cseq;
}

/// Found by fuzz/fuzz_targets/stack_ingress.rs, whose packets these are: a
/// SYN (window scale offered) and, once the SYN-ACK is out, an ACK whose
/// five bytes lie 384 KiB ahead, beyond the 256 KiB receive ring. smoltcp
/// read its unscaled SYN-ACK window back as scaled (see
/// `ring::rx_ring_len`), took the bytes as inside the window and recorded
/// them without writing them: the stack task panicked (debug builds). They
/// must be refused, and the flow must carry data as usual afterwards.
#[tokio::test]
async fn data_beyond_the_ring_before_our_first_ack_is_refused() {
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    let mut h = start();
    let syn = hex(concat!(
        "60000000001c0640fd00000000000000000000000000000120010db800020000",
        "00000000000000029c400050000003e8000000007002ffffb8e1000002040",
        "5b401030311"
    ));
    // The fuzzer's ACK number is relative to the stack's ISN: filled in below.
    let mut ahead = hex(concat!(
        "6000000000190640fd00000000000000000000000000000120010db800020000",
        "00000000000000029c400050000603e9000000015018ffffa0bc000068756c6c",
        "6f"
    ));
    let (c, s): (SocketAddr, SocketAddr) = (CLIENT6.parse().unwrap(), SERVER6.parse().unwrap());
    h.send(syn);
    h.verdict.take().unwrap().send(Ok(())).unwrap();
    let sa = h.next().await;
    assert!(sa.syn && sa.ack, "{sa:?}");
    ahead[48..52].copy_from_slice(&(sa.seq + 1).to_be_bytes());
    h.send(ahead);
    h.send(seg(c, s, TcpControl::Psh, 1001, Some(sa.seq + 1), b"hello"));
    let mut far = timeout(Duration::from_secs(5), h.far.take().unwrap())
        .await
        .expect("the flow never opened")
        .unwrap();
    let mut buf = [0u8; 5];
    timeout(Duration::from_secs(5), far.read_exact(&mut buf))
        .await
        .expect("the stack stopped")
        .unwrap();
    assert_eq!(&buf, b"hello");
}
