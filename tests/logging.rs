//! Logging: every lock operation logs at the levels a service wants, and the owner token (a
//! credential) never appears in any of it. Its own process, because it installs a global
//! `tracing` subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::LockManager;
use lock_test_support::RedisServer;

const LONG: Duration = Duration::from_secs(30);

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_at_every_level_never_contain_the_token() {
    let server = RedisServer::start();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The only test in this process, so a global subscriber sees every callsite from the start
    // (a scoped one can miss events whose interest another test's thread cached first).
    tracing::subscriber::set_global_default(subscriber).unwrap();
    // Current-thread runtime: spawned releases and watchdogs log on this thread too.
    let mut tokens = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        // Acquire, busy, extend, watchdog renewals, release, stale release, drop-release.
        let g = locks
            .lock("logged")
            .ttl(Duration::from_millis(600))
            .auto_extend(true)
            .acquire()
            .await
            .unwrap();
        tokens.push(g.token().to_owned());
        assert!(locks.try_acquire("logged", LONG).await.unwrap().is_none());
        // Two renewals (every 200 ms), with room for a loaded machine to be late.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(g.extend(LONG).await.unwrap());
        assert!(g.release().await.unwrap());
        let stale = locks
            .try_acquire("logged", Duration::from_millis(5))
            .await
            .unwrap()
            .unwrap();
        tokens.push(stale.token().to_owned());
        let next = locks
            .acquire("logged", LONG, Duration::from_secs(2))
            .await
            .unwrap();
        tokens.push(next.token().to_owned());
        assert!(!stale.release().await.unwrap());
        drop(next);
        // An operator frees a lock whoever holds it: a WARN naming the lock and the evicted.
        let evicted = locks.try_acquire("evicted", LONG).await.unwrap().unwrap();
        tokens.push(evicted.token().to_owned());
        assert!(locks.force_release("evicted").await.unwrap());
        assert!(!evicted.release().await.unwrap());
        locks.shutdown(Duration::from_secs(2)).await.unwrap();
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("acquired") && logs.contains("released"),
        "logging works: {logs}"
    );
    assert!(logs.contains("logged"), "events name the lock");
    assert!(
        logs.contains("lease renewed"),
        "the watchdog's renewals are among the logs checked: {logs}"
    );
    // `<holder>|<ms>|<random>`: the holder id may show, the random part (the secret) never.
    for token in tokens {
        let secret = token.rsplit('|').next().unwrap();
        assert_eq!(secret.len(), 32);
        assert!(!logs.contains(secret), "a token leaked into the logs");
    }
    // Every WARN names its lock, and the holder it concerns.
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warnings.len() >= 3, "{logs}");
    for line in &warnings {
        assert!(line.contains("lock="), "{line}");
        assert!(
            line.contains("holder=") || line.contains("evicted="),
            "{line}"
        );
    }
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("force-released") && l.contains("lock=evicted")),
        "{logs}"
    );
}
