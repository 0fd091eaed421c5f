//! The lock's scripts: with the plain commands the client sends (`SET NX PX`, `GET`, `PTTL`),
//! the only definition of what a lock is. Redis runs them; so do the in-memory backend and the
//! simulator, through the keyspace model (`model/`).
//!
//! Each script is assembled at compile time from the pieces it shares with others
//! (`prelude/*.lua`: the server clock, the owner check, lock-core's token format, tombs, the
//! fencing counter, the live permits of a hash) followed by its own file, which documents its
//! KEYS, ARGV and reply. A piece defines local functions only; a script takes only the pieces it
//! calls.

/// `$name.lua` after the `prelude/` pieces named.
macro_rules! script {
    ($name:literal $(, $piece:literal)*) => {
        concat!(
            $(include_str!(concat!("prelude/", $piece, ".lua")),)*
            include_str!(concat!($name, ".lua"))
        )
    };
}

/// Take a lock (contended, or on a client that re-sends).
pub(crate) const ACQUIRE: &str = script!("acquire", "tomb", "token", "ms", "permits");
/// A fair attempt: the lock when free and first in line, else a place in line.
pub(crate) const FAIR: &str = script!("fair", "tomb", "token", "ms");
/// A fair acquisition's ticket out of the line.
pub(crate) const LEAVE: &str = script!("leave", "ms");
/// Compare-and-delete.
pub(crate) const RELEASE: &str = script!("release", "owner", "tomb");
/// Compare-and-pexpire.
pub(crate) const EXTEND: &str = script!("extend", "owner");
/// A fencing token, while held.
pub(crate) const FENCE: &str = script!("fence", "owner", "us", "fence");
/// An operator's eviction.
pub(crate) const FORCE: &str = script!("force", "ms", "us", "fence");
/// Take one of `n` permits.
pub(crate) const PERMIT_ACQUIRE: &str = script!("permit_acquire", "tomb", "ms");
/// Give a permit back.
pub(crate) const PERMIT_RELEASE: &str = script!("permit_release", "tomb", "ms", "permits");
/// Renew a permit.
pub(crate) const PERMIT_EXTEND: &str = script!("permit_extend", "ms", "permits");
/// What an operator sees of a lock of permits.
pub(crate) const PERMIT_PEEK: &str = script!("permit_peek", "ms");

/// Every script by its file's name, for tests that send them to a server themselves.
pub(crate) const ALL: [(&str, &str); 11] = [
    ("acquire", ACQUIRE),
    ("fair", FAIR),
    ("leave", LEAVE),
    ("release", RELEASE),
    ("extend", EXTEND),
    ("fence", FENCE),
    ("force", FORCE),
    ("permit_acquire", PERMIT_ACQUIRE),
    ("permit_release", PERMIT_RELEASE),
    ("permit_extend", PERMIT_EXTEND),
    ("permit_peek", PERMIT_PEEK),
];
