//! Lock metrics served for Prometheus: `cargo run -p lock-tests --example metrics`, then scrape
//! `http://127.0.0.1:9898/metrics` (`METRICS_PORT` to change it) while it runs; it also prints
//! one scrape itself. Needs Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`); it uses keys of
//! its own and deletes them before it exits.

use std::io::{Read, Write};
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockManager};
use metrics_exporter_prometheus::PrometheusBuilder;

#[distributed_lock(key = "invoices:{tenant}", ttl = "10s", on_busy = "skip", manager = locks)]
async fn bill(locks: &LockManager, tenant: u64) -> Result<Option<u64>, LockError> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(Some(tenant))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let port: u16 = std::env::var("METRICS_PORT").map_or(Ok(9898), |p| p.parse())?;
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()?;
    let locks = LockManager::builder()
        .url(&url)
        .key_prefix("metrics_example:")
        .build()
        .await?;

    // Two "replicas" billing the same tenants: one runs each, the other skips.
    let (a, b) = (locks.clone(), locks.clone());
    let run = |locks: LockManager| async move {
        let mut ran = 0;
        for tenant in 0..10 {
            ran += usize::from(bill(&locks, tenant).await?.is_some());
        }
        Ok::<_, LockError>(ran)
    };
    let (ran_a, ran_b) = tokio::try_join!(run(a), run(b))?;
    println!(
        "billed {} tenants, skipped {}",
        ran_a + ran_b,
        20 - ran_a - ran_b
    );
    let report = locks
        .try_acquire("reports:daily", Duration::from_secs(10))
        .await?;
    if let Err(e) = locks
        .acquire("reports:daily", Duration::from_secs(10), Duration::ZERO)
        .await
    {
        println!("as expected: {e}");
    }

    let scraped = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut body = String::new();
        conn.read_to_string(&mut body)?;
        Ok(body)
    })
    .await??;
    println!("\nscraped from http://127.0.0.1:{port}/metrics (quantile lines left out):");
    for line in scraped
        .lines()
        .filter(|l| l.starts_with("lock_") && !l.contains("quantile"))
    {
        println!("  {line}");
    }

    drop(report);
    locks.shutdown(Duration::from_secs(2)).await?;
    let removed = tokio::task::spawn_blocking(move || {
        lock_test_support::remove_keys(&url, "metrics_example:")
    })
    .await??;
    println!("\nremoved the example's {removed} key(s)");
    Ok(())
}
