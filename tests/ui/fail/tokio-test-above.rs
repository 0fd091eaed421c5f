use lock_core::distributed_lock;

// `#[tokio::test]` (or `#[tokio::main]`) above the attribute has already made the fn a plain
// one that blocks on its body.
#[tokio::test]
#[distributed_lock(key = "job", ttl = "30s")]
async fn job() -> Result<(), lock_core::LockError> {
    Ok(())
}

fn main() {}
