//! `lockctl` run as a process against a real redis-server, as an operator would run it.

use std::process::{Command, Output};
use std::time::Duration;

use lock_core::LockManager;
use lock_test_support::RedisServer;

const LONG: Duration = Duration::from_secs(60);

fn lockctl(server: &RedisServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args(["--url", &server.url()])
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .expect("run lockctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A manager on the server at `url` whose locks name `holder` as their holder, as a service
/// replica's would.
async fn holder(url: &str, holder: &str) -> LockManager {
    LockManager::builder()
        .url(url)
        .holder_id(holder)
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_lists_shows_and_force_releases_live_locks() {
    let server = RedisServer::start();
    let worker = holder(&server.url(), "billing-worker-7").await;
    let invoices = worker
        .lock("invoices:42")
        .ttl(LONG)
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    let _reports = worker.try_acquire("reports:daily", LONG).await.unwrap();
    let fence = invoices.fencing_token().await.unwrap();
    // A key of another type under the same prefix is not a lock, and does not break `list`.
    let _: () = server.query(redis::cmd("HSET").arg("lock:{not-a-lock}").arg("a").arg(1));

    // list: a table with both, and the holder id.
    let out = tokio::task::spawn_blocking({
        let url = server.url();
        move || {
            Command::new(env!("CARGO_BIN_EXE_lockctl"))
                .args(["--url", &url, "list"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let table = stdout(&out);
    eprintln!("{table}");
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[1].starts_with("invoices:42") && lines[1].contains("billing-worker-7"));
    assert!(lines[2].starts_with("reports:daily"));

    // A pattern, and JSON.
    let out = lockctl(&server, &["--json", "list", "invoices:*"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["schema"], 1);
    let rows = &json["locks"];
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["name"], "invoices:42");
    assert_eq!(rows[0]["kind"], "exclusive");
    assert_eq!(rows[0]["holder"], "billing-worker-7");
    let remaining = rows[0]["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 50_000 && remaining <= 60_000, "{rows}");
    let acquired_at = rows[0]["acquired_at_ms"].as_u64().unwrap();
    assert!(acquired_at > 0);
    assert!(rows[0]["expires_at_ms"].as_u64().unwrap() > acquired_at);
    let out = lockctl(&server, &["list", "nothing:*"]);
    assert_eq!(out.status.code(), Some(1), "no lock matched");

    // A lock of permits(3) with two holders: a row per permit.
    let mut quota = Vec::new();
    for _ in 0..2 {
        quota.push(
            worker
                .lock("quota")
                .permits(3)
                .ttl(LONG)
                .acquire()
                .await
                .unwrap(),
        );
    }
    let out = lockctl(&server, &["list", "quota"]);
    let table = stdout(&out);
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("quota (permits 3)"))
            .count(),
        2,
        "{table}"
    );
    let out = lockctl(&server, &["--json", "list", "quota"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = &json["locks"];
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["permits"], 3);
    assert_eq!(rows[0]["kind"], "permits");
    drop(quota);

    // show
    let out = lockctl(&server, &["show", "invoices:42"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("billing-worker-7"));
    let out = lockctl(&server, &["show", "free:one"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("free"));

    // release needs --force; with it, the holder is evicted and learns so.
    let out = lockctl(&server, &["release", "invoices:42"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(!invoices.is_lost());
    let out = lockctl(&server, &["release", "invoices:42", "--force"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("evicted billing-worker-7"),
        "{}",
        stdout(&out)
    );
    // The script moved the fencing counter past the evicted holder's token.
    let counter: String = server.query(redis::cmd("GET").arg("lock:{invoices:42}:fence"));
    assert!(counter.parse::<u64>().unwrap() > fence);
    let out = lockctl(&server, &["release", "invoices:42", "--force"]);
    assert_eq!(out.status.code(), Some(1), "already free");
    assert!(!invoices.extend(LONG).await.unwrap());
    assert!(invoices.is_lost());
    let next = worker
        .try_acquire("invoices:42", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(next.fencing_token().await.unwrap() > fence);

    // Errors: nobody listening, and a url that does not parse.
    let down = format!("redis://127.0.0.1:{}", lock_test_support::free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args(["--url", &down, "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "unreachable");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&down));
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args(["--url", "nonsense", "list"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad input: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // REDIS_URL and --prefix.
    let other = LockManager::builder()
        .url(&server.url())
        .key_prefix("jobs:")
        .build()
        .await
        .unwrap();
    let _g = other.try_acquire("nightly", LONG).await.unwrap().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .env("REDIS_URL", server.url())
        .args(["--prefix", "jobs:", "show", "nightly"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// `--help` names the `REDIS_URL` variable but never prints its value: a url may carry the
/// password (it printed `[env: REDIS_URL=redis://:s3cr3tpw@...]`).
#[test]
fn help_never_prints_the_redis_url_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .arg("--help")
        .env("REDIS_URL", "redis://:s3cr3tpw@127.0.0.1:1")
        .output()
        .expect("run lockctl");
    let help = stdout(&out);
    assert!(help.contains("REDIS_URL"), "{help}");
    assert!(!help.contains("s3cr3tpw"), "{help}");
}

/// The edges an operator meets: flags after the command, one JSON shape per command, exit
/// codes that tell a typo from an outage, errors on stderr, a timeout for a server that
/// accepts and never answers, and names that cannot forge rows or widen every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_anywhere_exit_codes_timeouts_and_escaped_names() {
    let server = RedisServer::start();
    let worker = LockManager::connect(&server.url()).await.unwrap();
    let _held = worker.try_acquire("orders:1", LONG).await.unwrap().unwrap();
    let run = |args: &[&str]| {
        let (url, args) = (
            server.url(),
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        );
        Command::new(env!("CARGO_BIN_EXE_lockctl"))
            .args(&args)
            .args(["--url", &url])
            .env_remove("REDIS_URL")
            .output()
            .expect("run lockctl")
    };

    // Flags after the command (and --url after it too); `show` answers one shape, held or free.
    let out = run(&["list", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["locks"][0]["name"], "orders:1");
    for (name, held, code) in [("orders:1", true, 0), ("orders:2", false, 1)] {
        let out = run(&["show", name, "--json"]);
        assert_eq!(out.status.code(), Some(code));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["held"], held);
        assert_eq!(json["locks"].as_array().unwrap().len(), usize::from(held));
    }

    // Usage errors exit 2 and send nothing; errors go to stderr, as JSON with --json.
    for args in [
        &["lsit"][..],
        &["list", "--timeout", "soon"],
        &["release", "orders:1"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = run(&["show", "", "--json"]);
    assert_eq!(out.status.code(), Some(2), "an empty name is bad input");
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["exit"], 2);
    assert!(out.stdout.is_empty());

    // A server that accepts and never answers: exit 3 once --timeout has passed.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args(["list", "--json", "--timeout", "300ms", "--url", &silent_url])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(error["exit"], 3);
    drop(silent);

    // A conditional force-release: another holder's id evicts nothing; the holder's own
    // evicts it, says so on stderr, and lists it.
    let holder = worker.inspect("orders:1").await.unwrap().unwrap().holder;
    let out = run(&["release", "orders:1", "--force", "--holder", "someone-else"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("nothing of someone-else"),
        "{}",
        stdout(&out)
    );
    assert!(
        worker.inspect("orders:1").await.unwrap().is_some(),
        "left alone"
    );
    let out = run(&[
        "release", "orders:1", "--force", "--holder", &holder, "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["evicted"], serde_json::json!([holder]));
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(
        trace.contains("lockctl: evicted")
            && trace.contains("orders:1")
            && trace.contains("(by lockctl:"),
        "{trace}"
    );

    // A name with a newline prints one row, escaped; a long name is cut unless --wide.
    let forged = "evil\nfake:1  forged-holder  1s  60.0s  no";
    let _evil = worker.try_acquire(forged, LONG).await.unwrap().unwrap();
    let long = format!("reports:{}", "x".repeat(100));
    let _long = worker.try_acquire(&long, LONG).await.unwrap().unwrap();
    let out = run(&["list"]);
    let table = stdout(&out);
    eprintln!("{table}");
    assert_eq!(table.lines().count(), 3, "a header and two rows: {table}");
    assert!(!table.lines().any(|l| l.starts_with("fake:1")), "{table}");
    assert!(table.contains("evil\\nfake:1"), "{table}");
    assert!(
        table.lines().all(|l| l.chars().count() < 48 + 100),
        "{table}"
    );
    assert!(table.contains('…') && !table.contains(&long));
    let out = run(&["list", "--wide"]);
    assert!(stdout(&out).contains(&long));

    // WAITERS counts the writers waiting (their claims), in the table and as `waiting`.
    let busy = worker.try_acquire("busy:1", LONG).await.unwrap().unwrap();
    let waiter = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let guard = worker
                .acquire("busy:1", LONG, Duration::from_secs(30))
                .await
                .unwrap();
            assert!(guard.release().await.unwrap());
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&["show", "busy:1", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if json["locks"][0]["waiting"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let table = stdout(&run(&["show", "busy:1"]));
    assert!(
        table.lines().nth(1).is_some_and(|row| row.ends_with(" 1")),
        "{table}"
    );
    assert!(busy.release().await.unwrap());
    waiter.await.unwrap();
}

/// What an on-call engineer reads to tell a live holder from a dead one: the ttl each holder
/// asked for, whether its watchdog renews it, when it was last renewed, when it ends; who waits
/// (`queue`, the fair line in order); and, when nothing matches, where locks are held instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_carry_ttl_renewal_and_expiry_and_queue_lists_the_waiters() {
    let server = RedisServer::start();
    let worker = holder(&server.url(), "renewing-7").await;
    // A 3 s lease renewed by its watchdog (every second), and one that is not.
    let renewed = worker
        .lock("jobs:renewed")
        .ttl(Duration::from_secs(3))
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    let plain = worker
        .try_acquire("jobs:plain", LONG)
        .await
        .unwrap()
        .unwrap();
    // Held past two renewals: renewed a moment ago, not when it was taken.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!renewed.is_lost());
    let out = lockctl(&server, &["list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        json["locks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {json}"))
            .clone()
    };
    let (r, p) = (row("jobs:renewed"), row("jobs:plain"));
    assert_eq!(
        (r["ttl_ms"].as_u64(), r["auto_extend"].as_bool()),
        (Some(3000), Some(true)),
        "{r}"
    );
    assert_eq!(
        (p["ttl_ms"].as_u64(), p["auto_extend"].as_bool()),
        (Some(60_000), Some(false)),
        "{p}"
    );
    // Renewed within the last renewal interval (1 s) plus a loaded machine's margin, though
    // held for 2.5 s; the plain one was last set when taken.
    let renewed_ago = r["renewed_ago_ms"].as_u64().unwrap();
    assert!(renewed_ago < 2000, "{r}");
    assert!(p["renewed_ago_ms"].as_u64().unwrap() >= 2400, "{p}");
    let expires = p["expires_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(expires > now + 30_000 && expires <= now + 60_000, "{p}");
    let table = stdout(&lockctl(&server, &["show", "jobs:renewed"]));
    let header = table.lines().next().unwrap();
    for column in ["TTL", "RENEWED AGO", "EXPIRES AT"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(table.contains("3.0s auto"), "{table}");

    assert!(renewed.release().await.unwrap());

    // A stalled holder's row (its runtime thread blocked, so its watchdog cannot renew): the
    // time since its last renewal grows past half its ttl while the lock is still held, which
    // a live holder's never does (it renews every third of the ttl).
    let url = server.url();
    let (taken_tx, taken) = std::sync::mpsc::channel();
    let stalled = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let stuck = holder(&url, "stuck-3").await;
            let guard = stuck
                .lock("jobs:stuck")
                .ttl(Duration::from_secs(6))
                .auto_extend(true)
                .acquire()
                .await
                .unwrap();
            taken_tx.send(()).unwrap();
            // A blocking call on the runtime's only thread: no renewal runs.
            std::thread::sleep(Duration::from_secs(10));
            drop(guard);
        });
    });
    taken.recv().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = lockctl(&server, &["show", "jobs:stuck", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json["held"], true,
            "held for 6 s after its last renewal: {json}"
        );
        let row = &json["locks"][0];
        assert_eq!(row["holder"], "stuck-3");
        if row["renewed_ago_ms"].as_u64().unwrap() >= 3000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stalled.join().unwrap();

    // queue: a fair line of two, in order, named by their holder ids, and a plain waiter.
    let busy = worker.try_acquire("line:1", LONG).await.unwrap().unwrap();
    let mut waiters = Vec::new();
    for (id, fair) in [
        ("first-in-line", true),
        ("second-in-line", true),
        ("racer", false),
    ] {
        let waiter = holder(&server.url(), id).await;
        waiters.push(tokio::spawn(async move {
            let guard = waiter
                .lock("line:1")
                .ttl(LONG)
                .fair(fair)
                .wait(Duration::from_secs(60))
                .acquire()
                .await
                .unwrap();
            assert!(guard.release().await.unwrap());
        }));
        // In line one after the other: the next joins once this one shows.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = lockctl(&server, &["queue", "line:1", "--json"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if json["waiters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["holder"] == id)
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{json}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let out = lockctl(&server, &["queue", "line:1", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["held"], true);
    let line: Vec<(String, serde_json::Value)> = json["waiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["holder"].as_str().unwrap().to_owned(),
                w["position"].clone(),
            )
        })
        .collect();
    assert_eq!(
        line,
        [
            ("first-in-line".to_owned(), serde_json::json!(1)),
            ("second-in-line".to_owned(), serde_json::json!(2)),
            ("racer".to_owned(), serde_json::Value::Null),
        ],
        "{json}"
    );
    let table = stdout(&lockctl(&server, &["queue", "line:1"]));
    assert!(table.contains("3 waiting"), "{table}");
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert!(rows[0].starts_with("1  first-in-line"), "{table}");
    assert!(rows[1].starts_with("2  second-in-line"), "{table}");
    assert!(rows[2].starts_with("-  racer"), "{table}");
    assert!(busy.release().await.unwrap());
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let out = lockctl(&server, &["queue", "line:1"]);
    assert_eq!(out.status.code(), Some(1), "free, nobody waiting");

    // A wrong prefix: nothing matches, and stderr says where locks are held.
    let out = lockctl(&server, &["list", "--prefix", "locks:"]);
    assert_eq!(out.status.code(), Some(1));
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(hint.contains("held under lock:"), "{hint}");
    let out = lockctl(&server, &["list", "--prefix", "locks:", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["other_prefixes"], serde_json::json!(["lock:"]));

    // A usage error under --json is the one JSON error shape too.
    let out = lockctl(&server, &["list", "--json", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(
        (error["exit"].as_u64(), error["schema"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(out.stdout.is_empty());
    assert!(plain.release().await.unwrap());
}

/// A terminal of its own (tmux, on a socket of its own), running one command in a pane that
/// stays after the command ends, so that the screen it left can be read; its exit status is
/// written to a file by the shell that ran it (tmux's own record of it is racy: a pane whose
/// terminal closed before its process was reaped shows no status).
struct Terminal {
    socket: String,
    config: std::path::PathBuf,
    status: std::path::PathBuf,
}

impl Terminal {
    /// Runs `command` (argv) in a 110x30 terminal.
    fn run(command: &[String]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("lockctl-test-{}-{n}", std::process::id());
        let config = std::env::temp_dir().join(format!("{socket}.conf"));
        let status = std::env::temp_dir().join(format!("{socket}.status"));
        std::fs::write(&config, "set -g remain-on-exit on\n").unwrap();
        let _ = std::fs::remove_file(&status);
        let started = Command::new("tmux")
            .args(["-L", &socket, "-f"])
            .arg(&config)
            .args(["new-session", "-d", "-x", "110", "-y", "30", "-s", "t"])
            // The shell outlives a Ctrl-C to write the status, as an interactive one would
            // (a trap, unlike an ignored signal, is not inherited by the command).
            .args(["sh", "-c", "trap : INT; \"$@\"; echo $? > \"$0\""])
            .arg(&status)
            .args(command)
            .env_remove("REDIS_URL")
            .status()
            .expect("tmux runs these tests as a person would use lockctl: install tmux");
        assert!(started.success());
        Terminal {
            socket,
            config,
            status,
        }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as it shows now (`escapes`: with its colours and styles).
    fn screen(&self, escapes: bool) -> String {
        if escapes {
            self.tmux(&["capture-pane", "-p", "-e", "-t", "t"])
        } else {
            self.tmux(&["capture-pane", "-p", "-t", "t"])
        }
    }

    /// Waits (20 s at most) until the screen shows what `wanted` looks for.
    fn wait_for(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen(false);
            if wanted(&screen) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The command's exit status once it ended (20 s at most): 128 + n for signal n.
    fn exit_status(&self) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = std::fs::read_to_string(&self.status) {
                if let Ok(status) = status.trim().parse() {
                    return status;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running:\n{}",
                self.screen(false)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.status);
    }
}

/// `lockctl watch` as an on-call engineer uses it: in a real terminal, redrawn in place while
/// other processes take and hand over locks, the new holder's row marked and a lease about to
/// end marked, then `q` (and, in a second run, Ctrl-C) ends it and gives the screen back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_in_place_in_a_terminal_and_quits_on_q_or_ctrl_c() {
    let server = RedisServer::start();
    let (first, second) = (
        holder(&server.url(), "worker-a").await,
        holder(&server.url(), "worker-b").await,
    );
    let held = first
        .lock("jobs:a")
        .ttl(LONG)
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    let watch = |extra: &[&str]| {
        let mut argv = vec![
            env!("CARGO_BIN_EXE_lockctl").to_owned(),
            "--url".to_owned(),
            server.url(),
            "watch".to_owned(),
            "--interval".to_owned(),
            "200ms".to_owned(),
        ];
        argv.extend(extra.iter().map(|a| a.to_string()));
        Terminal::run(&argv)
    };
    let terminal = watch(&[]);
    let screen = terminal.wait_for("jobs:a held by worker-a", |s| {
        s.lines()
            .any(|l| l.contains("jobs:a") && l.contains("worker-a"))
    });
    assert!(screen.contains("1 held"), "{screen}");
    // The first frame marks nothing; the lease's bar is nearly full.
    let row = screen.lines().find(|l| l.contains("jobs:a")).unwrap();
    assert!(
        row.starts_with(' ') && row.contains("[#########"),
        "{screen}"
    );

    // The lock changes hands: the same row, its new holder marked `>` (in reverse video).
    assert!(held.release().await.unwrap());
    let _taken = second.try_acquire("jobs:a", LONG).await.unwrap().unwrap();
    let screen = terminal.wait_for("jobs:a handed to worker-b", |s| {
        s.lines()
            .any(|l| l.starts_with('>') && l.contains("jobs:a") && l.contains("worker-b"))
    });
    assert!(
        !screen.contains("worker-a"),
        "redrawn, not appended: {screen}"
    );
    assert_eq!(screen.matches("lockctl watch").count(), 1, "{screen}");
    let styled = terminal.screen(true);
    assert!(
        styled
            .lines()
            .any(|l| l.contains("\u{1b}[7m") && l.contains("worker-b")),
        "{styled:?}"
    );

    // A lease with a quarter of its ttl left is marked `!` (in red), then leaves the table.
    let _short = first
        .try_acquire("jobs:short", Duration::from_secs(8))
        .await
        .unwrap()
        .unwrap();
    terminal.wait_for("jobs:short about to expire", |s| {
        s.lines()
            .any(|l| l.starts_with('!') && l.contains("jobs:short"))
    });
    terminal.wait_for("jobs:short gone", |s| {
        !s.contains("jobs:short") && s.contains("1 held")
    });

    // `q` quits at once, with status 0, and the screen it drew is gone.
    terminal.tmux(&["send-keys", "-t", "t", "q"]);
    assert_eq!(terminal.exit_status(), 0);
    let after = terminal.screen(false);
    assert!(
        !after.contains("lockctl watch"),
        "the alternate screen was left: {after}"
    );
    drop(terminal);

    // Ctrl-C quits the same way.
    let terminal = watch(&["jobs:*"]);
    terminal.wait_for("the first frame", |s| s.contains("worker-b"));
    terminal.tmux(&["send-keys", "-t", "t", "C-c"]);
    assert_eq!(terminal.exit_status(), 0);
    assert!(!terminal.screen(false).contains("lockctl watch"));

    // Not in a terminal (stdin at its end, stdout a pipe: a script, `ssh host lockctl watch`):
    // it keeps printing frames, one after another and without escapes, until SIGTERM ends it
    // as `q` would.
    let mut piped = Command::new(env!("CARGO_BIN_EXE_lockctl"))
        .args(["--url", &server.url(), "watch", "--interval", "100ms"])
        .env_remove("REDIS_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut frames = std::io::BufReader::new(piped.stdout.take().unwrap());
    let mut headers = 0;
    let mut line = String::new();
    while headers < 3 {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut frames, &mut line).unwrap() > 0,
            "still printing frames after {headers}"
        );
        assert!(!line.contains('\u{1b}'), "{line:?}");
        headers += usize::from(line.starts_with("lockctl watch"));
    }
    let pid = piped.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        piped.wait().unwrap().code(),
        Some(0),
        "SIGTERM ends it as q does"
    );

    // In a terminal, `list` cuts a long name to fit the terminal's width (110 here), so that
    // its row stays one line with every column.
    let long = format!("reports:{}", "x".repeat(150));
    let _long = second.try_acquire(&long, LONG).await.unwrap().unwrap();
    let listed = Terminal::run(&[
        env!("CARGO_BIN_EXE_lockctl").to_owned(),
        "--url".to_owned(),
        server.url(),
        "list".to_owned(),
    ]);
    assert_eq!(listed.exit_status(), 0);
    let screen = listed.screen(false);
    let row = screen
        .lines()
        .find(|l| l.starts_with("reports:"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(
        row.contains('…') && row.contains("worker-b") && row.trim_end().ends_with("no"),
        "one whole row: {screen}"
    );
    drop(listed);

    // --once: one frame on stdout, no terminal control.
    let out = lockctl(&server, &["watch", "--once"]);
    assert_eq!(out.status.code(), Some(0));
    let frame = stdout(&out);
    assert!(
        frame.contains("worker-b") && !frame.contains('\u{1b}'),
        "{frame}"
    );
}

/// `watch --once` (and `list`) read every primary of a Cluster and follow Sentinel's primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_once_on_a_cluster_and_through_sentinel() {
    let cluster = lock_test_support::RedisCluster::start(3, 0);
    let primary = RedisServer::start();
    let sentinels = lock_test_support::Sentinels::start(1, "locks", primary.port(), 0);
    for deployment in ["cluster", "sentinel"] {
        let (builder, args) = match deployment {
            "cluster" => {
                let urls = cluster.urls();
                let mut args = vec!["--cluster".to_owned()];
                for url in &urls {
                    args.extend(["--url".to_owned(), url.clone()]);
                }
                (LockManager::builder().cluster(&urls), args)
            }
            _ => {
                let urls = sentinels.urls();
                let mut args = vec!["--sentinel".to_owned(), "locks".to_owned()];
                for url in &urls {
                    args.extend(["--url".to_owned(), url.clone()]);
                }
                (LockManager::builder().sentinel("locks", &urls), args)
            }
        };
        let locks = builder.holder_id("spread-1").build().await.unwrap();
        // Enough names to land on every master of the cluster.
        let mut guards = Vec::new();
        for i in 0..12 {
            guards.push(
                locks
                    .try_acquire(&format!("spread:{i:02}"), LONG)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let out = Command::new(env!("CARGO_BIN_EXE_lockctl"))
            .args(&args)
            .args(["watch", "--once", "spread:*"])
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        let frame = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{deployment}: {frame}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(frame.contains("12 held"), "{deployment}: {frame}");
        for i in 0..12 {
            let row = format!("spread:{i:02}");
            assert!(
                frame
                    .lines()
                    .any(|l| l.contains(&row) && l.contains("spread-1")),
                "{deployment}: {row} in {frame}"
            );
        }
        for guard in guards {
            assert!(guard.release().await.unwrap());
        }
        locks.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}
