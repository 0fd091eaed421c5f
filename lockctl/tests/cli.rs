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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_lists_shows_and_force_releases_live_locks() {
    let server = RedisServer::start();
    let worker = LockManager::builder()
        .url(&server.url())
        .holder_id("billing-worker-7")
        .build()
        .await
        .unwrap();
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
        table.lines().all(|l| l.chars().count() < 48 + 60),
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
