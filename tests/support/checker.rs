//! `lock-checker`: one worker process of the exclusion checker (see RELIABILITY.md).
//!
//! Each iteration: acquire the lock -> read a shared counter -> sleep 0-`hold` ms -> write
//! counter + 1, and the same read-modify-write through a fenced store that refuses a fencing
//! token lower than the highest it accepted -> release. The shared data lives on a separate
//! "resource" Redis, so faults injected into the lock server never touch it.
//!
//! ```text
//! lock-checker --lock-url URL --resource-url URL --name NAME --iterations N
//!              [--mode lock|canary|permits|permit-hold|rw|shared-hold|leader|contend|stall]
//!              [--ttl-ms 1000] [--wait-ms 10000] [--hold-ms 5] [--seed S] [--fair 0|1]
//!              [--permits N] [--bound B] [--writers-pct P] [--unlocked-writers 0|1]
//! ```
//!
//! `canary` does the same work without the lock, to prove the checker sees violations.
//! `permits` takes one of `--permits N` permits per iteration and counts the holders inside
//! with an atomic counter on the resource, against the bound `--bound B` (default N): a run
//! with N = B + 1 is the canary. It prints `PERMITS overlaps=.. most=..` (entries that found
//! more than B inside, and the most inside at once). `permit-hold` takes one permit, prints
//! `HOLDING`, and holds it with the watchdog until killed. `rw` is a reader or a writer each
//! iteration (a writer `--writers-pct P` percent of the time, default 25): a reader takes a
//! shared hold, a writer an exclusive one; inside, each counts itself in an atomic counter of
//! its side on the resource and reads the other side's: a reader that sees a writer inside, or
//! a writer that sees a reader or another writer, is a violation. Writers also do the lock
//! mode's read-modify-write. With `--unlocked-writers 1` (the canary) writers take a shared
//! hold too, so readers and writers meet. It prints `RW violations=.. most_readers=..
//! reads=.. writes=..`. `shared-hold` takes a shared hold (`--fair 0`), or an exclusive one
//! with `--writers-pct 100`, prints `HOLDING`, and holds it with the watchdog until killed.
//! `leader` campaigns in a leader
//! election (its manager never polls: `max_poll_interval` is a minute) and samples
//! `is_leader()` every millisecond until its stdin closes: it prints
//! `TERM-START a b` at the first sample of each term that said leader and `TERM-END a b` at
//! its last, where `a` and `b` are CLOCK_MONOTONIC nanoseconds read just before and just after
//! the sample.
//! `contend` waits for the test to set `checker:<name>:go` on the resource, then takes the lock
//! (`--fair 1` for fair mode) as often as it can, holding it `--hold-ms` each time, until the
//! test sets `checker:<name>:stop`; it prints `LONGEST_WAIT_MS n`.
//! `stall` acquires once, prints `HOLDING <fence>`, sleeps `--hold-ms` (a test SIGSTOPs it
//! there), then tries its fenced write and prints `LATE accepted=<0|1> lost=<bool>`.
//! Every mode ends with one line:
//! `RESULT acquisitions=.. errors=.. accepted=.. refused=..`.

use std::time::Duration;

use lock_core::{LockError, LockManager};

/// Write `ARGV[2]` to `KEYS[1]` only if the fencing token `ARGV[1]` is at least the highest
/// accepted so far (kept in `KEYS[2]`). Returns 1 when accepted.
const FENCED_WRITE: &str = r"
local highest = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) < highest then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
return 1";

struct Args {
    lock_url: String,
    resource_url: String,
    name: String,
    iterations: u64,
    mode: String,
    ttl: Duration,
    wait: Duration,
    hold_ms: u64,
    seed: u64,
    fair: bool,
    permits: u32,
    bound: u64,
    writers_pct: u64,
    unlocked_writers: bool,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num =
        |flag: &str, default: u64| get(flag).map_or(default, |v| v.parse().expect("a number"));
    Args {
        lock_url: get("--lock-url").expect("--lock-url"),
        resource_url: get("--resource-url").expect("--resource-url"),
        name: get("--name").unwrap_or_else(|| "checker".to_owned()),
        iterations: num("--iterations", 100),
        mode: get("--mode").unwrap_or_else(|| "lock".to_owned()),
        ttl: Duration::from_millis(num("--ttl-ms", 1000)),
        wait: Duration::from_millis(num("--wait-ms", 10_000)),
        hold_ms: num("--hold-ms", 5),
        seed: num("--seed", u64::from(std::process::id())),
        fair: num("--fair", 0) == 1,
        permits: u32::try_from(num("--permits", 1)).expect("a u32"),
        bound: num("--bound", num("--permits", 1)),
        writers_pct: num("--writers-pct", 25),
        unlocked_writers: num("--unlocked-writers", 0) == 1,
    }
}

struct Resource {
    conn: redis::aio::MultiplexedConnection,
    counter: String,
    fenced: String,
    highest: String,
}

impl Resource {
    async fn get(&self, key: &str) -> u64 {
        let v: Option<u64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        v.unwrap_or(0)
    }

    async fn set(&self, key: &str, value: u64) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
    }

    async fn fenced_write(&self, fence: u64, value: u64) -> bool {
        let accepted: i64 = redis::cmd("EVAL")
            .arg(FENCED_WRITE)
            .arg(2)
            .arg(&self.fenced)
            .arg(&self.highest)
            .arg(fence)
            .arg(value)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        accepted == 1
    }
}

#[derive(Default)]
struct Tally {
    acquisitions: u64,
    errors: u64,
    accepted: u64,
    refused: u64,
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 {
            0
        } else {
            self.0 % n
        }
    }
}

/// The `leader` mode: campaigns, samples `is_leader()` every millisecond, and prints each term's
/// first and last sample that said leader, with CLOCK_MONOTONIC before and after the sample.
async fn lead_until_stdin_closes(locks: &LockManager, args: &Args) {
    use lock_test_support::monotonic_ns;
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    let leader = locks.leader(&args.name).ttl(args.ttl).start();
    let mut last: Option<(u64, u64)> = None;
    let mut terms = 0u64;
    loop {
        tokio::select! {
            _ = &mut closed => break,
            () = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        let before = monotonic_ns();
        let leads = leader.is_leader();
        let after = monotonic_ns();
        match (leads, last) {
            (true, None) => {
                terms += 1;
                println!("TERM-START {before} {after}");
                last = Some((before, after));
            }
            (true, Some(_)) => last = Some((before, after)),
            (false, Some((a, b))) => {
                println!("TERM-END {a} {b}");
                last = None;
            }
            (false, None) => {}
        }
    }
    leader.resign().await.expect("resign");
    if let Some((a, b)) = last {
        println!("TERM-END {a} {b}");
    }
    println!("TERMS {terms}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let resource = Resource {
        conn: redis::Client::open(args.resource_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap(),
        counter: format!("checker:{}:counter", args.name),
        fenced: format!("checker:{}:fenced", args.name),
        highest: format!("checker:{}:highest", args.name),
    };
    let mut builder = LockManager::builder()
        .url(&args.lock_url)
        .response_timeout(Duration::from_millis(500));
    if args.mode == "leader" {
        // Followers never poll (once a minute): a handover must come from the release message
        // or from the holder's lease end, as the refused attempts report it.
        builder = builder.max_poll_interval(Duration::from_secs(60));
    }
    let locks = builder.build().await.expect("connect to the lock server");
    let mut rng = Rng(args.seed | 1);
    let mut tally = Tally::default();

    match args.mode.as_str() {
        "permits" => {
            let inside = format!("checker:{}:inside", args.name);
            let (mut overlaps, mut most) = (0u64, 0u64);
            let mut done = 0;
            while done < args.iterations {
                let guard = match locks
                    .lock(&args.name)
                    .permits(args.permits)
                    .ttl(args.ttl)
                    .wait(args.wait)
                    .auto_extend(true)
                    .acquire()
                    .await
                {
                    Ok(guard) => guard,
                    Err(LockError::Timeout { .. } | LockError::Redis(_)) => {
                        tally.errors += 1;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                done += 1;
                tally.acquisitions += 1;
                let now: u64 = redis::cmd("INCR")
                    .arg(&inside)
                    .query_async(&mut resource.conn.clone())
                    .await
                    .unwrap();
                most = most.max(now);
                if now > args.bound {
                    overlaps += 1;
                }
                // A non-atomic read-modify-write too, as in the lock mode.
                let seen = resource.get(&resource.counter).await;
                tokio::time::sleep(Duration::from_micros(rng.below(args.hold_ms * 1000))).await;
                resource.set(&resource.counter, seen + 1).await;
                let _: i64 = redis::cmd("DECR")
                    .arg(&inside)
                    .query_async(&mut resource.conn.clone())
                    .await
                    .unwrap();
                if guard.release().await.is_err() {
                    tally.errors += 1;
                }
            }
            println!("PERMITS overlaps={overlaps} most={most}");
        }
        "rw" => {
            let readers = format!("checker:{}:readers", args.name);
            let writers = format!("checker:{}:writers", args.name);
            let incr = |key: &str, by: i64| {
                let mut conn = resource.conn.clone();
                let key = key.to_owned();
                async move {
                    let n: i64 = redis::cmd("INCRBY")
                        .arg(key)
                        .arg(by)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    n
                }
            };
            let (mut violations, mut most_readers, mut reads, mut writes) = (0u64, 0i64, 0, 0);
            let mut done = 0;
            while done < args.iterations {
                let writer = rng.below(100) < args.writers_pct;
                let guard = match locks
                    .lock(&args.name)
                    .shared(!writer || args.unlocked_writers)
                    .ttl(args.ttl)
                    .wait(args.wait)
                    .auto_extend(true)
                    .acquire()
                    .await
                {
                    Ok(guard) => guard,
                    Err(LockError::Timeout { .. } | LockError::Redis(_)) => {
                        tally.errors += 1;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                done += 1;
                tally.acquisitions += 1;
                let hold = Duration::from_micros(rng.below(args.hold_ms * 1000));
                if writer {
                    writes += 1;
                    let alone = incr(&writers, 1).await == 1 && incr(&readers, 0).await == 0;
                    violations += u64::from(!alone);
                    let seen = resource.get(&resource.counter).await;
                    tokio::time::sleep(hold).await;
                    resource.set(&resource.counter, seen + 1).await;
                    incr(&writers, -1).await;
                } else {
                    reads += 1;
                    most_readers = most_readers.max(incr(&readers, 1).await);
                    violations += u64::from(incr(&writers, 0).await != 0);
                    tokio::time::sleep(hold).await;
                    incr(&readers, -1).await;
                }
                if guard.release().await.is_err() {
                    tally.errors += 1;
                }
            }
            println!(
                "RW violations={violations} most_readers={most_readers} reads={reads} writes={writes}"
            );
        }
        "shared-hold" => {
            let _guard = locks
                .lock(&args.name)
                .shared(args.writers_pct < 100)
                .ttl(args.ttl)
                .auto_extend(true)
                .acquire()
                .await
                .unwrap();
            println!("HOLDING");
            std::future::pending::<()>().await; // killed here
        }
        "permit-hold" => {
            let _guard = locks
                .lock(&args.name)
                .permits(args.permits)
                .ttl(args.ttl)
                .auto_extend(true)
                .acquire()
                .await
                .unwrap();
            println!("HOLDING");
            std::future::pending::<()>().await; // killed here
        }
        "leader" => {
            lead_until_stdin_closes(&locks, &args).await;
        }
        "stall" => {
            let guard = locks
                .lock(&args.name)
                .ttl(args.ttl)
                .wait(args.wait)
                .auto_extend(true)
                .acquire()
                .await
                .unwrap();
            tally.acquisitions += 1;
            let value = resource.get(&resource.fenced).await;
            // Drawn while held: a token drawn after the pause would be refused (`Lost`).
            let fence = guard.fencing_token().await.unwrap();
            println!("HOLDING {fence}");
            tokio::time::sleep(Duration::from_millis(args.hold_ms)).await; // SIGSTOPped here
            let accepted = resource.fenced_write(fence, value + 1).await;
            println!(
                "LATE accepted={} lost={}",
                u8::from(accepted),
                guard.is_lost()
            );
            if accepted {
                tally.accepted += 1
            } else {
                tally.refused += 1
            }
            let _ = guard.release().await;
        }
        "contend" => {
            // Every worker starts when the test says go, then takes the lock as often as it can
            // until the test says stop, holding it `hold_ms` each time: how the acquisitions
            // spread over the workers, and the longest wait, show whether the lock is fair.
            // (Both are said on the resource, so that all workers run over the same period: a
            // worker that started late and stopped on its own timer would have the lock to
            // itself at the end.)
            let (go, stop) = (
                format!("checker:{}:go", args.name),
                format!("checker:{}:stop", args.name),
            );
            let _: u64 = redis::cmd("INCR")
                .arg(format!("checker:{}:ready", args.name))
                .query_async(&mut resource.conn.clone())
                .await
                .unwrap();
            while resource.get(&go).await == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut longest = Duration::ZERO;
            while resource.get(&stop).await == 0 {
                let asked = tokio::time::Instant::now();
                let guard = match locks
                    .lock(&args.name)
                    .ttl(args.ttl)
                    .wait(args.wait)
                    .fair(args.fair)
                    .acquire()
                    .await
                {
                    Ok(guard) => guard,
                    Err(_) => {
                        tally.errors += 1;
                        continue;
                    }
                };
                longest = longest.max(asked.elapsed());
                tally.acquisitions += 1;
                let seen = resource.get(&resource.counter).await;
                tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
                resource.set(&resource.counter, seen + 1).await;
                if guard.release().await.is_err() {
                    tally.errors += 1;
                }
            }
            println!("LONGEST_WAIT_MS {}", longest.as_millis());
        }
        "canary" => {
            for _ in 0..args.iterations {
                tally.acquisitions += 1;
                let seen = resource.get(&resource.counter).await;
                tokio::time::sleep(Duration::from_micros(rng.below(args.hold_ms * 1000))).await;
                resource.set(&resource.counter, seen + 1).await;
            }
        }
        _ => {
            let mut done = 0;
            while done < args.iterations {
                let guard = match locks
                    .lock(&args.name)
                    .ttl(args.ttl)
                    .wait(args.wait)
                    .auto_extend(true)
                    .acquire()
                    .await
                {
                    Ok(guard) => guard,
                    Err(LockError::Timeout { .. } | LockError::Redis(_)) => {
                        tally.errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                // A lease lost before its token was drawn (Redis paused past the ttl) does no
                // work: counted as an error, not as an acquisition, and tried again.
                let Ok(fence) = guard.fencing_token().await else {
                    tally.errors += 1;
                    let _ = guard.release().await;
                    continue;
                };
                done += 1;
                tally.acquisitions += 1;
                let seen = resource.get(&resource.counter).await;
                let fenced = resource.get(&resource.fenced).await;
                tokio::time::sleep(Duration::from_micros(rng.below(args.hold_ms * 1000))).await;
                resource.set(&resource.counter, seen + 1).await;
                if resource.fenced_write(fence, fenced + 1).await {
                    tally.accepted += 1;
                } else {
                    tally.refused += 1;
                }
                if guard.release().await.is_err() {
                    tally.errors += 1;
                }
            }
        }
    }
    let _ = locks.shutdown(Duration::from_secs(2)).await;
    println!(
        "RESULT acquisitions={} errors={} accepted={} refused={}",
        tally.acquisitions, tally.errors, tally.accepted, tally.refused
    );
}
