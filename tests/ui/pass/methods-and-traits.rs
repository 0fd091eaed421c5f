// Inherent methods with &self, &mut self and self; async fns in trait impls; `?` through
// From<LockError> into the caller's error type; an `io::Result` alias.
use lock_core::{distributed_lock, LockError, LockManager};

#[derive(Debug)]
enum AppError {
    Lock(LockError),
    Parse(std::num::ParseIntError),
}

impl From<LockError> for AppError {
    fn from(e: LockError) -> Self {
        AppError::Lock(e)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Parse(e)
    }
}

struct Worker {
    locks: LockManager,
    tenant: u64,
}

impl Worker {
    #[distributed_lock(key = "w:{self.tenant}", ttl = "30s", manager = self.locks)]
    async fn parse(&self, input: &str) -> Result<u64, AppError> {
        let n: u64 = input.parse()?;
        Ok(n + self.tenant)
    }

    #[distributed_lock(key = "w:{self.tenant}", ttl = "30s", manager = self.locks.clone())]
    async fn bump(&mut self) -> Result<(), AppError> {
        self.tenant += 1;
        Ok(())
    }

    #[distributed_lock(key = "w:{self.tenant}", ttl = "30s", manager = self.locks.clone())]
    async fn into_tenant(self) -> Result<u64, AppError> {
        Ok(self.tenant)
    }
}

trait Job {
    async fn run(&self, n: u32) -> Result<u32, AppError>;
}

impl Job for Worker {
    #[distributed_lock(key = "job:{n}", ttl = "30s", manager = &self.locks)]
    async fn run(&self, n: u32) -> Result<u32, AppError> {
        Ok(n)
    }
}

#[distributed_lock(key = "io", ttl = "30s", manager = std::sync::Arc::new(LockManager::in_memory()))]
async fn io_alias() -> std::io::Result<()> {
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut w = Worker { locks: LockManager::in_memory(), tenant: 1 };
    assert_eq!(w.parse("41").await.unwrap(), 42);
    assert!(matches!(w.parse("x").await, Err(AppError::Parse(_))));
    w.bump().await.unwrap();
    assert_eq!(w.run(3).await.unwrap(), 3);
    assert_eq!(w.into_tenant().await.unwrap(), 2);
    io_alias().await.unwrap();
}
