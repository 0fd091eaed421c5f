//! Operators' commands on Redlock: each sent to every instance, and the holds a majority of
//! them agrees on.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::timeout;

use super::super::{BoxFuture, Found, Node};
use super::Redlock;
use crate::{LockError, Result};

impl Redlock {
    /// An operator command on every instance, each within `bound` if given: the answers of
    /// those that gave one, and the first error.
    pub(super) async fn everywhere<'a, T>(
        &'a self,
        bound: Option<Duration>,
        op: impl Fn(&'a dyn Node) -> BoxFuture<'a, Result<T>>,
    ) -> (Vec<T>, Option<LockError>) {
        let replies = join_all(self.nodes.iter().map(|instance| {
            let answer = op(&*instance.node);
            async move {
                match bound {
                    Some(bound) => timeout(bound, answer).await.unwrap_or_else(|_| {
                        Err(LockError::Redis(redis::RedisError::from(
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"),
                        )))
                    }),
                    None => answer.await,
                }
            }
        }))
        .await;
        let mut answers = Vec::with_capacity(replies.len());
        let mut first_error = None;
        for reply in replies {
            match reply {
                Ok(answer) => answers.push(answer),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (answers, first_error)
    }

    /// The answers, when a majority gave one; else (what the others hold cannot be told) the
    /// first error.
    pub(super) fn majority_or<T>(
        &self,
        answers: Vec<T>,
        error: Option<LockError>,
    ) -> Result<Vec<T>> {
        if answers.len() >= self.quorum {
            return Ok(answers);
        }
        Err(error.unwrap_or_else(|| {
            LockError::Redis(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "fewer than a majority of the Redlock instances answered",
            )))
        }))
    }

    /// The holds of a lock that a majority of instances agree on (the same owner token, marks
    /// aside), each with the shortest remaining life among them, the earliest taken first: one
    /// for an exclusive lock, one per shared holder; none when no token has a majority.
    pub(super) fn agreed(&self, found: impl IntoIterator<Item = Found>) -> Vec<Found> {
        let mut tokens: Vec<(String, Vec<Found>)> = Vec::new();
        for f in found {
            // The owner token, without a waiter's mark or a min_hold release's retirement.
            let token = f.value.split('*').next().unwrap_or_default();
            let token = token.trim_end_matches('~').to_owned();
            match tokens.iter_mut().find(|(t, _)| *t == token) {
                Some((_, same)) => same.push(f),
                None => tokens.push((token, vec![f])),
            }
        }
        let mut agreed: Vec<Found> = tokens
            .into_iter()
            .filter(|(_, same)| same.len() >= self.quorum)
            .filter_map(|(_, same)| {
                let left = same.iter().map(|f| f.left).min().flatten();
                // Writers wait on every instance; the most any of them counts.
                let waiters = same
                    .iter()
                    .map(|f| &f.waiters)
                    .max_by_key(|w| w.len())
                    .cloned()
                    .unwrap_or_default();
                let mut first = same.into_iter().next()?;
                first.left = left;
                first.waiters = waiters;
                Some(first)
            })
            .collect();
        super::super::taken_first(&mut agreed);
        agreed
    }
}
