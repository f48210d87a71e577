//! The self-check's output: one line per step as it ends (name, status,
//! time, what was seen), then a verdict that names the first failing step.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// It failed: the verdict is FAIL.
    Fail,
    /// The proxy lacks it (UDP ASSOCIATE, a pipelined handshake) and nobody
    /// asked for it: said, not a failure.
    No,
    /// Not run: the protocol has no such step, nothing to run it on, or an
    /// earlier step failed.
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded by the caller: `{:<4}` applies to what is written here.
        f.pad(match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::No => "no",
            Status::Skip => "skip",
        })
    }
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub status: Status,
    pub time: Option<Duration>,
    pub detail: String,
}

/// Width of the step-name column (the longest name, "pipelined handshake").
const NAME_WIDTH: usize = 19;

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {:<w$}  {:<4}  {:>8}  {}",
            self.name,
            self.status,
            shown_time(self.time),
            self.detail,
            w = NAME_WIDTH
        )
    }
}

/// `0.4 ms` under 10 ms, `12 ms` above, `-` for a step that was not timed.
pub fn shown_time(t: Option<Duration>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t < Duration::from_millis(10) => format!("{:.1} ms", t.as_secs_f64() * 1e3),
        Some(t) => format!("{} ms", t.as_millis()),
    }
}

/// The steps so far, each written to `out` as it is added.
pub struct Report {
    out: Box<dyn Write>,
    steps: Vec<Step>,
    /// The step after whose failure nothing more can run (the proxy cannot
    /// be reached, or will not let us in).
    fatal: Option<&'static str>,
}

impl Report {
    /// A report headed by `title` (the proxy, without its password).
    pub fn new(mut out: Box<dyn Write>, title: &str) -> Report {
        let _ = writeln!(out, "sockstun check {title}");
        Report {
            out,
            steps: Vec::new(),
            fatal: None,
        }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Add a step and write its line.
    pub fn add(
        &mut self,
        name: &'static str,
        status: Status,
        time: Option<Duration>,
        detail: impl Into<String>,
    ) {
        let step = Step {
            name,
            status,
            time,
            detail: detail.into(),
        };
        let _ = writeln!(self.out, "{step}");
        let _ = self.out.flush();
        self.steps.push(step);
    }

    /// A step that ran from `start` until now.
    pub fn timed(
        &mut self,
        name: &'static str,
        status: Status,
        start: Instant,
        detail: impl Into<String>,
    ) {
        self.add(name, status, Some(start.elapsed()), detail);
    }

    pub fn skip(&mut self, name: &'static str, why: impl Into<String>) {
        self.add(name, Status::Skip, None, why);
    }

    /// A failure that leaves nothing more to try: the steps still to come
    /// are skipped (see `blocked`).
    pub fn fatal(&mut self, name: &'static str, start: Instant, detail: impl Into<String>) {
        self.timed(name, Status::Fail, start, detail);
        self.fatal.get_or_insert(name);
    }

    /// True, with the step written as skipped, when an earlier step was fatal.
    pub fn blocked(&mut self, name: &'static str) -> bool {
        match self.fatal {
            Some(f) => {
                self.skip(name, format!("not run: {f} failed"));
                true
            }
            None => false,
        }
    }

    /// Whether no step failed.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.status != Status::Fail)
    }

    /// The verdict line; true when no step failed.
    pub fn verdict(&mut self) -> bool {
        let line = verdict(&self.steps);
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.passed()
    }
}

/// `verdict: OK (...)`, or `verdict: FAIL at STEP: DETAIL` naming the first
/// failing step (the one to look at: later failures often follow from it).
pub fn verdict(steps: &[Step]) -> String {
    if let Some(f) = steps.iter().find(|s| s.status == Status::Fail) {
        let more = steps.iter().filter(|s| s.status == Status::Fail).count() - 1;
        let more = match more {
            0 => String::new(),
            n => format!(" (and {n} more failed)"),
        };
        return format!("verdict: FAIL at {}: {}{more}", f.name, f.detail);
    }
    let count = |st| steps.iter().filter(|s| s.status == st).count();
    let mut parts = vec![format!("{} ok", count(Status::Ok))];
    for (st, what) in [(Status::No, "not supported"), (Status::Skip, "skipped")] {
        if count(st) > 0 {
            parts.push(format!("{} {what}", count(st)));
        }
    }
    format!("verdict: OK ({})", parts.join(", "))
}

/// A writer for `Report` that keeps what it is given, for tests and for
/// callers that print elsewhere.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_aligned_and_timed() {
        let out = Captured::default();
        let mut r = Report::new(
            Box::new(out.clone()),
            "socks5://alice:***@198.51.100.1:1080",
        );
        r.add(
            "tcp connect",
            Status::Ok,
            Some(Duration::from_micros(420)),
            "198.51.100.1:1080",
        );
        r.add(
            "udp associate",
            Status::No,
            Some(Duration::from_millis(12)),
            "command not supported",
        );
        r.skip("udp round trip", "give --udp HOST:PORT");
        assert!(r.verdict());
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "sockstun check socks5://alice:***@198.51.100.1:1080"
        );
        assert_eq!(
            lines[1],
            "  tcp connect          ok      0.4 ms  198.51.100.1:1080"
        );
        assert_eq!(
            lines[2],
            "  udp associate        no       12 ms  command not supported"
        );
        assert_eq!(
            lines[3],
            "  udp round trip       skip         -  give --udp HOST:PORT"
        );
        assert_eq!(lines[4], "verdict: OK (1 ok, 1 not supported, 1 skipped)");
    }

    #[test]
    fn a_fatal_step_blocks_the_rest_and_is_named() {
        let out = Captured::default();
        let mut r = Report::new(Box::new(out.clone()), "p");
        let t = Instant::now();
        r.timed("greeting", Status::Ok, t, "username/password");
        assert!(!r.blocked("auth"));
        r.fatal("auth", t, "proxy authentication failed");
        assert!(r.blocked("connect by address"));
        assert!(r.blocked("udp associate"));
        assert!(!r.passed());
        assert!(!r.verdict());
        let text = out.text();
        assert!(
            text.contains("connect by address   skip         -  not run: auth failed"),
            "{text}"
        );
        assert!(
            text.ends_with("verdict: FAIL at auth: proxy authentication failed\n"),
            "{text}"
        );
    }

    #[test]
    fn the_first_failure_is_the_verdict() {
        let step = |name, status| Step {
            name,
            status,
            time: None,
            detail: format!("{name} said so"),
        };
        let steps = [
            step("tcp connect", Status::Ok),
            step("connect by name", Status::Fail),
            step("udp round trip", Status::Fail),
        ];
        assert_eq!(
            verdict(&steps),
            "verdict: FAIL at connect by name: connect by name said so (and 1 more failed)"
        );
        assert_eq!(verdict(&steps[..1]), "verdict: OK (1 ok)");
        assert_eq!(shown_time(Some(Duration::from_millis(1234))), "1234 ms");
        assert_eq!(shown_time(Some(Duration::from_micros(9990))), "10.0 ms");
    }
}
