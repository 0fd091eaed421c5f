//! Annotated jobs on a real cron scheduler (tokio-cron-scheduler), in several processes at
//! once: each tick, exactly one process runs the report and the others skip it.
//!
//! ```sh
//! cargo run -p lock-tests --example cron -- --workers 3     # about 12 s; needs Redis (REDIS_URL)
//! ```
//!
//! The job keeps its lock at least 1 s (`min_hold`), so a process whose clock or scheduler runs
//! a little late does not run a tick another process already ran. `min_hold` must stay shorter
//! than the schedule period (here 2 s): as long as it, the lock would still be held at the next
//! tick, and every process, the last runner included, would skip it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::{distributed_lock, LockError, LockManager};
use lock_test_support::{flag, run_workers};
use tokio_cron_scheduler::{Job, JobScheduler};

/// Every 2 s, on one process: `Some(fence)` when this one ran it.
#[distributed_lock(key = "report", ttl = "10s", min_hold = "1s", on_busy = "skip")]
async fn report() -> Result<Option<u64>, LockError> {
    tokio::time::sleep(Duration::from_millis(100)).await; // the work
    Ok(Some(1))
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn worker(id: u64, url: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let locks = LockManager::builder()
        .url(url)
        .key_prefix("cron_example:")
        .holder_id(format!("worker-{id}"))
        .build()
        .await?;
    lock_core::set_default_manager(locks.clone());
    let scheduler = JobScheduler::new().await?;
    scheduler
        .add(Job::new_async("*/2 * * * * *", move |_, _| {
            Box::pin(async move {
                let tick = now_s();
                match report().await {
                    Ok(Some(_)) => println!("{tick} worker {id}  RAN"),
                    Ok(None) => println!("{tick} worker {id}  skipped"),
                    Err(e) => println!("{tick} worker {id}  error: {e}"),
                }
            })
        })?)
        .await?;
    scheduler.start().await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    locks.shutdown(Duration::from_secs(2)).await?;
    Ok(())
}

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(id) = flag("--worker") {
        if let Err(e) = rt.block_on(worker(id, &url)) {
            eprintln!("worker {id}: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = rt.block_on(LockManager::connect(&url)) {
        eprintln!("cron needs Redis at {url} ({e}); start one or set REDIS_URL");
        std::process::exit(1);
    }
    let workers = flag("--workers").unwrap_or(3);
    println!("{workers} processes, a report every 2 s for 10 s, Redis at {url}\n");
    let (mut lines, _) = run_workers(workers, &[]);
    lines.sort();
    let mut last = None;
    for line in &lines {
        let tick = line.split_whitespace().next();
        if last.is_some() && tick != last {
            println!();
        }
        last = tick;
        println!("{line}");
    }
    let ticks: std::collections::BTreeMap<&str, usize> = lines
        .iter()
        .filter(|l| l.ends_with("RAN"))
        .fold(Default::default(), |mut m, l| {
            *m.entry(l.split_whitespace().next().unwrap_or(""))
                .or_default() += 1;
            m
        });
    let twice = ticks.values().filter(|&&n| n > 1).count();
    println!(
        "\n{} ticks ran, {twice} of them on more than one process",
        ticks.len()
    );
    match lock_test_support::remove_keys(&url, "cron_example:") {
        Ok(n) => println!("removed the example's {n} key(s)"),
        Err(e) => eprintln!("could not remove the example's keys: {e}"),
    }
}
