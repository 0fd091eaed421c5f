//! `lockctl`: who holds which lock-core lock, and freeing one whoever holds it.
//!
//! ```text
//! lockctl list [PATTERN]          held locks whose name matches PATTERN (default `*`)
//! lockctl show NAME               one lock: holder, since when, time left
//! lockctl release NAME --force    free it whoever holds it (advances its fencing counter);
//!                                 --holder H frees only the holds of holder H
//! ```
//!
//! Where: `--url URL` (or `REDIS_URL`; default `redis://127.0.0.1:6379`), repeated with
//! `--cluster` or `--redlock`, or the sentinels' urls with `--sentinel MASTER`; `--prefix` (default
//! `lock:`) as the services' `key_prefix`; `--timeout` bounds each connection and each command
//! (default 1s). `--json` prints JSON instead of a table (one shape per command, with
//! `"schema": 1`); `--wide` shows long names whole. Flags go before or after the command.
//!
//! Exit codes: 0 found or done, 1 not found (no lock matched; the lock was free), 2 usage or
//! bad input (nothing was sent), 3 Redis unreachable or failing. Errors go to stderr (as JSON
//! with `--json`).

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
        global = true,
        env = "REDIS_URL",
        // `--help` would print REDIS_URL, password and all.
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    urls: Vec<String>,
    /// The urls are seeds of a Redis Cluster.
    #[arg(long, global = true, conflicts_with_all = ["redlock", "sentinel"])]
    cluster: bool,
    /// The urls are the independent masters of a Redlock deployment.
    #[arg(long, global = true, conflicts_with = "sentinel")]
    redlock: bool,
    /// The urls are sentinels; the primary is the one they know by this name.
    #[arg(long, global = true, value_name = "MASTER")]
    sentinel: Option<String>,
    /// The services' key prefix.
    #[arg(long, global = true, default_value = "lock:")]
    prefix: String,
    /// How long a connection, and each command, may take: `500ms`, `2s`, `1m`.
    #[arg(long, global = true, default_value = "1s", value_parser = duration)]
    timeout: Duration,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Show long names whole (else cut to 48 characters, with `…`).
    #[arg(long, short = 'w', global = true)]
    wide: bool,
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
        /// Evict only the holds taken by this holder id (as `list` shows it): a lock that
        /// changed hands since is left alone; of a lock of permits, only its permits go.
        #[arg(long, value_name = "HOLDER")]
        holder: Option<String>,
    },
}

/// The version of the `--json` output's shape.
const SCHEMA: u32 = 1;

/// What a command found, for the exit code.
enum Outcome {
    Found,
    NotFound,
}

impl Outcome {
    /// `Found` when the command found (or did) anything.
    fn of(any: bool) -> Self {
        if any {
            Outcome::Found
        } else {
            Outcome::NotFound
        }
    }
}

/// Why a command failed, for the exit code: 2 usage or bad input, 3 Redis.
struct Failed {
    code: u8,
    message: String,
}

impl Failed {
    fn usage(message: String) -> Self {
        Failed { code: 2, message }
    }
}

impl From<lock_core::LockError> for Failed {
    fn from(e: lock_core::LockError) -> Self {
        let code = match e {
            // A name, url, prefix or setting refused before anything was sent.
            lock_core::LockError::InvalidConfig { .. }
            | lock_core::LockError::InvalidName { .. }
            | lock_core::LockError::InvalidUrl { .. } => 2,
            _ => 3,
        };
        Failed {
            code,
            message: e.to_string(),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(Outcome::Found) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(1),
        Err(e) => {
            if cli.json {
                eprintln!(
                    "{}",
                    serde_json::json!({ "schema": SCHEMA, "error": e.message, "exit": e.code })
                );
            } else {
                eprintln!("lockctl: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

/// Who runs this command, as evicted holders read it: `lockctl:<user>@<host>`.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("lockctl:{user}@{host}")
}

/// A duration as an operator writes it: `500ms`, `2s`, `1.5s`, `1m`.
fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, ""), |at| text.split_at(at));
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => {
            return Err(format!(
                "`{text}`: write a number and ms, s or m (`500ms`, `2s`)"
            ))
        }
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n * scale <= 3600.0 => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!("`{text}`: a timeout above 0 and at most an hour")),
    }
}

async fn run(cli: &Cli) -> Result<Outcome, Failed> {
    if let Command::Release {
        force: false, name, ..
    } = &cli.command
    {
        return Err(Failed::usage(format!(
            "`release {name}` evicts whoever holds the lock: add --force to do it"
        )));
    }
    // An operator looks at (and frees) locks wherever they are: a server that could evict lock
    // keys is the applications' risk to accept, not a reason to hide what it holds.
    let mut builder = LockManager::builder()
        .key_prefix(cli.prefix.clone())
        .connect_timeout(cli.timeout)
        .response_timeout(cli.timeout)
        .allow_eviction(true)
        // What an evicted holder reads as who evicted it.
        .holder_id(operator());
    builder = if cli.cluster {
        builder.cluster(&cli.urls)
    } else if cli.redlock {
        builder.redlock(&cli.urls)
    } else if let Some(master) = &cli.sentinel {
        builder.sentinel(master, &cli.urls)
    } else {
        match cli.urls.as_slice() {
            [url] => builder.url(url),
            _ => {
                return Err(Failed::usage(
                    "several --url need --cluster, --redlock or --sentinel".to_owned(),
                ))
            }
        }
    };
    let locks = builder.build().await?;
    let outcome = match &cli.command {
        Command::List { pattern } => {
            let found = locks.list(pattern).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "schema": SCHEMA, "locks": rows(&found) })
                );
            } else {
                table(&found, cli.wide);
            }
            Outcome::of(!found.is_empty())
        }
        Command::Show { name } => {
            let found: Vec<LockInfo> = locks.inspect(name).await?.into_iter().collect();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "schema": SCHEMA,
                        "name": name,
                        "held": !found.is_empty(),
                        "locks": rows(&found),
                    })
                );
            } else if found.is_empty() {
                println!("{}: free", shown(name, true));
            } else {
                table(&found, cli.wide);
            }
            Outcome::of(!found.is_empty())
        }
        Command::Release { name, holder, .. } => {
            // The holders read by the script that evicted them, not by an earlier look.
            let evicted = locks.evict_holders(name, holder.as_deref()).await?;
            let holders: Vec<&str> = evicted.iter().map(|info| info.holder.as_str()).collect();
            // On stderr too, whatever the output: a trace of who evicted whom, for the
            // operator's shell history and logs.
            if !holders.is_empty() {
                eprintln!(
                    "lockctl: evicted {} from {} (by {})",
                    holders
                        .iter()
                        .map(|h| shown(h, true))
                        .collect::<Vec<_>>()
                        .join(", "),
                    shown(name, true),
                    shown(&operator(), true)
                );
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "schema": SCHEMA,
                        "name": name,
                        "released": !holders.is_empty(),
                        "evicted": holders,
                    })
                );
            } else if !holders.is_empty() {
                println!(
                    "{}: released (evicted {}); fencing tokens drawn from now on are above theirs",
                    shown(name, true),
                    holders
                        .iter()
                        .map(|h| shown(h, true))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            } else if let Some(holder) = holder {
                println!(
                    "{}: nothing of {} to evict (free, or held by another holder)",
                    shown(name, true),
                    shown(holder, true)
                );
            } else {
                println!("{}: was free", shown(name, true));
            }
            Outcome::of(!holders.is_empty())
        }
    };
    // Nothing was acquired; nothing to wait for.
    let _ = locks.shutdown(Duration::from_secs(1)).await;
    Ok(outcome)
}

/// The `--json` rows of `locks`.
fn rows(locks: &[LockInfo]) -> Vec<serde_json::Value> {
    let now = SystemTime::now();
    locks
        .iter()
        .map(|info| {
            let kind = if info.shared {
                "shared"
            } else if info.permits > 1 {
                "permits"
            } else {
                "exclusive"
            };
            serde_json::json!({
                "name": info.name,
                "kind": kind,
                "holder": info.holder,
                "acquired_at_ms": info.acquired_at.and_then(unix_ms),
                "remaining_ms": info.remaining.map(|d| d.as_millis() as u64),
                "expires_at_ms": info.remaining.and_then(|d| unix_ms(now + d)),
                "waited_for": info.waited_for,
                "waiting": info.waiting,
                "permits": info.permits,
                "shared": info.shared,
            })
        })
        .collect()
}

/// Characters that change how a line reads without showing themselves: bidirectional
/// overrides and isolates, zero-width characters, line and paragraph separators.
fn hidden(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2028}' | '\u{2029}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The longest name a table shows whole without `--wide`.
const NAME_WIDTH: usize = 48;

/// `text` as a terminal may show it: control characters escaped (a newline in a name cannot
/// print a row of its own), and, unless `whole`, cut to [`NAME_WIDTH`] characters with `…`.
fn shown(text: &str, whole: bool) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            if c.is_control() || hidden(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if whole || escaped.chars().count() <= NAME_WIDTH {
        return escaped;
    }
    let mut cut: String = escaped.chars().take(NAME_WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// The table of `locks`, one row per holder.
fn table(locks: &[LockInfo], wide: bool) {
    let rows: Vec<[String; 5]> = locks
        .iter()
        .map(|info| {
            [
                // One row per permit of a lock of `permits(n)`, and per shared holder.
                if info.shared {
                    format!("{} (shared)", shown(&info.name, wide))
                } else if info.permits > 1 {
                    format!("{} (permits {})", shown(&info.name, wide), info.permits)
                } else {
                    shown(&info.name, wide)
                },
                shown(&info.holder, wide),
                info.acquired_at.map_or("-".to_owned(), ago),
                info.remaining.map_or("no expiry".to_owned(), human),
                // Writers waiting, counted; else whether some request (a shared one) waits.
                if info.waiting > 0 {
                    info.waiting.to_string()
                } else if info.waited_for {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
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
