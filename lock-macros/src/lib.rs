//! The `#[distributed_lock]` attribute. Use it through `lock-core`, which re-exports it as
//! `lock_core::distributed_lock`; the code it generates calls items of the same lock-core
//! version.

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

use proc_macro::TokenStream;

mod args;
mod duration;
mod expand;
mod key;
mod valid;

/// Runs an `async fn` only while this process holds a distributed lock.
///
/// ```no_run
/// use lock_core::{distributed_lock, LockError};
///
/// #[derive(Debug)]
/// enum JobError { Lock(LockError) }
/// impl From<LockError> for JobError {
///     fn from(e: LockError) -> Self { JobError::Lock(e) }
/// }
///
/// #[distributed_lock(key = "invoices:{tenant_id}", ttl = "30s")]
/// async fn send_invoices(tenant_id: u64) -> Result<(), JobError> {
///     // runs only while this process holds the lock "invoices:<tenant_id>"
///     Ok(())
/// }
/// ```
///
/// The body runs only after the lock is acquired. When the fn returns (also through `?`), the
/// lock has already been released: the release is awaited, so the next caller can take it at
/// once. If the body panics, the release is awaited before the panic goes on, so the lock is
/// free even when the panic ends the runtime (a `#[tokio::test]`, a `block_on`). If the caller
/// drops the future, the guard's drop releases the lock in the background.
///
/// The fn must be `async` and return `Result<T, E>` (any type named `Result`, such as
/// `anyhow::Result<T>`, or an alias of another name, such as `type JobResult<T> = Result<T,
/// JobError>`) with `E: From<lock_core::LockError>`: lock failures and Redis errors come back
/// as `Err(E::from(LockError))`. A return type that is no `Result` is a compile error at the
/// type. It may be a free fn, an inherent or trait-impl
/// method (`&self`, `&mut self`, `self`), generic, with where clauses, lifetimes, other
/// attributes and docs: only the body is rewritten. On a method of an `#[async_trait]` impl
/// (`Send` or `?Send`, with `#[tracing::instrument]` above or below), the lock is taken
/// inside the boxed future async-trait makes of the
/// body; `self` in `key` and `manager` may appear inside macros (`format!("c:{}", self.id)`),
/// and `self::module::ITEM` names a module. Put `#[distributed_lock]` above `#[tokio::test]`
/// and `#[tokio::main]` (they make the fn a plain one), and on a trait's method, annotate the
/// `impl`'s method, not the declaration.
///
/// # Arguments
///
/// - `key` (required): the lock name. A template over the fn's parameters, with `{param}`,
///   `{param.field}`, `{pair.0}` (and `{self.field}` in methods), `{{` and `}}` for literal
///   braces: `key = "invoices:{tenant_id}"`. Each placeholder's type must implement
///   `Display`. A parameter written as a pattern (`(from, to): (u32, u32)`, `Account { id,
///   .. }: Account`) offers the names it binds (`{from}`, `{id}`), in an `#[async_trait]`
///   impl too. A raw identifier parameter (`r#type: u32`) is `{type}` or `{r#type}`. Format
///   specs (`{id:04}`) and method calls (`{job.name()}`) are not placeholders: write those
///   keys as `key = format!(...)`. Or any expression giving
///   a `String` or `&str`: `key = job.lock_name()`.
/// - Every argument may come from a `macro_rules!` fragment (`key = $key` with `$key:expr` or
///   `$key:literal`, `ttl = $ttl`, `permits = $n`): a string literal stays a template, rendered
///   per call, and its placeholders name the parameters of the fn the macro writes.
/// - `ttl` (required): the lease, checked at compile time: `ttl = "30s"`. Units `ms`, `s`,
///   `m`, `h`, `d`, combined largest first: `"500ms"`, `"5m"`, `"1h"`, `"1m30s"`.
/// - `wait`: how long to wait for the lock: `wait = "5s"`. Default: do not wait.
/// - Durations (`ttl`, `wait`, `min_hold`, `max_hold`) are strings such as `"500ms"`, `"30s"`,
///   `"1.5s"`, `"5m"`, `"1h"`, `"1m30s"`: fractions are fine when they come to whole
///   milliseconds. `ttl` is checked at compile time against `lock_core::MAX_TTL`.
/// - `on_busy`: `"error"` (default) returns `Err(LockError::Busy)` (or `Timeout` after a
///   `wait`) into `E`; `"skip"` returns `Ok(Default::default())` without running the body:
///   `on_busy = "skip"`. `T` must implement `Default`.
/// - `auto_extend`: a watchdog renews the lease every ttl/3 while the body runs:
///   `auto_extend = true`.
/// - `on_lost` (with `auto_extend`): `"abort"` (default) stops the body at its next await
///   when the lease is lost and returns `Err(LockError::Lost)`; `"continue"` lets it finish:
///   `on_lost = "continue"`.
/// - `min_hold`: keep the lock at least this long, even if the body is quicker (at most
///   `ttl`): `min_hold = "10s"`. For a scheduled job, keep it shorter than the schedule
///   period, or the next tick finds the lock still held and every replica skips it (see
///   `LockRequest::min_hold`).
/// - `max_hold` (with `auto_extend`): stop renewing after this long, so a runaway job cannot
///   hold the lock forever: `max_hold = "1h"`.
/// - `fair`: serve waiters in arrival order, across processes (see `LockRequest::fair`):
///   `fair = true`.
/// - `shared`: a shared (read) hold: any number of calls hold the name at once, and none while
///   an exclusive holder (the same key without `shared`: a writer) holds it; a waiting writer
///   keeps new shared holds out, so writers do not starve (see `LockRequest::shared`):
///   `shared = true`. Not with `fair = true` nor `permits`.
/// - `reentrant`: a call made from inside another annotated body holding the same lock, in the
///   same task, reuses that hold (no command; it releases nothing): `reentrant = true`. A task
///   spawned from the body is another owner. `lock_core::held(name)` tells a body whether its
///   task holds a lock.
/// - `permits`: at most this many holders at once, across processes, each with its own lease
///   (see `LockRequest::permits`): `permits = 3`. Every holder of a name must use the same
///   number. Not with `fair = true`.
/// - `manager`: the `LockManager` to use, as any expression giving a `LockManager`,
///   `&LockManager` or `Arc<LockManager>`: `manager = self.locks` (a `static LOCKS:
///   LazyLock<LockManager>` is `manager = &*LOCKS`). Default:
///   `lock_core::default_manager()`, else `Err(LockError::NotConfigured)`.
/// - `guard`: binds `&LockGuard` under this name inside the body, for the fencing token
///   (`lock.fencing_token().await?`, drawn while the lock is held) or `lost()`:
///   `guard = lock`.
/// - `crate`: the path to lock-core if it is renamed in `Cargo.toml`:
///   `crate = "my_lock_core"`.
///
/// # Stacking
///
/// Several `#[distributed_lock]`s on one fn take their locks top-down, in the order the code
/// reads (the top one first, each held while the next is taken), and give them back in
/// reverse. Two fns that stack the same names must stack them in the same order, as
/// hand-written code must take them, or each can end up waiting for the other until its
/// `wait` runs out.
///
/// # Equivalent code without the macro
///
/// ```no_run
/// # use lock_core::{LockError, LockManager};
/// # use std::time::Duration;
/// # #[derive(Debug)] struct JobError;
/// # impl From<LockError> for JobError { fn from(_: LockError) -> Self { JobError } }
/// async fn send_invoices(tenant_id: u64) -> Result<(), JobError> {
///     let name = format!("invoices:{}", tenant_id);
///     let manager = lock_core::default_manager().ok_or(LockError::NotConfigured)?;
///     let guard = manager.lock(name).ttl(Duration::from_secs(30)).acquire().await?;
///     let result: Result<(), JobError> = async move {
///         // the body
///         Ok(())
///     }
///     .await;
///     let _ = guard.release().await; // awaited: the lock is free when we return
///     result
/// }
/// ```
///
/// Besides, the attribute runs the body with the lock among the task's held locks (for
/// `held` and `reentrant`), and catches a panic of the body at its poll to await the release
/// before the panic goes on. The name is rendered from the template with the parameters' own
/// identifiers, so a template passed through a `macro_rules!` names the parameters of the fn
/// the macro writes.
///
/// # Misuse is a compile error
///
/// Every mistake points at the offending token, with the fix where there is one:
///
/// ```compile_fail
/// # use lock_core::{distributed_lock, LockError};
/// // error: unknown placeholder `{tnant}` in `key`; parameters are `tenant`
/// #[distributed_lock(key = "jobs:{tnant}", ttl = "30s")]
/// async fn job(tenant: u64) -> Result<(), LockError> { Ok(()) }
/// ```
#[proc_macro_attribute]
pub fn distributed_lock(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::distributed_lock(attr.into(), item.into()).into()
}
