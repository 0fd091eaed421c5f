use lock_core::{distributed_lock, LockError};

// Every mistake is reported in one compile, not just the first.
#[distributed_lock(key = "jobs:{nope}", ttl = "30x", wait = "soon", on_busy = "maybe")]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
