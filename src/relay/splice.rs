//! Zero-copy relay of one direction between two TCP sockets: `splice(2)`
//! socket -> pipe -> socket, so the payload never crosses into user space
//! (what hev-socks5-server and HAProxy do).
//!
//! The pipe is filled by one `splice` from the reader (as much as the socket
//! has, up to the pipe's size) and then drained to the writer before the next
//! fill. Draining before filling keeps the one ambiguity of a non-blocking
//! splice out of the way: an EAGAIN from the fill can only mean "the socket
//! has nothing", never "the pipe is full", so tokio's readiness is cleared
//! exactly when it should be.
//!
//! Pipes cost two descriptors and a little kernel memory each, so a direction
//! holds one only while it moves bytes: it takes one from a small per-thread
//! pool when its socket turns readable and gives it back as soon as the
//! socket has nothing more and the pipe is empty. A quiet session holds no
//! pipe at all (it costs what it did with the copy loop), and a pipe that
//! still holds bytes when its session ends is closed, never reused.

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Capacity asked of each pipe (`F_SETPIPE_SZ`): 64 slots, four times the
/// kernel's default. A slot holds one fragment of a socket buffer (up to a
/// page or a compound page), so this bounds what one fill moves and what a
/// stalled direction pins (kernel memory, while the pipe is not empty).
/// Measured (docs/performance.md, issue 19): CPU per GB 1.17 s at 16 KiB,
/// 0.79 at 64, 0.48 at 256, 0.46 at 1 MiB; 256 KiB also leaves room for 256
/// pipes under the default `fs.pipe-user-pages-soft` of an unprivileged user
/// (past it the kernel gives new pipes 2 slots, which still work).
pub(super) const PIPE_SIZE: usize = 256 * 1024;
/// Idle pipes kept per thread for the next direction that needs one; the
/// rest are closed.
const POOL_MAX: usize = 16;
const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Tests: every Nth splice call on this thread acts as if the kernel
    /// said EAGAIN on a ready socket (0: never).
    pub(super) static ODD_EAGAIN_EVERY: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// Tests: whether this splice call is one `ODD_EAGAIN_EVERY` picks.
fn odd_eagain() -> bool {
    #[cfg(test)]
    {
        let (every, n) = ODD_EAGAIN_EVERY.get();
        ODD_EAGAIN_EVERY.set((every, n.wrapping_add(1)));
        every > 0 && n % every == every - 1
    }
    #[cfg(not(test))]
    false
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.with(|pool| pool.try_borrow_mut().ok()?.pop()) {
            return Ok(p);
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // Over the user's pipe budget (fs.pipe-user-pages-soft) the kernel
        // refuses to grow a pipe: the size it has still works.
        let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        Ok(Pipe { r, w })
    }

    /// Back to the pool; only ever called with an empty pipe.
    fn give(self) {
        POOL.with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() < POOL_MAX {
                    pool.push(self);
                }
            }
        })
    }
}

/// Pipes idle in this thread's pool (for tests).
/// Which end of a direction failed.
pub(super) enum DirErr {
    Read(io::Error),
    Write(io::Error),
}

#[cfg(test)]
pub(super) fn pooled() -> usize {
    POOL.with(|pool| pool.borrow().len())
}

/// Bytes held by the pipes idle in this thread's pool (for tests: 0).
#[cfg(test)]
pub(super) fn pooled_bytes() -> usize {
    use std::os::fd::AsRawFd;
    POOL.with(|pool| {
        pool.borrow()
            .iter()
            .map(|p| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD on an open pipe writes one c_int to `n`.
                unsafe { libc::ioctl(p.r.as_raw_fd(), libc::FIONREAD, &mut n) };
                n as usize
            })
            .sum()
    })
}

/// What `Splicer::poll` ended with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The reader reached EOF and every byte was written on.
    Eof,
    /// Splicing cannot be used (no pipe could be made, or the kernel refuses
    /// splice on these sockets): the pipe is empty, copy from now on.
    Unsupported,
    /// The kernel said EAGAIN while poll(2) saw the socket ready (see
    /// `ready_now`): the copy loop moves the next chunk, then splicing goes
    /// on. The pipe is empty.
    CopyOnce,
    /// As `CopyOnce` on the writing end: the bytes the pipe held, taken out
    /// of it, for the copy loop to write on.
    Spill(Vec<u8>),
}

/// The splice state of one direction.
#[derive(Default)]
pub(super) struct Splicer {
    pipe: Option<Pipe>,
    /// Bytes in the pipe, not yet written on.
    held: usize,
    /// Bytes written on through the pipe.
    pub spliced: u64,
    /// Set once splicing turned out not to work: the direction copies.
    pub off: bool,
}

impl Splicer {
    /// Move bytes `r` -> `w` until the reader has nothing (Pending, wakers
    /// registered), EOF was read and passed through the pipe (`End::Eof`;
    /// the caller shuts `w` down), or an end fails. `amt` counts bytes
    /// written to `w`; `moved` is set when anything was read or written.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        r: &TcpStream,
        w: &TcpStream,
        amt: &mut u64,
        moved: &mut bool,
    ) -> Poll<Result<End, DirErr>> {
        loop {
            while self.held > 0 {
                match self.drain(cx, w) {
                    Poll::Ready(Ok(n)) => {
                        self.held -= n;
                        self.spliced += n as u64;
                        *amt += n as u64;
                        *moved = true;
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {
                        tracing::debug!("splice could not write to a writable socket: copying");
                        return self.spill().map_err(DirErr::Write).map(End::Spill).into();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(DirErr::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match r.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(DirErr::Read(e))),
                Poll::Pending => {
                    // Nothing to read and nothing held: the pipe goes back.
                    if let Some(p) = self.pipe.take() {
                        p.give();
                    }
                    return Poll::Pending;
                }
            }
            // No pipe to be had (out of descriptors): the pipe is empty, so
            // the copy loop can take over at any point.
            let pipe = match self.pipe.take().map_or_else(Pipe::take, Ok) {
                Ok(p) => self.pipe.insert(p),
                Err(_) => return self.give_up(),
            };
            // The pipe is empty here: an EAGAIN means the socket is, and
            // try_io then clears its readiness.
            let res = r.try_io(Interest::READABLE, || {
                if odd_eagain() {
                    return Err(not_now());
                }
                let fill = || splice(r, None, &pipe.w, None, PIPE_SIZE, FLAGS);
                checked(fill, r, PollFlags::POLLIN)
            });
            match res {
                Ok(0) => {
                    // This direction is over; the other may go on for long.
                    if let Some(p) = self.pipe.take() {
                        p.give();
                    }
                    return Poll::Ready(Ok(End::Eof));
                }
                Ok(n) => {
                    self.held = n;
                    *moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    tracing::debug!("splice found nothing in a readable socket: one chunk copied");
                    if let Some(p) = self.pipe.take() {
                        p.give();
                    }
                    return Poll::Ready(Ok(End::CopyOnce));
                }
                Err(e) if self.spliced == 0 && unsupported(&e) => return self.give_up(),
                Err(e) => return Poll::Ready(Err(DirErr::Read(e))),
            }
        }
    }

    /// One `splice` from the pipe to `w`: how many bytes it took (never 0).
    fn drain(&self, cx: &mut Context<'_>, w: &TcpStream) -> Poll<io::Result<usize>> {
        let Some(pipe) = self.pipe.as_ref() else {
            unreachable!("held bytes are in a pipe");
        };
        loop {
            std::task::ready!(w.poll_write_ready(cx))?;
            // The pipe holds bytes: an EAGAIN means the socket is full.
            let res = w.try_io(Interest::WRITABLE, || {
                if odd_eagain() {
                    return Err(not_now());
                }
                let drain = || splice(&pipe.r, None, w, None, self.held, FLAGS);
                checked(drain, w, PollFlags::POLLOUT)
            });
            match res {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice wrote 0",
                    )))
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Take the bytes the pipe holds out of it (the pipe is then empty and
    /// goes back), for the copy loop to write on.
    fn spill(&mut self) -> io::Result<Vec<u8>> {
        let Some(pipe) = self.pipe.take() else {
            unreachable!("held bytes are in a pipe");
        };
        let mut out = vec![0; self.held];
        let mut got = 0;
        while got < out.len() {
            match nix::unistd::read(&pipe.r, &mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got < out.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pipe held less than spliced",
            ));
        }
        self.held = 0;
        pipe.give();
        Ok(out)
    }

    /// Whether this direction holds a pipe now (for tests).
    #[cfg(test)]
    pub(super) fn holds_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    fn give_up(&mut self) -> Poll<Result<End, DirErr>> {
        self.off = true;
        if let Some(p) = self.pipe.take() {
            p.give();
        }
        Poll::Ready(Ok(End::Unsupported))
    }
}

impl Drop for Splicer {
    fn drop(&mut self) {
        // A pipe still holding bytes (the session ended on an error) is
        // closed with them; only an empty one is reused.
        if self.held == 0 {
            if let Some(p) = self.pipe.take() {
                p.give();
            }
        }
    }
}

/// One splice, and once more if it said EAGAIN while `s` polls ready for
/// `what` (bytes or room came in between the two calls, the usual reason
/// under load); `not_now()` if the second says EAGAIN too.
fn checked(
    call: impl Fn() -> nix::Result<usize>,
    s: &TcpStream,
    what: PollFlags,
) -> io::Result<usize> {
    match call() {
        Err(Errno::EAGAIN) if ready_now(s, what) => match call() {
            Err(Errno::EAGAIN) => Err(not_now()),
            res => res.map_err(io::Error::from),
        },
        res => res.map_err(io::Error::from),
    }
}

/// Whether poll(2) sees `s` ready for `what` now. Asked only after splice
/// said EAGAIN: with an empty pipe (filling) or a pipe holding bytes
/// (draining), EAGAIN is supposed to mean the socket has nothing or no
/// room. Were it ever otherwise, clearing tokio's readiness would wait for
/// an edge that never comes (the bytes are already there, or the room is),
/// and the direction would stall until the idle timeout. Then the copy loop
/// moves that chunk instead.
fn ready_now(s: &TcpStream, what: PollFlags) -> bool {
    let mut fds = [PollFd::new(s.as_fd(), what)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.intersects(what))
}

/// The marker `try_io` passes through without clearing readiness: splice
/// said EAGAIN, yet the socket is ready.
fn not_now() -> io::Error {
    io::ErrorKind::Interrupted.into()
}

/// The kernel refuses splice on this pair (not a failure of the connection).
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}
