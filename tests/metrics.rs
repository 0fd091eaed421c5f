//! Metrics (feature `metrics`): the names of the crate docs, with labels bounded by the kind of
//! lock, served for Prometheus and scraped over HTTP. Its own process: it installs the global
//! recorder.

use std::io::{Read, Write};
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockManager};
use lock_test_support::{free_port, RedisServer};
use metrics_exporter_prometheus::PrometheusBuilder;

const TTL: Duration = Duration::from_secs(5);

#[distributed_lock(key = "invoices:{tenant}", ttl = "5s", manager = locks)]
async fn bill(locks: &LockManager, tenant: u64) -> Result<u64, LockError> {
    Ok(tenant)
}

/// `GET /metrics` from the exporter on `port`.
fn scrape(port: u16) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body
}

/// The value of the series `name` whose labels include every one of `labels`.
fn value(scraped: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scraped.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.starts_with('{') && labels.iter().all(|l| rest.contains(l))) {
            return None;
        }
        value.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_for_prometheus_with_bounded_labels() {
    let port = free_port();
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()
        .unwrap();
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();

    // The attribute labels by its key template: 20 tenants, one series.
    for tenant in 0..20 {
        assert_eq!(bill(&locks, tenant).await.unwrap(), tenant);
    }
    // The runtime API labels by the name up to its first `:`.
    let held = locks.try_acquire("reports:1", TTL).await.unwrap().unwrap();
    assert!(matches!(
        locks.acquire("reports:1", TTL, Duration::ZERO).await,
        Err(LockError::Busy { .. })
    ));
    assert!(matches!(
        locks
            .acquire("reports:1", TTL, Duration::from_millis(50))
            .await,
        Err(LockError::Timeout { .. })
    ));
    assert!(held.extend(TTL).await.unwrap());
    // Or by a label of the caller's choice.
    let labelled = locks
        .lock("export-20261126")
        .metrics_label("exports")
        .ttl(TTL)
        .acquire()
        .await
        .unwrap();
    // Taken away by an operator: the next renewal finds it lost.
    assert!(locks.force_release("reports:1").await.unwrap());
    assert!(!held.extend(TTL).await.unwrap());

    let scraped = tokio::task::spawn_blocking(move || scrape(port))
        .await
        .unwrap();
    eprintln!("{scraped}");
    let template = r#"lock="invoices:{}""#;
    assert_eq!(
        value(
            &scraped,
            "lock_acquire_total",
            &[template, r#"outcome="acquired""#]
        ),
        Some(20.0)
    );
    assert!(!scraped.contains("invoices:7"), "one series per template");
    for (outcome, n) in [("acquired", 1.0), ("busy", 1.0), ("timeout", 1.0)] {
        let outcome = format!(r#"outcome="{outcome}""#);
        assert_eq!(
            value(
                &scraped,
                "lock_acquire_total",
                &[r#"lock="reports""#, &outcome]
            ),
            Some(n),
            "{outcome}"
        );
    }
    assert_eq!(
        value(&scraped, "lock_acquire_total", &[r#"lock="exports""#]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scraped,
            "lock_extend_total",
            &[r#"lock="reports""#, r#"outcome="renewed""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scraped,
            "lock_extend_total",
            &[r#"lock="reports""#, r#"outcome="not_ours""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&scraped, "lock_lost_total", &[r#"lock="reports""#]),
        Some(1.0)
    );
    // Held now: the reports guard (not yet ended) and the export.
    assert_eq!(
        value(&scraped, "lock_held", &[r#"lock="reports""#]),
        Some(1.0)
    );
    assert_eq!(
        value(&scraped, "lock_held", &[r#"lock="exports""#]),
        Some(1.0)
    );
    assert_eq!(value(&scraped, "lock_held", &[template]), Some(0.0));
    assert_eq!(
        value(&scraped, "lock_wait_seconds_count", &[template]),
        Some(20.0)
    );
    assert_eq!(
        value(&scraped, "lock_hold_seconds_count", &[template]),
        Some(20.0)
    );
    drop(held);
    assert!(labelled.release().await.unwrap());
}
