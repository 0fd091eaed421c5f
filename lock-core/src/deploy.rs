//! Connecting the one deployment a [`LockManagerBuilder`](crate::LockManagerBuilder) names:
//! the [`Store`] that decides locks there and the [`Wake`] that tells its waiters of releases.
//! The builder checks its own settings; what only a deployment can say (Redlock's instance
//! count, an evicting memory policy, a server refusing `WAIT`) is checked here.

use crate::backend::memory::ModelServer;
use crate::backend::redis::{Endpoint, MinReplicas, RedisNode};
use crate::backend::redlock::Redlock;
use crate::backend::single::Single;
use crate::backend::{BoxFuture, Drift, Store, Timeouts, Wake};
use crate::{LockError, Result};

/// A connected deployment: the store that decides its locks and its release notifications.
pub(crate) type Deployment = (Box<dyn Store>, Box<dyn Wake>);

/// How to connect: the builder's connection settings.
pub(crate) struct Connection {
    pub(crate) timeouts: Timeouts,
    /// Redlock's clock-drift allowance.
    pub(crate) drift: Drift,
    pub(crate) lazy: bool,
    pub(crate) allow_eviction: bool,
    pub(crate) min_replicas: Option<MinReplicas>,
}

/// The store and wake-ups of one Redis server (or cluster) `node`, with `min_replicas` and the
/// memory-policy check applied. `contacted`: the node is connected already (not
/// [`lazy`](crate::LockManagerBuilder::lazy); a cluster always is), so both are checked now.
async fn one_server(
    mut node: RedisNode,
    kind: &'static str,
    how: &Connection,
    contacted: bool,
) -> Result<Deployment> {
    if let Some(want) = how.min_replicas {
        node = node.min_replicas(want, how.timeouts, contacted).await?;
    }
    if contacted && !how.allow_eviction {
        node.refuse_evicting().await?;
    }
    let wake = Box::new(node.pubsub());
    // The cluster client sends a command again after an I/O error, a Sentinel connection after
    // a failover.
    let resends = node.resends();
    let store = Single::new(Box::new(node), kind, Drift::SERVER, resends);
    Ok((Box::new(store), wake))
}

/// One deployment named on the builder.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One server, by url or through the service's own client.
    One(Endpoint),
    Redlock(Vec<Endpoint>),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "sentinel")]
    Sentinel(String, Vec<String>),
}

/// The in-process deployment ([`LockManager::in_memory`](crate::LockManager::in_memory)): the
/// Redis backend's own code and scripts, on a server modelled in this process.
pub(crate) fn in_memory() -> Deployment {
    let node = RedisNode::in_process(ModelServer::new(), false);
    let wake = Box::new(node.pubsub());
    let store = Single::new(Box::new(node), "in-memory", Drift::MILLIS, false);
    (Box::new(store), wake)
}

/// Connects `target` (unless [`lazy`](crate::LockManagerBuilder::lazy)): its store and its
/// release notifications.
///
/// Boxed: the connecting futures of the redis crate (the cluster client's above all) nest
/// deep, and a caller's future that held them unboxed, a few `async fn`s down, made rustc's
/// layout computation overflow its query depth ("queries overflow the depth limit!") in the
/// caller's crate. Built once per manager, so the allocation costs nothing that matters.
pub(crate) fn connect(target: Target, how: &Connection) -> BoxFuture<'_, Result<Deployment>> {
    Box::pin(connect_unboxed(target, how))
}

async fn connect_unboxed(target: Target, how: &Connection) -> Result<Deployment> {
    let invalid = |reason: &str| LockError::InvalidConfig {
        reason: reason.to_owned(),
    };
    Ok(match target {
        Target::One(endpoint) => {
            let node = if how.lazy {
                endpoint.connect_lazy(how.timeouts)?
            } else {
                endpoint.connect(how.timeouts).await?
            };
            one_server(node, "redis", how, !how.lazy).await?
        }
        Target::Redlock(instances) => {
            if instances.len() < 3 || instances.len() % 2 == 0 {
                return Err(invalid(&format!(
                    "Redlock needs an odd number of independent masters, at least 3; got {}",
                    instances.len()
                )));
            }
            let factor_ok = how.drift.factor.is_finite() && (0.0..1.0).contains(&how.drift.factor);
            if !factor_ok {
                return Err(invalid(
                    "the Redlock clock drift factor must be at least 0 and below 1",
                ));
            }
            let (store, wake) = Redlock::connect(
                &instances,
                how.timeouts,
                how.drift,
                how.lazy,
                how.allow_eviction,
            )
            .await?;
            (Box::new(store), Box::new(wake))
        }
        #[cfg(feature = "sentinel")]
        Target::Sentinel(master, urls) => {
            if urls.is_empty() {
                return Err(invalid("`.sentinel(..)` needs at least one sentinel url"));
            }
            let node = RedisNode::connect_sentinel(&master, &urls, how.timeouts, how.lazy).await?;
            one_server(node, "redis-sentinel", how, !how.lazy).await?
        }
        #[cfg(feature = "cluster")]
        Target::Cluster(urls) => {
            if urls.is_empty() {
                return Err(invalid("`.cluster(..)` needs at least one node url"));
            }
            let node = RedisNode::connect_cluster(&urls, how.timeouts).await?;
            one_server(node, "redis-cluster", how, true).await?
        }
    })
}
