//! What `#[distributed_lock]` expands to calls. Not a public API: it changes with the macro,
//! which is why lock-core pins lock-macros to the exact same version.

use std::future::Future;
use std::sync::Arc;

use crate::{LockError, LockGuard, LockManager, LockRequest, Result};

/// Anything `manager = ...` may name: a `LockManager`, a reference to one, or an `Arc` of one.
#[diagnostic::on_unimplemented(
    message = "`manager = ...` takes a `LockManager`, `&LockManager` or `Arc<LockManager>`, not `{Self}`",
    label = "not a lock manager",
    note = "for a `static LOCKS: LazyLock<LockManager>` write `manager = &*LOCKS`; for an `Option<..>` take the manager out of it first"
)]
pub trait ManagerRef {
    fn lock_manager(&self) -> &LockManager;
}

#[diagnostic::do_not_recommend]
impl ManagerRef for LockManager {
    fn lock_manager(&self) -> &LockManager {
        self
    }
}

#[diagnostic::do_not_recommend]
impl<T: ManagerRef + ?Sized> ManagerRef for &T {
    fn lock_manager(&self) -> &LockManager {
        (**self).lock_manager()
    }
}

#[diagnostic::do_not_recommend]
impl<T: ManagerRef + ?Sized> ManagerRef for &mut T {
    fn lock_manager(&self) -> &LockManager {
        (**self).lock_manager()
    }
}

#[diagnostic::do_not_recommend]
impl<T: ManagerRef + ?Sized> ManagerRef for Arc<T> {
    fn lock_manager(&self) -> &LockManager {
        (**self).lock_manager()
    }
}

/// How the attribute turns a lock error into the fn's error type `E` (any `E:
/// From<LockError>`); for a type without that impl, the compiler says what to write, at `E`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold a `lock_core::LockError`, so `#[distributed_lock]` could not return lock failures",
    label = "no `From<lock_core::LockError>` for this error type",
    note = "add `impl From<lock_core::LockError> for {Self} {{ fn from(e: lock_core::LockError) -> Self {{ .. }} }}`, or return `Result<T, lock_core::LockError>`"
)]
pub trait FromLockError {
    fn from_lock_error(e: LockError) -> Self;
}

impl<E: From<LockError>> FromLockError for E {
    fn from_lock_error(e: LockError) -> Self {
        E::from(e)
    }
}

/// The return type of an annotated fn whose `Result` goes by another name (an alias such as
/// `type JobResult<T> = Result<T, JobError>`): a lock error is returned as its `Err`, converted
/// into its error type by [`FromLockError`] (whose message says what to write when it cannot).
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` needs a fn returning `Result<T, E>`; `{Self}` is not a `Result`",
    label = "not a `Result`",
    note = "return `Result<T, E>`, or an alias of it, with `E: From<lock_core::LockError>`"
)]
pub trait LockResult {
    type Error;
    fn from_error(e: Self::Error) -> Self;
}

// Not offered as a suggestion when another type is returned: it would print lock-core's source.
#[diagnostic::do_not_recommend]
impl<T, E> LockResult for core::result::Result<T, E> {
    type Error = E;
    fn from_error(e: E) -> Self {
        Err(e)
    }
}

/// The default manager, or `NotConfigured`.
pub fn default_manager() -> Result<LockManager> {
    crate::default_manager().ok_or(LockError::NotConfigured)
}

/// Acquires for the attribute: `request` carries the options, set with the same builder
/// methods the runtime API has (one set of options, and the runtime's own checks).
/// `Ok(None)`: busy and `skip_if_busy` (`on_busy = "skip"`).
pub async fn acquire(request: LockRequest<'_>, skip_if_busy: bool) -> Result<Option<LockGuard>> {
    if skip_if_busy && request.waits_for().is_zero() {
        // Busy is skipped: no need to ask who holds it.
        return request.try_acquire().await;
    }
    match request.acquire().await {
        Ok(guard) => Ok(Some(guard)),
        Err(LockError::Busy { name, .. } | LockError::Timeout { name, .. }) if skip_if_busy => {
            tracing::debug!(lock = %crate::validate::Logged(&name), "busy; skipping the job");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs `body` until it finishes or the lease is lost; `Err(Lost)` in the second case (the body
/// is dropped at its current await point, and never polled once the lease is lost).
pub async fn until_lost<F: Future>(guard: &LockGuard, body: F) -> Result<F::Output> {
    guard.until_lost(body).await
}

/// Runs the body; when it panics, the lock is released, awaited, before the panic goes on. A
/// panic in a root task (`#[tokio::test]`, `block_on`) ends its runtime, and a release left to
/// the guard's drop would never run: the lock would stay held for its whole ttl.
pub async fn catching<F: Future>(guard: &LockGuard, body: F) -> F::Output {
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::task::Poll;
    let mut body = std::pin::pin!(body);
    // The body is not polled again after a panic: the panic is only carried past the release.
    let caught = std::future::poll_fn(|cx| {
        match catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await;
    match caught {
        Ok(out) => out,
        Err(panic) => {
            guard.release_in_place().await;
            resume_unwind(panic)
        }
    }
}

/// Runs the body with its lock among the current task's held locks (`held`, `reentrant`).
pub fn holding<F: Future>(guard: &LockGuard, body: F) -> impl Future<Output = F::Output> {
    crate::held::scope(guard, body)
}

/// Releases after the body, awaited, so the next caller can take the lock at once. Failures are
/// logged by the release itself; the body's result is what the fn returns.
pub async fn finish(guard: LockGuard) {
    let _ = guard.release().await;
}

/// The script `name` (its file's name, `acquire`) as lock-core sends it, prelude pieces
/// included: for tests that send the scripts to a server themselves (tests/interop.rs,
/// tests/safety.rs).
pub fn script(name: &str) -> &'static str {
    crate::scripts::ALL
        .iter()
        .find(|script| script.name == name)
        .map(|script| script.body)
        .unwrap_or_else(|| panic!("no script named {name}"))
}

/// Hooks for the bench's figures of lock-core's own cost (bench/benches/client.rs): the parts
/// of an uncontended acquire+release that run in this process, one at a time. Not a public API.
pub mod bench {
    use std::borrow::Cow;
    use std::time::Duration;

    use crate::command::{Command, Native, Server};
    use crate::keys::LockKeys;
    use crate::model::{Model, Now};

    const TTL: Duration = Duration::from_secs(30);

    /// The client's encoding and decoding of one uncontended pair, on a server with `DELIFEQ`:
    /// the key and the owner token made, `SET NX PX` and `DELIFEQ` laid out and packed as
    /// RESP, their replies read as answers. Returns the bytes packed (so that none of it is
    /// optimized away).
    pub fn codec_pair(prefix: &str, name: &str, holder: &str) -> usize {
        let server = Server {
            resends: false,
            publish: "PUBLISH",
            native: Native::ALL,
        };
        let keys = LockKeys::new(prefix, name);
        let token = crate::token::owner_token(holder, TTL, false);
        let acquire = Command::Acquire {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed(&token),
            ttl: TTL,
            mark: false,
            ticket: None,
        };
        let release = Command::Release {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed(&token),
            keep: Duration::ZERO,
            contended: false,
        };
        let mut packed = 0;
        for (command, name) in [(&acquire, "SET"), (&release, "DELIFEQ")] {
            let mut cmd = crate::command::cmd(name);
            command.lay_out(&mut cmd, server);
            packed += cmd.get_packed_command().len();
            assert!(command.answer(1).applied());
        }
        packed
    }

    /// The in-memory backend's server (Valkey 9's commands), to time its share of a pair.
    pub struct Keyspace(Model);

    impl Default for Keyspace {
        fn default() -> Self {
            let mut model = Model::new();
            model.set_native(Native::ALL);
            Self(model)
        }
    }

    impl Keyspace {
        /// The server's work in one uncontended pair: `SET key token NX PX 30000`, then
        /// `DELIFEQ key token`, at `now_us`. Whether both applied.
        pub fn pair(&mut self, now_us: u64, key: &str, token: &str) -> bool {
            let now = Now { us: now_us };
            let set = self.0.call(now, &["SET", key, token, "NX", "PX", "30000"]);
            let del = self.0.call(now, &["DELIFEQ", key, token]);
            set == crate::model::Reply::ok() && del == crate::model::Reply::Int(1)
        }
    }
}
