//! Keys shared with other clients of the same protocol (`SET key token NX PX ttl`, released by
//! comparing the token): redis-py's `Lock` (redsync and node-redlock do the same) and lock-core
//! versions from before holder ids. lock-core never rewrites their values, so their releases
//! keep working, and its waiters take such a lock by polling and at its lease end.
//!
//! Needs redis-py (`pip install redis`); `.ci/run` installs it and requires these tests.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Stdio};
use std::time::Duration;

use lock_core::LockManager;
use lock_test_support::{eval_cmd, redis_py, RedisServer};

/// Runs `script` in python3 with redis-py, `PORT` and `KEY` set; `None` without redis-py.
fn python(script: &str, port: u16, key: &str) -> Option<Child> {
    let mut python = redis_py()?;
    let child = python
        .args(["-c", script])
        .env("PORT", port.to_string())
        .env("KEY", key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    Some(child)
}

/// The next line the script printed.
fn line(out: &mut impl BufRead) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

fn finished(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the redis-py client failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PY_HOLDER: &str = r#"
import os, sys, time, redis
r = redis.Redis(port=int(os.environ["PORT"]))
lock = r.lock(os.environ["KEY"], timeout=30)
assert lock.acquire(blocking=False)
print("HELD", lock.local.token.decode(), flush=True)
sys.stdin.readline()
lock.release()  # raises LockNotOwnedError if the value was rewritten
print("RELEASED", flush=True)
"#;

/// redis-py holds, lock-core waits (a plain waiter, then a fair one): the key's value stays
/// redis-py's token while lock-core's waiter retries (regression: the waiter marked it with
/// `*`, so redis-py's release failed with `LockNotOwnedError` and the key stayed until its
/// ttl), redis-py's release works, and the waiter takes the lock by polling, long before the
/// 30 s lease would end.
#[tokio::test]
async fn a_redis_py_holder_is_never_rewritten_and_its_release_frees_the_lock() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    for (name, fair) in [("shared", false), ("shared-fair", true)] {
        let key = locks.key_for(name);
        let Some(mut holder) = python(PY_HOLDER, server.port(), &key) else {
            eprintln!("skipped: no redis-py (set LOCK_TESTS_REDIS_PY=required to fail instead)");
            return;
        };
        let mut out = BufReader::new(holder.stdout.take().unwrap());
        let held = line(&mut out);
        let token = held.strip_prefix("HELD ").expect("redis-py took the lock");
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                locks
                    .lock(name)
                    .fair(fair)
                    .ttl(Duration::from_secs(30))
                    .wait(Duration::from_secs(20))
                    .acquire()
                    .await
            }
        });
        // Several attempts of the waiter, subscribed and asking to mark the key, go by.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let value: String = server.query(redis::cmd("GET").arg(&key));
            assert_eq!(value, token, "{name}: lock-core rewrote redis-py's value");
        }
        assert!(
            !waiter.is_finished(),
            "{name}: the waiter waits for redis-py"
        );
        // A line on its stdin tells redis-py to release.
        writeln!(holder.stdin.take().unwrap()).unwrap();
        assert_eq!(line(&mut out), "RELEASED");
        let guard = waiter
            .await
            .unwrap()
            .expect("taken after redis-py's release");
        assert!(guard.release().await.unwrap());
        drop(out);
        finished(holder);
    }
}

const PY_WAITER: &str = r#"
import os, redis
r = redis.Redis(port=int(os.environ["PORT"]))
lock = r.lock(os.environ["KEY"], timeout=30, sleep=0.02, blocking_timeout=20)
print("WAITING", flush=True)
assert lock.acquire()
print("ACQUIRED", flush=True)
lock.release()
"#;

/// lock-core holds, redis-py waits: redis-py's waiter leaves the key alone, lock-core's
/// release is owner-checked as usual, and redis-py takes the lock right after it.
#[tokio::test]
async fn a_redis_py_waiter_takes_the_lock_after_lock_cores_release() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let key = locks.key_for("shared");
    let guard = locks
        .try_acquire("shared", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let Some(mut waiter) = python(PY_WAITER, server.port(), &key) else {
        eprintln!("skipped: no redis-py (set LOCK_TESTS_REDIS_PY=required to fail instead)");
        assert!(guard.release().await.unwrap());
        return;
    };
    let mut out = BufReader::new(waiter.stdout.take().unwrap());
    assert_eq!(line(&mut out), "WAITING");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let value: String = server.query(redis::cmd("GET").arg(&key));
    assert_eq!(value, guard.token(), "still ours while redis-py waits");
    assert!(guard.release().await.unwrap());
    assert_eq!(line(&mut out), "ACQUIRED");
    drop(out);
    finished(waiter);
}

/// A lock-core version from before holder ids wrote a bare 32-hex token and compared it whole
/// on release: a waiter of this version leaves it as it is and takes the lock when its lease
/// ends.
#[tokio::test]
async fn a_bare_token_of_an_older_version_is_never_rewritten() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let key = locks.key_for("old");
    let token = "0123456789abcdef0123456789abcdef";
    let _: () = server.query(redis::cmd("SET").arg(&key).arg(token).arg("PX").arg(1500));
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move {
            locks
                .acquire("old", Duration::from_secs(30), Duration::from_secs(20))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let value: String = server.query(redis::cmd("GET").arg(&key));
    assert_eq!(value, token, "lock-core rewrote an older version's value");
    let guard = waiter.await.unwrap().expect("taken at the lease end");
    assert!(guard.release().await.unwrap());
}

/// lock-core 0.1.0 wrote `<holder>|<unix ms>|<32 hex>` tokens, without the lease field this
/// version adds: operators still read its holder (and no ttl), a waiter of this version still
/// marks it so that its release is published (0.1.0's release compares a marked value by its
/// token, as this one does), and takes the lock once it is released.
#[tokio::test]
async fn a_token_of_lock_core_0_1_0_is_read_marked_and_woken_on_release() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let key = locks.key_for("upgrading");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let token = format!("old-worker:9|{now}|0123456789abcdef0123456789abcdef");
    let _: () = server.query(
        redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("PX")
            .arg(60_000),
    );
    let info = locks.inspect("upgrading").await.unwrap().unwrap();
    assert_eq!(
        (info.holder.as_str(), info.ttl, info.auto_extend),
        ("old-worker:9", None, false)
    );
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move {
            locks
                .acquire(
                    "upgrading",
                    Duration::from_secs(30),
                    Duration::from_secs(50),
                )
                .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value: String = server.query(redis::cmd("GET").arg(&key));
        if value.starts_with(&format!("{token}*")) {
            break;
        }
        assert_eq!(value, token);
        assert!(std::time::Instant::now() < deadline, "never marked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The old holder releases (the release script compares its token, mark aside).
    let released = script(
        &server,
        lock_core::__private::script("release"),
        &[&key],
        &[&token, "0", "PUBLISH"],
    );
    assert_eq!(released, "int(1)");
    let guard = waiter.await.unwrap().expect("taken once released");
    assert!(guard.release().await.unwrap());
}

/// Runs one of lock-core's scripts on `server`: its reply, or its error's text.
fn script(server: &RedisServer, source: &str, keys: &[&str], args: &[&str]) -> String {
    match eval_cmd(source, keys, args).query::<redis::Value>(&mut server.conn()) {
        Ok(value) => format!("{value:?}"),
        Err(e) => e.to_string(),
    }
}

/// Another client's key of another type under a lock's name (a list, a hash that is not a
/// lock of permits) is left as it is, and every script says so with a `WRONGTYPE` error, not
/// a Lua runtime error. Regression: force.lua compared a foreign hash's values with numbers
/// (`attempt to compare number with nil`), leave.lua failed after taking its ticket out of
/// line, acquire.lua and fair.lua read a list as a hash.
#[tokio::test]
async fn keys_of_other_types_are_refused_with_wrongtype_and_left_alone() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let (list, hash) = (locks.key_for("a-list"), locks.key_for("a-hash"));
    let _: () = server.query(redis::cmd("RPUSH").arg(&list).arg("x"));
    let _: () = server.query(redis::cmd("HSET").arg(&hash).arg("field").arg("value"));
    let token = "test:1|1|0123456789abcdef0123456789abcdef";
    for key in [&list, &hash] {
        let queue = format!("{key}:q");
        let replies = [
            (
                "acquire.lua",
                script(
                    &server,
                    lock_core::__private::script("acquire"),
                    &[key],
                    &[token, "1000", "1"],
                ),
            ),
            (
                "fair.lua",
                script(
                    &server,
                    lock_core::__private::script("fair"),
                    &[key, &queue],
                    &[token, "1000", "ticket", "5000", "1"],
                ),
            ),
            (
                "force.lua",
                script(
                    &server,
                    lock_core::__private::script("force"),
                    &[key, &format!("{key}:fence")],
                    &["60000", "PUBLISH"],
                ),
            ),
        ];
        for (name, reply) in replies {
            assert!(reply.contains("WRONGTYPE"), "{name} on {key}: {reply}");
            assert!(!reply.contains("user_script"), "{name} on {key}: {reply}");
        }
        // A fair waiter's ticket leaves the line whatever the lock key holds.
        let _: () = server.query(
            redis::cmd("HSET")
                .arg(&queue)
                .arg("ticket")
                .arg("1 99999999999999"),
        );
        let left = script(
            &server,
            lock_core::__private::script("leave"),
            &[&queue, key],
            &["ticket", "PUBLISH"],
        );
        assert_eq!(left, "int(1)", "leave.lua with {key}");
        let kind: String = server.query(redis::cmd("TYPE").arg(key));
        assert_eq!(
            kind,
            if key == &list { "list" } else { "hash" },
            "left alone"
        );
    }
    assert!(locks
        .force_release("a-list")
        .await
        .unwrap_err()
        .to_string()
        .contains("WRONGTYPE"));
    let len: i64 = server.query(redis::cmd("LLEN").arg(&list));
    assert_eq!(len, 1);
}
