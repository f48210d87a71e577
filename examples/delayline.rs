//! delayline: the bench's stand-in for netem's `delay` (scripts/bench.sh, `wan`).
//!
//! This kernel has no sch_netem, so a link with a fixed latency is made in
//! user space: two TAP devices (`--dev A --dev B`) are created in the
//! namespace this runs in, and every Ethernet frame read from one is written
//! to the other `--delay-ms` after it was read. Each direction is a FIFO with
//! one fixed delay, so frames keep their order; nothing is dropped on
//! purpose. The bench moves the two devices into the namespaces to join (a
//! TAP device stays attached to this process's descriptor when it changes
//! namespace) and removes them by ending this process.
//!
//! The program measures what it adds beyond the delay: for every frame, how
//! late it was written against its due time (read time + delay). On SIGUSR1
//! it prints one line `STATS ...` (frames each way, write errors, lateness
//! p50/p99/max in microseconds, deepest queue) and starts counting afresh;
//! on SIGTERM or SIGINT it prints the line and exits. It prints `READY` once
//! both devices exist.
//!
//! To keep its own scheduling out of the figure it asks for a timer slack of
//! 1 ns and, when allowed, SCHED_FIFO (`--rt`): it sleeps in ppoll(2) until
//! shortly before a frame is due (`--spin-us`, then it polls without
//! sleeping) or one arrives, so it costs nothing while the link is idle.
//! This is a benchmark tool, not a test: it is never run by `cargo test`.

use clap::Parser;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "delayline",
    about = "a fixed-latency link between two TAP devices"
)]
struct Cli {
    /// The two TAP devices to create (exactly twice).
    #[arg(long = "dev", num_args = 1, required = true)]
    dev: Vec<String>,
    /// Delay each way, milliseconds (fractions allowed).
    #[arg(long = "delay-ms", default_value_t = 10.0)]
    delay_ms: f64,
    /// Run with SCHED_FIFO priority 10 (root), so machine load does not
    /// delay releases; silently skipped when not allowed.
    #[arg(long)]
    rt: bool,
    /// Wake this many microseconds before a frame is due and poll without
    /// sleeping until it is (a wake-up from sleep takes tens of
    /// microseconds on a VM; 0 sleeps to the due time).
    #[arg(long = "spin-us", default_value_t = 100)]
    spin_us: u64,
}

static USR1: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGUSR1 {
        USR1.store(true, Ordering::Relaxed);
    } else {
        STOP.store(true, Ordering::Relaxed);
    }
}

/// Open /dev/net/tun as TAP device `name` (no packet information header),
/// non-blocking.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("bad device name {name:?}")));
    }
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: 16 bytes of name, then a union whose first member is
    // the short flags; 40 bytes in all on Linux.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which ifr is large
    // enough to hold.
    if unsafe { libc::ioctl(owned.as_raw_fd(), libc::TUNSETIFF, ifr.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

struct Frame {
    due: Instant,
    data: Vec<u8>,
}

#[derive(Default)]
struct Stats {
    frames: [u64; 2],
    write_errors: u64,
    late_ns: Vec<u64>,
    max_queue: usize,
}

impl Stats {
    fn line(&mut self) -> String {
        self.late_ns.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.late_ns.is_empty() {
                return 0.0;
            }
            let i = ((self.late_ns.len() as f64 - 1.0) * p).round() as usize;
            self.late_ns[i] as f64 / 1000.0
        };
        format!(
            "STATS frames_ab={} frames_ba={} write_errors={} late_p50_us={:.1} late_p99_us={:.1} late_max_us={:.1} max_queue={}",
            self.frames[0],
            self.frames[1],
            self.write_errors,
            pct(0.50),
            pct(0.99),
            pct(1.0),
            self.max_queue
        )
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("delayline: {e}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> io::Result<()> {
    if cli.dev.len() != 2 {
        return Err(io::Error::other("give --dev exactly twice"));
    }
    let delay = Duration::from_secs_f64(cli.delay_ms / 1000.0);
    let spin = Duration::from_micros(cli.spin_us);
    // SAFETY: plain system calls on this process, with valid arguments;
    // failure leaves the defaults, which only makes the figures noisier.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        if cli.rt {
            let p = libc::sched_param { sched_priority: 10 };
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &p);
        }
    }
    // Block the signals we handle everywhere but inside ppoll, so one that
    // arrives between a check and the wait is not missed.
    let mut block: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut during_wait: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigset and sigaction calls on local, initialised structures.
    unsafe {
        libc::sigemptyset(&mut block);
        for s in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut block, s);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
        libc::sigprocmask(libc::SIG_BLOCK, &block, &mut during_wait);
        for s in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigdelset(&mut during_wait, s);
        }
    }
    let fds = [open_tap(&cli.dev[0])?, open_tap(&cli.dev[1])?];
    println!("READY {} {} {:.3} ms", cli.dev[0], cli.dev[1], cli.delay_ms);
    io::stdout().flush()?;

    // queues[i]: frames read from fds[i], to be written to fds[1 - i].
    let mut queues: [VecDeque<Frame>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536];
    loop {
        if USR1.swap(false, Ordering::Relaxed) {
            println!("{}", stats.line());
            io::stdout().flush()?;
            stats = Stats::default();
        }
        if STOP.load(Ordering::Relaxed) {
            println!("{}", stats.line());
            io::stdout().flush()?;
            return Ok(());
        }
        // Release every frame that is due, oldest first in each direction.
        let now = Instant::now();
        for (i, q) in queues.iter_mut().enumerate() {
            while q.front().is_some_and(|f| f.due <= now) {
                let f = q.pop_front().unwrap();
                let out = fds[1 - i].as_raw_fd();
                // Lateness is taken as the write starts: what the write
                // itself costs (the receiving stack runs in it) is the
                // link's, as on a veth.
                stats.late_ns.push(f.due.elapsed().as_nanos() as u64);
                // SAFETY: write from a live buffer of the given length.
                let n = unsafe { libc::write(out, f.data.as_ptr().cast(), f.data.len()) };
                if n < 0 {
                    stats.write_errors += 1;
                }
                stats.frames[i] += 1;
            }
        }
        // Sleep until the next frame is due or one arrives.
        let next = queues.iter().filter_map(|q| q.front().map(|f| f.due)).min();
        let ts = next.map(|d| {
            let w = d.saturating_duration_since(Instant::now() + spin);
            libc::timespec {
                tv_sec: w.as_secs() as libc::time_t,
                tv_nsec: w.subsec_nanos() as libc::c_long,
            }
        });
        let mut pfd = [
            libc::pollfd {
                fd: fds[0].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fds[1].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: ppoll on two valid pollfds, an optional local timespec and
        // a valid signal mask.
        let r = unsafe {
            libc::ppoll(
                pfd.as_mut_ptr(),
                2,
                ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
                &during_wait,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (i, p) in pfd.iter().enumerate() {
            if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(io::Error::other(format!("device {} went away", cli.dev[i])));
            }
            if p.revents & libc::POLLIN == 0 {
                continue;
            }
            // Drain what is there, each frame stamped as it is read.
            loop {
                // SAFETY: read into a live buffer of the given length.
                let n = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                queues[i].push_back(Frame {
                    due: Instant::now() + delay,
                    data: buf[..n as usize].to_vec(),
                });
            }
            stats.max_queue = stats.max_queue.max(queues[i].len());
        }
    }
}
