//! Distributed locks on Redis for async Rust job handlers.
//!
//! A [`LockManager`] takes a lock in one round trip (a Lua script doing `SET NX PX` with a
//! random 128-bit owner token plus `INCR` of a fencing counter) and returns a [`LockGuard`].
//! The guard gives the lock back with an owner-checked compare-and-delete, explicitly with
//! [`LockGuard::release`] or in the background when it is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{LockError, LockManager};
//!
//! # async fn demo() -> lock_core::Result<()> {
//! let locks = LockManager::connect("redis://127.0.0.1:6379").await?;
//! match locks.acquire("invoices:42", Duration::from_secs(30), Duration::from_secs(5)).await {
//!     Ok(guard) => {
//!         // Only one replica runs this at a time. Pass the fencing token to what you write.
//!         let fence = guard.fencing_token();
//!         # let _ = fence;
//!         guard.release().await?;
//!     }
//!     Err(LockError::Timeout { .. }) => { /* another replica is on it */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! # Keys
//!
//! The lock `name` lives at `<prefix>{<name>}` (default prefix `lock:`); its value is the
//! owner token. The fencing counter lives at `<prefix>{<name>}:fence` and never expires. The
//! braces are a Redis Cluster hash tag: both keys of a lock hash to one slot, so a deployment
//! can move from one server to a cluster without renaming anything.
//!
//! # Limits
//!
//! Names are any non-empty UTF-8 string of at most [`MAX_NAME_LEN`] bytes that does not start
//! with `}` (which would empty the hash tag). Leases (`ttl`) are
//! between [`MIN_TTL`] and [`MAX_TTL`]. Both are checked before anything is sent to Redis.
//!
//! Locks are not reentrant: acquiring a name the same task already holds is `Busy` (or waits).

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

mod backend;
mod error;
mod guard;
mod lease;
mod manager;
mod request;
mod tasks;
mod token;
mod validate;
mod watchdog;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
#[path = "private.rs"]
pub mod __private;

#[cfg(feature = "macros")]
#[doc(inline)]
pub use lock_macros::distributed_lock;

pub use error::{LockError, Result};
pub use guard::LockGuard;
pub use manager::{
    default_manager, set_default_manager, LockManager, LockManagerBuilder, DEFAULT_KEY_PREFIX,
    DEFAULT_MAX_POLL_INTERVAL,
};
pub use request::{LockRequest, DEFAULT_TTL};
pub use validate::{MAX_NAME_LEN, MAX_TTL, MIN_TTL};
