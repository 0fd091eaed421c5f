//! Leader election across processes: three workers campaign for one name, the leader prints a
//! heartbeat, and when it is killed with kill -9 another takes over once its lease runs out.
//!
//! ```sh
//! cargo run --example leader                 # REDIS_URL, default redis://127.0.0.1:6379
//! cargo run --example leader -- --worker 1   # one worker by itself: start several, kill one
//! ```
//!
//! Without arguments the example re-executes itself as three workers, kills the leader with
//! SIGKILL after a few heartbeats, and prints the merged timeline: the handover comes within
//! the ttl (2 s) plus one attempt, since a killed leader cannot say it is gone. A worker whose
//! stdin closes resigns, and the next one takes over at once.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lock_core::{LockError, LockManager};
use lock_examples::{flag, remove_keys};

const TTL: Duration = Duration::from_secs(2);
const PREFIX: &str = "leader_example:";
const WORKERS: u64 = 3;

async fn worker(id: u64, url: &str) -> Result<(), LockError> {
    let locks = LockManager::builder()
        .url(url)
        .key_prefix(PREFIX)
        .build()
        .await?;
    let leader = locks.leader("scheduler").ttl(TTL).start();
    println!("worker {id}  campaigning");
    let mut state = leader.watch();
    let report = async {
        while state.changed().await.is_ok() {
            let leads = *state.borrow_and_update();
            println!(
                "worker {id}  {}",
                if leads {
                    "became leader"
                } else {
                    "lost leadership"
                }
            );
        }
    };
    // The singleton's work: runs only while this worker leads, cancelled on loss.
    let work = leader.run_while_leader(|| async move {
        for beat in 1.. {
            println!("worker {id}  heartbeat {beat}");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
    // A closed stdin (the parent is done, or Ctrl-D) ends the worker.
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = closed_tx.send(());
    });
    tokio::select! {
        done = work => done?,
        () = report => {}
        _ = closed => {}
    }
    leader.resign().await?;
    println!("worker {id}  resigned");
    locks.shutdown(Duration::from_secs(2)).await
}

/// Starts a worker process whose output lines arrive on `lines` as (worker, line).
fn start(id: u64, url: &str, lines: &mpsc::Sender<String>) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("the running executable"))
        .args(["--worker", &id.to_string()])
        .env("REDIS_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a worker process");
    let out = child.stdout.take().expect("piped");
    let lines = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    child
}

/// Prints lines as they arrive until one `matches`; returns it.
fn until(
    lines: &mpsc::Receiver<String>,
    began: Instant,
    within: Duration,
    matches: impl Fn(&str) -> bool,
) -> Option<String> {
    let end = Instant::now() + within;
    while let Ok(line) = lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
        println!("{:>6} ms  {line}", began.elapsed().as_millis());
        if matches(&line) {
            return Some(line);
        }
    }
    None
}

/// The worker number at the start of "worker N  ...".
fn worker_of(line: &str) -> u64 {
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a worker line")
}

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if let Some(id) = flag("--worker") {
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        if let Err(e) = rt.block_on(worker(id, &url)) {
            eprintln!("worker {id}: {e}");
            std::process::exit(1);
        }
        return;
    }

    println!("{WORKERS} worker processes campaign for `scheduler` (ttl {TTL:?}) on {url}\n");
    let began = Instant::now();
    let (tx, lines) = mpsc::channel();
    let mut children: Vec<Child> = (1..=WORKERS).map(|id| start(id, &url, &tx)).collect();
    let ok = (|| {
        let first = until(&lines, began, Duration::from_secs(10), |l| {
            l.ends_with("became leader")
        })?;
        let leader = worker_of(&first);
        until(&lines, began, Duration::from_millis(1500), |_| false);
        let killed = Instant::now();
        children[(leader - 1) as usize].kill().ok()?; // SIGKILL: no resign, no release
        println!(
            "{:>6} ms  --- kill -9 worker {leader}",
            began.elapsed().as_millis()
        );
        let next = until(&lines, began, TTL * 3, |l| l.ends_with("became leader"))?;
        println!(
            "{:>6} ms  --- worker {} took over {} ms after the kill (ttl {} ms)",
            began.elapsed().as_millis(),
            worker_of(&next),
            killed.elapsed().as_millis(),
            TTL.as_millis()
        );
        until(&lines, began, Duration::from_millis(1000), |_| false);
        Some(())
    })()
    .is_some();

    // Close the others' stdin: they resign and exit.
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        let _ = child.wait();
    }
    drop(tx);
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        println!("{:>6} ms  {line}", began.elapsed().as_millis());
    }
    match remove_keys(&url, PREFIX) {
        Ok(n) => println!("\nremoved the example's {n} key(s)"),
        Err(e) => eprintln!("\ncould not remove the example's keys: {e}"),
    }
    if !ok {
        eprintln!("no handover was seen");
        std::process::exit(1);
    }
}
