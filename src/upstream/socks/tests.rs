//! The SOCKS upstream's warm pool and learned pipelining against a scripted
//! SOCKS5 proxy on 127.0.0.1 (real TCP: the pool sees closes as they come).

use super::*;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Greets, answers every request with success and "HI".
    Good,
    /// As Good, but its first connection closes when its request comes.
    FirstDiesOnRequest,
    /// Answers CONNECT with "connection refused".
    Refuses,
    /// microsocks: one read for the greeting, what came with it is lost.
    DropsPipelined,
}

/// What the proxy saw on one connection: the command (0: none came) and
/// whether greeting and request came in one read.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    cmd: u8,
    one_read: bool,
}

struct Fake {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(mode: Mode) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let i = {
                    let mut v = log.lock().unwrap();
                    v.push(Seen::default());
                    v.len() - 1
                };
                tokio::spawn(serve(s, mode, i, log.clone()));
            }
        });
        Fake { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn proxy(&self, warm: usize, learn: bool) -> Proxy {
        let mut p = Proxy::from_url(&format!("socks5://{}", self.addr)).unwrap();
        p.warm = warm;
        p.learn_pipeline = learn;
        p.connect_timeout = Duration::from_secs(1);
        p
    }
}

async fn serve(mut s: TcpStream, mode: Mode, i: usize, log: Arc<Mutex<Vec<Seen>>>) {
    let mut b = vec![0u8; 512];
    let n = s.read(&mut b).await.unwrap_or(0);
    if n < 2 || n < 2 + b[1] as usize {
        return;
    }
    let mut rest = b[2 + b[1] as usize..n].to_vec();
    s.write_all(&[5, 0]).await.unwrap();
    let one_read = !rest.is_empty();
    if mode == Mode::DropsPipelined {
        rest.clear();
    }
    while rest.len() < 4 {
        let n = s.read(&mut b).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        rest.extend_from_slice(&b[..n]);
    }
    log.lock().unwrap()[i] = Seen {
        cmd: rest[1],
        one_read,
    };
    if mode == Mode::FirstDiesOnRequest && i == 0 {
        return; // closed: the client sees EOF before any reply
    }
    let rep = if mode == Mode::Refuses && rest[1] == 1 {
        5
    } else {
        0
    };
    let _ = s.write_all(&[5, rep, 0, 1, 127, 0, 0, 1, 0, 80]).await;
    if rep == 0 && rest[1] == 1 {
        let _ = s.write_all(b"HI").await;
    }
    let _ = s.read(&mut b).await;
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn target() -> TargetAddr {
    TargetAddr::Ip("203.0.113.2:80".parse().unwrap())
}

async fn hi(c: Connected) {
    let mut s = c.stream;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"HI");
}

/// A flow's CONNECT goes on the connection opened (and greeted) before it,
/// and the pool opens a replacement.
#[tokio::test]
async fn a_flow_sends_its_connect_on_a_pooled_connection() {
    let fake = Fake::start(Mode::Good).await;
    let up = Socks::new(fake.proxy(2, false));
    until("pool full", || up.pooled() == 2).await;
    assert_eq!(fake.seen().len(), 2);
    hi(up.connect(&target()).await.unwrap()).await;
    let seen = fake.seen();
    assert_eq!(
        seen[0].cmd, 1,
        "CONNECT on the first pooled connection: {seen:?}"
    );
    assert!(!seen[0].one_read, "greeted before the flow");
    until("refilled", || up.pooled() == 2).await;
    assert_eq!(fake.seen().len(), 3);
}

/// A pooled connection that dies when used: the flow gets a fresh one, and
/// sees nothing.
#[tokio::test]
async fn a_dead_pooled_connection_is_retried_on_a_fresh_one() {
    let fake = Fake::start(Mode::FirstDiesOnRequest).await;
    let up = Socks::new(fake.proxy(1, false));
    until("pool full", || up.pooled() == 1).await;
    hi(up.connect(&target()).await.unwrap()).await;
    let seen = fake.seen();
    assert_eq!(seen[0].cmd, 1, "{seen:?}");
    assert!(seen[1..].iter().any(|s| s.cmd == 1), "{seen:?}");
}

/// The target's refusal through a pooled connection is the answer: not
/// retried.
#[tokio::test]
async fn a_refusal_on_a_pooled_connection_is_not_retried() {
    let fake = Fake::start(Mode::Refuses).await;
    let up = Socks::new(fake.proxy(1, false));
    until("pool full", || up.pooled() == 1).await;
    let e = up.connect(&target()).await.err().unwrap();
    assert!(matches!(e, Error::Refused), "{e}");
    let connects = fake.seen().iter().filter(|s| s.cmd == 1).count();
    assert_eq!(connects, 1);
}

/// UDP ASSOCIATE takes a pooled connection too.
#[tokio::test]
async fn udp_associate_on_a_pooled_connection() {
    let fake = Fake::start(Mode::Good).await;
    let up = Socks::new(fake.proxy(1, false));
    until("pool full", || up.pooled() == 1).await;
    let a = up.associate().await.unwrap();
    assert_eq!(a.assoc.relay, "127.0.0.1:80".parse().unwrap());
    assert_eq!(fake.seen()[0].cmd, 3);
}

/// A proxy that takes a pipelined handshake is learned to, and fresh dials
/// then go in one write; one that drops what follows the greeting is
/// learned not to, and dials still work.
#[tokio::test]
async fn pipelining_is_learned_per_proxy() {
    let good = Fake::start(Mode::Good).await;
    let up = Socks::new(good.proxy(0, true));
    until("learned", || up.pipelining().is_some()).await;
    assert_eq!(up.pipelining(), Some(true));
    hi(up.connect(&target()).await.unwrap()).await;
    let last = *good.seen().last().unwrap();
    assert!(last.cmd == 1 && last.one_read, "{last:?}");

    let micro = Fake::start(Mode::DropsPipelined).await;
    let up = Socks::new(micro.proxy(0, true));
    // Until it is known, dials are not pipelined: this one works.
    hi(up.connect(&target()).await.unwrap()).await;
    until("learned", || up.pipelining().is_some()).await;
    assert_eq!(up.pipelining(), Some(false));
    hi(up.connect(&target()).await.unwrap()).await;
}
