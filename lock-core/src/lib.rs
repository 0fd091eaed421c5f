//! Distributed locks on Redis for async Rust job handlers.
//!
//! A [`LockManager`] takes a lock in one round trip (`SET <key> <token> NX PX <ttl>`, with a
//! fresh random 128-bit owner token for every attempt) and returns a [`LockGuard`]. The guard
//! gives the lock back with an owner-checked compare-and-delete, explicitly with
//! [`LockGuard::release`] or in the background when it is dropped. Fencing tokens are drawn on
//! demand ([`LockGuard::fencing_token`]); locks that never ask for one cost nothing for it.
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
//!         let fence = guard.fencing_token().await?;
//!         # let _ = fence;
//!         guard.release().await?;
//!     }
//!     Err(LockError::Timeout { .. }) => { /* another replica is on it */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! # Getting started
//!
//! ```toml
//! [dependencies]
//! lock-core = "0.1"   # optional features: "cluster", "sentinel", "tls" (see Features)
//! tokio = { version = "1", features = ["rt-multi-thread", "macros", "time"] }
//! ```
//!
//! Build one manager at start-up, make it the default for `#[distributed_lock]`, and give the
//! locks back on exit. With `on_busy = "skip"` a handler returns `Ok(Default::default())`
//! without running when another replica holds the lock: return an `Option` to tell a run
//! (`Some`) from a skip (`None`).
//!
//! ```no_run
//! use std::time::Duration;
//! use lock_core::{distributed_lock, LockError, LockManager};
//!
//! #[derive(Debug)]
//! enum JobError {
//!     Lock(LockError),
//! }
//!
//! impl From<LockError> for JobError {
//!     fn from(e: LockError) -> Self {
//!         JobError::Lock(e)
//!     }
//! }
//!
//! /// One replica at a time per tenant; `Ok(None)` when another replica is on it.
//! #[distributed_lock(key = "invoices:{tenant}", ttl = "30s", on_busy = "skip")]
//! async fn bill(tenant: u64) -> Result<Option<u64>, JobError> {
//!     Ok(Some(tenant * 100))
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), LockError> {
//!     let locks = LockManager::builder()
//!         .url("redis://127.0.0.1:6379")
//!         .holder_id("billing-worker-7") // what `lockctl list` shows; default hostname:pid
//!         .build()
//!         .await?;
//!     lock_core::set_default_manager(locks.clone());
//!     match bill(7).await {
//!         Ok(Some(total)) => println!("billed {total}"),
//!         Ok(None) => println!("another replica is billing tenant 7"),
//!         Err(e) => eprintln!("{e:?}"),
//!     }
//!     // Stops watchdogs and releases what is still held (dropped guards included).
//!     locks.shutdown(Duration::from_secs(5)).await
//! }
//! ```
//!
//! Handlers can be tested without a server: [`LockManager::in_memory`] runs the same scripts
//! and client code as the Redis backend against a Redis keyspace modelled in the process (the
//! scripts in an embedded Lua 5.1, as Redis runs them), on `tokio::time`, so leases run out
//! under paused time too.
//!
//! ```
//! # use std::time::Duration;
//! # use lock_core::LockManager;
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() {
//!     tokio::time::pause();
//!     let locks = LockManager::in_memory();
//!     let held = locks.try_acquire("report", Duration::from_secs(30)).await.unwrap().unwrap();
//!     assert!(locks.try_acquire("report", Duration::from_secs(30)).await.unwrap().is_none());
//!     tokio::time::advance(Duration::from_secs(31)).await; // the lease runs out
//!     assert!(held.is_lost());
//!     assert!(locks.try_acquire("report", Duration::from_secs(30)).await.unwrap().is_some());
//! }
//! ```
//!
//! # Deployments
//!
//! One manager speaks to one deployment, chosen on [`LockManager::builder`]:
//!
//! | deployment | builder | feature | what a grant survives |
//! |---|---|---|---|
//! | one server | [`url`](LockManagerBuilder::url), [`client`](LockManagerBuilder::client), or [`LockManager::connect`] | | a restart only with persistence |
//! | primary and replicas behind Sentinel | `sentinel(master, sentinels)` | `sentinel` | a failover, with [`min_replicas`](LockManagerBuilder::min_replicas) |
//! | Redis Cluster | `cluster(seeds)` | `cluster` | a failover, with `min_replicas` |
//! | Redlock over independent masters | [`redlock`](LockManagerBuilder::redlock)`(urls)` | | the loss of a minority of masters |
//! | in the process, for tests | [`LockManager::in_memory`] | | nothing: it is the process's |
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! use std::time::Duration;
//! use lock_core::LockManager;
//!
//! let locks = LockManager::builder()
//!     .redlock(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"])
//!     .response_timeout(Duration::from_millis(200))
//!     .holder_id("billing-worker-7")
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Every deployment runs the same scripts (`lock-core/src/scripts`), and every kind of lock
//! works on each, with the exceptions named on the request's methods (a fair line and
//! `permits(n)` are refused by Redlock; [shared holds](LockRequest::shared) work everywhere).
//!
//! # Operations
//!
//! Operators see who holds what with [`LockManager::inspect`], [`LockManager::list`] and the
//! `lockctl` binary (its own crate), and free a stuck lock with [`LockManager::force_release`]:
//!
//! ```
//! # use std::time::Duration;
//! # use lock_core::LockManager;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> lock_core::Result<()> {
//! let locks = LockManager::in_memory();
//! let _held = locks.acquire("reports:daily", Duration::from_secs(30), Duration::ZERO).await?;
//!
//! let info = locks.inspect("reports:daily").await?.expect("held");
//! println!("held by {} for {:?} more", info.holder, info.remaining); // hostname:pid
//! // The lease it asked for, and whether a watchdog renews it: a renewed lock whose
//! // `renewed_ago` grows well past a third of its ttl has a holder that stopped.
//! assert_eq!((info.ttl, info.auto_extend), (Some(Duration::from_secs(30)), false));
//! assert!(info.waiters.is_empty());
//! assert_eq!(locks.list("reports:*").await?.len(), 1);
//!
//! // The holder is stuck: free the lock whoever holds it (logged at WARN).
//! assert!(locks.force_release("reports:daily").await?);
//! assert!(locks.inspect("reports:daily").await?.is_none());
//! # Ok(()) }
//! ```
//!
//! # More than one holder, and leaders
//!
//! [`LockRequest::permits`] (the attribute's `permits = 3`) admits at most `n` holders of a
//! name at once, each on its own lease, with the same guard: released by its owner, renewed by
//! its own watchdog, reporting its own loss. [`LockManager::leader`] starts a [`Leader`]: a
//! handle that campaigns for a lock, keeps it with the watchdog, says whether it leads
//! ([`Leader::is_leader`], [`Leader::watch`]) and runs work only while it does
//! ([`Leader::run_while_leader`]). Both keep the lease model below: a permit counts as held
//! only while its lease is valid, and no two handles say they lead while either one's lease is
//! valid.
//!
//! # The lease model
//!
//! A guard's whole promise is its lease. These invariants hold on one server that keeps its
//! data, on a Redis Cluster without failover, and with Redlock while a majority of its
//! instances keep their data; they assume the server's clock runs within 0.1% of the client's
//! (Redlock: the configured drift) and the client machine is not suspended while it holds a
//! lock (its monotonic clock stops then). A deterministic fault simulator (delayed, lost,
//! reordered and re-sent commands, servers paused and restarted) checks them after every step
//! of 10,000 seeded runs on every `cargo test`:
//!
//! - **I1** A guard's local deadline is never later than the server's expiry. Every lease is
//!   dated from the send time of the command that set it, less a clock margin (0.1% + 1 ms on
//!   one server or Cluster, for clock rates and Redis' whole-millisecond expiries; Redlock's
//!   drift allowance); a reply to an older command can only shorten the deadline, and a
//!   renewal in flight, or one whose outcome is unknown, caps it at what it would set if it
//!   landed.
//! - **I2** While a guard says it holds ([`is_lost`](LockGuard::is_lost) is `false` and
//!   [`remaining`](LockGuard::remaining) is above zero), no other client can acquire the lock,
//!   unless an operator takes it away with [`LockManager::force_release`]: that guard learns it
//!   at its next command (with `auto_extend`, its next renewal), and until then only fencing
//!   tokens protect the resource.
//! - **I3** A new guard carries the lease the server granted to the attempt that took it
//!   (the ttl minus that round trip), whatever errors came before in the same wait: every
//!   attempt has its own token, and no key is ever granted twice.
//! - **I4** `acquire` returns by the end of its wait plus at most one response timeout.
//! - **I5** An attempt refused before it was sent (a refused connection) or refused by the
//!   server leaves nothing to clean up; one whose outcome is unknown is undone by token in the
//!   background, retried no longer than its key would live; so [`LockManager::shutdown`] after
//!   an outage with nothing held returns at once. On Redis Cluster, whose client re-sends
//!   commands by itself, no error proves that nothing was sent: every failed attempt is
//!   cleaned up.
//!
//! A failover (Sentinel, Cluster) promotes a replica, and replication is asynchronous: a lock
//! the old primary granted just before it failed can be missing on the new one. The guard then
//! learns it at its next renewal and reports itself lost, but until then I2 does not hold for
//! it. With [`LockManagerBuilder::min_replicas`], a grant counts only once replicas
//! acknowledged it, so it survives a failover that promotes one of them.
//!
//! # Features
//!
//! - `macros` (default): the `#[distributed_lock]` attribute.
//! - `cluster`: `LockManagerBuilder::cluster`, Redis Cluster.
//! - `sentinel`: `LockManagerBuilder::sentinel`, a primary found through Redis Sentinel and
//!   followed across failovers.
//! - `tls`: `rediss://` urls, through rustls.
//! - `metrics`: the series below, through the [`metrics`](https://docs.rs/metrics) facade; install
//!   any recorder (`metrics-exporter-prometheus` serves them for Prometheus: see
//!   `tests/examples/metrics.rs` in the repository).
//!
//! # Metrics
//!
//! Every series has the label `lock`, bounded by the kinds of locks rather than the locks: the
//! attribute's key template with its placeholders as `{}` (`invoices:{}`), a label set with
//! [`LockRequest::metrics_label`], or else the name up to its first `:` (`reports:daily` is
//! `reports`; a name without `:` is its own label). A manager reports at most
//! [`metrics_label_limit`](LockManagerBuilder::metrics_label_limit) distinct values (default
//! [`DEFAULT_METRICS_LABEL_LIMIT`]); later new ones are reported as `_other`, with one warning.
//! Every series also has the label `kind`: `exclusive`, `fair`, `permits` or `shared` (a
//! [shared](LockRequest::shared) hold). Each metric is described, with its unit, to the
//! recorder installed when the manager is built (Prometheus' `# HELP`): install the recorder
//! first.
//!
//! | name | type, unit | labels besides `lock` and `kind`, and what it counts |
//! |---|---|---|
//! | `lock_acquire_total` | counter | `outcome` = `acquired`, `busy`, `timeout`, `error` |
//! | `lock_wait_seconds` | histogram, seconds | `outcome`: from the request to its end (a timeout's wait too) |
//! | `lock_hold_seconds` | histogram, seconds | from the grant to the release, drop or shutdown |
//! | `lock_extend_total` | counter | `outcome` = `renewed`, `not_ours`, `error` |
//! | `lock_lost_total` | counter | `reason` = `not_ours`, `evicted`, `expired`, `max_hold`: leases lost while held, each counted once, by whatever noticed it first (see below) |
//! | `lock_held` | gauge | locks this process holds now |
//! | `lock_oldest_held_seconds` | gauge, seconds | how long the oldest of them has been held: set every second by one task of the process (on the runtime of the grant that started it), which ends with the process's last hold; 0 as soon as none of that `lock` and `kind` is |
//! | `lock_waiting` | gauge | acquisitions of this process waiting now: refused once, still within their wait |
//! | `lock_leader` | gauge | 1 while this process leads the election of that name, else 0 |
//! | `lock_leader_changes_total` | counter | `change` = `elected`, `lost`, `resigned` |
//!
//! A lost lease's `reason`: `evicted` when an operator force-released it (the record
//! [`LockManager::evict_holders`] leaves says so); `not_ours` when the server said the key was
//! gone or another owner's (a renewal, a fencing token or the release found it so) before the
//! local deadline passed; `expired` when the local deadline passed first (renewals
//! failed while Redis was unreachable, no watchdog renewed it, the process stalled, or a
//! leader's term ran out); `max_hold` when the watchdog stopped at `max_hold` and the lease ran
//! out while still held. A lease that runs out without a watchdog is counted when its guard is
//! released or dropped.
//!
//! # Requirements
//!
//! Redis 6.2 or later, or Valkey 8 or later: CI runs the semantic suite and every deployment on
//! Redis 6.2.5 and 7.0 and Valkey 8.1 and 9.1 (see the README's server table); Redis 6.0 (the
//! first with `SET ... KEEPTTL`, which a waiter's mark needs) is not tested. `min_replicas_aof`
//! needs `WAITAOF` (Redis 7.2 or later, Valkey). On one server and Redlock's instances, a
//! release is `DELIFEQ` where the server has it (Valkey 9) and a renewal `SET ... IFEQ ... PX`
//! (Valkey 8.1+), each followed by the script whenever it did nothing (a waiter marked the key,
//! the hold is not ours): the same answers, with less server time when uncontended (a marked
//! key costs one more round trip; a holder that waited for its lock sends the script first).
//! Replicas
//! of one service must run versions of lock-core that agree on the key format: this one marks
//! a waited-for key by appending `*` to the holder's token, which earlier versions do not
//! recognise as their own (their release then finds the key "not theirs" and leaves it to its
//! ttl); and fair waiters of this version name their ticket after the `*`, which versions
//! before it do not recognise either. Upgrade all replicas before they contend for the same
//! locks. Tokens of lock-core 0.1.0 (without the lease field) are still read and marked; 0.1.0
//! does not mark this version's, so its waiters poll for them (see the CHANGELOG).
//!
//! On Redis Cluster, releases are announced with sharded pub/sub (`SPUBLISH`) when every primary
//! runs Redis 7 or later when the manager starts, else (or when some primary does not tell its
//! version) with classic `PUBLISH`. Build managers again after upgrading the last primary to get
//! sharded notifications; do not add a Redis 6 primary to a cluster whose managers use them (its
//! releases would fail there).
//!
//! # Keys
//!
//! The lock `name` lives at `<prefix>{<name>}` (default prefix `lock:`); its value is the
//! holder's owner token, `<holder id>|<unix ms when taken>|<lease ms>[w]|<32 hex>` (`w`: a
//! watchdog renews it; what [`LockManager::inspect`] reports of the holder comes from it, at no
//! cost in commands; lock-core 0.1.0's tokens, without the lease, are still read), followed by
//! `*` once a waiter has asked to be woken by its release, then by the first fair waiter's
//! ticket (`<holder id>|<unix ms>|<32 hex>`), if any: the release's message names it.
//! The fencing counter, created by the first [`LockGuard::fencing_token`] call for a name,
//! lives at `<prefix>{<name>}:fence` and expires a day after its last use. The braces are a
//! Redis Cluster hash tag: both keys of a lock hash to one slot, so a deployment can move from
//! one server to a cluster without renaming anything. A lock of [`LockRequest::permits`] above
//! one keeps all its holders in the same `<prefix>{<name>}` key, a hash of the holders' tokens
//! and the server time their leases end (`#n` holds `n`); so do [shared](LockRequest::shared)
//! holds, with `#n` = 0. A waiting exclusive or fair acquisition records a claim in
//! `<prefix>{<name>}:x` (a hash of claim ids, made like tickets, and the server time each
//! lapses) that keeps new
//! shared holds out while it waits; the key is gone a few poll intervals after the last writer
//! stops waiting. A force-release leaves `<prefix>{<name>}:evicted:<token>` (who evicted it,
//! and when) per evicted hold for a day, where the evicted holder reads it.
//!
//! # Limits
//!
//! Names are any non-empty UTF-8 string of at most [`MAX_NAME_LEN`] bytes that does not start
//! with `}` (which would empty the hash tag). Leases (`ttl`) are
//! between [`MIN_TTL`] and [`MAX_TTL`]. Both are checked before anything is sent to Redis.
//!
//! Locks are not reentrant by default: acquiring a name the same task already holds is `Busy`
//! (or waits). Opt in with [`LockRequest::reentrant`] or the attribute's `reentrant = true`: a
//! nested acquisition inside an annotated body (or inside [`LockGuard::holding`]), in the same
//! task, then reuses the hold.
//! [`held`] tells a body whether its task holds a lock.
//!
//! # How this crate is built
//!
//! For contributors; the files are private, under `src/`. Each layer uses only those below it,
//! and there are no import circles between files.
//!
//! - **The face**: `manager.rs` (the manager and its builder), `request.rs` (a request's
//!   options, checked before any I/O), `guard.rs`, `leader.rs`, `ops.rs` (operators' calls).
//! - **The kernel**: `kind.rs` and `command.rs`. A request's options make one `Kind` of lock
//!   (exclusive, fair, permits, shared); the kind alone decides which deployments serve it,
//!   whether its holds carry fencing tokens, which kinds may meet on one name, and which
//!   scripts take, renew and give back its holds (`Kind::scripts`). Every command about a
//!   hold is one `Command` (acquire, extend, release, leave, fence), laid out for a server in
//!   `command.rs` only (`SET NX PX` or the kind's script, its KEYS and ARGV), and every node and
//!   deployment answers it with one `Answer`: applied (with the lease it set), not applied
//!   (with the other owner's time left), or, on Redlock, undecided; an outcome unknown on one
//!   server is an error that says whether the command may have been applied.
//! - **The loop**: `acquire.rs` (attempts, waiting woken by releases, the fair line's ticket
//!   and the writer's claim) and `watchdog.rs` (renewals).
//! - **The inner loop**: `shared/commands.rs`, the one path from guards, requests and
//!   watchdogs to the deployment: every attempt, extend, fencing token and release is sent,
//!   timed and accounted for there.
//! - **The state**: `shared/mod.rs` (settings, held leases, background work, shutdown),
//!   `lease.rs` (what a guard may count on: I1), `held.rs` (reentrancy), `tasks.rs`.
//! - **The background**: `cleanup.rs` releases by token what a command may have left (I5); it
//!   owns the store and the task tracker, nothing else.
//! - **Deployments**: `deploy.rs` connects the one a builder names; `backend/` has the
//!   traits: `Store` (a deployment's policy over the answers of its nodes: `single.rs`,
//!   `redlock/`, split into `instance` and `operate`), `Node` (one server runs a `Command` as
//!   laid out: `redis/`, split into `connect`, `replicas`, `scripts`, `operate`; `memory.rs`
//!   puts the model behind the same node code; the simulator's network is a `Node` too) and
//!   `Wake` (release notifications: `notify.rs`, `sharded.rs`, `sentinel.rs`).
//! - **The definition**: `scripts/` (the Lua scripts, each assembled at compile time from the
//!   `prelude/` pieces it calls, with the SHA1 each is sent by). `model/` runs them on a Redis
//!   keyspace in the process (the
//!   in-memory backend), held to a real server by its differential test; `sim/` (tests only)
//!   runs the real client code against that model under seeded faults.
//!
//! A new kind of lock goes in `kind.rs` (its rules and its scripts), its scripts in
//! `scripts/` (and their arguments in `command.rs`, if they take others), and the request
//! method that asks for it; shared holds went in that way. No backend file changes for a kind.

#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acquire;
mod backend;
mod cleanup;
mod command;
mod deploy;
mod error;
mod guard;
mod held;
mod keys;
mod kind;
mod leader;
mod lease;
mod manager;
mod metrics;
mod model;
mod ops;
mod request;
mod scripts;
mod shared;
#[cfg(test)]
mod sim;
mod tasks;
mod token;
mod validate;
mod watchdog;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
#[path = "private.rs"]
pub mod __private;

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
#[doc(inline)]
pub use lock_macros::distributed_lock;

// The README's examples compile (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use error::{LockError, Result};
pub use guard::LockGuard;
pub use held::held;
pub use leader::{Leader, LeaderBuilder};
pub use manager::{
    default_manager, set_default_manager, LockManager, LockManagerBuilder, DEFAULT_KEY_PREFIX,
    DEFAULT_MAX_POLL_INTERVAL, DEFAULT_METRICS_LABEL_LIMIT,
};
pub use ops::{LockInfo, WaiterInfo};
pub use request::{LockRequest, DEFAULT_TTL};
pub use validate::{MAX_NAME_LEN, MAX_TTL, MIN_TTL};

/// Locks `m`, also when a thread panicked while holding it: every critical section in this
/// crate leaves its data whole (plain assignments, single inserts and removes).
pub(crate) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
