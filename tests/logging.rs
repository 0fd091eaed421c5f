//! Logging: every lock operation logs at the levels a service wants, and the owner token (a
//! credential) never appears in any of it. Its own process, because it installs a global
//! `tracing` subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::LockManager;
use lock_test_support::{RedisCluster, RedisServer, Sentinels};

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
    // `<holder>|<ms>|<lease>|<random>`: the holder id may show, the random part (the secret) never.
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
    // The evicted holder's own log says an operator did it, and who.
    assert!(
        warnings.iter().any(|l| l.contains("evicted by an operator")
            && l.contains("lock=evicted")
            && l.contains("evicted_by=")),
        "{logs}"
    );

    // A name cannot forge a log line: its control characters are escaped.
    captured.0.lock().unwrap().clear();
    rt.block_on(async {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        let forged = "x\n2026-12-07T00:00:00Z  WARN forged";
        let guard = locks.try_acquire(forged, LONG).await.unwrap().unwrap();
        assert!(locks.force_release(forged).await.unwrap());
        assert!(!guard.release().await.unwrap());
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("lock=x\\n2026"), "{logs}");
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-12-07T00:00:00Z")),
        "{logs}"
    );

    // An outage is one event: the server is killed for 3 s while a renewed lease and three
    // waiters use it.
    let mut down = RedisServer::start();
    captured.0.lock().unwrap().clear();
    rt.block_on(async {
        let locks = LockManager::connect(&down.url()).await.unwrap();
        let held = locks
            .lock("outage:held")
            .ttl(Duration::from_millis(1500))
            .auto_extend(true)
            .acquire()
            .await
            .unwrap();
        let busy = locks
            .try_acquire("outage:busy", LONG)
            .await
            .unwrap()
            .unwrap();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let locks = locks.clone();
                tokio::spawn(async move {
                    let guard = locks
                        .acquire("outage:busy", LONG, Duration::from_secs(20))
                        .await
                        .unwrap();
                    guard.release().await.unwrap();
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        down.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Restarted empty: the waiters take the lock in turn, the renewed lease is gone.
        down.restart();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(30), waiter)
                .await
                .expect("every waiter gets the lock after the outage")
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(30), held.lost())
            .await
            .expect("the renewed lease is lost with the server's data");
        drop(busy);
        locks.shutdown(Duration::from_secs(2)).await.unwrap();
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let count = |what: &str| logs.lines().filter(|l| l.contains(what)).count();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ")).collect();
    eprintln!("{}", warnings.join("\n"));
    assert_eq!(count("Redis unreachable"), 1, "{logs}");
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("Redis unreachable") && l.contains(&format!("{}", down.port()))),
        "the WARN names the server"
    );
    assert_eq!(count("Redis answering again"), 1, "{logs}");
    assert!(count("lease renewal failed; retrying") <= 1, "{logs}");
    let held_warnings = warnings
        .iter()
        .filter(|l| l.contains("lock=outage:held"))
        .count();
    assert!(
        held_warnings <= 3,
        "first failure and the loss, not a line per retry: {held_warnings}"
    );
    // The rest: the lost lease's two losses (its deadline, then the key found gone) and the
    // two guards' releases that found their keys gone with the server's data. Retries,
    // failed attempts and their clean-ups are not warnings.
    assert!(
        warnings.len() <= 8,
        "an outage, not a line per lock and retry: {} warnings",
        warnings.len()
    );
    assert!(
        !warnings
            .iter()
            .any(|l| l.contains("retrying while") || l.contains("clean-up")),
        "the waiters' failed attempts are not warnings"
    );

    // Three waiters for 3 s: their retries back off (about 7 each), where a fixed 50 ms pause
    // made about 60 each.
    let retries = count("retrying while the wait lasts");
    eprintln!("{} warnings, {retries} retries", warnings.len());
    assert!((3..=45).contains(&retries), "{retries} retries");

    // A Redlock instance that stops answering (paused, its connections open) is one event
    // too: one WARN when it is counted out, one when it answers again.
    let instances: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    captured.0.lock().unwrap().clear();
    rt.block_on(async {
        let urls: Vec<String> = instances.iter().map(RedisServer::url).collect();
        let locks = LockManager::builder().redlock(&urls).build().await.unwrap();
        let ttl = Duration::from_secs(2);
        instances[2].pause();
        // Paused for longer than the per-instance timeout (200 ms for a 2 s lease), with
        // commands in flight to it.
        let paused_until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut i = 0;
        while tokio::time::Instant::now() < paused_until {
            i += 1;
            let guard = locks
                .acquire(&format!("paused:{i}"), ttl, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(guard.release().await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        instances[2].resume();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&captured.0.lock().unwrap()).contains("answering again") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the instance is heard again"
            );
            i += 1;
            let guard = locks
                .acquire(&format!("resumed:{i}"), ttl, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(guard.release().await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        locks.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    let redlock_logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let count_in = |what: &str| redlock_logs.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        count_in("Redlock instance 2 not answering"),
        1,
        "{redlock_logs}"
    );
    assert_eq!(
        count_in("Redlock instance 2 answering again"),
        1,
        "{redlock_logs}"
    );

    // A cluster with one master paused while the others answer, and Sentinel's primary
    // paused: each is one event too, a WARN naming the deployment when its commands stop
    // getting through and one when they all get through again, not one per answer in between.
    let cluster = RedisCluster::start(3, 0);
    // The healthy masters serve their slots while one is paused, and the paused one is not
    // failed over (no replicas, and a node timeout far above the pause).
    for node in &cluster.nodes {
        for (setting, value) in [
            ("cluster-require-full-coverage", "no"),
            ("cluster-node-timeout", "15000"),
        ] {
            let _: () = node.query(redis::cmd("CONFIG").arg("SET").arg(setting).arg(value));
        }
    }
    let primary = RedisServer::start();
    let sentinels = Sentinels::start(1, "locks", primary.port(), 0);
    for deployment in ["cluster", "sentinel"] {
        captured.0.lock().unwrap().clear();
        rt.block_on(async {
            let builder = LockManager::builder().response_timeout(Duration::from_millis(200));
            let locks = match deployment {
                "cluster" => builder.cluster(cluster.urls()),
                _ => builder.sentinel("locks", sentinels.urls()),
            }
            .build()
            .await
            .unwrap();
            // A name on the paused server, and (on the cluster) one on a master that answers.
            let (paused, answering) = match deployment {
                "cluster" => {
                    let on = |name: &str| cluster.master_of(&locks.key_for(name));
                    let answering = (0..100)
                        .map(|i| format!("answering:{i}"))
                        .find(|name| on(name) != on("paused:0"))
                        .unwrap();
                    (&cluster.nodes[on("paused:0")], Some(answering))
                }
                _ => (&primary, None),
            };
            let ttl = Duration::from_secs(5);
            paused.pause();
            // Attempts on the paused server fail (each after its client's retries), twice,
            // while the others are answered, many times, in between.
            let failing = {
                let locks = locks.clone();
                tokio::spawn(async move {
                    for _ in 0..2 {
                        assert!(locks.try_acquire("paused:0", ttl).await.is_err());
                    }
                })
            };
            while !failing.is_finished() {
                if let Some(name) = &answering {
                    let guard = locks.try_acquire(name, ttl).await.unwrap().unwrap();
                    assert!(guard.release().await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failing.await.unwrap();
            paused.resume();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !String::from_utf8_lossy(&captured.0.lock().unwrap()).contains("answering again")
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{deployment}: heard again"
                );
                for name in std::iter::once("paused:0").chain(answering.as_deref()) {
                    if let Ok(Some(guard)) = locks.try_acquire(name, ttl).await {
                        assert!(guard.release().await.unwrap());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            locks.shutdown(Duration::from_secs(5)).await.unwrap();
        });
        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines =
            |what: &str| -> Vec<&str> { logs.lines().filter(|l| l.contains(what)).collect() };
        let (down, back) = (lines("Redis unreachable"), lines("Redis answering again"));
        assert_eq!((down.len(), back.len()), (1, 1), "{deployment}:\n{logs}");
        let named = match deployment {
            "cluster" => "cluster of redis://127.0.0.1:",
            _ => "master `locks` of sentinels",
        };
        assert!(down[0].contains(named) && back[0].contains(named), "{logs}");
    }
}
