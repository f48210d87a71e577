//! The packet classifier and the whole stack's ingress: packets go in through
//! the in-memory pair (`stack::phy::pair`), as in `src/stack/tests.rs`, into a
//! running `Stack` with smoltcp behind it, a dialer that answers at once and
//! the real UDP side (`tun::udp::UdpRelay` with virtual DNS; UDP ASSOCIATE
//! always fails, so nothing leaves the process).
//!
//! Input: a config byte (bit 0: fix lengths and checksums, so mutated packets
//! get past the checks; bits 1-2: the dial's verdict; bit 3: segment offload;
//! bit 4: small rings; bit 5: at most 2 flows; bit 6: no UDP ASSOCIATE at
//! the proxy; bit 7: one packet at a time, with the acknowledgment number of
//! a TCP packet read as an offset from the stack's initial sequence number
//! for that flow, so the fuzzer gets past the handshake to data and closes),
//! then packets, each after a two-byte length.
//!
//! Invariants:
//! - every packet is taken (`packets_in`), and the stack's counters agree with
//!   `wire::classify` on what was UDP, other protocols and malformed;
//! - what `classify` calls TCP has the addresses and ports of its headers and
//!   a payload inside the packet;
//! - every packet the stack writes is well-formed IPv4/IPv6 with valid IP,
//!   TCP, UDP and ICMP checksums and lengths, fits the MTU (TCP with offload
//!   aside: the device cuts it), and goes from an address packets were sent
//!   to, to an address packets came from (nothing is reflected elsewhere);
//! - no more flows are open than allowed, and shutting down ends the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket,
};
use sockstun::dns::pool::FakePool;
use sockstun::dns::service::{Dns, DnsMode};
use sockstun::socks::TargetAddr;
use sockstun::stack::wire::{self, Class, Unreachable};
use sockstun::stack::{
    phy, DialFailed, DialFuture, Dialed, Dialer, Refusal, Stack, StackConfig, StackStats,
};
use sockstun::tun::udp::{UdpConfig, UdpRelay};
use sockstun::upstream::{self, BoxFuture, Upstream};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_PACKETS: usize = 64;

/// Answers every dial at once: an echoing far side that greets first, or a
/// refusal of the configured kind.
struct FuzzDialer(u8);

impl Dialer for FuzzDialer {
    fn dial(&self, _src: SocketAddr, _dst: SocketAddr) -> DialFuture {
        let verdict = self.0;
        Box::pin(async move {
            match verdict {
                0 => {}
                1 => return Err(DialFailed::new(Refusal::Reset, "fuzz: refused")),
                2 => {
                    let host = Refusal::Unreachable(Unreachable::Host);
                    return Err(DialFailed::new(host, "fuzz: host unreachable"));
                }
                _ => {
                    let no = Refusal::Unreachable(Unreachable::Prohibited);
                    return Err(DialFailed::new(no, "fuzz: not allowed"));
                }
            }
            let (a, mut b) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let _ = b.write_all(b"220 far side\r\n").await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = b.read(&mut buf).await {
                    if n == 0 || b.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Dialed {
                stream: Box::new(a),
                via: "fuzz".into(),
                note: Default::default(),
            })
        })
    }
}

/// A proxy without UDP ASSOCIATE, or one that is down; no DNS resolver
/// reachable through it (only non-address queries would use one).
struct NoProxy(bool);

impl fmt::Display for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fuzz: no proxy")
    }
}

impl Upstream for NoProxy {
    fn connect<'a>(
        &'a self,
        _t: &'a TargetAddr,
    ) -> BoxFuture<'a, Result<upstream::Connected, upstream::Error>> {
        Box::pin(async { Err(upstream::Error::Refused) })
    }

    fn associate(&self) -> BoxFuture<'_, Result<upstream::Associated, upstream::Error>> {
        let unsupported = self.0;
        Box::pin(async move {
            if unsupported {
                Err(upstream::Error::CommandNotSupported)
            } else {
                Err(upstream::Error::Protocol("fuzz: no proxy".into()))
            }
        })
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
}

fn split(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < MAX_PACKETS && b.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let end = (2 + len).min(b.len());
        out.push(b[2..end].to_vec());
        b = &b[end..];
    }
    out
}

/// Make the lengths and checksums of a packet right, as the kernel writes
/// them, so that mutations of headers and payloads are not all dropped as bad.
fn fix(p: &mut [u8]) {
    let len = p.len();
    let (off, src, dst, proto) = match p.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || ihl > len {
                return;
            }
            let mut ip = Ipv4Packet::new_unchecked(&mut *p);
            ip.set_total_len(len as u16);
            ip.fill_checksum();
            let (s, d, pr) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
            (ihl, IpAddress::Ipv4(s), IpAddress::Ipv4(d), pr)
        }
        Some(6) if len >= 40 => {
            let mut ip = Ipv6Packet::new_unchecked(&mut *p);
            ip.set_payload_len((len - 40) as u16);
            let (s, d, pr) = (ip.src_addr(), ip.dst_addr(), ip.next_header());
            (40, IpAddress::Ipv6(s), IpAddress::Ipv6(d), pr)
        }
        _ => return,
    };
    let t = &mut p[off..];
    match proto {
        IpProtocol::Tcp if t.len() >= 20 => TcpPacket::new_unchecked(t).fill_checksum(&src, &dst),
        IpProtocol::Udp if t.len() >= 8 => {
            let n = t.len() as u16;
            let mut u = UdpPacket::new_unchecked(t);
            u.set_len(n);
            u.fill_checksum(&src, &dst);
        }
        _ => {}
    }
}

/// Addresses in an IP header (whatever follows), to know who took part.
fn header_addrs(p: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some((
            IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?),
            IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?),
        )),
        6 if p.len() >= 40 => Some((
            IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?),
            IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?),
        )),
        _ => None,
    }
}

#[derive(Default)]
struct Tally {
    udp: u64,
    other: u64,
    malformed: u64,
    /// Sources and destinations of the packets sent in.
    srcs: HashSet<IpAddr>,
    dsts: HashSet<IpAddr>,
}

fn classify_checked(p: &[u8], t: &mut Tally) {
    if let Some((s, d)) = header_addrs(p) {
        t.srcs.insert(s);
        t.dsts.insert(d);
    }
    match wire::classify(p) {
        Class::Tcp { key, len, .. } => {
            let (s, d) = header_addrs(p).expect("TCP without an IP header");
            assert_eq!((key.src.ip(), key.dst.ip()), (s, d), "flow key addresses");
            assert!(
                (len as usize) + 20 <= p.len(),
                "TCP payload {len} beyond the packet"
            );
            let off = if p[0] >> 4 == 4 {
                usize::from(p[0] & 0x0f) * 4
            } else {
                40
            };
            let ports = (
                u16::from_be_bytes([p[off], p[off + 1]]),
                u16::from_be_bytes([p[off + 2], p[off + 3]]),
            );
            assert_eq!((key.src.port(), key.dst.port()), ports, "flow key ports");
        }
        Class::Udp => t.udp += 1,
        Class::Other => t.other += 1,
        Class::Malformed => t.malformed += 1,
    }
}

/// Checks a packet written by the stack; returns what is wrong.
fn check_out(p: &[u8], t: &Tally, mtu: usize, offload: bool) -> Result<(), String> {
    let (src, dst, proto, payload) = match p.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(p).map_err(|e| format!("IPv4: {e}"))?;
            if !ip.verify_checksum() || usize::from(ip.total_len()) != p.len() {
                return Err("IPv4 header checksum or length".into());
            }
            let hl = usize::from(ip.header_len());
            (
                IpAddress::Ipv4(ip.src_addr()),
                IpAddress::Ipv4(ip.dst_addr()),
                ip.next_header(),
                &p[hl..],
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(p).map_err(|e| format!("IPv6: {e}"))?;
            if usize::from(ip.payload_len()) + 40 != p.len() {
                return Err("IPv6 payload length".into());
            }
            (
                IpAddress::Ipv6(ip.src_addr()),
                IpAddress::Ipv6(ip.dst_addr()),
                ip.next_header(),
                &p[40..],
            )
        }
        _ => return Err("not IP".into()),
    };
    if !t.dsts.contains(&IpAddr::from(src)) || !t.srcs.contains(&IpAddr::from(dst)) {
        return Err(format!("{src} -> {dst} was never spoken to"));
    }
    let ok = match proto {
        IpProtocol::Tcp => {
            TcpPacket::new_checked(payload).is_ok_and(|t| t.verify_checksum(&src, &dst))
        }
        IpProtocol::Udp => {
            UdpPacket::new_checked(payload).is_ok_and(|u| u.verify_checksum(&src, &dst))
        }
        IpProtocol::Icmp => Icmpv4Packet::new_checked(payload).is_ok_and(|i| i.verify_checksum()),
        IpProtocol::Icmpv6 => match (src, dst) {
            (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
                Icmpv6Packet::new_checked(payload).is_ok_and(|i| i.verify_checksum(&s, &d))
            }
            _ => false,
        },
        other => return Err(format!("protocol {other}")),
    };
    if !ok {
        return Err(format!("{proto} header or checksum"));
    }
    if p.len() > mtu && !(offload && proto == IpProtocol::Tcp) {
        return Err(format!("{} bytes over the MTU {mtu}", p.len()));
    }
    Ok(())
}

/// Wait until the stack has taken `n` packets, then let the dials, the flows
/// and the DNS answers this woke run.
async fn settle(stats: &StackStats, n: u64) {
    let mut spins = 0;
    while stats.packets_in.load(Ordering::Relaxed) < n {
        tokio::task::yield_now().await;
        spins += 1;
        assert!(spins < 1_000_000, "the stack stopped taking packets");
    }
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// A flow as the application names it: (its address, the destination).
type Flow = (SocketAddr, SocketAddr);

/// TCP header offset, addresses and ports of a TCP packet.
fn tcp_flow(p: &[u8]) -> Option<(usize, Flow)> {
    let (s, d) = header_addrs(p)?;
    let off = match p[0] >> 4 {
        4 if p[9] == 6 => usize::from(p[0] & 0x0f) * 4,
        6 if p[6] == 6 => 40,
        _ => return None,
    };
    let t = p.get(off..off + 20)?;
    let port = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
    Some((
        off,
        (SocketAddr::new(s, port(0)), SocketAddr::new(d, port(2))),
    ))
}

/// Remember the sequence number of each SYN-ACK the stack sends.
fn learn_isn(o: &[u8], isns: &mut HashMap<Flow, u32>) {
    if let Some((off, (s, d))) = tcp_flow(o) {
        if o[off + 13] & 0x12 == 0x12 {
            isns.insert(
                (d, s),
                u32::from_be_bytes(o[off + 4..off + 8].try_into().unwrap()),
            );
        }
    }
}

/// Read an ACK's number as an offset from the stack's ISN for its flow.
fn ack_relative(p: &mut [u8], isns: &HashMap<Flow, u32>, refix: bool) {
    let Some((off, flow)) = tcp_flow(p) else {
        return;
    };
    let Some(isn) = isns.get(&flow) else {
        return;
    };
    if p[off + 13] & 0x10 == 0 {
        return;
    }
    let rel = u32::from_be_bytes(p[off + 8..off + 12].try_into().unwrap());
    p[off + 8..off + 12].copy_from_slice(&isn.wrapping_add(rel).to_be_bytes());
    if refix {
        fix(p);
    }
}

fn stack_config(cfg: u8) -> StackConfig {
    let ring = if cfg & 0x10 != 0 { 4096 } else { 256 * 1024 };
    StackConfig {
        mtu: 1500,
        segment_offload: cfg & 0x08 != 0,
        max_flows: if cfg & 0x20 != 0 { 2 } else { 64 },
        rx_buffer: ring,
        tx_buffer: ring,
        ..StackConfig::default()
    }
}

async fn run(cfg: u8, packets: Vec<Vec<u8>>, tally: &Tally) {
    let scfg = stack_config(cfg);
    let (mtu, offload, max_flows) = (scfg.mtu, scfg.segment_offload, scfg.max_flows);
    let (src, sink, inject, mut out) = phy::pair();
    let pool = FakePool::new(
        "198.19.0.0/24".parse().unwrap(),
        Some("fc00:5::/120".parse().unwrap()),
        &[],
    )
    .unwrap();
    let proxy = Arc::new(NoProxy(cfg & 0x40 != 0));
    let dns = Dns::new(DnsMode::Virtual, None, Some(Arc::new(pool)), proxy.clone()).unwrap();
    let udp_cfg = UdpConfig {
        timeout: Duration::from_secs(60),
        max_flows: 4,
        mtu,
    };
    let udp = UdpRelay::new(udp_cfg, Some(Arc::new(dns)), proxy, None, sink.clone());
    let stack = Stack::new(
        scfg,
        Arc::new(FuzzDialer((cfg >> 1) & 3)),
        Arc::new(udp),
        sink,
    );
    let stats = stack.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(stack.run(src, async move {
        let _ = stop_rx.await;
    }));
    let n = packets.len() as u64;
    let relative = cfg & 0x80 != 0;
    let mut written = Vec::new();
    let mut isns = HashMap::new();
    for (i, mut p) in packets.into_iter().enumerate() {
        if relative {
            ack_relative(&mut p, &isns, cfg & 1 != 0);
        }
        inject.send(p).unwrap();
        if relative || i as u64 + 1 == n {
            settle(&stats, i as u64 + 1).await;
            while let Ok(o) = out.try_recv() {
                learn_isn(&o, &mut isns);
                written.push(o);
            }
        }
    }
    assert!(
        stats.tcp_active.load(Ordering::Relaxed) <= max_flows as u64,
        "over max_flows"
    );
    let _ = stop_tx.send(());
    task.await
        .expect("stack task panicked")
        .expect("stack failed");
    assert_eq!(stats.packets_in.load(Ordering::Relaxed), n);
    assert_eq!(
        stats.udp_packets.load(Ordering::Relaxed),
        tally.udp,
        "udp count"
    );
    assert_eq!(
        stats.other_dropped.load(Ordering::Relaxed),
        tally.other,
        "other count"
    );
    assert_eq!(
        stats.malformed.load(Ordering::Relaxed),
        tally.malformed,
        "malformed count"
    );
    while let Ok(p) = out.try_recv() {
        written.push(p);
    }
    for p in written {
        if let Err(e) = check_out(&p, tally, mtu, offload) {
            panic!("the stack wrote a bad packet ({e}): {p:02x?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let slot = stack_config(cfg).mtu.max(1280);
    let mut packets = split(rest);
    let mut tally = Tally::default();
    for p in &mut packets {
        // The device hands over at most one read slot of a packet.
        p.truncate(slot);
        if cfg & 1 != 0 {
            fix(p);
        }
        classify_checked(p, &mut tally);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(cfg, packets, &tally));
});
