//! What operators ask of a deployment: who holds a lock, which locks are held, and freeing one
//! whoever holds it. None of it is on the path of acquiring or releasing.

use std::time::{Duration, SystemTime};

use crate::backend::Found;
use crate::token::{holder_named, record_of};
use crate::validate::check_name;
use crate::{LockManager, Result};

/// A held lock, as [`LockManager::inspect`] and [`LockManager::list`] see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock name, without the key prefix.
    pub name: String,
    /// The holder id of the manager that took it
    /// ([`holder_id`](crate::LockManagerBuilder::holder_id), default `hostname:pid`), or
    /// `"unknown"` for a lock taken by a version of lock-core that did not record it.
    pub holder: String,
    /// When the holder took it, by the holder's clock (`None` when unknown).
    pub acquired_at: Option<SystemTime>,
    /// How long the key still lives, by the server (`None`: it has no expiry, so it was not
    /// set by lock-core).
    pub remaining: Option<Duration>,
    /// Whether a waiter has asked to be woken by its release.
    pub waited_for: bool,
    /// The lock's [`permits`](crate::LockRequest::permits): 1 for a lock, 0 for
    /// [`shared`](Self::shared) holds (no bound). With more than one holder, each live permit
    /// or shared hold is a `LockInfo` of its own in [`LockManager::list`] (same name, its
    /// holder, its lease), and [`LockManager::inspect`] gives the one taken first.
    pub permits: u32,
    /// Whether this is a [`shared`](crate::LockRequest::shared) (read) hold.
    pub shared: bool,
    /// How many exclusive or fair acquisitions (writers) wait for this lock now: the length
    /// of [`waiters`](Self::waiters). Shared requests waiting show only in
    /// [`waited_for`](Self::waited_for). 0 from [`LockManager::evict`].
    pub waiting: u32,
    /// The writers waiting for this lock now, from the claims they record while they wait
    /// (see [`LockRequest::shared`](crate::LockRequest::shared)) and the fair line: the fair
    /// waiters first, in the order they will get it, then the others (who race for it when it
    /// is released). The same list for every hold of one name. A waiter that stopped (crashed)
    /// leaves it within a few poll intervals. Empty from [`LockManager::evict`].
    pub waiters: Vec<WaiterInfo>,
    /// The lease each acquisition and renewal of this hold sets, as its holder asked
    /// ([`ttl`](crate::LockRequest::ttl), or `max_hold` when shorter); `None` for a lock taken
    /// by lock-core 0.1.0 or by another client. Recorded in the owner token, so it costs no
    /// command.
    pub ttl: Option<Duration>,
    /// Whether the holder's watchdog renews the lease
    /// ([`auto_extend`](crate::LockRequest::auto_extend)). The watchdog renews every third of
    /// the `ttl`, so a live holder's [`renewed_ago`](Self::renewed_ago) stays under about a
    /// third of it (plus a round trip); one well past that (half the `ttl`, say) has a holder
    /// that stopped renewing (killed, frozen, stuck on a blocking call): the lock ends with its
    /// `remaining`.
    pub auto_extend: bool,
    /// How long ago the lease was last set, read as `ttl - remaining` (at least zero): exact
    /// while every renewal sets the `ttl`, as the watchdog does. Near the end of a
    /// [`max_hold`](crate::LockRequest::max_hold) the watchdog renews for less, and a holder
    /// that calls [`LockGuard::extend`](crate::LockGuard::extend) with another duration sets
    /// another lease: a shorter one reads as renewed longer ago, a longer one as more recently.
    /// `None` when `ttl` or `remaining` is.
    pub renewed_ago: Option<Duration>,
    /// When the lease ends unless renewed: now (this machine's clock) plus `remaining`.
    pub expires_at: Option<SystemTime>,
}

impl LockInfo {
    fn of(name: String, found: Found) -> Self {
        let record = record_of(&found.value);
        let ttl = record.as_ref().and_then(|r| r.lease);
        LockInfo {
            name,
            holder: holder_named(record.as_ref()),
            acquired_at: record.as_ref().map(|r| r.since),
            remaining: found.left,
            ttl,
            auto_extend: record.as_ref().is_some_and(|r| r.renewed),
            renewed_ago: ttl
                .zip(found.left)
                .map(|(ttl, left)| ttl.saturating_sub(left)),
            expires_at: found.left.map(|left| SystemTime::now() + left),
            waited_for: found.value.contains('*'),
            permits: found.permits,
            shared: found.permits == 0,
            waiting: u32::try_from(found.waiters.len()).unwrap_or(u32::MAX),
            // The fair line comes first, in its order: a fair waiter's index is its place.
            waiters: found
                .waiters
                .iter()
                .enumerate()
                .map(|(i, w)| WaiterInfo::of(w, i))
                .collect(),
        }
    }
}

/// A writer waiting for a lock, as [`LockInfo::waiters`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaiterInfo {
    /// The holder id of the manager whose acquisition waits, or `"unknown"` for a waiter of a
    /// version of lock-core that did not record it.
    pub holder: String,
    /// When the acquisition started waiting, by its own clock (`None` when unknown).
    pub since: Option<SystemTime>,
    /// Its place in the fair line ([`fair`](crate::LockRequest::fair)): 1 is next. `None` for
    /// an exclusive acquisition, which is in no line.
    pub position: Option<u32>,
}

impl WaiterInfo {
    fn of(waiter: &crate::backend::Waiter, index: usize) -> Self {
        let record = record_of(&waiter.ticket);
        WaiterInfo {
            holder: holder_named(record.as_ref()),
            since: record.map(|r| r.since),
            position: waiter
                .arrival
                .map(|_| u32::try_from(index + 1).unwrap_or(u32::MAX)),
        }
    }
}

/// `s` with Redis glob characters escaped, so that it matches only itself.
fn glob_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl LockManager {
    /// Who holds `name`, since when and for how long still; `None` when it is free. One round
    /// trip (on Redlock, one to each instance: the holder a majority agrees on).
    pub async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        check_name(name)?;
        let keys = self.shared().keys(name);
        let found = self.shared().peek(&keys).await?;
        Ok(found.map(|found| LockInfo::of(name.to_owned(), found)))
    }

    /// Every held lock whose name matches `pattern`, a glob (`*` any run of characters, `?`
    /// one, `\` escapes the next; `"*"` for all), sorted by name. It `SCAN`s every
    /// primary in batches of 500 keys (never `KEYS`, which would stall the server), then
    /// reads each lock in batches; locks taken or released meanwhile may or may not show.
    pub async fn list(&self, pattern: &str) -> Result<Vec<LockInfo>> {
        let prefix = &self.shared().settings().prefix;
        let key_pattern = format!("{}{{{pattern}}}", glob_escaped(prefix));
        let found = self.shared().scan(&key_pattern).await?;
        let mut locks: Vec<LockInfo> = found
            .into_iter()
            .filter_map(|(key, found)| {
                let name = key.strip_prefix(prefix.as_str())?;
                let name = name.strip_prefix('{')?.strip_suffix('}')?;
                Some(LockInfo::of(name.to_owned(), found))
            })
            .collect();
        locks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(locks)
    }

    /// The key prefixes under which lock-core locks are held on this deployment, other than
    /// this manager's own [`key_prefix`](crate::LockManagerBuilder::key_prefix), sorted: for
    /// an operator whose [`list`](Self::list) found nothing, to tell a wrong prefix from no
    /// locks. It `SCAN`s every key shaped like a lock key (`*{*}`), as `list("*")` would with
    /// every prefix, and keeps those whose value is a lock-core owner token.
    pub async fn other_prefixes(&self) -> Result<Vec<String>> {
        let own = &self.shared().settings().prefix;
        let found = self.shared().scan("*{*}").await?;
        let mut prefixes: Vec<String> = found
            .into_iter()
            .filter(|(_, found)| record_of(&found.value).is_some())
            .filter_map(|(key, _)| Some(key[..key.find('{')?].to_owned()))
            .filter(|prefix| prefix != own)
            .collect();
        prefixes.sort();
        prefixes.dedup();
        Ok(prefixes)
    }

    /// Frees `name` whoever holds it: `true` when it was held. For an operator, when a holder
    /// is stuck or gone; it is logged at WARN with the holder it evicted. See
    /// [`evict`](Self::evict), which also tells who that was.
    pub async fn force_release(&self, name: &str) -> Result<bool> {
        Ok(self.evict(name).await?.is_some())
    }

    /// [`force_release`](Self::force_release), returning what it evicted (read in the same
    /// script that deleted it, so it names the holder that was actually evicted; `remaining`
    /// is not read and is `None`), or `None` when the lock was free.
    ///
    /// In one script: the key is deleted, the fencing counter is moved past every token drawn
    /// for this name so far, and waiters are woken. So every token drawn from now on is above
    /// the evicted holder's, and a resource that checks fencing tokens refuses the evicted
    /// holder's writes once it has accepted one from a later holder. (On one server the clock
    /// part of a token would usually put the next token above anyway; the counter makes sure
    /// of it. On Redlock, fencing tokens are not a fence: see
    /// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token).)
    ///
    /// The evicted guard still believes it holds until it next talks to Redis: with
    /// `auto_extend`, its next renewal finds the key gone and reports the lease lost; without
    /// it, it holds until its own deadline (the exception to I2 in the crate docs).
    ///
    /// Each evicted holder finds a record of it (who evicted it: this manager's
    /// [`holder_id`](crate::LockManagerBuilder::holder_id)) when it next finds its lease gone:
    /// its log then says it was evicted by an operator, and `lock_lost_total` counts it with
    /// `reason = "evicted"`.
    ///
    /// A lock of [`permits(n)`](crate::LockRequest::permits) or of
    /// [`shared`](crate::LockRequest::shared) holds loses every holder at once; the `LockInfo`
    /// returned names one of them (its `permits` reads 1). [`evict_holders`](Self::evict_holders)
    /// lists them all, and can evict one holder's holds only.
    pub async fn evict(&self, name: &str) -> Result<Option<LockInfo>> {
        Ok(self.evict_holders(name, None).await?.into_iter().next())
    }

    /// [`evict`](Self::evict), of every hold of `name` or, with `holder`, only of the holds
    /// taken by that holder id (a lock held by another is left as it is, and nothing is
    /// evicted): every hold evicted, one `LockInfo` each (`remaining` is `None`), none when
    /// nothing was. So an operator who saw `worker-7` stuck on a lock evicts `worker-7` and
    /// never the holder that took the lock a moment later, and a lock of `permits(n)` can lose
    /// one holder's permits while the others keep theirs.
    ///
    /// `holder` is a holder id as [`holder_id`](crate::LockManagerBuilder::holder_id) was
    /// given it (made fit for a token the same way) or as `list` shows it; an empty one is
    /// refused with [`LockError::InvalidConfig`](crate::LockError::InvalidConfig) before any
    /// I/O, as it could name nobody.
    pub async fn evict_holders(&self, name: &str, holder: Option<&str>) -> Result<Vec<LockInfo>> {
        check_name(name)?;
        let holder = match holder {
            Some("") => {
                return Err(crate::LockError::InvalidConfig {
                    reason: format!(
                        "an empty holder id names no holder of `{name}`; leave it out to evict every holder"
                    ),
                })
            }
            Some(holder) => Some(crate::token::clean_holder(holder)),
            None => None,
        };
        let keys = self.shared().keys(name);
        let evicted = self.shared().evict(&keys, holder.as_deref()).await?;
        for value in &evicted {
            let holder = crate::token::holder_or_unknown(value);
            tracing::warn!(lock = %crate::validate::Logged(name), evicted = %holder, "force-released; later fencing tokens are above the evicted holder's");
        }
        if evicted.is_empty() {
            tracing::info!(lock = %crate::validate::Logged(name), "force-release evicted nothing: the lock was free, or held by another holder");
        }
        Ok(evicted
            .into_iter()
            .map(|value| {
                LockInfo::of(
                    name.to_owned(),
                    Found {
                        value,
                        left: None,
                        permits: 1,
                        waiters: Vec::new(),
                    },
                )
            })
            .collect())
    }
}
