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
    losses_leaders_waiters_and_bounds(port, &server).await;
}

/// Scrapes until `check` holds of what is served, or panics with the last scrape after 20 s.
async fn scrape_until(port: u16, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scraped = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .unwrap();
        if check(&scraped) {
            return scraped;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not served within 20 s:\n{scraped}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The on-call engineer's metrics: every lost lease counted once with its reason (a renewal
/// that finds it taken, a lease that ran out before its release, a hold past `max_hold`, a
/// leader's term), leaders' state and changes, waiters now, the wait of a timeout, a bound on
/// the `lock` label, and a description and unit for each metric.
async fn losses_leaders_waiters_and_bounds(port: u16, server: &RedisServer) {
    let locks = LockManager::connect(&server.url()).await.unwrap();

    // Taken away by an operator, then found so by a renewal, a fencing token and the release:
    // one loss, evicted (force.lua's record says so).
    let taken = locks.try_acquire("taken:1", TTL).await.unwrap().unwrap();
    assert!(locks.force_release("taken:1").await.unwrap());
    assert!(!taken.extend(TTL).await.unwrap());
    assert!(taken.fencing_token().await.is_err());
    assert!(!taken.release().await.unwrap());

    // Deleted by another client, found so by a renewal before its deadline: not_ours.
    let deleted = locks.try_acquire("deleted:1", TTL).await.unwrap().unwrap();
    let _: i64 = server.query(redis::cmd("DEL").arg(locks.key_for("deleted:1")));
    assert!(!deleted.extend(TTL).await.unwrap());

    // Held past its ttl without a watchdog, then released: one loss, expired.
    let short = locks
        .lock("short:1")
        .ttl(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    short.lost().await;
    // The local deadline ends a little before the server's expiry (the clock-drift margin):
    // wait until the key is gone there too.
    let gone_by = std::time::Instant::now() + Duration::from_secs(20);
    while server.query::<i64>(redis::cmd("EXISTS").arg(locks.key_for("short:1"))) == 1 {
        assert!(std::time::Instant::now() < gone_by, "the key expires");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!short.release().await.unwrap());

    // Renewed until max_hold, then held on until it ran out: one loss, max_hold.
    let capped = locks
        .lock("capped:1")
        .ttl(TTL)
        .auto_extend(true)
        .max_hold(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    capped.lost().await;

    // A stuck holder shows: the oldest hold's age grows while it is held, and is 0 once none
    // of that label is.
    let stuck = locks
        .try_acquire("stuck:1", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    scrape_until(port, "the stuck hold's age", |s| {
        value(s, "lock_oldest_held_seconds", &[r#"lock="stuck""#]).is_some_and(|age| age >= 1.0)
    })
    .await;
    assert!(stuck.release().await.unwrap());
    scrape_until(port, "no stuck hold", |s| {
        value(s, "lock_oldest_held_seconds", &[r#"lock="stuck""#]) == Some(0.0)
    })
    .await;

    // A waiter is counted while it waits; a timeout records its wait.
    let holder = locks.try_acquire("queue:1", TTL).await.unwrap().unwrap();
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire("queue:1", TTL, Duration::from_secs(30)).await })
    };
    scrape_until(port, "one waiter", |s| {
        value(s, "lock_waiting", &[r#"lock="queue""#]) == Some(1.0)
    })
    .await;
    assert!(holder.release().await.unwrap());
    let granted = waiter.await.unwrap().unwrap();
    assert!(granted.release().await.unwrap());

    // A leader elected, then resigning.
    let leader = locks.leader("elect:1").ttl(TTL).start();
    let mut leads = leader.watch();
    tokio::time::timeout(Duration::from_secs(20), leads.wait_for(|&l| l))
        .await
        .expect("elected within 20 s")
        .unwrap();
    scrape_until(port, "the leader", |s| {
        value(s, "lock_leader", &[r#"lock="elect""#]) == Some(1.0)
    })
    .await;
    leader.resign().await.unwrap();

    // At most 2 labels on this manager: the third and later are `_other`.
    let bounded = LockManager::builder()
        .url(&server.url())
        .metrics_label_limit(2)
        .build()
        .await
        .unwrap();
    for i in 0..5 {
        let name = format!("batch-{i}");
        let guard = bounded.try_acquire(&name, TTL).await.unwrap().unwrap();
        assert!(guard.release().await.unwrap());
    }

    let scraped = scrape_until(port, "max_hold's loss", |s| {
        value(s, "lock_lost_total", &[r#"lock="capped""#]).is_some()
    })
    .await;
    eprintln!("{scraped}");
    let lost = |lock: &str, reason: &str| {
        let (lock, reason) = (format!(r#"lock="{lock}""#), format!(r#"reason="{reason}""#));
        value(&scraped, "lock_lost_total", &[&lock, &reason])
    };
    assert_eq!(lost("taken", "evicted"), Some(1.0), "counted once");
    assert_eq!(lost("deleted", "not_ours"), Some(1.0));
    assert_eq!(lost("short", "expired"), Some(1.0));
    assert_eq!(lost("capped", "max_hold"), Some(1.0));
    for lock in ["taken", "deleted", "short", "capped"] {
        let lock = format!(r#"lock="{lock}""#);
        let series = scraped
            .lines()
            .filter(|l| l.starts_with("lock_lost_total{") && l.contains(&lock))
            .count();
        assert_eq!(series, 1, "one reason for {lock}");
    }
    assert_eq!(
        value(&scraped, "lock_waiting", &[r#"lock="queue""#]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &scraped,
            "lock_wait_seconds_count",
            &[r#"lock="reports""#, r#"outcome="timeout""#]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&scraped, "lock_leader", &[r#"lock="elect""#]),
        Some(0.0)
    );
    for change in ["elected", "resigned"] {
        let change = format!(r#"change="{change}""#);
        assert_eq!(
            value(
                &scraped,
                "lock_leader_changes_total",
                &[r#"lock="elect""#, &change]
            ),
            Some(1.0),
            "{change}"
        );
    }
    assert_eq!(
        value(&scraped, "lock_acquire_total", &[r#"lock="_other""#]),
        Some(3.0)
    );
    for first_two in ["batch-0", "batch-1"] {
        assert!(scraped.contains(&format!(r#"lock="{first_two}""#)));
    }
    assert!(!scraped.contains(r#"lock="batch-2""#));
    for (name, kind) in [
        ("lock_acquire_total", "counter"),
        ("lock_lost_total", "counter"),
        ("lock_waiting", "gauge"),
        ("lock_leader", "gauge"),
        ("lock_oldest_held_seconds", "gauge"),
        ("lock_leader_changes_total", "counter"),
        ("lock_wait_seconds", "summary"),
    ] {
        assert!(
            scraped.contains(&format!("# HELP {name} ")),
            "{name} has a description"
        );
        assert!(
            scraped.contains(&format!("# TYPE {name} {kind}")),
            "{name} is a {kind}"
        );
    }
}
