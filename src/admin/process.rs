//! The process's own metrics, from /proc/self, under the names every
//! Prometheus client library uses (`process_cpu_seconds_total`, ...).

use super::scrape::Scrape;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::fmt;

#[derive(Debug)]
pub(super) struct Process;

impl Collector for Process {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut m = Scrape(encoder);
        let st = Stat::read();
        m.counter_f64(
            "process_cpu_seconds",
            "User and system CPU time spent, seconds.",
            st.cpu_seconds,
        )?;
        m.gauge(
            "process_resident_memory_bytes",
            "Resident memory size, bytes.",
            st.rss_bytes as f64,
        )?;
        m.gauge(
            "process_open_fds",
            "Open file descriptors.",
            open_fds() as f64,
        )?;
        m.gauge(
            "process_max_fds",
            "The open-file limit.",
            crate::net::fd_limit() as f64,
        )?;
        m.gauge("process_threads", "OS threads.", st.threads as f64)
    }
}

/// What /proc/self/stat and /proc/self/statm say.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Stat {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub threads: u64,
}

impl Stat {
    fn read() -> Stat {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Stat::parse(&stat, &statm, tick.max(1) as u64, page.max(1) as u64)
    }

    /// `stat`: fields after the command name (which may hold spaces and
    /// parentheses, so the split is at the last `)`).
    pub(super) fn parse(stat: &str, statm: &str, tick: u64, page: u64) -> Stat {
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        // Field 3 (state) is rest's first; utime, stime are 14 and 15,
        // num_threads 20.
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let get = |n: usize| f.get(n - 3).copied().unwrap_or(0);
        let rss_pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        Stat {
            cpu_seconds: (get(14) + get(15)) as f64 / tick as f64,
            rss_bytes: rss_pages * page,
            threads: get(20),
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}
