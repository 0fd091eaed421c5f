//! Redis behind Sentinel: the primary is found through the sentinels, and found again when a
//! command or the pub/sub connection suggests it moved (a dropped or refused connection, a
//! timeout, or `READONLY` from a demoted primary). On a failover, Sentinel also closes the
//! clients of the old primary, so every connection of the manager learns of it.
//!
//! A command that failed that way is sent once more, to the new primary, when there is one: so
//! this deployment, like the cluster client, may apply a command twice (once on the old
//! primary, copied to the new one, and once on the new one), and is treated like it (every
//! acquire runs acquire.lua, which knows its own token; see `Store::replays`).
//!
//! A lock the old primary granted survives the failover only if the promoted replica had it:
//! `min_replicas` makes sure one did before the grant counts. A guard whose key did not survive
//! is told by its next renewal (the key is gone on the new primary) and reports itself lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, RedisResult, ServerErrorKind};
use tokio::time::Instant;

use super::Timeouts;
use crate::error::{connect_failed, invalid_url, masked};
use crate::locked;
use crate::Result;

/// The shortest pause between two lookups: a primary that stays down is not asked for more
/// often than this by every failing command.
const LOOKUP_EVERY: Duration = Duration::from_millis(100);

/// The primary of one Sentinel-monitored master name, as last found.
pub(crate) struct Primary {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// For errors: the master name and the sentinels' urls (passwords masked).
    described: String,
    current: Mutex<Found>,
    timeouts: Timeouts,
}

#[derive(Clone)]
struct Found {
    /// The primary's client and address, once found.
    client: Option<(redis::Client, String)>,
    /// Counts the lookups that found a different address.
    generation: u64,
    /// When the last lookup ended.
    looked: Option<Instant>,
}

impl Primary {
    /// Checks the urls; contacts nothing. The primary is connected to with the database, user
    /// name, password and TLS (`rediss://`) of the first sentinel url (the sentinels
    /// themselves with each url's own).
    pub(crate) fn new(master: &str, urls: &[String], timeouts: Timeouts) -> Result<Self> {
        let described = format!("master `{master}` of sentinels {}", masked_all(urls));
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            infos.push(
                url.as_str()
                    .into_connection_info()
                    .map_err(|e| invalid_url(url, &e))?,
            );
        }
        let Some(first) = infos.first() else {
            return Err(crate::LockError::InvalidConfig {
                reason: "`.sentinel(..)` needs at least one sentinel url".to_owned(),
            });
        };
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(first.redis_settings().clone());
        // `rediss://` sentinels: the primary over TLS too, never its password in the clear.
        if let redis::ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
            node = node.set_tls_mode(if *insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
        }
        // A `String` fits both forms of `build` (with and without the redis crate's rustls).
        let service: String = master.into();
        let sentinels =
            SentinelClient::build(infos, service, Some(node), SentinelServerType::Master)
                .map_err(|e| invalid_url(&masked_all(urls), &e))?;
        Ok(Self {
            sentinels: tokio::sync::Mutex::new(sentinels),
            described,
            current: Mutex::new(Found {
                client: None,
                generation: 0,
                looked: None,
            }),
            timeouts,
        })
    }

    /// The primary, as last found (found now if never).
    pub(crate) async fn client(&self) -> RedisResult<(redis::Client, u64)> {
        let found = locked(&self.current).clone();
        match found.client {
            Some((client, _)) => Ok((client, found.generation)),
            None => self.lookup(found.generation).await,
        }
    }

    /// Asks the sentinels for the primary again, after something went wrong with the one of
    /// generation `seen`. Not when a lookup ended while this one waited for its turn, or
    /// already found a newer primary: their answer is as fresh. Lookups start at least
    /// [`LOOKUP_EVERY`] apart, so that a primary that stays down does not flood the sentinels.
    pub(crate) async fn lookup(&self, seen: u64) -> RedisResult<(redis::Client, u64)> {
        let asked = Instant::now();
        let mut sentinels = self.sentinels.lock().await;
        let found = locked(&self.current).clone();
        let answered = found.looked.is_some_and(|at| at > asked);
        match &found.client {
            Some((client, _)) if found.generation != seen || answered => {
                return Ok((client.clone(), found.generation));
            }
            // The lookup that ended while this one waited found nothing: neither would this.
            None if answered => {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no primary found through the sentinels",
                )));
            }
            _ => {}
        }
        if let Some(at) = found.looked {
            tokio::time::sleep_until(at + LOOKUP_EVERY).await;
        }
        // Each sentinel is asked in turn, and the primary it names is asked for its role.
        let within = self.timeouts.connect * 2 + self.timeouts.response;
        let asked = tokio::time::timeout(within, sentinels.async_get_client()).await;
        locked(&self.current).looked = Some(Instant::now());
        let client = asked.map_err(|_| {
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no primary found through the sentinels within {within:?}"),
            ))
        })??;
        let address = client.get_connection_info().addr().to_string();
        let mut current = locked(&self.current);
        let moved = current
            .client
            .as_ref()
            .is_none_or(|(_, known)| *known != address);
        if moved {
            if current.client.is_some() {
                tracing::warn!(primary = %address, "Sentinel named a new primary; following it");
            }
            current.generation += 1;
            current.client = Some((client, address));
        }
        let (client, _) = current.client.clone().expect("set above");
        Ok((client, current.generation))
    }
}

/// `urls`, each with its password masked, for messages.
fn masked_all(urls: &[String]) -> String {
    let masked: Vec<String> = urls.iter().map(|u| masked(u)).collect();
    masked.join(", ")
}

/// Whether `e` suggests the primary moved: its connection dropped, was refused or timed out,
/// or it answered as a replica.
pub(crate) fn suggests_failover(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        // Redis 6 reports a script's READONLY inside "ERR Error running script".
        || e.to_string().contains("READONLY")
}

/// A command connection to whichever server is the primary: a connection manager to the one
/// last found, replaced when a failed command suggests a failover and the sentinels name
/// another.
pub(crate) struct Following {
    primary: Arc<Primary>,
    config: ConnectionManagerConfig,
    conn: Mutex<Option<(ConnectionManager, u64)>>,
}

impl Following {
    pub(crate) fn new(primary: Arc<Primary>, config: ConnectionManagerConfig) -> Self {
        Self {
            primary,
            config,
            conn: Mutex::new(None),
        }
    }

    /// The connection to the primary as last found, and its generation.
    pub(crate) async fn conn(&self) -> RedisResult<(ConnectionManager, u64)> {
        if let Some(conn) = locked(&self.conn).clone() {
            return Ok(conn);
        }
        let (client, generation) = self.primary.client().await?;
        self.replace(client, generation)
    }

    /// After `e` on the connection of `generation`: when it suggests a failover, asks the
    /// sentinels and moves to the primary they name (the next command uses it). `true` when
    /// it moved.
    pub(crate) async fn failed(&self, e: &RedisError, generation: u64) -> bool {
        if !suggests_failover(e) {
            return false;
        }
        match self.primary.lookup(generation).await {
            Ok((client, found)) if found != generation => match self.replace(client, found) {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot use the new primary");
                    false
                }
            },
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "no primary found yet");
                false
            }
        }
    }

    fn replace(
        &self,
        client: redis::Client,
        generation: u64,
    ) -> RedisResult<(ConnectionManager, u64)> {
        let mut conn = locked(&self.conn);
        if let Some(current) = conn.as_ref().filter(|(_, g)| *g >= generation) {
            return Ok(current.clone());
        }
        // Lazy: it connects on first use, within the connect timeout.
        let manager = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        *conn = Some((manager.clone(), generation));
        Ok((manager, generation))
    }
}

/// Finds the primary now, so that a wrong master name or no reachable sentinel fails at
/// `build`.
pub(crate) async fn check(primary: &Primary) -> Result<()> {
    primary
        .client()
        .await
        .map(drop)
        .map_err(|e| connect_failed(&primary.described, e))
}

impl Primary {
    /// `master `<name>` of sentinels <urls>`, passwords masked: for errors and logs.
    pub(crate) fn described(&self) -> &str {
        &self.described
    }
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.described)
    }
}
