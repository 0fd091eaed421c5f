//! The kernel's commands: every command about a lock's holds ([`Command`]), laid out for a
//! Redis server here and nowhere else ([`Command::call`], [`Command::lay_out`]), with the reply
//! read back here too ([`Command::answer`]), and the one [`Answer`] every node and every
//! deployment gives.
//!
//! The kind of the lock ([`Kind`], in the command's keys) chooses the scripts; this file puts
//! their KEYS and ARGV in order. A backend only sends what it is given: one Redis server or
//! cluster ([`RedisNode`](crate::backend::redis::RedisNode)), the in-process server, the
//! simulator's servers, Redlock's instances.

use std::borrow::Cow;
use std::time::Duration;

use redis::Cmd;

use crate::keys::LockKeys;
use crate::kind::Kind;
use crate::scripts::{Script, FENCE, LEAVE};
use crate::validate::millis_ceil;

/// How long a fence key outlives its last use (the `PX` that fence.lua and force.lua set).
pub(crate) const FENCE_KEEP: Duration = Duration::from_secs(24 * 3600);

/// A waiting acquisition's id, the same for all its attempts, and how long what it records
/// lasts unless an attempt refreshes it: a fair acquisition's ticket in line, or a waiting
/// exclusive acquisition's claim (both keep new shared holds out while it waits; see
/// scripts/prelude/claims.lua).
#[derive(Clone, Debug)]
pub(crate) struct Ticket<'a> {
    pub(crate) id: Cow<'a, str>,
    pub(crate) keep: Duration,
}

/// One command about a lock's holds. Every one is owner-checked, and none re-grants a key that
/// already exists: a token is only ever set by an acquire. It borrows what it names on the hot
/// path; [`into_owned`](Self::into_owned) makes a copy for a command that outlives its sender
/// (Redlock's late replies, the simulator's network).
#[derive(Clone, Debug)]
pub(crate) enum Command<'a> {
    /// Takes a hold for `ttl` with a token never sent before (the kind's acquire script, or
    /// `SET NX PX`). With `mark`, a refusal also marks the key so that its release is published
    /// to waiters (only waiters pay for that). A fair `ticket` takes the lock only when it is
    /// free and the ticket is first in line, else puts the ticket in line (fair.lua); any other
    /// kind's `ticket` is a waiting writer's claim (acquire.lua).
    Acquire {
        keys: Cow<'a, LockKeys>,
        token: Cow<'a, str>,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    },
    /// Owner-checked renewal: the hold expires `ttl` after the server applies it.
    Extend {
        keys: Cow<'a, LockKeys>,
        token: Cow<'a, str>,
        ttl: Duration,
    },
    /// Compare-and-delete. With `keep` above zero the hold is only shortened to end `keep`
    /// after it is applied (`min_hold`), never lengthened. `contended`: its holder took it
    /// after waiting, so others likely wait and have marked the key; the script goes first
    /// (a native compare-and-delete would find the key marked, and the script would follow it
    /// a round trip later).
    Release {
        keys: Cow<'a, LockKeys>,
        token: Cow<'a, str>,
        keep: Duration,
        contended: bool,
    },
    /// Takes a fair ticket out of the line, or ends the waiting writer's claim it names
    /// (leave.lua).
    Leave {
        keys: Cow<'a, LockKeys>,
        ticket: Cow<'a, str>,
    },
    /// Draws the next fencing token while the key holds `token` (fence.lua).
    Fence {
        keys: Cow<'a, LockKeys>,
        token: Cow<'a, str>,
    },
}

/// The one answer of every node and every deployment to a [`Command`]. A command whose outcome
/// is unknown on one server (its reply lost, the connection cut) is an error there, which says
/// whether it may have been applied (`LockError::may_have_applied`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It took effect. An acquire or extend made the hold ours for this long, counted from when
    /// the command was sent: a node answers the ttl the server set, a deployment the part of it
    /// the local deadline may count on. A release or leave answers zero.
    Applied(Duration),
    /// A fence took effect and drew this token.
    Drawn(u64),
    /// It did not take effect: the hold is another owner's, whose lease ends within this long
    /// if known (an acquire), or it was not ours (extend, release, fence).
    NotApplied(Option<Duration>),
    /// Redlock: no majority either way. `granted` instances applied it, of the `needed`;
    /// `refused`: instances where another owner held it (with some `granted`, a split vote).
    Undecided {
        granted: usize,
        needed: usize,
        refused: usize,
    },
}

impl Answer {
    /// Whether the command took effect.
    pub(crate) fn applied(&self) -> bool {
        matches!(self, Answer::Applied(_) | Answer::Drawn(_))
    }

    /// Within how long another owner's lease ends, when a refusal tells it.
    pub(crate) fn left(&self) -> Option<Duration> {
        match self {
            Answer::NotApplied(left) => *left,
            _ => None,
        }
    }
}

/// An empty command named `name`, with room for what a lock command lays out after it (the
/// longest: a fair attempt's eleven arguments, a few hundred bytes with its tokens), so that
/// laying it out allocates twice (the arguments' bytes and their bounds), not once per growth.
pub(crate) fn cmd(name: &str) -> Cmd {
    let mut cmd = Cmd::with_capacity(12, 256);
    cmd.arg(name);
    cmd
}

/// How a command goes to one Redis server.
#[derive(Clone, Copy)]
pub(crate) enum Call {
    /// `SET key token NX PX ttl`: the uncontended exclusive acquire, where the client never
    /// re-sends (a plain `SET NX` cannot tell our own key from another's).
    SetNx,
    /// `DELIFEQ key token` (Valkey 9): the release of a hold no waiter marked. It deletes only
    /// a value equal to the token, which is release.lua's branch that publishes nothing; a
    /// reply of 0 (a marked value, or not ours) sends the script after it (see
    /// [`Native`]).
    DelIfEq,
    /// `SET key token IFEQ token PX ttl` (Valkey 8.1+): the renewal of a hold no waiter
    /// marked, as extend.lua's `PEXPIRE` of it. A nil reply sends the script after it.
    SetIfEq,
    /// The script, sent with `EVALSHA` (`EVAL` after `NOSCRIPT`).
    Script(&'static Script),
}

/// The server's native commands that do a script's job, where lock-core uses them: probed once
/// per server (backend/redis/native.rs). Each does exactly what one branch of its script does
/// and answers "not done" for every other case, after which the script runs: so the scripts
/// stay the definition, and a native command only skips the Lua where its answer is already
/// the script's. Used only on a client that never re-sends: a client that does needs the
/// script's tomb (prelude/tomb.lua).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Native {
    /// `DELIFEQ key value` (Valkey 9.0+).
    pub(crate) delifeq: bool,
    /// `SET key value IFEQ old` (Valkey 8.1+, Redis 8.4+).
    pub(crate) set_ifeq: bool,
}

impl Native {
    /// Neither: every command is the script.
    pub(crate) const NONE: Native = Native {
        delifeq: false,
        set_ifeq: false,
    };

    /// Both.
    pub(crate) const ALL: Native = Native {
        delifeq: true,
        set_ifeq: true,
    };
}

impl Call {
    /// Whether it is a native command (which may leave its job to the script).
    pub(crate) fn is_native(self) -> bool {
        matches!(self, Call::DelIfEq | Call::SetIfEq)
    }
}

/// What the layout depends on besides the command: the server's client and pub/sub.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Server {
    /// The client re-sends commands by itself (a cluster, Sentinel): an attempt refused or
    /// released leaves its tomb, an ended claim its marker (scripts/prelude/tomb.lua).
    pub(crate) resends: bool,
    /// `SPUBLISH` (a Redis 7 cluster) or `PUBLISH`: how releases are published.
    pub(crate) publish: &'static str,
    /// The native commands the server has (none on a client that re-sends).
    pub(crate) native: Native,
}

impl Server {
    /// The same server, sending every command as its script: after a native command answered
    /// "not done".
    pub(crate) fn scripted(self) -> Server {
        self.with(Native::NONE)
    }

    /// The same server with these native commands.
    pub(crate) fn with(self, native: Native) -> Server {
        Server { native, ..self }
    }
}

impl Command<'_> {
    /// The lock the command is about.
    pub(crate) fn keys(&self) -> &LockKeys {
        match self {
            Command::Acquire { keys, .. }
            | Command::Extend { keys, .. }
            | Command::Release { keys, .. }
            | Command::Leave { keys, .. }
            | Command::Fence { keys, .. } => keys,
        }
    }

    /// A copy that owns what it names.
    pub(crate) fn into_owned(self) -> Command<'static> {
        let own = |keys: Cow<'_, LockKeys>| Cow::Owned(keys.into_owned());
        let text = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        match self {
            Command::Acquire {
                keys,
                token,
                ttl,
                mark,
                ticket,
            } => Command::Acquire {
                keys: own(keys),
                token: text(token),
                ttl,
                mark,
                ticket: ticket.map(|t| Ticket {
                    id: text(t.id),
                    keep: t.keep,
                }),
            },
            Command::Extend { keys, token, ttl } => Command::Extend {
                keys: own(keys),
                token: text(token),
                ttl,
            },
            Command::Release {
                keys,
                token,
                keep,
                contended,
            } => Command::Release {
                keys: own(keys),
                token: text(token),
                keep,
                contended,
            },
            Command::Leave { keys, ticket } => Command::Leave {
                keys: own(keys),
                ticket: text(ticket),
            },
            Command::Fence { keys, token } => Command::Fence {
                keys: own(keys),
                token: text(token),
            },
        }
    }

    /// The command's write must reach the replicas before it counts (`min_replicas`: it is
    /// followed by `WAIT`): an acquire, an extend, a fence.
    pub(crate) fn replicated(&self) -> bool {
        matches!(
            self,
            Command::Acquire { .. } | Command::Extend { .. } | Command::Fence { .. }
        )
    }

    /// What goes to the server: the kind's script, or `SET NX PX` for an uncontended exclusive
    /// acquire on a client that never re-sends, or (where the server has them) the native
    /// command of a release or an extend, whose "not done" sends the script after it.
    pub(crate) fn call(&self, server: Server) -> Call {
        let scripts = self.keys().kind.scripts();
        Call::Script(match self {
            Command::Acquire { mark, .. } if scripts.set_nx && !mark && !server.resends => {
                return Call::SetNx;
            }
            Command::Acquire { .. } => scripts.acquire,
            Command::Extend { .. }
                if scripts.native && server.native.set_ifeq && !server.resends =>
            {
                return Call::SetIfEq;
            }
            Command::Extend { .. } => scripts.extend,
            Command::Release {
                keep, contended, ..
            } if keep.is_zero()
                && !contended
                && scripts.native
                && server.native.delifeq
                && !server.resends =>
            {
                return Call::DelIfEq;
            }
            Command::Release { .. } => scripts.release,
            Command::Leave { .. } => &LEAVE,
            Command::Fence { .. } => &FENCE,
        })
    }

    /// Writes the arguments of [`call`](Self::call) after the command's name (and the script's
    /// SHA1): `key token NX PX ttl`, or `numkeys KEYS... ARGV...` as the script reads them.
    pub(crate) fn lay_out(&self, cmd: &mut Cmd, server: Server) {
        let tomb = if server.resends { "1" } else { "0" };
        match self {
            Command::Acquire {
                keys,
                token,
                ttl,
                mark,
                ticket,
            } => {
                let ttl_ms = millis_ceil(*ttl);
                if let Call::SetNx = self.call(server) {
                    cmd.arg(&keys.lock)
                        .arg(token.as_ref())
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms);
                    return;
                }
                let scripts = keys.kind.scripts();
                match ticket.as_ref().filter(|_| keys.kind == Kind::Fair) {
                    // fair.lua: the line too, and the ticket.
                    Some(ticket) => cmd
                        .arg(2)
                        .arg(&keys.lock)
                        .arg(keys.queue())
                        .arg(token.as_ref())
                        .arg(ttl_ms)
                        .arg(ticket.id.as_ref())
                        .arg(millis_ceil(ticket.keep)),
                    None => cmd.arg(1).arg(&keys.lock).arg(token.as_ref()).arg(ttl_ms),
                };
                cmd.arg(if *mark { "1" } else { "0" }).arg(tomb);
                if let Some(bound) = scripts.bound {
                    cmd.arg(bound);
                } else if let (Some(claim), false) = (ticket, keys.kind == Kind::Fair) {
                    // acquire.lua: a waiting writer's claim.
                    cmd.arg(claim.id.as_ref()).arg(millis_ceil(claim.keep));
                }
            }
            Command::Extend { keys, token, ttl } if matches!(self.call(server), Call::SetIfEq) => {
                cmd.arg(&keys.lock)
                    .arg(token.as_ref())
                    .arg("IFEQ")
                    .arg(token.as_ref())
                    .arg("PX")
                    .arg(millis_ceil(*ttl));
            }
            Command::Release { keys, token, .. } if matches!(self.call(server), Call::DelIfEq) => {
                cmd.arg(&keys.lock).arg(token.as_ref());
            }
            Command::Extend { keys, token, ttl } => {
                cmd.arg(1)
                    .arg(&keys.lock)
                    .arg(token.as_ref())
                    .arg(millis_ceil(*ttl));
            }
            Command::Release {
                keys, token, keep, ..
            } => {
                cmd.arg(1)
                    .arg(&keys.lock)
                    .arg(token.as_ref())
                    .arg(millis_ceil(*keep))
                    .arg(server.publish)
                    .arg(tomb);
            }
            Command::Leave { keys, ticket } => {
                cmd.arg(2)
                    .arg(keys.queue())
                    .arg(&keys.lock)
                    .arg(ticket.as_ref())
                    .arg(server.publish)
                    .arg(tomb);
            }
            Command::Fence { keys, token } => {
                cmd.arg(2)
                    .arg(&keys.lock)
                    .arg(keys.fence())
                    .arg(token.as_ref())
                    .arg(millis_ceil(FENCE_KEEP));
            }
        }
    }

    /// The server's reply read as an [`Answer`]. Every script answers an integer: 1 applied
    /// (a fence: the token, above 0); an acquire refused answers minus the milliseconds worth
    /// waiting at most (0 when unknown). A `SET NX` reply is 1 when it set the key, else 0.
    pub(crate) fn answer(&self, reply: i64) -> Answer {
        match self {
            Command::Fence { .. } if reply > 0 => Answer::Drawn(reply.unsigned_abs()),
            Command::Acquire { ttl, .. } | Command::Extend { ttl, .. } if reply == 1 => {
                Answer::Applied(*ttl)
            }
            Command::Release { .. } | Command::Leave { .. } if reply == 1 => {
                Answer::Applied(Duration::ZERO)
            }
            // leave.lua answers how many records it took out: none is still done.
            Command::Leave { .. } => Answer::Applied(Duration::ZERO),
            Command::Acquire { .. } if reply < 0 => {
                Answer::NotApplied(Some(Duration::from_millis(reply.unsigned_abs())))
            }
            _ => Answer::NotApplied(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `command` lays out for a server with no native commands.
    fn args(command: &Command<'_>, resends: bool) -> Vec<String> {
        let server = Server {
            resends,
            publish: "PUBLISH",
            native: Native::NONE,
        };
        laid_out(command, server)
    }

    /// What `command` lays out for `server`, after the command's name.
    fn laid_out(command: &Command<'_>, server: Server) -> Vec<String> {
        let mut cmd = redis::cmd("X");
        command.lay_out(&mut cmd, server);
        cmd.args_iter()
            .skip(1)
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn each_kind_lays_out_its_scripts_arguments() {
        let keys = LockKeys::new("l:", "a");
        let acquire = |kind: Kind, mark: bool, ticket: Option<Ticket<'static>>| Command::Acquire {
            keys: Cow::Owned(keys.clone().of_kind(kind)),
            token: Cow::Borrowed("t"),
            ttl: Duration::from_millis(1500),
            mark,
            ticket,
        };
        let ticket = || {
            Some(Ticket {
                id: Cow::Borrowed("c"),
                keep: Duration::from_millis(700),
            })
        };
        let server = Server {
            resends: false,
            publish: "PUBLISH",
            native: Native::NONE,
        };
        // Uncontended exclusive: SET NX, where the client never re-sends.
        let plain = acquire(Kind::Exclusive, false, None);
        assert!(matches!(plain.call(server), Call::SetNx));
        assert_eq!(args(&plain, false), ["l:{a}", "t", "NX", "PX", "1500"]);
        assert_eq!(
            args(&plain, true),
            ["1", "l:{a}", "t", "1500", "0", "1"],
            "a client that re-sends asks the script"
        );
        assert_eq!(
            args(&acquire(Kind::Exclusive, true, ticket()), false),
            ["1", "l:{a}", "t", "1500", "1", "0", "c", "700"]
        );
        assert_eq!(
            args(&acquire(Kind::Fair, true, ticket()), false),
            ["2", "l:{a}", "l:{a}:q", "t", "1500", "c", "700", "1", "0"]
        );
        assert_eq!(
            args(&acquire(Kind::Permits(3), false, None), false),
            ["1", "l:{a}", "t", "1500", "0", "0", "3"]
        );
        assert_eq!(
            args(&acquire(Kind::Shared, true, None), true),
            ["1", "l:{a}", "t", "1500", "1", "1"]
        );
        let release = Command::Release {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed("t"),
            keep: Duration::ZERO,
            contended: false,
        };
        assert_eq!(
            args(&release, true),
            ["1", "l:{a}", "t", "0", "PUBLISH", "1"]
        );
    }

    #[test]
    fn a_server_with_native_commands_gets_them_for_unmarked_holds_only() {
        let keys = LockKeys::new("l:", "a");
        let valkey9 = Server {
            resends: false,
            publish: "PUBLISH",
            native: Native {
                delifeq: true,
                set_ifeq: true,
            },
        };
        let release = |kind: Kind, keep: u64| Command::Release {
            keys: Cow::Owned(keys.clone().of_kind(kind)),
            token: Cow::Borrowed("t"),
            keep: Duration::from_millis(keep),
            contended: false,
        };
        let extend = |kind: Kind| Command::Extend {
            keys: Cow::Owned(keys.clone().of_kind(kind)),
            token: Cow::Borrowed("t"),
            ttl: Duration::from_millis(1500),
        };
        for kind in [Kind::Exclusive, Kind::Fair] {
            assert!(matches!(release(kind, 0).call(valkey9), Call::DelIfEq));
            assert_eq!(laid_out(&release(kind, 0), valkey9), ["l:{a}", "t"]);
            assert!(matches!(extend(kind).call(valkey9), Call::SetIfEq));
            assert_eq!(
                laid_out(&extend(kind), valkey9),
                ["l:{a}", "t", "IFEQ", "t", "PX", "1500"]
            );
            // After "not done", the scripts.
            assert!(matches!(
                release(kind, 0).call(valkey9.scripted()),
                Call::Script(s) if s.name == "release"
            ));
            assert!(matches!(
                extend(kind).call(valkey9.scripted()),
                Call::Script(s) if s.name == "extend"
            ));
        }
        // A holder that waited for it: waiters likely marked the key, so the script first.
        let waited = Command::Release {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed("t"),
            keep: Duration::ZERO,
            contended: true,
        };
        assert!(matches!(waited.call(valkey9), Call::Script(s) if s.name == "release"));
        // min_hold shortens the key (the script); permits and shared holds are hashes; a client
        // that re-sends needs the tomb.
        assert!(matches!(
            release(Kind::Exclusive, 250).call(valkey9),
            Call::Script(_)
        ));
        assert!(matches!(
            release(Kind::Permits(2), 0).call(valkey9),
            Call::Script(_)
        ));
        assert!(matches!(
            extend(Kind::Shared).call(valkey9),
            Call::Script(_)
        ));
        let cluster = Server {
            resends: true,
            ..valkey9
        };
        assert!(matches!(
            release(Kind::Exclusive, 0).call(cluster),
            Call::Script(_)
        ));
        assert!(matches!(
            extend(Kind::Exclusive).call(cluster),
            Call::Script(_)
        ));
        // Valkey 8.1: SET IFEQ only.
        let valkey81 = Server {
            native: Native {
                delifeq: false,
                set_ifeq: true,
            },
            ..valkey9
        };
        assert!(matches!(
            release(Kind::Exclusive, 0).call(valkey81),
            Call::Script(_)
        ));
        assert!(matches!(
            extend(Kind::Exclusive).call(valkey81),
            Call::SetIfEq
        ));
    }

    #[test]
    fn replies_read_as_one_answer() {
        let keys = LockKeys::new("l:", "a");
        let ttl = Duration::from_secs(2);
        let acquire = Command::Acquire {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed("t"),
            ttl,
            mark: false,
            ticket: None,
        };
        assert_eq!(acquire.answer(1), Answer::Applied(ttl));
        assert_eq!(
            acquire.answer(-250),
            Answer::NotApplied(Some(Duration::from_millis(250)))
        );
        assert_eq!(acquire.answer(0), Answer::NotApplied(None));
        let fence = Command::Fence {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed("t"),
        };
        assert_eq!(fence.answer(7), Answer::Drawn(7));
        assert_eq!(fence.answer(0), Answer::NotApplied(None));
        let leave = Command::Leave {
            keys: Cow::Borrowed(&keys),
            ticket: Cow::Borrowed("c"),
        };
        assert!(leave.answer(0).applied());
    }
}
