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

// Receivers that async-trait moves: `&mut self`, `self: Arc<Self>`, with `self` in the key
// and the manager.
#[async_trait::async_trait]
trait Mutating {
    async fn bump(&mut self) -> Result<u32, LockError>;
    async fn owned(self: std::sync::Arc<Self>) -> Result<u32, LockError>;
}

struct Counter {
    locks: LockManager,
    id: u32,
    n: u32,
}

#[async_trait::async_trait]
impl Mutating for Counter {
    #[distributed_lock(key = "counter:{self.id}", ttl = "30s", manager = self.locks)]
    async fn bump(&mut self) -> Result<u32, LockError> {
        self.n += 1;
        Ok(self.n)
    }

    #[distributed_lock(key = "counter:{self.id}", ttl = "30s", manager = self.locks.clone())]
    async fn owned(self: std::sync::Arc<Self>) -> Result<u32, LockError> {
        Ok(self.n)
    }
}

// `self` inside a macro in the key or the manager, and a key named by a path from `self::`
// (a module, not the receiver).
mod keys {
    pub(crate) const COUNTER: &str = "counter:by-path";
}

#[async_trait::async_trait]
trait Paths {
    async fn by_macro(&mut self) -> Result<u32, LockError>;
    async fn by_module_path(&self) -> Result<u32, LockError>;
    async fn by_pattern(&self, pair: (u32, u32)) -> Result<bool, LockError>;
    async fn traced(&self, tenant: u32) -> Result<bool, LockError>;
}

#[async_trait::async_trait]
impl Paths for Counter {
    #[distributed_lock(key = format!("counter:{}", self.id), ttl = "30s", manager = self.locks)]
    async fn by_macro(&mut self) -> Result<u32, LockError> {
        self.n += 1;
        Ok(self.n)
    }

    #[distributed_lock(key = self::keys::COUNTER, ttl = "30s", manager = self.locks)]
    async fn by_module_path(&self) -> Result<u32, LockError> {
        Ok(self.n)
    }

    // A parameter written as a pattern (async-trait renames it `__arg1` and binds the pattern
    // inside the future).
    #[distributed_lock(key = "move:{from}:{to}", ttl = "30s", manager = self.locks)]
    async fn by_pattern(&self, (from, to): (u32, u32)) -> Result<bool, LockError> {
        Ok(lock_core::held(&format!("move:{from}:{to}")))
    }

    // `#[tracing::instrument]` above: it nests async-trait's future one level deeper.
    #[tracing::instrument(skip(self))]
    #[distributed_lock(key = "traced:{self.id}:{tenant}", ttl = "30s", manager = self.locks)]
    async fn traced(&self, tenant: u32) -> Result<bool, LockError> {
        Ok(lock_core::held(&format!("traced:{}:{tenant}", self.id)))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut paths = Counter {
        locks: LockManager::in_memory(),
        id: 2,
        n: 0,
    };
    assert_eq!(paths.by_macro().await.unwrap(), 1);
    assert_eq!(paths.by_module_path().await.unwrap(), 1);
    assert!(paths.by_pattern((3, 4)).await.unwrap());
    assert!(paths.traced(5).await.unwrap());
    let mut counter = Counter {
        locks: LockManager::in_memory(),
        id: 1,
        n: 0,
    };
    assert_eq!(counter.bump().await.unwrap(), 1);
    assert_eq!(std::sync::Arc::new(counter).owned().await.unwrap(), 1);
    let worker = Worker {
        locks: LockManager::in_memory(),
    };
    assert_eq!(Job::run(&worker, 1).await.unwrap(), 1);
    assert_eq!(LocalJob::run(&worker, 1).await.unwrap(), 2);
}
