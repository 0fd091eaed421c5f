use lock_core::{distributed_lock, LockError};

trait Job {
    #[distributed_lock(key = "job", ttl = "30s")]
    async fn run(&self) -> Result<(), LockError>;
}

fn main() {}
