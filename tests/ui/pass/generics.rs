// Generics, where clauses, lifetimes and `impl Trait` in the return type.
use std::fmt::Display;

use lock_core::{distributed_lock, LockError, LockManager};

#[distributed_lock(key = "gen:{id}", ttl = "30s", manager = locks)]
async fn generic<'a, T, I>(locks: &'a LockManager, id: I, items: &'a [T]) -> Result<&'a T, LockError>
where
    T: Clone + Send + Sync,
    I: Display + Send,
{
    Ok(&items[0])
}

// A fractional duration that comes to whole milliseconds.
#[distributed_lock(key = "impl", ttl = "1.5s", manager = locks)]
async fn returns_impl(locks: &LockManager) -> Result<impl Display, LockError> {
    Ok(5)
}

/// Docs and other attributes stay in place.
#[must_use = "results matter"]
#[distributed_lock(key = "stacked", ttl = "30s", manager = locks)]
#[tracing::instrument(skip(locks))]
pub(crate) async fn stacked(locks: &LockManager) -> Result<u8, LockError> {
    Ok(1)
}

// Tuple fields in the template.
#[distributed_lock(key = "pair:{pair.0}:{pair.1}", ttl = "30s", manager = locks)]
async fn tuple_fields(locks: &LockManager, pair: (u32, &str)) -> Result<bool, LockError> {
    Ok(lock_core::held(&format!("pair:{}:{}", pair.0, pair.1)))
}

#[tokio::main]
async fn main() {
    let locks = LockManager::in_memory();
    assert_eq!(*generic(&locks, "x", &[1, 2]).await.unwrap(), 1);
    assert_eq!(returns_impl(&locks).await.unwrap().to_string(), "5");
    assert_eq!(stacked(&locks).await.unwrap(), 1);
    assert!(tuple_fields(&locks, (7, "x")).await.unwrap());
}
