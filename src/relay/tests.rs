use super::*;
use std::future::poll_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

#[tokio::test]
async fn copies_both_ways_with_half_close() {
    let (mut a_peer, a) = tokio::io::duplex(4096);
    let (b, mut b_peer) = tokio::io::duplex(4096);
    let r = tokio::spawn(relay(a, b, None));
    // The client sends a request and half-closes; the server still answers
    // after it saw the EOF.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let d2 = data.clone();
    let client = tokio::spawn(async move {
        a_peer.write_all(&d2).await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        back
    });
    let mut got = Vec::new();
    b_peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    b_peer.write_all(b"answer after EOF").await.unwrap();
    b_peer.shutdown().await.unwrap();
    assert_eq!(client.await.unwrap(), b"answer after EOF");
    let st = r.await.unwrap();
    assert_eq!(st.outcome, Outcome::Closed);
    assert_eq!((st.a_to_b, st.b_to_a), (300_000, 16));
    // Not sockets: copied, nothing spliced.
    assert_eq!((st.a_to_b_spliced, st.b_to_a_spliced), (0, 0));
}

/// Poll one direction until it is pending; returns it.
async fn drive(dir: &mut Dir, r: &mut tokio::io::DuplexStream, w: &mut tokio::io::DuplexStream) {
    poll_fn(|cx| {
        let mut moved = false;
        match dir.poll_copy(cx, Pin::new(&mut *r), Pin::new(&mut *w), &mut moved) {
            Poll::Pending => Poll::Ready(()),
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(_)) => panic!("relay error"),
        }
    })
    .await
}

#[tokio::test]
async fn no_own_buffer_while_the_writer_keeps_up() {
    let (mut src, mut r) = tokio::io::duplex(1 << 20);
    let (mut w, mut dst) = tokio::io::duplex(1 << 20);
    let mut dir = Dir::new();
    src.write_all(&[7u8; 3000]).await.unwrap();
    drive(&mut dir, &mut r, &mut w).await;
    assert_eq!(dir.amt, 3000);
    assert!(
        dir.buf.is_empty(),
        "allocated a buffer although the writer took everything"
    );
    let mut got = [0u8; 3000];
    dst.read_exact(&mut got).await.unwrap();

    // A writer that cannot take it all: the rest is kept, nothing lost.
    let (mut w, mut dst) = tokio::io::duplex(100);
    src.write_all(&[9u8; 5000]).await.unwrap();
    drive(&mut dir, &mut r, &mut w).await;
    assert!(!dir.buf.is_empty());
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 5000];
        dst.read_exact(&mut got).await.unwrap();
        got
    });
    while dir.amt < 8000 {
        drive(&mut dir, &mut r, &mut w).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(reader.await.unwrap(), vec![9u8; 5000]);
}

/// `n` bytes each way between two socket pairs through a relay, each
/// direction half-closed at its end; every byte checked. The relay's stats.
async fn both_ways(n: u32, idle: Option<Duration>) -> RelayStats {
    let (mut client, a) = pair().await;
    let (b, mut server) = pair().await;
    let r = tokio::spawn(relay(a, b, idle));
    let up: Vec<u8> = (0..n)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let down: Vec<u8> = up.iter().rev().copied().collect();
    let (u2, d2) = (up.clone(), down.clone());
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (got_up, got_down, _, _) = tokio::join!(
        async {
            let mut v = Vec::new();
            sr.read_to_end(&mut v).await.unwrap();
            v
        },
        async {
            let mut v = Vec::new();
            cr.read_to_end(&mut v).await.unwrap();
            v
        },
        async {
            cw.write_all(&u2).await.unwrap();
            cw.shutdown().await.unwrap();
        },
        async {
            sw.write_all(&d2).await.unwrap();
            sw.shutdown().await.unwrap();
        },
    );
    assert!(got_up == up && got_down == down, "bytes lost or reordered");
    let st = r.await.unwrap();
    assert_eq!(
        (st.a_to_b, st.b_to_a, st.outcome),
        (n as u64, n as u64, Outcome::Closed)
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_over_tcp() {
    let st = both_ways(3_000_000, None).await;
    // Two sockets, bulk: (nearly) every byte went by splice.
    assert!(
        st.a_to_b_spliced > 2_000_000 && st.b_to_a_spliced > 2_000_000,
        "{st:?}"
    );
}

/// Were splice ever to say EAGAIN while poll(2) sees the socket ready, the
/// direction must not wait for an edge that never comes: the chunk is
/// copied (filling) or spilled out of the pipe and copied (draining), and
/// every byte arrives in order.
#[tokio::test]
async fn eagain_on_a_ready_socket_falls_back_to_copying_that_chunk() {
    splice::ODD_EAGAIN_EVERY.set((3, 0));
    let st = both_ways(4_000_000, Some(Duration::from_secs(20))).await;
    let calls = splice::ODD_EAGAIN_EVERY.get().1;
    splice::ODD_EAGAIN_EVERY.set((0, 0));
    let spliced = st.a_to_b_spliced + st.b_to_a_spliced;
    assert!(
        calls >= 6 && spliced > 0 && spliced < 8_000_000,
        "{calls} {st:?}"
    );
    assert_eq!(splice::pooled_bytes(), 0, "a pooled pipe holds bytes");
}

/// Poll one direction between two sockets once (it runs until it would
/// block).
async fn drive_tcp(dir: &mut Dir, r: &mut TcpStream, w: &mut TcpStream) {
    poll_fn(|cx| {
        let mut moved = false;
        match dir.poll_copy(cx, Pin::new(&mut *r), Pin::new(&mut *w), &mut moved) {
            Poll::Ready(Err(_)) => panic!("relay error"),
            _ => Poll::Ready(()),
        }
    })
    .await
}

/// Drive one direction between two sockets until it wrote `amt` bytes (or
/// finished), letting the other tasks run in between.
async fn drive_until(dir: &mut Dir, r: &mut TcpStream, w: &mut TcpStream, amt: u64) {
    while dir.amt < amt && !dir.done {
        drive_tcp(dir, r, w).await;
        tokio::task::yield_now().await;
    }
}

/// Between two sockets, small messages are copied (no pipe is ever made);
/// from the first read that fills the scratch buffer the direction splices,
/// holding its pipe only while it moves bytes: once its reader has nothing,
/// the pipe is back in the thread's pool. EOF passes through the pipe.
#[tokio::test]
async fn bulk_is_spliced_small_messages_copied_and_quiet_holds_no_pipe() {
    let (mut src, mut r) = pair().await;
    let (mut w, mut dst) = pair().await;
    let reader = tokio::spawn(async move {
        let mut v = Vec::new();
        dst.read_to_end(&mut v).await.unwrap();
        v
    });
    let mut dir = Dir::new();
    let mut sent = vec![1u8; 3000];
    src.write_all(&sent).await.unwrap();
    drive_until(&mut dir, &mut r, &mut w, 3000).await;
    assert_eq!((dir.amt, dir.splice.spliced), (3000, 0), "small: copied");
    assert_eq!(splice::pooled(), 0, "a pipe was made for a small message");

    let bulk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    sent.extend_from_slice(&bulk);
    let writer = tokio::spawn(async move {
        src.write_all(&bulk).await.unwrap();
        src
    });
    drive_until(&mut dir, &mut r, &mut w, sent.len() as u64).await;
    let mut src = writer.await.unwrap();
    assert!(dir.splice.spliced > 0, "bulk was not spliced");
    assert!(!dir.splice.holds_pipe(), "a quiet direction holds a pipe");
    assert!(dir.buf.is_empty(), "a spliced direction keeps a buffer");
    assert_eq!(splice::pooled(), 1, "the one pipe is not back in the pool");

    // Once bulk, a small message goes by the pipe too, which goes back.
    let before = dir.splice.spliced;
    src.write_all(&[2u8; 500]).await.unwrap();
    sent.extend_from_slice(&[2u8; 500]);
    drive_until(&mut dir, &mut r, &mut w, sent.len() as u64).await;
    assert_eq!(dir.splice.spliced, before + 500);
    assert!(!dir.splice.holds_pipe());

    src.shutdown().await.unwrap();
    drive_until(&mut dir, &mut r, &mut w, u64::MAX).await;
    assert!(dir.done, "EOF did not pass through");
    drop(w);
    assert!(reader.await.unwrap() == sent, "bytes differ");
    drop(dir);
    assert_eq!(splice::pooled(), 1);
}

#[tokio::test]
async fn reset_is_passed_through() {
    let (mut client, a) = pair().await;
    let (b, server) = pair().await;
    let r = tokio::spawn(relay(a, b, None));
    client.write_all(b"hello").await.unwrap();
    let mut server = server;
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.unwrap();
    // The server aborts: the client must see a reset, not a clean EOF.
    server.reset();
    drop(server);
    let st = r.await.unwrap();
    assert_eq!(
        st.outcome,
        Outcome::Reset {
            side: Side::B,
            kind: io::ErrorKind::ConnectionReset
        }
    );
    let mut rest = Vec::new();
    let e = client.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn idle_timeout_ends_a_quiet_relay() {
    tokio::time::pause();
    let (_ap, a) = tokio::io::duplex(64);
    let (b, _bp) = tokio::io::duplex(64);
    let st = relay(a, b, Some(Duration::from_secs(30))).await;
    assert_eq!(st.outcome, Outcome::IdleTimeout);
}

#[tokio::test]
async fn activity_postpones_the_idle_timeout() {
    tokio::time::pause();
    let (mut ap, a) = tokio::io::duplex(64);
    let (b, mut bp) = tokio::io::duplex(64);
    let r = tokio::spawn(relay(a, b, Some(Duration::from_secs(10))));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        ap.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        bp.read_exact(&mut one).await.unwrap();
    }
    assert!(!r.is_finished());
    let st = r.await.unwrap();
    assert_eq!((st.outcome, st.a_to_b), (Outcome::IdleTimeout, 5));
}

/// A stream that lends its buffers as `TunStream` does, through a
/// duplex pipe: reads come out of a small staging buffer of its own (at
/// most `chunk` bytes at a time, so takes are partial), writes go into a
/// room of at most `chunk` bytes, staged until the pipe takes them.
struct Lender {
    io: tokio::io::DuplexStream,
    chunk: usize,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    reset: bool,
}

impl Lender {
    fn new(io: tokio::io::DuplexStream, chunk: usize) -> Lender {
        Lender {
            io,
            chunk,
            inbox: Vec::new(),
            outbox: Vec::new(),
            reset: false,
        }
    }

    /// Push staged output into the pipe; Ready once all of it went.
    fn flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outbox.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outbox))?;
            self.outbox.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Lender {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        panic!("the relay must read a lending stream in place");
    }
}

impl AsyncWrite for Lender {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        panic!("the relay must write a lending stream in place");
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().flush_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.flush_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl RelayStream for Lender {
    fn reset(&mut self) {
        self.reset = true;
    }

    fn poll_read_in_place(
        &mut self,
        waker: &Waker,
        take: &mut dyn FnMut(&[u8]) -> usize,
    ) -> Option<Poll<io::Result<InPlace>>> {
        if self.inbox.is_empty() {
            let mut b = vec![0u8; self.chunk];
            let mut rb = ReadBuf::new(&mut b);
            let mut cx = Context::from_waker(waker);
            match Pin::new(&mut self.io).poll_read(&mut cx, &mut rb) {
                Poll::Pending => return Some(Poll::Pending),
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Some(Poll::Ready(Ok(InPlace::Eof)))
                }
                Poll::Ready(Ok(())) => self.inbox = rb.filled().to_vec(),
            }
        }
        let n = take(&self.inbox);
        self.inbox.drain(..n);
        Some(Poll::Ready(Ok(InPlace::Took(n))))
    }

    fn poll_write_in_place(
        &mut self,
        waker: &Waker,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Option<Poll<io::Result<usize>>> {
        if let Poll::Ready(Err(e)) = self.flush_out(&mut Context::from_waker(waker)) {
            return Some(Poll::Ready(Err(e)));
        }
        if !self.outbox.is_empty() {
            return Some(Poll::Pending);
        }
        let mut room = vec![0u8; self.chunk];
        let n = fill(&mut room);
        self.outbox.extend_from_slice(&room[..n]);
        let _ = self.flush_out(&mut Context::from_waker(waker));
        Some(Poll::Ready(Ok(n)))
    }
}

/// Both directions in place (the lender on side A), through pipes small
/// enough that takes are partial and writers block: every byte arrives
/// in order, half-close passes both ways, and the relay never reads or
/// writes the lender through a copy (its `poll_read`/`poll_write` panic).
#[tokio::test]
async fn in_place_copies_both_ways_with_half_close() {
    let (app, a) = tokio::io::duplex(1000);
    let (b, far) = tokio::io::duplex(777);
    let r = tokio::spawn(relay(Lender::new(a, 333), b, None));
    let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    // Each end writes everything and half-closes while reading what
    // comes the other way until EOF.
    async fn talk(io: tokio::io::DuplexStream, send: Vec<u8>) -> Vec<u8> {
        let (mut rd, mut wr) = tokio::io::split(io);
        let w = tokio::spawn(async move {
            wr.write_all(&send).await.unwrap();
            wr.shutdown().await.unwrap();
            wr
        });
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.unwrap();
        drop(w.await.unwrap());
        got
    }
    let client = tokio::spawn(talk(app, up.clone()));
    let got_far = talk(far, down.clone()).await;
    assert!(got_far == up, "upstream bytes differ");
    assert!(client.await.unwrap() == down, "downstream bytes differ");
    let st = r.await.unwrap();
    assert_eq!(st.outcome, Outcome::Closed);
    assert_eq!((st.a_to_b, st.b_to_a), (200_000, 150_000));
}
