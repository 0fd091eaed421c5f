//! The one error type of the crate.

use std::time::Duration;

/// Everything that can go wrong while taking, keeping or giving back a lock.
///
/// Every variant that concerns one lock names it, so a log line says which job was affected.
/// The owner token is never part of an error: it is a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another owner holds the lock and the request was not to wait.
    #[non_exhaustive]
    #[error("lock `{name}` is held by another owner{}", .holder.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Busy {
        /// The lock name as given, without the key prefix.
        name: String,
        /// The holder id of that owner
        /// ([`holder_id`](crate::LockManagerBuilder::holder_id)), when it could be read: one
        /// more command, sent only when the answer is `Busy`.
        holder: Option<String>,
    },

    /// Another owner still held the lock when the wait ran out.
    #[error("lock `{name}` was still held by another owner after waiting {waited:?}")]
    Timeout {
        /// The lock name as given, without the key prefix.
        name: String,
        /// How long the request waited before giving up.
        waited: Duration,
    },

    /// The lease ran out (or the key was taken away) while the work was still running.
    #[error("lost the lease on lock `{name}` while the work was running")]
    Lost {
        /// The lock name as given, without the key prefix.
        name: String,
    },

    /// `#[distributed_lock]` found no manager: none was given with `manager = ...` and
    /// [`set_default_manager`](crate::set_default_manager) was never called.
    #[error("no lock manager: pass `manager = ...` to the attribute or call `lock_core::set_default_manager` at start-up")]
    NotConfigured,

    /// The lock name (or key prefix) cannot be used; nothing was sent to Redis.
    #[error("invalid lock name: {reason}")]
    InvalidName {
        /// Why the name was refused.
        reason: String,
    },

    /// The lease duration cannot be used; nothing was sent to Redis.
    #[error("invalid ttl: {reason}")]
    InvalidTtl {
        /// Why the duration was refused.
        reason: String,
    },

    /// The manager's configuration cannot work (for example no server was given).
    #[error("invalid lock manager configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The lock is held with another number of permits than this request asked for
    /// ([`LockRequest::permits`](crate::LockRequest::permits)): every holder of a name must
    /// use the same `n`, or the bound "at most `n` at once" would mean nothing. Refused at
    /// once, never waited on. A plain lock counts as `permits(1)`, and
    /// [`shared`](crate::LockRequest::shared) holds as `0` (no bound): shared and exclusive
    /// holds of a name wait for each other, but neither meets a lock of `permits(n)`, `n > 1`.
    #[error(
        "lock `{name}` is held {}, but this request asked for {}; every holder of a name must use the same number of permits",
        held_as(*held),
        asked(*requested)
    )]
    PermitsMismatch {
        /// The lock name as given, without the key prefix.
        name: String,
        /// The permits its live holders use (0: shared holds).
        held: u32,
        /// The permits this request asked for (0: a shared hold).
        requested: u32,
    },

    /// Redlock: fewer than a majority of the instances granted the lock in time, because
    /// instances were down or slow, or the lease was too short for the round trips plus clock
    /// drift. What the attempt may have set is released at once (in the background, until its
    /// ttl, where an instance did not answer).
    #[error(
        "lock `{name}`: only {granted} of the {needed} Redis instances needed granted it in time"
    )]
    NoQuorum {
        /// The lock name as given, without the key prefix.
        name: String,
        /// Instances that granted it.
        granted: usize,
        /// The majority needed.
        needed: usize,
    },

    /// [`min_replicas`](crate::LockManagerBuilder::min_replicas): the primary applied a grant,
    /// a fencing-counter increment or an extend, but fewer replicas than wanted acknowledged it
    /// in time, so a failover could lose it. A grant is given back at once (the lock is not
    /// held) and a waiting acquire tries again until its deadline; a fencing token is not
    /// handed out; an extend does not move the lease's deadline (the watchdog tries again).
    #[error("lock `{name}`: only {acked} of the {wanted} replicas wanted acknowledged the write in time")]
    NotReplicated {
        /// The lock name as given, without the key prefix.
        name: String,
        /// Replicas that acknowledged it within the timeout.
        acked: usize,
        /// The `min_replicas` asked for.
        wanted: usize,
    },

    /// [`LockManager::shutdown`](crate::LockManager::shutdown) ran out of time with releases
    /// still in flight; their keys expire with their TTL.
    #[error("shutdown timed out with {pending} lock release(s) still in flight")]
    ShutdownTimeout {
        /// Releases that had not finished when the time ran out.
        pending: usize,
    },

    /// A server url that does not parse; nothing was contacted. The message shows the url
    /// (its password masked) and the forms accepted.
    #[error("invalid Redis url `{url}`: {reason}; accepted forms: redis://[user:password@]host[:port][/db], rediss://... (TLS), redis+unix:///path/to/socket[?db=N]; for Sentinel, LockManager::builder().sentinel(master_name, [sentinel urls in those forms])")]
    InvalidUrl {
        /// The url as given, with any password replaced by `****`.
        url: String,
        /// What the url parser said.
        reason: String,
    },

    /// The manager could not connect to (or authenticate with) a server while it was built.
    #[error("could not connect to Redis at `{url}`: {source}")]
    Connect {
        /// The server's url, with any password replaced by `****`.
        url: String,
        /// What went wrong.
        source: redis::RedisError,
    },

    /// Communication with Redis failed, or Redis answered with an error
    /// (wrong password, unreachable host, timeout, ...).
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// `url` with its password replaced by `****` (in the user info, or a `pass=`/`password=`
/// query parameter of a `redis+unix://` url): urls go into error messages and logs, passwords
/// must not.
pub(crate) fn masked(url: &str) -> String {
    let mut out = match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let user_info = &rest[..at];
                    // `redis://secret@host`: a lone user info is taken as the password.
                    let user = user_info.split_once(':').map_or("", |(user, _)| user);
                    format!("{}://{user}:****@{}", &url[..scheme_end], &rest[at + 1..])
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    if let Some(query) = out.find('?') {
        let params: Vec<String> = out[query + 1..]
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key @ ("pass" | "password"), _)) => format!("{key}=****"),
                _ => param.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..query], params.join("&"));
    }
    out
}

/// The error of a url that does not parse.
pub(crate) fn invalid_url(url: &str, e: &redis::RedisError) -> LockError {
    LockError::InvalidUrl {
        url: masked(url),
        reason: e.to_string(),
    }
}

/// The error of a server that could not be reached while building.
pub(crate) fn connect_failed(url: &str, source: redis::RedisError) -> LockError {
    LockError::Connect {
        url: masked(url),
        source,
    }
}

impl LockError {
    /// Whether the command that failed with this error may have been applied by the server,
    /// now or later: it was sent and no answer came back (a timeout, a connection that broke
    /// with the command in flight), or it was applied on the primary only
    /// ([`LockError::NotReplicated`]). `false` when nothing was sent (a refused connection) or the
    /// server answered with an error (it did not run the command).
    pub(crate) fn may_have_applied(&self) -> bool {
        match self {
            // Applied on the primary, not (yet) on enough replicas.
            LockError::NotReplicated { .. } => true,
            LockError::Redis(e) => {
                !(e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(_)
                            | redis::ErrorKind::AuthenticationFailed
                            | redis::ErrorKind::InvalidClientConfig
                    ))
            }
            _ => false,
        }
    }

    /// `true` when the shared connection was found broken (a restarted or failed-over server):
    /// it reconnects now, so one more attempt right away is worth it. Not for timeouts (a
    /// stalled server would only stall again) nor for refused connections (nobody listens).
    pub(crate) fn is_broken_connection(&self) -> bool {
        matches!(self, LockError::Redis(e) if e.is_connection_dropped() && !e.is_connection_refusal() && !e.is_timeout())
    }
}

/// `Result` with [`LockError`] as the default error type.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// For fns returning `std::io::Result`: the lock error becomes the source of an `io::Error`
/// (`TimedOut` for `Timeout`, `WouldBlock` for `Busy`, `Other` otherwise).
impl From<LockError> for std::io::Error {
    fn from(e: LockError) -> Self {
        let kind = match &e {
            LockError::Busy { .. } => std::io::ErrorKind::WouldBlock,
            LockError::Timeout { .. } => std::io::ErrorKind::TimedOut,
            LockError::InvalidName { .. } | LockError::InvalidTtl { .. } => {
                std::io::ErrorKind::InvalidInput
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// How [`LockError::PermitsMismatch`] says how a lock is held.
fn held_as(permits: u32) -> String {
    match permits {
        0 => "by shared holds".to_owned(),
        n => format!("with permits = {n}"),
    }
}

/// How [`LockError::PermitsMismatch`] says what the request asked for.
fn asked(permits: u32) -> String {
    match permits {
        0 => "a shared hold".to_owned(),
        n => format!("permits = {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn passwords_never_reach_a_message() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://app:s3cret@db:6379/2", "redis://app:****@db:6379/2"),
            ("redis://:s3cret@db", "redis://:****@db"),
            ("rediss://s3cret@db:6380", "rediss://:****@db:6380"),
            ("redis://app:p@ss@db", "redis://app:****@db"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=s3cret",
                "redis+unix:///run/redis.sock?db=1&pass=****",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(masked(url), shown);
        }
    }
}
