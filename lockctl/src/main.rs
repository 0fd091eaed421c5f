//! `lockctl`: who holds which lock-core lock, and freeing one whoever holds it.
//!
//! ```text
//! lockctl list [PATTERN]          held locks whose name matches PATTERN (default `*`)
//! lockctl show NAME               one lock: holder, since when, ttl, last renewed, time left
//! lockctl queue NAME              the writers waiting for it, the fair line in order
//! lockctl watch [PATTERN]         a live table, redrawn in place until q or Ctrl-C
//!                                 (--once: one frame; --interval: how often, default 1s)
//! lockctl release NAME --force    free it whoever holds it (advances its fencing counter);
//!                                 --holder H frees only the holds of holder H
//! ```
//!
//! Where: `--url URL` (or `REDIS_URL`; default `redis://127.0.0.1:6379`), repeated with
//! `--cluster` or `--redlock`, or the sentinels' urls with `--sentinel MASTER`; `--prefix` (default
//! `lock:`) as the services' `key_prefix`; `--timeout` bounds each connection and each command
//! (default 1s). `--json` prints JSON instead of a table (one shape per command, with
//! `"schema": 1`); `--wide` shows long names whole (else they are cut to fit the terminal, or
//! to 48 characters off one). Flags go before or after the command.
//!
//! Exit codes: 0 found or done, 1 not found (no lock matched; the lock was free; nobody waits
//! in `queue`), 2 usage or bad input (nothing was sent), 3 Redis unreachable or failing. Errors
//! go to stderr (as JSON with `--json`, usage errors too).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lock_core::{LockInfo, LockManager};

mod terminal;
mod view;
mod watch;

use view::{locks_table, rows, shown, waiter_rows, waiters_table};

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
    /// Show long names whole (else cut, with `…`, to fit the terminal, or to 48 characters
    /// when not on one).
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
    /// One lock: who holds it, since when, its ttl, when it was last renewed, and for how
    /// long still.
    Show { name: String },
    /// The writers waiting for a lock: the fair line in order, then the others.
    Queue { name: String },
    /// A live table of the held locks whose name matches PATTERN, redrawn in place: `q` or
    /// Ctrl-C quits.
    Watch {
        #[arg(default_value = "*")]
        pattern: String,
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// How often to redraw: `500ms`, `2s` (at least 100ms: each frame is a SCAN).
        #[arg(long, default_value = "1s", value_parser = interval)]
        interval: Duration,
    },
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && std::env::args_os().any(|a| a == "--json") => {
            // A usage error, asked for as JSON: the one error shape, on stderr.
            let rendered = e.to_string();
            let message = rendered
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            eprintln!(
                "{}",
                serde_json::json!({ "schema": SCHEMA, "error": message, "exit": 2 })
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
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
        _ => Err(format!("`{text}`: a duration above 0 and at most an hour")),
    }
}

/// `--interval`: a duration of at least 100ms (a frame is a `SCAN` of every primary).
fn interval(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d >= Duration::from_millis(100) => Ok(d),
        _ => Err(format!(
            "`{text}`: at least 100ms between frames (each one scans Redis)"
        )),
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
            // Nothing here: say where locks are held, in case the prefix is the wrong one.
            // Best effort, within one --timeout: it reads every key shaped like a lock key, and
            // a slow or failing look must not turn "nothing matched" into an error.
            let elsewhere = if found.is_empty() {
                tokio::time::timeout(cli.timeout, locks.other_prefixes())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "schema": SCHEMA,
                        "locks": rows(&found),
                        "other_prefixes": elsewhere,
                    })
                );
            } else {
                print!("{}", locks_table(&found, cli.wide, terminal::width()));
            }
            if !elsewhere.is_empty() && !cli.json {
                eprintln!(
                    "lockctl: no lock under prefix {} matches; locks are held under {} (--prefix)",
                    shown(&cli.prefix, true),
                    elsewhere
                        .iter()
                        .map(|p| shown(p, true))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
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
                print!("{}", locks_table(&found, cli.wide, terminal::width()));
            }
            Outcome::of(!found.is_empty())
        }
        Command::Queue { name } => {
            let found = locks.inspect(name).await?;
            let waiters = found
                .as_ref()
                .map(|f| f.waiters.as_slice())
                .unwrap_or_default();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "schema": SCHEMA,
                        "name": name,
                        "held": found.is_some(),
                        "holder": found.as_ref().map(|f| &f.holder),
                        "waiters": waiter_rows(waiters),
                    })
                );
            } else {
                match &found {
                    Some(info) => println!(
                        "{}: held by {}, {} waiting",
                        shown(name, true),
                        shown(&info.holder, true),
                        waiters.len()
                    ),
                    // Writers waiting on a free lock are about to take it: not read.
                    None => println!("{}: free", shown(name, true)),
                }
                if !waiters.is_empty() {
                    print!("{}", waiters_table(waiters, cli.wide));
                }
            }
            Outcome::of(!waiters.is_empty())
        }
        Command::Watch {
            pattern,
            once,
            interval,
        } => {
            let watch = watch::Watch {
                pattern,
                prefix: &cli.prefix,
                interval: *interval,
                wide: cli.wide,
            };
            if cli.json {
                // One frame's locks, in `list --json`'s shape.
                let found = locks.list(pattern).await?;
                println!(
                    "{}",
                    serde_json::json!({ "schema": SCHEMA, "locks": rows(&found) })
                );
                Outcome::of(!found.is_empty())
            } else if *once {
                Outcome::of(watch::once(&locks, &watch).await?)
            } else {
                watch::live(&locks, &watch)
                    .await
                    .map_err(|e| Failed::usage(format!("watch: {e}")))?;
                Outcome::Found
            }
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
