//! Waiting in tests: for a condition with a deadline, for an exact number of polls, on one
//! clock for every process, and for waiters to be asleep.

use std::time::Duration;

use tokio::time::Instant;

use crate::RedisServer;

/// Polls `check` every few milliseconds until it holds or `within` runs out; returns whether
/// it held. For conditions that cannot be awaited directly (a key expiring in Redis).
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls `fut` at most `polls` times, then drops it: cancellation at an exact await point,
/// independent of timer resolution and machine speed. `None` when it was cancelled.
pub async fn cancel_after_polls<F: std::future::Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut done = 0;
    std::future::poll_fn(|cx| {
        if done == polls {
            return std::task::Poll::Ready(None);
        }
        done += 1;
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process of this machine, so that
/// timestamps taken by different processes (the leader-election checker's) compare.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Waits until, on every one of `nodes`, the lock whose key and channel is `key` is marked by a
/// waiter (its value has the `*`) and has a subscriber, and no attempt (`SET`, `EVALSHA` or
/// `EVAL`) has reached any of them for 200 ms: the waiters are asleep.
pub async fn settled(nodes: &[RedisServer], key: &str) {
    let attempts = || -> u64 {
        nodes
            .iter()
            .map(|n| {
                ["set", "evalsha", "eval"]
                    .map(|c| n.command_calls(c))
                    .iter()
                    .sum::<u64>()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = attempts();
    let mut quiet = 0;
    while quiet < 2 {
        assert!(Instant::now() < deadline, "waiters never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = attempts();
        let waited_on = nodes.iter().all(|n| {
            let value: Option<String> = n.query(redis::cmd("GET").arg(key));
            value.is_some_and(|v| v.contains('*')) && n.subscribers(key) >= 1
        });
        quiet = if waited_on && now == last {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
}
