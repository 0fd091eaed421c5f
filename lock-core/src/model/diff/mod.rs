//! The differential test: seeded random sequences of every lock script and of the plain
//! commands the client sends, run on the model and on a real `redis-server`, every reply
//! compared.
//!
//! The server is started here, on a free loopback port, and killed on drop; it is never a
//! shared one: `redis-server`, or the binary `LOCK_TESTS_SERVER` names (CI runs it on Valkey
//! 8.1 and 9.1 too). The steps include the native `DELIFEQ` and `SET ... IFEQ` that a release and
//! an extend send where the server has them; the model is told which ones this server has (it
//! asks by sending each), and must answer the others' errors as the server does. `MODEL_DIFF_SEEDS=<n>` runs more seeds (default 6), `MODEL_DIFF_STEPS=<n>` more
//! steps per seed (default 2500), `MODEL_DIFF_FIRST_SEED=<n>` starts elsewhere.
//!
//! # Time
//!
//! The server runs on its wall clock, the model on the clock it is given, so each step sends
//! `TIME`, the command and `TIME` again in one pipeline (nothing runs in between on a server of
//! its own), and the model runs the command at the first `TIME`. Both then agree on everything
//! except figures read from the clock, which differ by at most the span of the pipeline that read
//! them plus the millisecond floor (the tolerance: 2 ms plus the widest pipeline of the seed so
//! far, as a figure may have been read at an earlier step, say a timestamp stored then and read
//! back now; a loaded machine widens it):
//! - milliseconds left compare within the tolerance: a `PTTL` of 0 or more (not -1 or -2),
//!   the negative answers of acquire, fair and permit_acquire (not their 1 or 0), and the
//!   per-permit figures of permit_peek's list (not its `n` or its flag) ([`Left`]);
//! - numbers that are timestamps (at least 10^12: a permit's end, a ticket's expiry, in ms; a
//!   fencing token, in µs, at least 10^15), as replies or as words of a bulk reply, compare
//!   within the tolerance too. Everything else compares exactly: errors, types, order (errors
//!   as both servers word them: Valkey's `NOSCRIPT` text and script errors differ from Redis
//!   7.0's in words the client never reads, see [`worded`]).
//!
//! Expiry must then never be decided differently: before each step, if any deadline the model
//! holds (a key's expiry, a timestamp in a hash) lies within `MARGIN` of the server's clock,
//! the test sleeps past it. Short leases (tens of ms) do expire, on both sides, by the time the
//! sequence comes back to them, and a step now and then sleeps on purpose. (So the exact
//! millisecond a key expires in is not what this test checks: keyspace.rs' unit tests do.)
//!
//! Now and then the server's memory is full: `CONFIG SET maxmemory 1` under the default
//! `noeviction`, for about a hundred steps, and the model is told so; OOM refusals compare
//! like any other error.
//!
//! Not compared: messages sent with `SPUBLISH` (they go to shard channels, which the pattern
//! subscriber does not hear; the model records them all the same), and `PUBLISH`'s receiver
//! count (the model answers 0; the scripts ignore it).

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value as Wire;

use super::keyspace::{Now, Value};
use super::{Model, Reply};

mod steps;

use steps::{Left, Names, Rng, Step};

/// How close to a deadline no step may run, in ms: larger than any step's clock difference,
/// with room for a machine that deschedules the server for a few milliseconds mid-step.
const MARGIN: u64 = 10;

const INSTALL_HINT: &str = "`redis-server` was not found on PATH. The model's differential \
test starts its own Redis server; install it first: `apt-get install redis-server` (Debian/Ubuntu), \
`brew install redis` (macOS), or see https://redis.io/docs/latest/operate/oss_and_stack/install/";

/// The server binary: `LOCK_TESTS_SERVER` (the test harness' server matrix), else
/// `redis-server` on PATH.
fn binary() -> String {
    std::env::var("LOCK_TESTS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The native compare-and-set commands `con`'s server has, asked by sending each (on a key no
/// seed uses): `DELIFEQ` unknown, or `SET ... IFEQ` a syntax error, where it has not.
fn native_of(con: &mut redis::Connection) -> crate::command::Native {
    let mut refused = |cmd: &mut redis::Cmd| cmd.query::<Wire>(con).is_err();
    crate::command::Native {
        delifeq: !refused(redis::cmd("DELIFEQ").arg("probe").arg("x")),
        set_ifeq: !refused(redis::cmd("SET").arg("probe").arg("x").arg("IFEQ").arg("y")),
    }
}

/// A `redis-server` of this test's own, on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
                _ => panic!("starting redis-server failed: {e}"),
            });
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn connect(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .and_then(|c| c.get_connection())
            .expect("connecting to the test's redis-server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's answer as the model's [`Reply`].
fn from_wire(value: Wire) -> Reply {
    match value {
        Wire::Nil => Reply::Nil,
        Wire::Int(n) => Reply::Int(n),
        Wire::BulkString(b) => Reply::Bulk(b),
        Wire::Array(items) => Reply::Array(items.into_iter().map(from_wire).collect()),
        Wire::SimpleString(s) => Reply::Status(s),
        Wire::Okay => Reply::ok(),
        Wire::ServerError(e) => Reply::Error(match e.details() {
            Some(details) => format!("{} {details}", e.code()),
            None => e.code().to_owned(),
        }),
        other => panic!("a RESP3 reply from a RESP2 connection: {other:?}"),
    }
}

/// `TIME`'s answer in µs.
fn micros(value: &Wire) -> u64 {
    let Wire::Array(parts) = value else {
        panic!("TIME answered {value:?}")
    };
    let part = |i: usize| -> u64 {
        match &parts[i] {
            Wire::BulkString(b) => std::str::from_utf8(b).unwrap().parse().unwrap(),
            other => panic!("TIME answered {other:?}"),
        }
    };
    part(0) * 1_000_000 + part(1)
}

fn server_now(con: &mut redis::Connection) -> u64 {
    micros(&redis::cmd("TIME").query::<Wire>(con).expect("TIME"))
}

/// Whether the model's and the server's replies agree, figures read from a clock within
/// `tolerance_ms` (see the module docs).
fn agree(model: &Reply, server: &Reply, left: Left, tolerance_ms: i64) -> bool {
    // `left`: this figure is milliseconds left (of the sign `Left` says), else only
    // timestamps (ms from 10^12, µs from 10^15) are read from a clock.
    let close = |a: i64, b: i64, left: bool| -> bool {
        let tolerance = if a.abs() >= 1_000_000_000_000_000 {
            tolerance_ms * 1000
        } else if a.abs() >= 1_000_000_000_000 || left {
            tolerance_ms
        } else {
            0
        };
        (a - b).abs() <= tolerance
    };
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<i64>().ok();
    match (model, server) {
        (Reply::Error(a), Reply::Error(b)) => worded(a) == worded(b),
        (Reply::Int(a), Reply::Int(b)) => match left {
            // "0 ms left" and "-3 ms left", "-1" (no expiry) and "0" are different answers.
            Left::Positive => close(*a, *b, *a >= 0 && *b >= 0),
            Left::Negative => close(*a, *b, *a < 0 && *b < 0),
            _ => close(*a, *b, false),
        },
        (Reply::Bulk(a), Reply::Bulk(b)) => {
            if let (Some(a), Some(b)) = (number(a), number(b)) {
                return close(a, b, left == Left::Positive && a > 0 && b > 0);
            }
            let (a, b) = (a.split(|&c| c == b' '), b.split(|&c| c == b' '));
            a.clone().count() == b.clone().count()
                && a.zip(b).all(|(a, b)| match (number(a), number(b)) {
                    (Some(a), Some(b)) => close(a, b, false),
                    _ => a == b,
                })
        }
        (Reply::Array(a), Reply::Array(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).enumerate().all(|(i, (a, b))| {
                    let left = match left {
                        Left::PeekList if i >= 3 && i % 2 == 1 => Left::Positive,
                        _ => Left::None,
                    };
                    agree(a, b, left, tolerance_ms)
                })
        }
        (a, b) => a == b,
    }
}

/// An error as Redis 7.0 and Valkey both word it: Valkey's `NOSCRIPT` lacks "Please use
/// EVAL.", and its script errors do not name the script's SHA1 ("script: on @user_script:..."
/// for "script: <sha1>, on @user_script:..."); Redis 6.2 quotes an unknown command's name and
/// arguments otherwise, and wraps a script's errors otherwise (see below). The client reads
/// none of it but the code (`OOM`, `NOSCRIPT`, ...), which stays.
fn worded(error: &str) -> String {
    if error.starts_with("NOSCRIPT ") {
        return "NOSCRIPT".to_owned();
    }
    // Redis 6.2 wraps an error raised in a script (here, by `redis.call`) as
    // "ERR Error running script (call to f_<sha1>): @user_script:<n>: @user_script: <n>: -<error>",
    // where 7.0 says "<error> script: <sha1>, on @user_script:<n>.".
    if let Some(rest) = error.strip_prefix("ERR Error running script (call to f_") {
        if let Some((_sha, rest)) = rest.split_once("): @user_script:") {
            if let Some((line, rest)) = rest.split_once(": @user_script: ") {
                let inner = rest.split_once(": ").map_or(rest, |(_, e)| e);
                let inner = inner.strip_prefix('-').unwrap_or(inner);
                return format!("{inner} script: on @user_script:{line}.");
            }
        }
    }
    if error.starts_with("ERR unknown command ") {
        // Redis 6.2 quotes the command and its arguments with backticks.
        return "ERR unknown command".to_owned();
    }
    match error.split_once(" script: ") {
        Some((head, tail)) => {
            let tail = match tail.split_once(", on ") {
                Some((sha, rest)) if sha.len() == 40 => format!("on {rest}"),
                _ => tail.to_owned(),
            };
            format!("{head} script: {tail}")
        }
        None => error.to_owned(),
    }
}

/// A reply's shape, for the branch tally: a number's sign, an array's emptiness.
fn shape(reply: &Reply) -> &'static str {
    match reply {
        Reply::Int(n) if *n > 0 => "> 0",
        Reply::Int(0) => "0",
        Reply::Int(_) => "< 0",
        Reply::Nil => "nil",
        Reply::Bulk(_) => "bulk",
        Reply::Array(a) if a.is_empty() => "[]",
        Reply::Array(_) => "[..]",
        Reply::Status(_) => "status",
        Reply::Error(_) => "error",
    }
}

/// The deadlines the model holds (in ms): key expiries, and timestamps inside hash values
/// (permit ends, ticket expiries), i.e. numbers within a day of `now_ms`.
fn deadlines(model: &Model, now_ms: u64) -> Vec<u64> {
    let day = 86_400_000;
    let near = |n: u64| n + day > now_ms && n < now_ms + day;
    let mut out = Vec::new();
    for (_, entry) in model.keyspace().entries() {
        out.extend(entry.expires_at_ms);
        if let Value::Hash(fields) = &entry.value {
            for (_, value) in fields {
                for word in value.split(|&c| c == b' ') {
                    // An ended claim's marker is minus the time it lapses (claims.lua).
                    let n = std::str::from_utf8(word)
                        .ok()
                        .and_then(|w| w.parse::<i64>().ok())
                        .map(i64::unsigned_abs);
                    out.extend(n.filter(|&n| near(n)));
                }
            }
        }
    }
    out
}

/// What went wrong in one seed: the step, both replies, and the steps that led there.
struct Mismatch {
    report: String,
}

/// Runs one seed; `Err` at the first disagreement (after it the two states may differ).
fn run_seed(
    seed: u64,
    steps: usize,
    native: crate::command::Native,
    sharded: bool,
    con: &mut redis::Connection,
    sub: &mut redis::PubSub<'_>,
    stats: &mut Stats,
) -> Result<(), Mismatch> {
    // A server as new as the model: no keys, no scripts, memory not full (an earlier seed may
    // have ended in a full period).
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .exec(con)
        .expect("CONFIG SET maxmemory");
    redis::cmd("FLUSHALL").exec(con).expect("FLUSHALL");
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .exec(con)
        .expect("SCRIPT FLUSH");
    let mut model = Model::new();
    model.set_native(native);
    let mut names = Names::new();
    names.sharded = sharded;
    let mut rng = Rng::new(seed);
    let mut history: Vec<String> = Vec::new();
    // The widest step of this seed so far: a figure read from the clock at an earlier step (a
    // stored timestamp, an expiry read back as milliseconds left) is off by that step's span.
    let mut widest_us = 0u64;
    for i in 0..steps {
        let step = names.step(&mut rng);
        // Never run a step within the margin of a deadline: sleep past it. The margin grows
        // with the widest step seen, so a loaded machine (a step that takes longer than
        // MARGIN) does not let the server decide an expiry the model decided otherwise.
        let margin = MARGIN.max(widest_us / 1000 + 2);
        let mut now_ms = server_now(con) / 1000;
        while let Some(d) = deadlines(&model, now_ms)
            .into_iter()
            .filter(|&d| d + margin >= now_ms && d <= now_ms + margin)
            .max()
        {
            let wait = d + margin + 1 - now_ms;
            std::thread::sleep(Duration::from_millis(wait));
            stats.slept_ms += wait;
            now_ms = server_now(con) / 1000;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        let label = match &step {
            Step::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(*ms));
                stats.slept_ms += ms;
                history.push(format!("{i}: sleep {ms} ms"));
                continue;
            }
            Step::Flush => {
                redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .exec(con)
                    .expect("SCRIPT FLUSH");
                model.flush();
                history.push(format!("{i}: SCRIPT FLUSH"));
                continue;
            }
            Step::Memory(full) => {
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg(if *full { "1" } else { "0" })
                    .exec(con)
                    .expect("CONFIG SET maxmemory");
                model.set_full(*full);
                history.push(format!("{i}: out of memory: {full}"));
                continue;
            }
            Step::Scan => {
                let keys = scan_all(con);
                let now = Now::from_ms(server_now(con) / 1000);
                let model_keys = match model.call(now, &["SCAN", "0", "MATCH", "lock:*"]) {
                    Reply::Array(mut page) => page.pop().unwrap(),
                    other => other,
                };
                stats.compared += 1;
                history.push(format!("{i}: SCAN -> {model_keys:?}"));
                if model_keys != keys {
                    return Err(mismatch(seed, i, &history, &model_keys, &keys));
                }
                continue;
            }
            Step::Command(args) => {
                let mut cmd = redis::cmd(&args[0]);
                for arg in &args[1..] {
                    cmd.arg(arg);
                }
                pipe.add_command(cmd);
                args.join(" ")
            }
            Step::Eval {
                name,
                script,
                keys,
                argv,
                by_sha,
            } => {
                if *by_sha {
                    pipe.cmd("EVALSHA")
                        .arg(redis::Script::new(script).get_hash());
                } else {
                    pipe.cmd("EVAL").arg(*script);
                }
                pipe.arg(keys.len()).arg(keys).arg(argv);
                let how = if *by_sha { "EVALSHA" } else { "EVAL" };
                format!("{name} {keys:?} {argv:?} ({how})")
            }
        };
        pipe.cmd("TIME");
        pipe.ignore_errors();
        let mut wire: Vec<Wire> = pipe.query(con).expect("the pipeline's round trip");
        let (t0, t1) = (micros(&wire[0]), micros(&wire[2]));
        let server_reply = from_wire(wire.swap_remove(1));
        let now = Now { us: t0 };
        let model_reply = match &step {
            Step::Command(args) => model.call(now, args),
            Step::Eval {
                script,
                keys,
                argv,
                by_sha: true,
                ..
            } => model.evalsha(now, redis::Script::new(script).get_hash(), keys, argv),
            Step::Eval {
                script, keys, argv, ..
            } => model.eval(now, script, keys, argv),
            Step::Sleep(_) | Step::Scan | Step::Flush | Step::Memory(_) => unreachable!(),
        };
        widest_us = widest_us.max(t1 - t0);
        let tolerance_ms = (widest_us / 1000 + 2) as i64;
        stats.compared += 1;
        stats.widest_step_us = stats.widest_step_us.max(t1 - t0);
        history.push(format!("{i}: {label} -> {server_reply:?}"));
        if !agree(&model_reply, &server_reply, step.left(), tolerance_ms) {
            return Err(mismatch(seed, i, &history, &model_reply, &server_reply));
        }
        let what = label.split(' ').next().unwrap_or("");
        if let Reply::Error(e) = &server_reply {
            let kind = e.split(" script:").next().unwrap_or(e);
            *stats.errors.entry(format!("{what} {kind}")).or_default() += 1;
        } else if step.tallied() {
            let what = if label.contains(" IFEQ ") {
                "SET IFEQ"
            } else {
                what
            };
            let answer = format!("{what} {}", shape(&server_reply));
            *stats.answers.entry(answer).or_default() += 1;
        }
        // What was published: the model's outbox against what the server sent a subscriber
        // (SPUBLISH goes to shard channels, which the pattern subscriber does not hear).
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .drain_published()
            .into_iter()
            .filter(|p| !p.sharded)
            .map(|p| (p.channel, p.message))
            .collect();
        let heard = if expected.is_empty() {
            Vec::new()
        } else {
            listen(sub, expected.len())
        };
        stats.published += heard.len();
        if heard != expected {
            let show = |m: &[(Vec<u8>, Vec<u8>)]| {
                Reply::Array(
                    m.iter()
                        .map(|(c, m)| Reply::Array(vec![Reply::bulk(c), Reply::bulk(m)]))
                        .collect(),
                )
            };
            history.push(format!("{i}: (published)"));
            return Err(mismatch(seed, i, &history, &show(&expected), &show(&heard)));
        }
    }
    // Nothing more was published: the next message is this sentinel.
    let sentinel = (b"sentinel".to_vec(), seed.to_string().into_bytes());
    redis::cmd("PUBLISH")
        .arg(&sentinel.0)
        .arg(&sentinel.1)
        .exec(con)
        .expect("PUBLISH");
    let heard = listen(sub, 1);
    if heard != [sentinel] {
        history.push(format!("{steps}: (published after the last step)"));
        let show = |m: &[(Vec<u8>, Vec<u8>)]| {
            Reply::Array(
                m.iter()
                    .map(|(c, m)| Reply::Array(vec![Reply::bulk(c), Reply::bulk(m)]))
                    .collect(),
            )
        };
        return Err(mismatch(
            seed,
            steps,
            &history,
            &Reply::Array(vec![]),
            &show(&heard),
        ));
    }
    Ok(())
}

fn mismatch(seed: u64, step: usize, history: &[String], model: &Reply, server: &Reply) -> Mismatch {
    let from = history.len().saturating_sub(25);
    Mismatch {
        report: format!(
            "seed {seed}, step {step}:\n  model:  {model:?}\n  server: {server:?}\n  last steps (server's replies):\n    {}",
            history[from..].join("\n    ")
        ),
    }
}

/// Every key `SCAN` finds, sorted, as the model's one-page answer lists them.
fn scan_all(con: &mut redis::Connection) -> Reply {
    let mut cursor = 0u64;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    loop {
        let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("lock:*")
            .arg("COUNT")
            .arg(100)
            .query(con)
            .expect("SCAN");
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Reply::Array(keys.into_iter().map(Reply::Bulk).collect())
}

/// The next `n` messages the subscriber hears, waiting up to a second for each. A message the
/// model did not publish shows up in a later step's read (or the sentinel's, at the end of a
/// seed), out of order with what the model expects.
fn listen(pubsub: &mut redis::PubSub<'_>, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    pubsub
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    (0..n)
        .map_while(|_| match pubsub.get_message() {
            Ok(msg) => Some((
                msg.get_channel_name().as_bytes().to_vec(),
                msg.get_payload_bytes().to_vec(),
            )),
            Err(e) if e.is_timeout() => None,
            Err(e) => panic!("the subscriber failed: {e}"),
        })
        .collect()
}

#[derive(Default)]
struct Stats {
    compared: usize,
    /// Scripts' other replies by shape: which branches the sequences reached.
    answers: std::collections::BTreeMap<String, usize>,
    /// Error replies by step kind and message: which refusals the sequences reached.
    errors: std::collections::BTreeMap<String, usize>,
    published: usize,
    slept_ms: u64,
    widest_step_us: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

#[test]
fn the_model_answers_as_a_real_server_does() {
    let _alone = crate::sim::alone();
    let server = Server::start();
    let mut con = server.connect();
    let mut sub = server.connect();
    // One PubSub for the whole run: dropping it unsubscribes.
    let mut sub = sub.as_pubsub();
    sub.psubscribe("*").expect("PSUBSCRIBE");
    let seeds = env("MODEL_DIFF_SEEDS", 6);
    let first = env("MODEL_DIFF_FIRST_SEED", 1);
    let steps = env("MODEL_DIFF_STEPS", 2500) as usize;
    let native = native_of(&mut con);
    let sharded = redis::cmd("SPUBLISH")
        .arg("probe")
        .arg("x")
        .query::<Wire>(&mut con)
        .is_ok();
    eprintln!(
        "model diff: {} with {native:?}, SPUBLISH: {sharded}",
        binary()
    );
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut mismatches: Vec<Mismatch> = Vec::new();
    for seed in first..first + seeds {
        if let Err(m) = run_seed(seed, steps, native, sharded, &mut con, &mut sub, &mut stats) {
            mismatches.push(m);
        }
    }
    eprintln!(
        "model diff: {seeds} seeds x {steps} steps, {} replies compared ({} errors, {} messages) \
         in {:.1?} ({} ms asleep), widest step {} µs",
        stats.compared,
        stats.errors.values().sum::<usize>(),
        stats.published,
        started.elapsed(),
        stats.slept_ms,
        stats.widest_step_us
    );
    for (kind, n) in stats.answers.iter().chain(&stats.errors) {
        eprintln!("  {n:6} {kind}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {seeds} seeds disagree:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .map(|m| m.report.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
