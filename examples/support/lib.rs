//! What the examples share: their flags, starting worker processes, and removing the keys
//! they leave behind. The test harness (`tests/support`) re-exports it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The number after `name` among this process's arguments (`--workers 4`), for the examples.
pub fn flag(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
}

/// Starts this same executable `workers` times, as `--worker <id>` (1-based) followed by
/// `extra`, and returns every line they printed (each worker's in its order) and whether they
/// all succeeded. For the examples that show exclusion across processes.
pub fn run_workers(workers: u64, extra: &[String]) -> (Vec<String>, bool) {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().expect("the running executable");
    let children: Vec<Child> = (1..=workers)
        .map(|id| {
            Command::new(&exe)
                .arg("--worker")
                .arg(id.to_string())
                .args(extra)
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    let mut lines = Vec::new();
    let mut all_ok = true;
    for mut child in children {
        let out = child.stdout.take().expect("piped");
        lines.extend(BufReader::new(out).lines().map_while(Result::ok));
        all_ok &= child.wait().is_ok_and(|s| s.success());
    }
    (lines, all_ok)
}

/// Deletes every key under `prefix` on the server at `url` (`SCAN`, then `DEL` in batches):
/// what an example leaves, fencing counters included. Returns how many it deleted.
pub fn remove_keys(url: &str, prefix: &str) -> redis::RedisResult<usize> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    let mut pattern = String::new();
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(500)
        .clone()
        .iter(&mut conn)?
        .collect::<redis::RedisResult<_>>()?;
    for batch in keys.chunks(500) {
        let _: () = redis::cmd("DEL").arg(batch).query(&mut conn)?;
    }
    Ok(keys.len())
}
