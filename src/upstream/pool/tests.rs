//! The pool's bookkeeping (pure, on tokio's paused clock) and its keeper
//! task with an opener that counts.

use super::*;
use std::sync::atomic::AtomicUsize;

fn cfg(size: usize) -> PoolConfig {
    PoolConfig {
        size,
        lifetime: Duration::from_secs(7),
        keep_warm: Duration::from_secs(300),
    }
}

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn fills_to_its_size_and_refills_what_is_taken() {
    let t0 = Instant::now();
    let mut s: Slots<u32> = Slots::new(cfg(3), t0);
    assert_eq!(s.to_open(t0), 3);
    assert_eq!(s.to_open(t0), 0, "opens under way count");
    for i in 0..3 {
        s.opened(t0, i, t0).unwrap();
    }
    assert_eq!((s.ready(), s.to_open(t0)), (3, 0));
    // Oldest first.
    assert_eq!(s.take(t0 + S), Some(0));
    assert_eq!(s.to_open(t0 + S), 1);
    s.opened(t0 + S, 9, t0 + S).unwrap();
    assert_eq!(s.take(t0 + S), Some(1));
    assert_eq!(s.take(t0 + S), Some(2));
    assert_eq!(s.take(t0 + S), Some(9));
    assert_eq!(s.take(t0 + S), None);
    assert_eq!(s.to_open(t0 + S), 3);
}

#[tokio::test(start_paused = true)]
async fn a_pool_full_already_gives_back_an_extra_connection() {
    let t0 = Instant::now();
    let mut s: Slots<u32> = Slots::new(cfg(1), t0);
    assert_eq!(s.to_open(t0), 1);
    s.opened(t0, 1, t0).unwrap();
    assert_eq!(s.opened(t0, 2, t0), Err(2));
    // Finished out of order: kept oldest first.
    let mut s: Slots<u32> = Slots::new(cfg(2), t0);
    assert_eq!(s.to_open(t0), 2);
    s.opened(t0 + S, 1, t0 + S).unwrap();
    s.opened(t0, 0, t0 + S).unwrap();
    assert_eq!(s.take(t0 + S), Some(0));
}

#[tokio::test(start_paused = true)]
async fn connections_expire_at_their_lifetime_counted_from_the_open() {
    let t0 = Instant::now();
    let mut s: Slots<u32> = Slots::new(cfg(2), t0);
    s.to_open(t0);
    s.opened(t0, 0, t0 + S).unwrap();
    s.opened(t0 + 2 * S, 1, t0 + 2 * S).unwrap();
    assert_eq!(s.next_wake(t0 + 2 * S), Some(t0 + 7 * S));
    assert!(s.expire(t0 + 7 * S - Duration::from_millis(1)).is_empty());
    assert_eq!(s.expire(t0 + 7 * S), vec![0]);
    assert_eq!(s.next_wake(t0 + 7 * S), Some(t0 + 9 * S));
    // A take past the lifetime skips (drops) the expired one.
    assert_eq!(s.take(t0 + 9 * S), None);
    // Opened too slowly to be of use: given back.
    assert_eq!(s.opened(t0, 5, t0 + 7 * S), Err(5));
}

#[tokio::test(start_paused = true)]
async fn goes_cold_without_flows_and_warm_again_on_the_next() {
    let t0 = Instant::now();
    let mut s: Slots<u32> = Slots::new(cfg(2), t0);
    let cold = t0 + Duration::from_secs(300);
    assert_eq!(s.to_open(cold), 0, "no flow for keep_warm: no refill");
    assert_eq!(s.next_wake(cold), None);
    assert_eq!(s.take(cold), None);
    assert_eq!(s.to_open(cold), 2, "a flow warms it again");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_one_try_at_a_time() {
    let t0 = Instant::now();
    let mut s: Slots<u32> = Slots::new(cfg(4), t0);
    assert_eq!(s.to_open(t0), 4);
    for _ in 0..4 {
        s.failed(t0);
    }
    // Four failures in a row: 8 s pause.
    assert_eq!(s.to_open(t0 + 7 * S), 0);
    assert_eq!(s.next_wake(t0), Some(t0 + 8 * S));
    assert_eq!(s.to_open(t0 + 8 * S), 1, "one try while failing");
    assert_eq!(s.to_open(t0 + 8 * S), 0);
    s.failed(t0 + 8 * S);
    assert_eq!(s.next_wake(t0 + 8 * S), Some(t0 + 24 * S));
    for _ in 0..10 {
        s.failed(t0);
    }
    assert_eq!(s.next_wake(t0), Some(t0 + 30 * S), "capped");
    s.opened(t0 + 30 * S, 1, t0 + 30 * S).unwrap();
    assert_eq!(s.to_open(t0 + 30 * S), 3, "answering again: all at once");
}

#[tokio::test(start_paused = true)]
async fn flush_empties_it() {
    let t0 = Instant::now();
    let mut s: Slots<u32> = Slots::new(cfg(2), t0);
    s.to_open(t0);
    s.opened(t0, 0, t0).unwrap();
    s.opened(t0, 1, t0).unwrap();
    assert_eq!(s.flush(), vec![0, 1]);
    assert_eq!(s.to_open(t0), 2);
}

/// The keeper with an opener that hands out numbers: filled at start,
/// refilled after a take, each connection replaced at its lifetime, and
/// nothing opened any more once the pool is dropped.
#[tokio::test(start_paused = true)]
async fn keeper_fills_refills_replaces_and_stops() {
    let opened = Arc::new(AtomicUsize::new(0));
    let n = opened.clone();
    let open: Opener<usize, String> = Arc::new(move || {
        let n = n.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(n.fetch_add(1, Ordering::SeqCst))
        })
    });
    let pool = Pool::new(cfg(2), "test".into(), open);
    let settle = || tokio::time::sleep(Duration::from_millis(100));
    settle().await;
    assert_eq!((pool.ready(), opened.load(Ordering::SeqCst)), (2, 2));
    assert_eq!(pool.take(|_| true), Some(0));
    settle().await;
    assert_eq!((pool.ready(), opened.load(Ordering::SeqCst)), (2, 3));
    // One found closed by the proxy at take: skipped, both replaced.
    assert_eq!(pool.take(|c| *c != 1), Some(2));
    settle().await;
    assert_eq!((pool.ready(), opened.load(Ordering::SeqCst)), (2, 5));
    // Past the lifetime, replaced.
    tokio::time::sleep(Duration::from_secs(7)).await;
    settle().await;
    assert_eq!((pool.ready(), opened.load(Ordering::SeqCst)), (2, 7));
    pool.flush();
    settle().await;
    assert_eq!((pool.ready(), opened.load(Ordering::SeqCst)), (2, 9));
    drop(pool);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(opened.load(Ordering::SeqCst), 9, "opened after the drop");
}

/// An opener that fails: tried again with pauses, not in a loop.
#[tokio::test(start_paused = true)]
async fn keeper_does_not_hammer_a_proxy_that_is_down() {
    let tries = Arc::new(AtomicUsize::new(0));
    let n = tries.clone();
    let open: Opener<usize, String> = Arc::new(move || {
        let n = n.clone();
        Box::pin(async move {
            n.fetch_add(1, Ordering::SeqCst);
            Err("refused".to_string())
        })
    });
    let pool = Pool::new(cfg(4), "down".into(), open);
    // 4 at start (4 failures: an 8 s pause), then 1 at 8 s (16 s pause),
    // 1 at 24 s, the next at 54 s.
    tokio::time::sleep(Duration::from_millis(53_500)).await;
    assert_eq!(tries.load(Ordering::SeqCst), 6);
    tokio::time::sleep(S).await;
    assert_eq!(tries.load(Ordering::SeqCst), 7);
    assert_eq!(pool.ready(), 0);
}

/// Each thread that takes gets a pool of its own, kept by its own runtime:
/// the first at once, another at its first take; `ready` counts all.
#[test]
fn each_thread_has_its_own_pool() {
    let opened = Arc::new(AtomicUsize::new(0));
    let n = opened.clone();
    let open: Opener<usize, String> = Arc::new(move || {
        let n = n.clone();
        Box::pin(async move { Ok(n.fetch_add(1, Ordering::SeqCst)) })
    });
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let settle = || async { tokio::time::sleep(Duration::from_millis(50)).await };
    let main = rt();
    let pools = Arc::new(main.block_on(async { Pools::new(cfg(2), "t".into(), open) }));
    main.block_on(settle());
    assert_eq!(pools.ready(), 2);
    let mine = main.block_on(async { pools.here() });
    let p = pools.clone();
    let (other, took) = std::thread::spawn(move || {
        let rt = rt();
        rt.block_on(async {
            let here = p.here();
            settle().await;
            let took = here.take(|_| true);
            settle().await;
            (here, took)
        })
    })
    .join()
    .unwrap();
    assert!(!Arc::ptr_eq(&mine, &other), "one pool for two threads");
    assert!(took.is_some(), "the other thread's pool did not fill");
    assert_eq!(
        mine.ready(),
        2,
        "the other thread took from the first's pool"
    );
    assert_eq!(opened.load(Ordering::SeqCst), 5);
}
