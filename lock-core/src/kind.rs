//! The kind of a lock, and what depends on the kind alone.
//!
//! A request names its kind once ([`Kind::of`], from its options); the kind then decides, in
//! this file only, whether the deployment can serve it, whether its holds carry fencing tokens,
//! which scripts take, renew and give back its holds ([`Kind::scripts`]: one string key, by
//! `SET NX` and the lock scripts, or a hash of holders, by the permit scripts), and which kinds
//! may meet on one name.
//!
//! A new kind is a variant here and its scripts (`scripts/`); backends run what this file
//! chooses.

use crate::scripts::{self, Script};
use crate::{LockError, Result};

/// What kind of lock a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// One holder at a time; waiters race for it when it is released (the default).
    Exclusive,
    /// One holder at a time; waiters line up in Redis and are served in arrival order.
    Fair,
    /// At most `n` holders at once (`n > 1`), each on its own lease.
    Permits(u32),
    /// Any number of shared (read) holders at once, each on its own lease, and none while an
    /// exclusive or fair holder (a writer) holds the name or waits for it.
    Shared,
}

/// The scripts a kind's holds are made with. Each acquire script takes the lock key, then
/// ARGV `token, ttl ms, mark, tomb` and [`Scripts::bound`] when there is one; release and
/// extend take the same arguments for every kind.
#[derive(Clone, Copy)]
pub(crate) struct Scripts {
    /// Takes a hold (contended, or on a client that re-sends).
    pub(crate) acquire: &'static Script,
    /// The acquire script's last argument: the number of holders admitted, when bounded by one.
    pub(crate) bound: Option<u32>,
    /// Whether an uncontended attempt on a client that never re-sends may be a plain
    /// `SET NX PX` instead of the acquire script.
    pub(crate) set_nx: bool,
    /// Whether release and extend are release.lua and extend.lua, whose one-branch cases a
    /// server's native commands can do (`command::Native`).
    pub(crate) native: bool,
    pub(crate) release: &'static Script,
    pub(crate) extend: &'static Script,
}

impl Kind {
    /// The kind of a request for `name` with these options, on a deployment that decides by a
    /// `majority` of independent instances (Redlock) or not; refused with the reason, before any
    /// I/O, when the options make no kind or the deployment cannot serve it.
    pub(crate) fn of(
        name: &str,
        fair: bool,
        permits: u32,
        shared: bool,
        majority: bool,
    ) -> Result<Kind> {
        let refuse = |reason: String| Err(LockError::InvalidConfig { reason });
        if shared {
            return match (fair, permits) {
                (true, _) => refuse(format!(
                    "lock `{name}`: fair mode lines up holders that exclude each other; shared holds do not wait for one another, so they cannot be fair"
                )),
                (_, 1) => Ok(Kind::Shared),
                (_, n) => refuse(format!(
                    "lock `{name}`: shared holds are unbounded; they cannot be combined with permits({n})"
                )),
            };
        }
        if fair && majority {
            return refuse("fair mode needs one server or a cluster: Redlock's instances would each keep their own line of waiters".to_owned());
        }
        match permits {
            0 => refuse(format!(
                "lock `{name}`: permits(0) admits no holder; use 1 for a lock, or more"
            )),
            1 if fair => Ok(Kind::Fair),
            1 => Ok(Kind::Exclusive),
            n if fair => refuse(format!(
                "lock `{name}`: fair mode serves one holder at a time; it cannot be combined with permits({n})"
            )),
            _ if majority => refuse("permits(n) for n > 1 needs one server or a cluster: on Redlock, n + 1 holders could each find a majority of instances with a free permit".to_owned()),
            n => Ok(Kind::Permits(n)),
        }
    }

    /// How many holders the lock admits at once: 1 but for permits; 0 for shared holds (no
    /// bound), as their hash records it and [`LockError::PermitsMismatch`] reports it.
    pub(crate) fn permits(self) -> u32 {
        match self {
            Kind::Exclusive | Kind::Fair => 1,
            Kind::Permits(n) => n,
            Kind::Shared => 0,
        }
    }

    /// The `kind` label of its metrics: `exclusive`, `fair`, `permits` or `shared`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Exclusive => "exclusive",
            Kind::Fair => "fair",
            Kind::Permits(_) => "permits",
            Kind::Shared => "shared",
        }
    }

    /// Whether its holders share the lock key as a hash of their tokens (the permit scripts)
    /// rather than one string key holding the holder's token (`SET NX`, the lock scripts).
    pub(crate) fn counted(self) -> bool {
        matches!(self, Kind::Permits(_) | Kind::Shared)
    }

    /// Whether a request of this kind and a live hold recorded with `held` permits
    /// ([`permits`](Self::permits)) may meet on one name, one waiting for the other: the same
    /// number, or shared holds and a lock (readers and writers). Any other pair is a
    /// [`LockError::PermitsMismatch`].
    pub(crate) fn meets(self, held: u32) -> bool {
        let requested = self.permits();
        requested == held || requested.max(held) == 1 && requested.min(held) == 0
    }

    /// The scripts that take, renew and give back holds of this kind.
    pub(crate) fn scripts(self) -> Scripts {
        let (acquire, bound) = match self {
            Kind::Exclusive => (&scripts::ACQUIRE, None),
            Kind::Fair => (&scripts::FAIR, None),
            Kind::Permits(n) => (&scripts::PERMIT_ACQUIRE, Some(n)),
            Kind::Shared => (&scripts::SHARED_ACQUIRE, None),
        };
        let (release, extend) = if self.counted() {
            (&scripts::PERMIT_RELEASE, &scripts::PERMIT_EXTEND)
        } else {
            (&scripts::RELEASE, &scripts::EXTEND)
        };
        Scripts {
            acquire,
            bound,
            set_nx: self == Kind::Exclusive,
            native: !self.counted(),
            release,
            extend,
        }
    }

    /// Whether a hold of `name` of this kind can draw a fencing token; the reason when not.
    pub(crate) fn fenced(self, name: &str) -> Result<()> {
        match self {
            Kind::Exclusive | Kind::Fair => Ok(()),
            Kind::Permits(n) => Err(LockError::InvalidConfig {
                reason: format!(
                    "lock `{name}`: a fencing token orders holders that exclude each other, and permits({n}) admits that many at once; fence the resource per permit holder instead"
                ),
            }),
            Kind::Shared => Err(LockError::InvalidConfig {
                reason: format!(
                    "lock `{name}`: a shared hold carries no fencing token: shared holders do not exclude each other, so a token would order nothing; the exclusive holds of the name carry theirs"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<Kind>) -> String {
        match r {
            Err(LockError::InvalidConfig { reason }) => reason,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn options_make_one_kind_or_a_reason() {
        assert_eq!(
            Kind::of("a", false, 1, false, false).unwrap(),
            Kind::Exclusive
        );
        assert_eq!(Kind::of("a", true, 1, false, false).unwrap(), Kind::Fair);
        assert_eq!(
            Kind::of("a", false, 3, false, false).unwrap(),
            Kind::Permits(3)
        );
        assert_eq!(
            Kind::of("a", false, 1, false, true).unwrap(),
            Kind::Exclusive
        );
        assert_eq!(Kind::of("a", false, 1, true, false).unwrap(), Kind::Shared);
        // Redlock serves shared holds: a reader's and a writer's majorities meet on an instance
        // that holds one of them only.
        assert_eq!(Kind::of("a", false, 1, true, true).unwrap(), Kind::Shared);
        assert!(reason(Kind::of("a", false, 0, false, false)).contains("permits(0)"));
        assert!(reason(Kind::of("a", true, 2, false, false)).contains("cannot be combined"));
        assert!(reason(Kind::of("a", true, 1, false, true)).starts_with("fair mode needs one"));
        assert!(reason(Kind::of("a", false, 2, false, true)).contains("on Redlock"));
        assert!(reason(Kind::of("a", true, 1, true, false)).contains("cannot be fair"));
        assert!(reason(Kind::of("a", false, 3, true, false)).contains("permits(3)"));
        assert!(Kind::Fair.fenced("a").is_ok());
        assert!(Kind::Permits(2).fenced("a").is_err());
        assert!(reason(Kind::Shared.fenced("a").map(|()| Kind::Shared)).contains("no fencing"));
    }

    #[test]
    fn readers_and_writers_meet_permits_do_not() {
        assert!(Kind::Shared.meets(1) && Kind::Exclusive.meets(0) && Kind::Fair.meets(0));
        assert!(Kind::Shared.meets(0) && Kind::Permits(3).meets(3));
        assert!(!Kind::Shared.meets(3) && !Kind::Permits(3).meets(0));
        assert!(!Kind::Exclusive.meets(2) && !Kind::Permits(2).meets(1));
    }
}
