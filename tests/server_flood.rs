//! `sockstun server` under a flood of stalled handshakes, and under a crowd of
//! real clients: the first must not lock the second out.
mod common;

use common::server_lab::*;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;

const ECHO_PORT: u16 = 17;
const T: Duration = Duration::from_secs(30);

/// Raise this process's descriptor limit: the test holds thousands of sockets.
fn raise_fd_limit(need: u64) {
    let limit = raise_nofile();
    assert!(
        limit >= need,
        "this test needs {need} descriptors; the hard limit is {limit}"
    );
}

/// VmRSS of `pid` in KB.
fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

async fn echo_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Run `f` on a two-thread runtime inside the lab's namespace, with the echo
/// target listening.
fn with_echo<T: Send + 'static>(
    lab: &Lab,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    lab.ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind((T4, ECHO_PORT)).await.unwrap();
            tokio::spawn(echo_server(l));
            f.await
        })
    })
}

/// A SOCKS5 CONNECT from `src` through `proxy` to the echo target, then one
/// echo of `msg`; the stream is returned open.
async fn connect_echo(src: &str, proxy: SocketAddr, msg: &[u8]) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(format!("{src}:0").parse().unwrap())
        .map_err(|e| e.to_string())?;
    let mut s = sock
        .connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&T4.parse::<std::net::Ipv4Addr>().unwrap().octets());
    req.extend_from_slice(&ECHO_PORT.to_be_bytes());
    s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
    let mut rep = [0u8; 12];
    s.read_exact(&mut rep)
        .await
        .map_err(|e| format!("reply: {e}"))?;
    if rep[..4] != [5, 0, 5, 0] {
        return Err(format!("reply {rep:?}"));
    }
    s.write_all(msg).await.map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .await
        .map_err(|e| format!("echo: {e}"))?;
    if back != msg {
        return Err("wrong echo".into());
    }
    Ok(s)
}

async fn served(src: &str, proxy: SocketAddr) -> Result<(), String> {
    match timeout(T, connect_echo(src, proxy, b"ping")).await {
        Ok(r) => r.map(drop),
        Err(_) => Err("timed out".into()),
    }
}

/// One address opens connections as fast as it can, each sending one
/// greeting byte and stalling: far more per second than the handshake
/// budget holds, for as long as the test runs. Meanwhile a client from
/// another address connects every 100 ms, and every one of its connections
/// is served; a client behind the flooding address gets in too.
#[test]
fn stalled_handshake_flood_locks_nobody_out() {
    if !require_root("stalled_handshake_flood_locks_nobody_out") {
        return;
    }
    const FLOOD_MAX: usize = 6_000;
    raise_fd_limit(FLOOD_MAX as u64 + 1_000);
    let lab = Lab::new("sfl");
    // A small budget, so that the flood is many times larger per second; a
    // handshake timeout far beyond the test, so that only the budget frees
    // the flood's slots.
    let srv = lab.server(&["--max-handshakes", "64", "--handshake-timeout", "60"]);
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let res = with_echo(&lab, async move {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
        let flood = tokio::spawn(async move {
            let mut held = Vec::new();
            while !*stop.borrow() && held.len() < FLOOD_MAX {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
                if let Ok(Ok(mut s)) = timeout(T, sock.connect(proxy)).await {
                    let _ = s.write_all(&[5]).await;
                    held.push(s);
                    count_tx.send_replace(held.len());
                }
            }
            held
        });
        // Well past the budget before the first real client.
        let _ = count.wait_for(|&n| n >= 1_000).await;
        let mut failures = Vec::new();
        for i in 0..30 {
            if let Err(e) = served("127.0.0.2", proxy).await {
                failures.push(format!("#{i}: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Behind the flooding address, while it floods: in whenever its
        // oldest handshake has stalled.
        let mut same = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while same < 10 && tokio::time::Instant::now() < deadline {
            if served("127.0.0.3", proxy).await.is_ok() {
                same += 1;
            }
        }
        stop_tx.send_replace(true);
        let mut flood = flood.await.unwrap();
        let opened = flood.len();
        // The flood was closed (evicted or refused), not left hanging.
        let mut closed = 0;
        for s in &mut flood {
            let mut b = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(1), s.read(&mut b)).await {
                closed += 1;
            }
        }
        (failures, same, opened, closed)
    });
    let (failures, same, opened, closed) = res;
    let tail = || {
        srv.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        failures.is_empty(),
        "{} of 30 legitimate connections failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        tail()
    );
    assert_eq!(
        same,
        10,
        "the flooding address's own clients never got in\n{}",
        tail()
    );
    assert!(opened >= 1_000, "the flood opened only {opened}");
    assert!(
        closed + 64 >= opened,
        "{opened} flood connections, only {closed} closed"
    );
    assert!(srv.log().contains("handshake budget full"), "{}", srv.log());
}

/// With default limits, 5,000 clients connecting at once are all served and
/// held open together, and each echoes.
#[test]
fn five_thousand_concurrent_connects_by_default() {
    if !require_root("five_thousand_concurrent_connects_by_default") {
        return;
    }
    const N: usize = 5000;
    // The server's default is 4/9 of (limit - 128) sessions: 5,000 need
    // 11,378 descriptors; this process holds both ends, 10,000.
    raise_fd_limit(11_400);
    let lab = Lab::new("sfc");
    let srv = lab.server(&[]);
    let idle = rss_kb(srv.child.id());
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let res = with_echo(&lab, async move {
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                tokio::spawn(async move {
                    let msg = format!("client {i}");
                    match timeout(T * 2, connect_echo("127.0.0.1", proxy, msg.as_bytes())).await {
                        Ok(r) => r.map_err(|e| format!("{i}: {e}")),
                        Err(_) => Err(format!("{i}: timed out")),
                    }
                })
            })
            .collect();
        let mut open = Vec::new();
        let mut failures = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(s) => open.push(s),
                Err(e) => failures.push(e),
            }
        }
        // All held at once: each still echoes.
        for (i, s) in open.iter_mut().enumerate() {
            let msg = format!("again {i}");
            let r = async {
                s.write_all(msg.as_bytes()).await?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await?;
                Ok::<_, std::io::Error>(back == msg.as_bytes())
            };
            match timeout(T, r).await {
                Ok(Ok(true)) => {}
                other => failures.push(format!("held {i}: {other:?}")),
            }
        }
        (open.len(), failures)
    });
    let (held, failures) = res;
    assert!(
        failures.is_empty(),
        "{} of {N} failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        srv.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(held, N);
    // Every session closed with the test's runtime: the server gives the
    // burst's memory back (it held about 27 MB after 5,000 before it did).
    let mut after = 0;
    let back = wait_until(Duration::from_secs(20), || {
        after = rss_kb(srv.child.id());
        after <= 2 * idle.max(4_096)
    });
    assert!(
        back,
        "server RSS {after} KB after the burst, {idle} KB idle"
    );
}
