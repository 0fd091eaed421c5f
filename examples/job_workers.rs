//! Several worker processes run the same schedule against one Redis; `#[distributed_lock]`
//! decides who runs what.
//!
//! ```sh
//! cargo run --example job_workers -- --workers 4      # REDIS_URL, default redis://127.0.0.1:6379
//! ```
//!
//! The example re-executes itself once per worker. Every worker fires the same ticks at the
//! same moments; on each tick it calls two annotated handlers:
//!
//! - `nightly_report`: `on_busy = "skip"`: one worker runs it, the others skip it;
//! - `tenant_job`: keyed `tenant:{tenant}` with `wait`: the workers queue up and run it one
//!   after another.
//!
//! The parent prints the merged timeline with each run's fencing token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::{distributed_lock, LockError, LockManager};
use lock_examples::{flag, run_workers};

const TICKS: u64 = 3;
const TICK_EVERY: Duration = Duration::from_millis(1500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[distributed_lock(key = "reports:nightly", ttl = "10s", on_busy = "skip", min_hold = "1s", guard = lock)]
async fn nightly_report(tick: u64) -> Result<Option<u64>, LockError> {
    tokio::time::sleep(Duration::from_millis(100)).await; // the report
    let _ = tick;
    Ok(Some(lock.fencing_token().await?))
}

#[distributed_lock(key = "tenant:{tenant}", ttl = "10s", wait = "5s", guard = lock)]
async fn tenant_job(tenant: u64) -> Result<u64, LockError> {
    tokio::time::sleep(Duration::from_millis(50)).await; // the batch
    Ok(lock.fencing_token().await?)
}

async fn worker(id: u64, start_ms: u64, url: &str) -> Result<(), LockError> {
    let locks = LockManager::builder()
        .url(url)
        .key_prefix("job_workers:")
        .build()
        .await?;
    lock_core::set_default_manager(locks.clone());
    let say = |what: String| {
        println!(
            "{:>6} worker {id}  {what}",
            now_ms().saturating_sub(start_ms)
        )
    };
    for tick in 0..TICKS {
        let at = start_ms + tick * TICK_EVERY.as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
        match nightly_report(tick).await? {
            Some(fence) => say(format!(
                "tick {tick}  nightly report  RAN      fencing token {fence}"
            )),
            None => say(format!(
                "tick {tick}  nightly report  skipped  (another worker has it)"
            )),
        }
        let tenant = tick % 2 + 1;
        let asked = now_ms();
        let fence = tenant_job(tenant).await?;
        say(format!(
            "tick {tick}  tenant:{tenant} job    ran      fencing token {fence}, waited {} ms",
            now_ms().saturating_sub(asked).saturating_sub(50)
        ));
    }
    locks.shutdown(Duration::from_secs(2)).await
}

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if let (Some(id), Some(start)) = (flag("--worker"), flag("--start")) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        if let Err(e) = rt.block_on(worker(id, start, &url)) {
            eprintln!("worker {id}: {e}");
            std::process::exit(1);
        }
        return;
    }

    let workers = flag("--workers").unwrap_or(4);
    // Check Redis first: the in-process backend cannot exclude separate processes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(LockManager::connect(&url)) {
        eprintln!("job_workers needs Redis at {url} ({e}); start one with `redis-server` or set REDIS_URL");
        std::process::exit(1);
    }
    println!("{workers} worker processes, {TICKS} ticks, Redis at {url}\n");
    println!("  ms   who       what");
    let start = now_ms() + 500; // time for the workers to start
    let (printed, all_ok) = run_workers(workers, &["--start".to_owned(), start.to_string()]);
    let failed = !all_ok;
    let mut lines: Vec<(u64, String)> = printed
        .into_iter()
        .map(|line| {
            let ms = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            (ms, line)
        })
        .collect();
    lines.sort();
    let mut last_tick = None;
    for (_, line) in lines {
        let tick = line.split("tick ").nth(1).and_then(|t| t.chars().next());
        if last_tick.is_some() && tick != last_tick {
            println!();
        }
        last_tick = tick;
        println!("{line}");
    }
    // The workers' keys, fencing counters included.
    match lock_examples::remove_keys(&url, "job_workers:") {
        Ok(n) => println!("\nremoved the example's {n} key(s)"),
        Err(e) => eprintln!("could not remove the example's keys: {e}"),
    }
    if failed {
        std::process::exit(1);
    }
}
