//! What `--admin` shows of TUN mode: the counters the stack, the UDP table,
//! DNS and the device already keep, the proxies' health, the live flows.

use super::flows::Flows;
use super::stats::Stats;
use super::udp::{UdpFlowInfo, UdpRelay};
use crate::admin::{FlowInfo, Report, Scrape};
use crate::dns::Dns;
use crate::stack::Refusal;
use crate::upstream::health::Health;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct TunReport {
    pub stats: Stats,
    /// One per queue.
    pub udp: Vec<UdpRelay>,
    pub dns: Arc<Dns>,
    pub health: Arc<dyn Health>,
    pub flows: Arc<Flows>,
    /// The device's name, for its kernel counters.
    pub device: String,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Report for TunReport {
    fn metrics(&self, m: &mut Scrape<'_>) -> fmt::Result {
        self.tcp(m)?;
        self.udp(m)?;
        self.dns(m)?;
        self.device(m)?;
        self.queues(m)?;
        self.proxies(m)
    }

    fn flows(&self) -> Vec<FlowInfo> {
        let mut v = self.flows.list();
        for udp in &self.udp {
            v.extend(udp.snapshot().into_iter().map(udp_flow));
        }
        v
    }

    fn healthy(&self) -> bool {
        self.health.proxies().iter().any(|p| p.usable)
    }
}

/// A UDP association as `/flows` shows it: up is out (to the proxy).
fn udp_flow(u: UdpFlowInfo) -> FlowInfo {
    FlowInfo {
        protocol: "udp",
        source: u.local.to_string(),
        destination: u.destination.map_or_else(|| "-".into(), |d| d.to_string()),
        name: u.name,
        via: u.via,
        bytes_up: u.bytes_out,
        bytes_down: u.bytes_in,
        datagrams_up: Some(u.datagrams_out),
        datagrams_down: Some(u.datagrams_in),
        age_ms: u.age_ms,
        state: if u.live { "live" } else { "associating" },
    }
}

impl TunReport {
    fn tcp(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let st = &self.stats;
        m.gauge(
            "tcp_flows_open",
            "TCP flows in the stack's table (dialing, relaying or closing).",
            st.stack(|s| &s.tcp_active) as f64,
        )?;
        m.counter(
            "tcp_flows_opened",
            "TCP flows started (a SYN for a new tuple).",
            st.stack(|s| &s.tcp_opened),
        )?;
        let mut refused: Vec<(&str, u64)> = Refusal::LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, st.stack(|s| &s.tcp_refused_by[i])))
            .collect();
        refused.push(("flow_limit", st.stack(|s| &s.tcp_over_limit)));
        m.counters(
            "tcp_flows_refused",
            "TCP flows refused, by the answer the application got (reset, ICMP unreachable) or flow_limit (--max-tcp-flows).",
            "reason",
            &refused,
        )?;
        let (up, down) = self.flows.bytes();
        m.counters(
            "tcp_bytes",
            "Bytes relayed by TCP flows: up (application to proxy), down (back).",
            "direction",
            &[
                ("up", st.stack(|s| &s.bytes_up) + up),
                ("down", st.stack(|s| &s.bytes_down) + down),
            ],
        )
    }

    fn udp(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let st = &self.stats;
        m.gauge(
            "udp_associations_open",
            "UDP associations (one per local endpoint).",
            self.udp.iter().map(|u| u.flows()).sum::<usize>() as f64,
        )?;
        m.counter(
            "udp_associations_opened",
            "UDP associations started.",
            st.udp(|s| &s.flows_opened),
        )?;
        m.counter(
            "udp_associations_evicted",
            "UDP associations evicted at --max-udp-flows.",
            st.udp(|s| &s.flows_evicted),
        )?;
        m.counters(
            "udp_datagrams",
            "UDP datagrams relayed: out (to the proxy), in (replies to the application).",
            "direction",
            &[
                ("out", st.udp(|s| &s.datagrams_out)),
                ("in", st.udp(|s| &s.datagrams_in)),
            ],
        )?;
        m.counters(
            "udp_datagrams_dropped",
            "UDP datagrams dropped, by reason.",
            "reason",
            &[
                ("oversize", st.udp(|s| &s.dropped_oversize)),
                ("unsupported", st.udp(|s| &s.dropped_unsupported)),
                ("backoff", st.udp(|s| &s.dropped_backoff)),
                ("queue_full", st.udp(|s| &s.dropped_queue_full)),
                ("other", st.udp(|s| &s.dropped_other)),
            ],
        )
    }

    fn dns(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let st = self.dns.stats();
        m.counters(
            "dns_queries",
            "DNS queries answered here, by type.",
            "type",
            &st.queries(),
        )?;
        m.counters(
            "dns_answers",
            "DNS answers, by response code (truncated: TC, retried over TCP).",
            "rcode",
            &st.answers(),
        )?;
        let pool = self.dns.pool().map_or(0, |p| p.len());
        m.gauge(
            "dns_fake_pool_in_use",
            "Fake addresses assigned to names (virtual DNS).",
            pool as f64,
        )
    }

    fn device(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let k = DevCounters::read(&self.device).unwrap_or_default();
        // The kernel's view is the other way round: what it transmits on
        // the TUN is what sockstun reads.
        m.counters(
            "device_packets",
            "Packets through the TUN: in (read by sockstun), out (written).",
            "direction",
            &[("in", k.tx_packets), ("out", k.rx_packets)],
        )?;
        m.counters(
            "device_bytes",
            "Bytes through the TUN: in (read by sockstun), out (written).",
            "direction",
            &[("in", k.tx_bytes), ("out", k.rx_bytes)],
        )?;
        let st = &self.stats;
        m.counters(
            "device_dropped",
            "Packets dropped: write_queue_full (the device would not take it), malformed, other_protocol (neither TCP nor UDP, ICMP echo included).",
            "reason",
            &[
                ("write_queue_full", get(&self.stats.device_write_drops)),
                (
                    "malformed",
                    get(&self.stats.device_malformed) + st.stack(|s| &s.malformed),
                ),
                ("other_protocol", st.stack(|s| &s.other_dropped)),
            ],
        )?;
        m.counter(
            "device_udp_super_packets",
            "UDP segmentation super-packets read from the TUN (an application's UDP_SEGMENT send, passed whole with USO) and cut into their datagrams.",
            get(&self.stats.device_super_packets),
        )
    }

    /// How the flows spread over the device's queues (each read by a
    /// stack of its own).
    fn queues(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let stacks = &self.stats.stacks;
        m.gauge(
            "tun_queues",
            "Queues of the TUN read, each by a stack and thread of its own.",
            stacks.len() as f64,
        )?;
        let names: Vec<String> = (0..stacks.len()).map(|i| i.to_string()).collect();
        let per = |f: fn(&crate::stack::StackStats) -> &AtomicU64| -> Vec<(&str, u64)> {
            names
                .iter()
                .zip(stacks)
                .map(|(n, s)| (n.as_str(), get(f(s))))
                .collect()
        };
        m.counters(
            "queue_tcp_flows_opened",
            "TCP flows started, by the queue they came in on.",
            "queue",
            &per(|s| &s.tcp_opened),
        )?;
        m.counters(
            "queue_udp_packets",
            "UDP packets read (DNS queries included), by queue.",
            "queue",
            &per(|s| &s.udp_packets),
        )
    }

    fn proxies(&self, m: &mut Scrape<'_>) -> fmt::Result {
        let ps = self.health.proxies();
        let up: Vec<(&str, f64)> = ps
            .iter()
            .map(|p| (p.name.as_str(), if p.usable { 1.0 } else { 0.0 }))
            .collect();
        m.gauges(
            "proxy_up",
            "1 while the proxy takes new flows, 0 while it is down.",
            "proxy",
            &up,
        )?;
        let lat: Vec<(&str, f64)> = ps
            .iter()
            .filter_map(|p| Some((p.name.as_str(), p.latency?.as_secs_f64())))
            .collect();
        m.gauges(
            "proxy_latency_seconds",
            "The health probes' latency (connect, greeting, authentication), an average.",
            "proxy",
            &lat,
        )?;
        let fails: Vec<(&str, u64)> = ps.iter().map(|p| (p.name.as_str(), p.failures)).collect();
        m.counters(
            "proxy_failures",
            "Dials and probes that failed through the proxy's fault.",
            "proxy",
            &fails,
        )
    }
}

/// A network device's counters as the kernel keeps them (/proc/self/net/dev,
/// which shows this process's network namespace).
#[derive(Debug, Default, PartialEq)]
pub(super) struct DevCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl DevCounters {
    fn read(dev: &str) -> Option<DevCounters> {
        DevCounters::parse(&std::fs::read_to_string("/proc/self/net/dev").ok()?, dev)
    }

    pub(super) fn parse(text: &str, dev: &str) -> Option<DevCounters> {
        let line = text.lines().find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == dev).then_some(rest)
        })?;
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        Some(DevCounters {
            rx_bytes: *f.first()?,
            rx_packets: *f.get(1)?,
            tx_bytes: *f.get(8)?,
            tx_packets: *f.get(9)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_counters_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n\
tu1x0: 5000      40    0    0    0     0          0         0     7000      50    0    3    0     0       0          0\n";
        assert_eq!(
            DevCounters::parse(text, "tu1x0"),
            Some(DevCounters {
                rx_bytes: 5000,
                rx_packets: 40,
                tx_bytes: 7000,
                tx_packets: 50
            })
        );
        assert_eq!(DevCounters::parse(text, "tu1"), None);
    }
}
