//! The kind of a lock, and what depends on the kind alone.
//!
//! A request names its kind once ([`Kind::of`], from its options); the kind then decides, in
//! this file only, whether the deployment can serve it, whether its holds carry fencing tokens,
//! and how many holders its key admits (which tells a backend to keep it as one string key, by
//! `SET NX` and the lock scripts, or as a hash of holders, by the permit scripts).

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
}

impl Kind {
    /// The kind of a request for `name` with these options, on a deployment that decides by a
    /// `majority` of independent instances (Redlock) or not; refused with the reason, before any
    /// I/O, when the options make no kind or the deployment cannot serve it.
    pub(crate) fn of(name: &str, fair: bool, permits: u32, majority: bool) -> Result<Kind> {
        let refuse = |reason: String| Err(LockError::InvalidConfig { reason });
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

    /// How many holders the lock admits at once (1 but for permits).
    pub(crate) fn permits(self) -> u32 {
        match self {
            Kind::Exclusive | Kind::Fair => 1,
            Kind::Permits(n) => n,
        }
    }

    /// Whether its holders share the lock key as a hash of their tokens (the permit scripts)
    /// rather than one string key holding the holder's token (`SET NX`, the lock scripts).
    pub(crate) fn counted(self) -> bool {
        matches!(self, Kind::Permits(_))
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
        assert_eq!(Kind::of("a", false, 1, false).unwrap(), Kind::Exclusive);
        assert_eq!(Kind::of("a", true, 1, false).unwrap(), Kind::Fair);
        assert_eq!(Kind::of("a", false, 3, false).unwrap(), Kind::Permits(3));
        assert_eq!(Kind::of("a", false, 1, true).unwrap(), Kind::Exclusive);
        assert!(reason(Kind::of("a", false, 0, false)).contains("permits(0)"));
        assert!(reason(Kind::of("a", true, 2, false)).contains("cannot be combined"));
        assert!(reason(Kind::of("a", true, 1, true)).starts_with("fair mode needs one server"));
        assert!(reason(Kind::of("a", false, 2, true)).contains("on Redlock"));
        assert!(Kind::Fair.fenced("a").is_ok());
        assert!(Kind::Permits(2).fenced("a").is_err());
    }
}
