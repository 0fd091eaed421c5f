//! Draws owner tokens on both sides of a `fork(2)`: the parent draws one (seeding its thread's
//! token generator), forks, and then parent and child each draw `n` more, printing one line per
//! token, `<parent|child> <token>`. core.rs checks that no token (nor its random part) comes
//! out twice: a child that kept drawing from its copy of the parent's generator would repeat the
//! parent's tokens one for one.
//!
//! Usage: `fork-tokens <n>`.

use std::io::Write;
use std::time::Duration;

use lock_core::LockManager;

/// `n` tokens of locks named `<label>:<i>`, each taken and given back on the in-memory backend,
/// on a current-thread runtime: every token is drawn on this thread, and no thread is left
/// behind when it returns.
fn draw(label: &str, n: usize) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async {
        let locks = LockManager::in_memory();
        let mut tokens = Vec::with_capacity(n);
        for i in 0..n {
            let g = locks
                .try_acquire(&format!("{label}:{i}"), Duration::from_secs(60))
                .await
                .expect("the in-memory backend answers")
                .expect("a fresh name is free");
            tokens.push(g.token().to_owned());
            assert!(g.release().await.expect("released"));
        }
        tokens
    })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("usage: fork-tokens <n>");
    let before = draw("before", 1);
    assert_eq!(before.len(), 1);
    // SAFETY: the process has one thread here (the runtime `draw` built ran on this thread
    // only and is gone), so the child starts with a consistent copy of all of its state.
    #[allow(unsafe_code)]
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    let role = if pid == 0 { "child" } else { "parent" };
    let tokens = draw(role, n);
    let mut out = std::io::stdout().lock();
    for token in tokens {
        writeln!(out, "{role} {token}").expect("stdout");
    }
    out.flush().expect("stdout");
}
