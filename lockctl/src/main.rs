//! `lockctl`: who holds which lock-core lock, and freeing one whoever holds it.
//!
//! ```text
//! lockctl list [PATTERN]          held locks whose name matches PATTERN (default `*`)
//! lockctl show NAME               one lock: holder, since when, time left
//! lockctl release NAME --force    free it whoever holds it (advances its fencing counter)
//! ```
//!
//! Where: `--url URL` (or `REDIS_URL`; default `redis://127.0.0.1:6379`), repeated with
//! `--cluster` or `--redlock`, or the sentinels' urls with `--sentinel MASTER`; `--prefix` (default
//! `lock:`) as the services' `key_prefix`. `--json` prints JSON instead of a table.
//!
//! Exit codes: 0 found or done, 1 not found (no lock matched; the lock was free), 2 error.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use lock_core::{LockInfo, LockManager};

#[derive(Parser, Debug)]
#[command(name = "lockctl", version, about = "Inspect and free lock-core locks")]
struct Cli {
    /// Redis url; repeat it with --cluster (seed nodes) or --redlock (every master), or give
    /// the sentinels' urls with --sentinel.
    #[arg(
        long = "url",
        env = "REDIS_URL",
        // `--help` would print REDIS_URL, password and all.
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    urls: Vec<String>,
    /// The urls are seeds of a Redis Cluster.
    #[arg(long, conflicts_with_all = ["redlock", "sentinel"])]
    cluster: bool,
    /// The urls are the independent masters of a Redlock deployment.
    #[arg(long, conflicts_with = "sentinel")]
    redlock: bool,
    /// The urls are sentinels; the primary is the one they know by this name.
    #[arg(long, value_name = "MASTER")]
    sentinel: Option<String>,
    /// The services' key prefix.
    #[arg(long, default_value = "lock:")]
    prefix: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Held locks whose name matches PATTERN (`*` any run of characters, `?` one character).
    List {
        #[arg(default_value = "*")]
        pattern: String,
    },
    /// One lock: who holds it, since when, and for how long still.
    Show { name: String },
    /// Free a lock whoever holds it. Its fencing counter moves on, so the evicted holder's
    /// fenced writes are refused; the evicted holder learns it at its next renewal.
    Release {
        name: String,
        /// Required: this evicts whoever holds the lock.
        #[arg(long)]
        force: bool,
    },
}

/// What a command found, for the exit code.
enum Outcome {
    Found,
    NotFound,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(Outcome::Found) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(1),
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": e }));
            } else {
                eprintln!("lockctl: {e}");
            }
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> Result<Outcome, String> {
    if let Command::Release { force: false, name } = &cli.command {
        return Err(format!(
            "`release {name}` evicts whoever holds the lock: add --force to do it"
        ));
    }
    // An operator looks at (and frees) locks wherever they are: a server that could evict lock
    // keys is the applications' risk to accept, not a reason to hide what it holds.
    let mut builder = LockManager::builder()
        .key_prefix(cli.prefix.clone())
        .allow_eviction(true);
    builder = if cli.cluster {
        builder.cluster(&cli.urls)
    } else if cli.redlock {
        builder.redlock(&cli.urls)
    } else if let Some(master) = &cli.sentinel {
        builder.sentinel(master, &cli.urls)
    } else {
        match cli.urls.as_slice() {
            [url] => builder.url(url),
            _ => return Err("several --url need --cluster, --redlock or --sentinel".to_owned()),
        }
    };
    let locks = builder.build().await.map_err(|e| e.to_string())?;
    let outcome = match &cli.command {
        Command::List { pattern } => {
            let found = locks.list(pattern).await.map_err(|e| e.to_string())?;
            print(cli.json, &found);
            if found.is_empty() {
                Outcome::NotFound
            } else {
                Outcome::Found
            }
        }
        Command::Show { name } => {
            let found = locks.inspect(name).await.map_err(|e| e.to_string())?;
            match found {
                Some(info) => {
                    print(cli.json, std::slice::from_ref(&info));
                    Outcome::Found
                }
                None => {
                    if cli.json {
                        println!("{}", serde_json::json!({ "name": name, "held": false }));
                    } else {
                        println!("{name}: free");
                    }
                    Outcome::NotFound
                }
            }
        }
        Command::Release { name, .. } => {
            // The holder read by the script that evicted it, not by an earlier look.
            let evicted = locks.evict(name).await.map_err(|e| e.to_string())?;
            let released = evicted.is_some();
            let holder = evicted.map(|info| info.holder);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "name": name, "released": released, "evicted": holder })
                );
            } else if released {
                println!(
                    "{name}: released (evicted {}); fencing tokens drawn from now on are above its",
                    holder.as_deref().unwrap_or("unknown")
                );
            } else {
                println!("{name}: was free");
            }
            if released {
                Outcome::Found
            } else {
                Outcome::NotFound
            }
        }
    };
    // Nothing was acquired; nothing to wait for.
    let _ = locks.shutdown(Duration::from_secs(1)).await;
    Ok(outcome)
}

fn print(json: bool, locks: &[LockInfo]) {
    if json {
        let rows: Vec<serde_json::Value> = locks
            .iter()
            .map(|info| {
                serde_json::json!({
                    "name": info.name,
                    "holder": info.holder,
                    "acquired_at_ms": info.acquired_at.and_then(unix_ms),
                    "remaining_ms": info.remaining.map(|d| d.as_millis() as u64),
                    "waited_for": info.waited_for,
                    "permits": info.permits,
                    "shared": info.shared,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    let rows: Vec<[String; 5]> = locks
        .iter()
        .map(|info| {
            [
                // One row per permit of a lock of `permits(n)`, and per shared holder.
                if info.shared {
                    format!("{} (shared)", info.name)
                } else if info.permits > 1 {
                    format!("{} (permits {})", info.name, info.permits)
                } else {
                    info.name.clone()
                },
                info.holder.clone(),
                info.acquired_at.map_or("-".to_owned(), ago),
                info.remaining.map_or("no expiry".to_owned(), human),
                if info.waited_for { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let header = ["NAME", "HOLDER", "HELD FOR", "REMAINING", "WAITERS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

fn unix_ms(at: SystemTime) -> Option<u64> {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// How long ago `at` was, by this machine's clock.
fn ago(at: SystemTime) -> String {
    SystemTime::now()
        .duration_since(at)
        .map_or_else(|_| "0s".to_owned(), human)
}

/// `1h02m`, `3m04s`, `12.3s`, `450ms`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}
