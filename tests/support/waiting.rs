//! Waiting in tests: for a condition with a deadline, for an exact number of polls, and on
//! one clock for every process.

use std::time::Duration;

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
