//! The TCP copy loop shared by the server and TUN mode.
//!
//! Both directions run concurrently in one future (no task per direction, no
//! lock). The semantics are TCP's own:
//! - half-close passes through: EOF from one side becomes `shutdown(Write)` on
//!   the other, and the opposite direction keeps flowing until it ends too;
//! - a reset passes through as a reset: an error on one side (ECONNRESET on
//!   read, EPIPE on write, ...) makes the relay reset the other side;
//! - an optional idle timeout ends a relay on which nothing moved for that long.
//!
//! Buffers: a direction owns no buffer until it needs one. It reads into a
//! per-thread 64 KiB scratch buffer and writes straight on; only when the
//! writer cannot take everything does the rest move into a buffer of the
//! direction's own (small first, 64 KiB once a read fills it), which it then
//! keeps. So thousands of quiet or interactive connections cost no relay
//! buffers at all, bulk transfers get 64 KiB reads and writes, and nothing is
//! allocated per chunk.
//!
//! Between two plain TCP sockets (the server's CONNECT and BIND sessions) a
//! direction that moves bulk data (a read filled the 64 KiB scratch buffer)
//! stops copying: `splice` moves the bytes socket -> pipe -> socket inside
//! the kernel (`splice.rs`), with the same half-close, reset and idle
//! semantics. The copy loop stays for small messages (cheaper there), for
//! everything else (TUN mode's far side is smoltcp's buffer) and for sockets
//! the kernel will not splice.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod future;
mod splice;

pub use future::{relay, relay_until, Relay};

use splice::DirErr;

/// Initial per-direction buffer.
const SMALL_BUF: usize = 8 * 1024;
/// Buffer of a direction that moves bulk data.
pub const BIG_BUF: usize = 64 * 1024;

thread_local! {
    /// Shared by every relay polled on this thread: reads land here and are
    /// written on at once, so a direction needs no buffer of its own while
    /// its writer keeps up.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; BIG_BUF].into_boxed_slice());
}

/// A byte stream the relay can copy to and from, and abort.
pub trait RelayStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Abortive close: arrange for the peer to see a reset (TCP RST) when the
    /// stream is dropped, which the relay does right after calling this.
    fn reset(&mut self);

    /// The TCP socket this stream is, for a relay that moves bytes between
    /// two sockets in the kernel (`splice`). Only for a stream that keeps no
    /// bytes of its own in user space. `None`: copy.
    fn socket(&self) -> Option<&tokio::net::TcpStream> {
        None
    }

    /// Received bytes lent in place, for a stream that keeps them in a
    /// buffer of its own (the TUN side: smoltcp's receive ring), so the
    /// relay writes them on without first copying them into its scratch
    /// buffer. `take` is given the bytes ready (a non-empty slice) and
    /// returns how many of them it consumed. Pending (with the waker
    /// registered) while there is nothing to read. `None`: not supported.
    fn poll_read_in_place(
        &mut self,
        waker: &Waker,
        take: &mut dyn FnMut(&[u8]) -> usize,
    ) -> Option<Poll<io::Result<InPlace>>> {
        let _ = (waker, take);
        None
    }

    /// Free room of the stream's own send buffer lent in place (the TUN
    /// side: smoltcp's transmit ring), so the relay reads into it directly.
    /// `fill` is given a non-empty slice and returns how many bytes it wrote
    /// at its start; those are sent. Pending (with the waker registered)
    /// while there is no room. `None`: not supported.
    fn poll_write_in_place(
        &mut self,
        waker: &Waker,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Option<Poll<io::Result<usize>>> {
        let _ = (waker, fill);
        None
    }
}

/// What a `poll_read_in_place` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InPlace {
    /// The peer finished sending.
    Eof,
    /// The bytes were lent; this many were consumed (0 when the taker could
    /// not take any).
    Took(usize),
}

impl RelayStream for tokio::net::TcpStream {
    fn reset(&mut self) {
        // SO_LINGER with a zero timeout: close(2) sends RST and discards
        // unsent data (the meaning of a reset).
        let _ = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO));
    }

    fn socket(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

impl RelayStream for tokio::io::DuplexStream {
    /// An in-memory pipe has no reset: its peer sees EOF when it is dropped.
    fn reset(&mut self) {}
}

impl<T: RelayStream + ?Sized> RelayStream for Box<T> {
    fn reset(&mut self) {
        (**self).reset()
    }

    fn socket(&self) -> Option<&tokio::net::TcpStream> {
        (**self).socket()
    }

    fn poll_read_in_place(
        &mut self,
        waker: &Waker,
        take: &mut dyn FnMut(&[u8]) -> usize,
    ) -> Option<Poll<io::Result<InPlace>>> {
        (**self).poll_read_in_place(waker, take)
    }

    fn poll_write_in_place(
        &mut self,
        waker: &Waker,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Option<Poll<io::Result<usize>>> {
        (**self).poll_write_in_place(waker, fill)
    }
}

/// One of the two streams given to `relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions reached EOF and were passed on.
    Closed,
    /// `side` failed (reset by its peer, or another I/O error of `kind`); the
    /// other side was reset.
    Reset { side: Side, kind: io::ErrorKind },
    /// Nothing moved for the idle timeout; both sides were closed.
    IdleTimeout,
    /// The caller's stop signal fired (the process is shutting down); both
    /// sides were reset.
    Stopped,
}

impl Outcome {
    /// A short text for a log line, naming the sides.
    pub fn describe(&self, a: &str, b: &str) -> String {
        match self {
            Outcome::Closed => "closed".to_string(),
            Outcome::Reset { side, kind } => {
                let who = if *side == Side::A { a } else { b };
                if *kind == io::ErrorKind::ConnectionReset {
                    format!("reset by {who}")
                } else {
                    format!("error on {who} side ({kind})")
                }
            }
            Outcome::IdleTimeout => "idle timeout".to_string(),
            Outcome::Stopped => "shutdown".to_string(),
        }
    }
}

/// What a relay moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    pub a_to_b: u64,
    pub b_to_a: u64,
    /// How much of `a_to_b` and `b_to_a` went by `splice`, never through
    /// user space.
    pub a_to_b_spliced: u64,
    pub b_to_a_spliced: u64,
    pub outcome: Outcome,
}

/// One direction: read from one stream into `buf`, write it all to the other.
struct Dir {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_eof: bool,
    need_flush: bool,
    grow: bool,
    done: bool,
    amt: u64,
    /// A read filled `BIG_BUF`: this direction moves bulk data, and splices
    /// from now on when both ends are sockets. (For small messages splice
    /// costs more than a copy: the kernel copies a small segment's bytes
    /// into a page to lend it to the pipe, and one connection's pipe work
    /// is paid for a few hundred bytes.)
    bulk: bool,
    splice: splice::Splicer,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            buf: Box::default(),
            pos: 0,
            cap: 0,
            read_eof: false,
            need_flush: false,
            grow: false,
            done: false,
            amt: 0,
            bulk: false,
            splice: splice::Splicer::default(),
        }
    }

    /// With no buffer of our own: read into the thread's scratch buffer and
    /// write on at once; keep (copy) only what the writer did not take.
    /// Ready(Ok) means: progress was made (or EOF seen), look at the state again.
    fn poll_direct<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut Pin<&mut R>,
        w: &mut Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<Result<(), DirErr>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let res = SCRATCH.with(|cell| {
            // Re-entrance (a stream whose poll runs another relay on this
            // thread) finds the scratch busy: fall back to an own buffer.
            let mut scratch = cell.try_borrow_mut().ok()?;
            let mut rb = ReadBuf::new(&mut scratch[..]);
            let n = match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => return Some(Poll::Pending),
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(DirErr::Read(e)))),
                Poll::Ready(Ok(())) => rb.filled().len(),
            };
            if n == 0 {
                self.read_eof = true;
                return Some(Poll::Ready(Ok(())));
            }
            self.bulk |= n == BIG_BUF;
            *moved = true;
            let mut off = 0;
            while off < n {
                match w.as_mut().poll_write(cx, &scratch[off..n]) {
                    Poll::Ready(Ok(0)) => {
                        return Some(Poll::Ready(Err(DirErr::Write(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "write returned 0",
                        )))))
                    }
                    Poll::Ready(Ok(m)) => {
                        off += m;
                        self.amt += m as u64;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(DirErr::Write(e)))),
                    Poll::Pending => break,
                }
            }
            if off < n {
                let rest = n - off;
                let size = if rest > SMALL_BUF { BIG_BUF } else { SMALL_BUF };
                let mut own = vec![0; size].into_boxed_slice();
                own[..rest].copy_from_slice(&scratch[off..n]);
                self.buf = own;
                self.pos = 0;
                self.cap = rest;
            }
            Some(Poll::Ready(Ok(())))
        });
        match res {
            Some(p) => p,
            None => {
                self.buf = vec![0; SMALL_BUF].into_boxed_slice();
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Without a buffer of our own, when one of the streams lends its own:
    /// write straight out of the reader's buffer, or read straight into the
    /// writer's (one copy fewer per byte than through the scratch buffer;
    /// what one side cannot take stays in the other's buffer). `None` when
    /// neither stream can.
    fn poll_in_place<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut Pin<&mut R>,
        w: &mut Pin<&mut W>,
        moved: &mut bool,
    ) -> Option<Poll<Result<(), DirErr>>>
    where
        R: RelayStream + ?Sized,
        W: RelayStream + ?Sized,
    {
        let mut err = None;
        let mut blocked = false;
        // Both streams register the same waker: the lending one directly,
        // the other through a context made of it.
        let waker = cx.waker();
        let got = r.as_mut().get_mut().poll_read_in_place(waker, &mut |data| {
            write_now(w, waker, data, &mut err, &mut blocked)
        });
        if let Some(got) = got {
            return Some(match got {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(DirErr::Read(e))),
                Poll::Ready(Ok(InPlace::Eof)) => {
                    self.read_eof = true;
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Ok(InPlace::Took(n))) => {
                    if n > 0 {
                        self.amt += n as u64;
                        self.need_flush = true;
                        *moved = true;
                    }
                    match err {
                        Some(e) => Poll::Ready(Err(DirErr::Write(e))),
                        // The writer's waker is registered.
                        None if blocked => Poll::Pending,
                        None => Poll::Ready(Ok(())),
                    }
                }
            });
        }
        let mut eof = false;
        let put = w
            .as_mut()
            .get_mut()
            .poll_write_in_place(waker, &mut |room| {
                read_now(r, waker, room, &mut eof, &mut err, &mut blocked)
            })?;
        Some(match put {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(DirErr::Write(e))),
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.amt += n as u64;
                    self.need_flush = true;
                    *moved = true;
                }
                match err {
                    Some(e) => Poll::Ready(Err(DirErr::Read(e))),
                    None if eof => {
                        self.read_eof = true;
                        Poll::Ready(Ok(()))
                    }
                    // The reader's waker is registered.
                    None if blocked => Poll::Pending,
                    None => Poll::Ready(Ok(())),
                }
            }
        })
    }

    /// Drive this direction; Ready(Ok) once EOF was read, every byte written
    /// and the writer shut down. Sets `moved` when bytes were read or written.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<Result<(), DirErr>>
    where
        R: RelayStream + ?Sized,
        W: RelayStream + ?Sized,
    {
        loop {
            if self.bulk && !self.splice.off && self.pos == self.cap && !self.read_eof {
                if let Some(p) = self.poll_splice(cx, &r, &w, moved) {
                    return p;
                }
            }
            if self.pos == self.cap && !self.read_eof {
                let step = if self.buf.is_empty() {
                    match self.poll_in_place(cx, &mut r, &mut w, moved) {
                        Some(step) => step,
                        None => self.poll_direct(cx, &mut r, &mut w, moved),
                    }
                } else {
                    self.poll_fill(cx, &mut r, moved)
                };
                match step {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx)).map_err(DirErr::Write)?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                match ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap])) {
                    Ok(0) => {
                        return Poll::Ready(Err(DirErr::Write(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "write returned 0",
                        ))))
                    }
                    Ok(n) => {
                        self.pos += n;
                        self.amt += n as u64;
                        self.need_flush = true;
                        *moved = true;
                    }
                    Err(e) => return Poll::Ready(Err(DirErr::Write(e))),
                }
            }
            if self.read_eof {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx)).map_err(DirErr::Write)?;
                    self.need_flush = false;
                }
                // Half-close: pass the EOF on and keep the other direction going.
                ready!(w.as_mut().poll_shutdown(cx)).map_err(DirErr::Write)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// A bulk direction between two sockets: splice, once what the copy
    /// loop holds is written. `Some`: return that; `None`: go on copying
    /// (EOF came through the pipe, or splicing is not possible).
    fn poll_splice<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &Pin<&mut R>,
        w: &Pin<&mut W>,
        moved: &mut bool,
    ) -> Option<Poll<Result<(), DirErr>>>
    where
        R: RelayStream + ?Sized,
        W: RelayStream + ?Sized,
    {
        let (Some(rs), Some(ws)) = (r.socket(), w.socket()) else {
            self.splice.off = true;
            return None;
        };
        // Empty (pos == cap): nothing is lost, and a spliced direction
        // needs no buffer.
        self.buf = Box::default();
        (self.pos, self.cap, self.grow) = (0, 0, false);
        match self.splice.poll(cx, rs, ws, &mut self.amt, moved) {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(Err(e)) => Some(Poll::Ready(Err(e))),
            Poll::Ready(Ok(splice::End::Eof)) => {
                self.read_eof = true;
                None
            }
            // Copy from here on.
            Poll::Ready(Ok(splice::End::Unsupported)) => None,
            // The copy loop reads the next chunk, then splicing goes on.
            Poll::Ready(Ok(splice::End::CopyOnce)) => None,
            Poll::Ready(Ok(splice::End::Spill(held))) => {
                self.cap = held.len();
                self.buf = held.into_boxed_slice();
                None
            }
        }
    }

    /// With a buffer of our own (empty now): read into it.
    fn poll_fill<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut Pin<&mut R>,
        moved: &mut bool,
    ) -> Poll<Result<(), DirErr>>
    where
        R: AsyncRead + ?Sized,
    {
        if self.grow {
            // The buffer is empty here, so switching loses nothing.
            self.buf = vec![0; BIG_BUF].into_boxed_slice();
            self.grow = false;
        }
        self.pos = 0;
        self.cap = 0;
        let mut rb = ReadBuf::new(&mut self.buf);
        ready!(r.as_mut().poll_read(cx, &mut rb)).map_err(DirErr::Read)?;
        let n = rb.filled().len();
        if n == 0 {
            self.read_eof = true;
        } else {
            self.cap = n;
            self.bulk |= n == BIG_BUF;
            *moved = true;
            if n == self.buf.len() && self.buf.len() < BIG_BUF {
                self.grow = true;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Write as much of `data` as `w` takes now. An error or a writer that is
/// full (its waker then registered) is noted for the caller.
#[inline]
fn write_now<W: RelayStream + ?Sized>(
    w: &mut Pin<&mut W>,
    waker: &Waker,
    data: &[u8],
    err: &mut Option<io::Error>,
    blocked: &mut bool,
) -> usize {
    let mut off = 0;
    while off < data.len() {
        match w
            .as_mut()
            .poll_write(&mut Context::from_waker(waker), &data[off..])
        {
            Poll::Ready(Ok(0)) => {
                *err = Some(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
                break;
            }
            Poll::Ready(Ok(m)) => off += m,
            Poll::Ready(Err(e)) => {
                *err = Some(e);
                break;
            }
            Poll::Pending => {
                *blocked = true;
                break;
            }
        }
    }
    off
}

/// Read what `r` has now into `room`. End of stream, an error or nothing to
/// read (its waker then registered) is noted for the caller.
#[inline]
fn read_now<R: RelayStream + ?Sized>(
    r: &mut Pin<&mut R>,
    waker: &Waker,
    room: &mut [u8],
    eof: &mut bool,
    err: &mut Option<io::Error>,
    blocked: &mut bool,
) -> usize {
    let mut rb = ReadBuf::new(room);
    match r
        .as_mut()
        .poll_read(&mut Context::from_waker(waker), &mut rb)
    {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            *eof = n == 0;
            n
        }
        Poll::Ready(Err(e)) => {
            *err = Some(e);
            0
        }
        Poll::Pending => {
            *blocked = true;
            0
        }
    }
}

#[cfg(test)]
mod tests;
