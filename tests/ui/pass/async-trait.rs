// Methods of `#[async_trait]` impls, `Send` and `?Send`.
use lock_core::{distributed_lock, LockError, LockManager};

#[async_trait::async_trait]
trait Job {
    async fn run(&self, tenant: u32) -> Result<u32, LockError>;
}

#[async_trait::async_trait(?Send)]
trait LocalJob {
    async fn run(&self, tenant: u32) -> Result<u32, LockError>;
}

struct Worker {
    locks: LockManager,
}

#[async_trait::async_trait]
impl Job for Worker {
    #[distributed_lock(key = "job:{tenant}", ttl = "30s", manager = self.locks)]
    async fn run(&self, tenant: u32) -> Result<u32, LockError> {
        Ok(tenant)
    }
}

#[async_trait::async_trait(?Send)]
impl LocalJob for Worker {
    #[distributed_lock(key = "local:{tenant}", ttl = "30s", manager = self.locks, on_busy = "skip")]
    async fn run(&self, tenant: u32) -> Result<u32, LockError> {
        Ok(tenant + 1)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let worker = Worker {
        locks: LockManager::in_memory(),
    };
    assert_eq!(Job::run(&worker, 1).await.unwrap(), 1);
    assert_eq!(LocalJob::run(&worker, 1).await.unwrap(), 2);
}
