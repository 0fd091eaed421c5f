//! Why fencing tokens matter: a holder stalls past its TTL, a second holder takes the lock,
//! and the first one wakes up and writes anyway. The store remembers the highest fencing token
//! it accepted and refuses the stale write.
//!
//! A token is drawn on first use, while the lock is held (`fencing_token().await`), and cached
//! by the guard: draw it before the work, as holder A does here. A holder that only asks for a
//! token after its lease ran out gets `LockError::Lost` instead of a token.
//!
//! ```sh
//! cargo run --example fenced_writes     # REDIS_URL, default redis://127.0.0.1:6379
//! ```

use std::sync::Mutex;
use std::time::Duration;

use lock_core::{LockError, LockManager};

/// A resource that accepts a write only with a fencing token at least as high as any it has
/// seen: the check a database can do with a `WHERE fence <= $token` condition.
#[derive(Default)]
struct FencedStore {
    state: Mutex<(u64, Vec<String>)>,
}

impl FencedStore {
    fn write(&self, fencing_token: u64, value: &str) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        if fencing_token < state.0 {
            return Err(format!(
                "refused: token {fencing_token} is older than {}",
                state.0
            ));
        }
        state.0 = fencing_token;
        state.1.push(value.to_owned());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut on_redis = true;
    let locks = match LockManager::builder()
        .url(&url)
        .key_prefix("fenced_writes:")
        .build()
        .await
    {
        Ok(locks) => locks,
        Err(e) => {
            println!("no Redis at {url} ({e}); using the in-process backend");
            on_redis = false;
            LockManager::in_memory()
        }
    };
    let store = FencedStore::default();

    let slow = locks
        .acquire("ledger", Duration::from_millis(200), Duration::from_secs(5))
        .await?;
    let token_a = slow.fencing_token().await?;
    println!("holder A  took the lock, fencing token {token_a}");
    println!(
        "holder A  stalls for 400 ms (a GC pause, a stuck call) while its 200 ms lease runs out"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;

    let fast = locks
        .acquire("ledger", Duration::from_secs(5), Duration::from_secs(5))
        .await?;
    let token_b = fast.fencing_token().await?;
    println!("holder B  took the lock, fencing token {token_b}");
    match store.write(token_b, "B's update") {
        Ok(()) => println!("holder B  write accepted"),
        Err(e) => println!("holder B  write {e}"),
    }

    println!("holder A  wakes up; lease lost: {}", slow.is_lost());
    match store.write(token_a, "A's stale update") {
        Ok(()) => println!("holder A  write accepted (this would be a lost update!)"),
        Err(e) => println!("holder A  write {e}"),
    }
    println!(
        "holder A  release: {} (the lock is B's now and stays B's)",
        slow.release().await?
    );
    println!("holder B  release: {}", fast.release().await?);

    // A holder that asks for its token only after its lease ran out gets no token at all.
    let late = locks
        .acquire("ledger", Duration::from_millis(100), Duration::from_secs(5))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    match late.fencing_token().await {
        Ok(t) => {
            println!("holder C  drew token {t} after its lease ran out (this would be a bug!)")
        }
        Err(e) => println!("holder C  asked for a token after its lease ran out: {e}"),
    }
    println!("store     {:?}", store.state.lock().unwrap().1);
    locks.shutdown(Duration::from_secs(2)).await?;
    if on_redis {
        // The example's keys, its fencing counter included.
        let removed =
            tokio::task::spawn_blocking(move || lock_examples::remove_keys(&url, "fenced_writes:"))
                .await
                .expect("clean-up panicked")?;
        println!("removed the example's {removed} key(s)");
    }
    Ok(())
}
