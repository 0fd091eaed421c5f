//! What a command or a script answers: the RESP2 reply types a Redis 7.0 client sees.

use std::fmt;

/// One RESP2 reply, as the model gives it for a plain command ([`Keyspace::call`]) and for a
/// script ([`Scripts::eval`]) alike.
///
/// [`Keyspace::call`]: super::keyspace::Keyspace::call
/// [`Scripts::eval`]: super::lua::Scripts::eval
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A nil bulk string (`$-1`): a missing key, a refused `SET NX`, a script's `false`/`nil`.
    Nil,
    /// An integer reply (`:n`).
    Int(i64),
    /// A bulk string: binary safe.
    Bulk(Vec<u8>),
    /// A status reply (`+OK`, `TYPE`'s `+hash`).
    Status(String),
    /// An error reply, without the leading `-`: its first word is the code (`WRONGTYPE ...`).
    Error(String),
    /// A multi-bulk reply.
    Array(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub(crate) fn ok() -> Self {
        Reply::Status("OK".to_owned())
    }

    /// An error reply with the given text (code first).
    pub(crate) fn error(text: impl Into<String>) -> Self {
        Reply::Error(text.into())
    }

    /// A bulk reply from anything byte-like.
    pub(crate) fn bulk(bytes: impl AsRef<[u8]>) -> Self {
        Reply::Bulk(bytes.as_ref().to_vec())
    }
}

/// Bulk strings print as text where they are UTF-8, so a mismatch in the differential test
/// reads like `redis-cli` output.
impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Nil => f.write_str("Nil"),
            Reply::Int(n) => write!(f, "Int({n})"),
            Reply::Bulk(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "Bulk({s:?})"),
                Err(_) => write!(f, "Bulk({b:?})"),
            },
            Reply::Status(s) => write!(f, "Status({s:?})"),
            Reply::Error(e) => write!(f, "Error({e:?})"),
            Reply::Array(items) => f.debug_list().entries(items).finish(),
        }
    }
}

/// The errors Redis 7.0 answers with, written once.
pub(crate) mod errors {
    pub(crate) const WRONGTYPE: &str =
        "WRONGTYPE Operation against a key holding the wrong kind of value";
    pub(crate) const SYNTAX: &str = "ERR syntax error";
    pub(crate) const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
    pub(crate) const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
    pub(crate) const HASH_NOT_INTEGER: &str = "ERR hash value is not an integer";
    pub(crate) const OVERFLOW: &str = "ERR increment or decrement would overflow";

    /// `ERR wrong number of arguments for 'get' command`.
    pub(crate) fn arity(command: &str) -> String {
        format!(
            "ERR wrong number of arguments for '{}' command",
            command.to_ascii_lowercase()
        )
    }

    /// `ERR invalid expire time in 'set' command`.
    pub(crate) fn expire_time(command: &str) -> String {
        format!(
            "ERR invalid expire time in '{}' command",
            command.to_ascii_lowercase()
        )
    }
}
