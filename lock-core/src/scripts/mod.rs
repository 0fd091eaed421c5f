//! The lock's scripts: with the plain commands the client sends (`SET NX PX`, `GET`, `PTTL`),
//! the only definition of what a lock is. Redis runs them; so do the in-memory backend and the
//! simulator, through the keyspace model (`model/`).
//!
//! Each script is assembled at compile time from the pieces it shares with others
//! (`prelude/*.lua`: the server clock, the owner check, lock-core's token format, tombs, the
//! fencing counter, the live holders of a hash, a writer meeting such a hash, writers' claims) followed by its own file, which documents its
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

/// A script as lock-core sends it: its file's name, its body (prelude pieces first) and the
/// SHA1 of the body, which `EVALSHA` names it by (computed once per process, on first use).
pub(crate) struct Script {
    pub(crate) name: &'static str,
    pub(crate) body: &'static str,
    sha1: std::sync::OnceLock<String>,
    bit: std::sync::OnceLock<u32>,
}

impl Script {
    const fn new(name: &'static str, body: &'static str) -> Self {
        Self {
            name,
            body,
            sha1: std::sync::OnceLock::new(),
            bit: std::sync::OnceLock::new(),
        }
    }

    /// A bit of its own among the scripts: `1 << ` its place in [`ALL`] (there are fewer than
    /// 32). For a node's set of the scripts its server has run.
    pub(crate) fn bit(&self) -> u32 {
        *self.bit.get_or_init(|| {
            let at = ALL
                .iter()
                .position(|s| std::ptr::eq(*s, self))
                .expect("every script is in ALL");
            1 << at
        })
    }

    /// The SHA1 of the body, in lowercase hex.
    pub(crate) fn sha1(&self) -> &str {
        self.sha1
            .get_or_init(|| redis::Script::new(self.body).get_hash().to_owned())
    }
}

/// Take a lock (contended, or on a client that re-sends).
pub(crate) static ACQUIRE: Script = Script::new(
    "acquire",
    script!("acquire", "tomb", "token", "ms", "permits", "writer", "claims"),
);
/// A fair attempt: the lock when free and first in line, else a place in line.
pub(crate) static FAIR: Script = Script::new(
    "fair",
    script!("fair", "tomb", "token", "ms", "permits", "writer", "claims"),
);
/// A fair acquisition's ticket out of the line.
pub(crate) static LEAVE: Script = Script::new("leave", script!("leave", "ms", "claims"));
/// Compare-and-delete.
pub(crate) static RELEASE: Script = Script::new("release", script!("release", "owner", "tomb"));
/// Compare-and-pexpire.
pub(crate) static EXTEND: Script = Script::new("extend", script!("extend", "owner"));
/// A fencing token, while held.
pub(crate) static FENCE: Script = Script::new("fence", script!("fence", "owner", "us", "fence"));
/// An operator's eviction.
pub(crate) static FORCE: Script =
    Script::new("force", script!("force", "ms", "us", "fence", "permits"));
/// Take one of `n` permits.
pub(crate) static PERMIT_ACQUIRE: Script = Script::new(
    "permit_acquire",
    script!("permit_acquire", "tomb", "ms", "permits"),
);
/// Give a permit (or a shared hold) back.
pub(crate) static PERMIT_RELEASE: Script = Script::new(
    "permit_release",
    script!("permit_release", "tomb", "ms", "permits"),
);
/// Renew a permit (or a shared hold).
pub(crate) static PERMIT_EXTEND: Script =
    Script::new("permit_extend", script!("permit_extend", "ms", "permits"));
/// What an operator sees of a lock of permits or of shared holds.
pub(crate) static PERMIT_PEEK: Script =
    Script::new("permit_peek", script!("permit_peek", "ms", "permits"));
/// Take a shared (read) hold.
pub(crate) static SHARED_ACQUIRE: Script = Script::new(
    "shared_acquire",
    script!("shared_acquire", "tomb", "token", "ms", "permits", "claims"),
);

/// Every script, for tests that send them to a server themselves.
pub(crate) static ALL: [&Script; 12] = [
    &ACQUIRE,
    &FAIR,
    &LEAVE,
    &RELEASE,
    &EXTEND,
    &FENCE,
    &FORCE,
    &PERMIT_ACQUIRE,
    &PERMIT_RELEASE,
    &PERMIT_EXTEND,
    &PERMIT_PEEK,
    &SHARED_ACQUIRE,
];
