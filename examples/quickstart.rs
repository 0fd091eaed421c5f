//! Two workers contend for one lock: one gets it, the other is refused, then waits and takes
//! it over when the first lets go. Fencing tokens grow with every acquisition.
//!
//! ```sh
//! cargo run --example quickstart                     # Redis at redis://127.0.0.1:6379
//! REDIS_URL=redis://10.0.0.5:6379 cargo run --example quickstart
//! ```
//!
//! With no Redis answering, it says so and runs on the in-process backend.

use std::time::Duration;

use lock_core::{LockError, LockManager};

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // A prefix of its own keeps the example's keys apart from anything else on the server; the
    // example deletes them before it exits.
    let on_redis;
    let locks = match LockManager::builder()
        .url(&url)
        .key_prefix("quickstart:")
        .build()
        .await
    {
        Ok(locks) => {
            println!("using Redis at {url}");
            on_redis = true;
            locks
        }
        Err(e) => {
            println!("no Redis at {url} ({e}); using the in-process backend");
            on_redis = false;
            LockManager::in_memory()
        }
    };
    let ttl = Duration::from_secs(10);

    let a = locks.acquire("report", ttl, Duration::ZERO).await?;
    println!(
        "worker A  took `report`             fencing token {}",
        a.fencing_token().await?
    );

    match locks.acquire("report", ttl, Duration::ZERO).await {
        Err(LockError::Busy { name, holder, .. }) => println!(
            "worker B  `{name}` is busy (held by {}), not waiting",
            holder.as_deref().unwrap_or("someone")
        ),
        other => println!("worker B  unexpected: {other:?}"),
    }

    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            println!("worker B  waiting up to 5s for `report`");
            let started = tokio::time::Instant::now();
            let b = locks.acquire("report", ttl, Duration::from_secs(5)).await?;
            println!(
                "worker B  took `report` after {:>4} ms fencing token {}",
                started.elapsed().as_millis(),
                b.fencing_token().await?
            );
            let released = b.release().await?;
            println!("worker B  released: {released}");
            Ok::<_, LockError>(())
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await; // A's "work"
    let released = a.release().await?;
    println!("worker A  released: {released}");
    waiter.await.expect("worker B panicked")?;

    let err = locks.acquire("", ttl, Duration::ZERO).await.unwrap_err();
    println!("bad input is refused before any I/O: {err}");
    locks.shutdown(Duration::from_secs(2)).await?;
    if on_redis {
        // A released lock leaves its fencing counter (a day, so that tokens keep growing
        // across holders); the example removes it.
        let removed =
            tokio::task::spawn_blocking(move || lock_examples::remove_keys(&url, "quickstart:"))
                .await
                .expect("clean-up panicked")?;
        println!("removed the example's {removed} key(s)");
    }
    Ok(())
}
