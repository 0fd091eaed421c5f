//! A Redis Cluster of local `redis-server` processes.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::server::{poll, RedisServer};

/// A Redis Cluster of local `redis-server` processes, created with `redis-cli --cluster create`.
/// Its nodes are stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    conf_dir: std::path::PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear(); // stops them
        let _ = std::fs::remove_dir_all(&self.conf_dir);
    }
}

/// One line of `CLUSTER NODES` for a master.
#[derive(Debug, Clone)]
pub struct ClusterMaster {
    pub id: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each; node timeout 1 s, failover always
    /// allowed. Waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_binary(&crate::server::server_binary(), masters, replicas)
    }

    /// [`start`](Self::start) with `binary` for the nodes (a `valkey-server`).
    pub fn start_binary(binary: &str, masters: usize, replicas: usize) -> Self {
        // A directory of its own for the nodes' cluster config files: a stale file from an
        // earlier run on the same port would make a node rejoin an old cluster.
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let conf_dir = std::env::temp_dir().join(format!(
            "lock-tests-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&conf_dir);
        std::fs::create_dir_all(&conf_dir).expect("create the cluster config directory");
        let conf = format!("{}/nodes-{{port}}.conf", conf_dir.display());
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_binary(
                    binary,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("running redis-cli (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, conf_dir };
        cluster.wait_until_ok(Duration::from_secs(30));
        // Replicas are useful to a test only once they have synced with their masters.
        poll(Duration::from_secs(30), "the replicas' first sync", || {
            cluster
                .nodes
                .iter()
                .all(|n| {
                    let info: String = n.query(redis::cmd("INFO").arg("replication"));
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
                .then_some(())
        });
        // And once their masters stream to them: after the first sync, a master holds the
        // stream back until the replica's first acknowledgement (up to a second), so `WAIT`
        // (min_replicas) would count it out. A probe key on each master, waited for.
        if replicas > 0 {
            // Read afresh on every try: with a 1 s node timeout, a loaded machine can see a
            // failover while the cluster starts, and a probe meant for a master that lost its
            // slots would be looked for forever.
            poll(
                Duration::from_secs(60),
                "every master streaming to its replicas",
                || {
                    cluster
                        .masters()
                        .iter()
                        .all(|master| cluster.streams(master, replicas))
                        .then_some(())
                },
            );
        }
        cluster
    }

    /// Whether `master` serves a probe key and `replicas` replicas acknowledge it within 10 s.
    fn streams(&self, master: &ClusterMaster, replicas: usize) -> bool {
        let node = self.index_of(master.port);
        let serves = |slot: u16| master.slots.iter().any(|&(a, b)| a <= slot && slot <= b);
        let Some(probe) = (0..10_000)
            .map(|i| format!("lock-tests:probe:{i}"))
            .find(|k| serves(self.slot(k)))
        else {
            return false;
        };
        let mut conn = self.nodes[node].conn();
        let set: redis::RedisResult<()> = redis::cmd("SET").arg(&probe).arg(1).query(&mut conn);
        if set.is_err() {
            return false; // moved meanwhile
        }
        let acked: redis::RedisResult<i64> = redis::cmd("WAIT")
            .arg(replicas)
            .arg(10_000)
            .query(&mut conn);
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&probe).query(&mut conn);
        acked.is_ok_and(|n| n >= replicas as i64)
    }

    /// Seed urls, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// Waits until every running node reports `cluster_state:ok`, sees all slots served, and
    /// sees every killed node as failed with its slots taken over (a failover has finished).
    pub fn wait_until_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.is_running())
            .map(|n| format!("127.0.0.1:{}@", n.port()))
            .collect();
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let info: redis::RedisResult<String> =
                    redis::cmd("CLUSTER").arg("INFO").query(&mut n.conn());
                let nodes: redis::RedisResult<String> =
                    redis::cmd("CLUSTER").arg("NODES").query(&mut n.conn());
                let settled = nodes.is_ok_and(|text| {
                    text.lines().all(|line| {
                        let f: Vec<&str> = line.split_whitespace().collect();
                        let is_dead = dead.iter().any(|d| f[1].starts_with(d.as_str()));
                        // A dead node must be marked failed (not just suspected) and serve nothing.
                        !is_dead || (f[2].split(',').any(|flag| flag == "fail") && f.len() <= 8)
                    })
                });
                settled
                    && info.is_ok_and(|i| {
                        i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
                    })
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The masters as one running node sees them.
    pub fn masters(&self) -> Vec<ClusterMaster> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        let text: String = node.query(redis::cmd("CLUSTER").arg("NODES"));
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if !f[2].contains("master") || f[2].contains("fail") {
                    return None;
                }
                let port = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| match s.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (s.parse().unwrap(), s.parse().unwrap()),
                    })
                    .collect();
                Some(ClusterMaster {
                    id: f[0].to_owned(),
                    port,
                    slots,
                })
            })
            .collect()
    }

    /// The hash slot of `key`.
    pub fn slot(&self, key: &str) -> u16 {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node");
        node.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
    }

    /// The node (index into `nodes`) serving `key` as master.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = self.slot(key);
        let master = self
            .masters()
            .into_iter()
            .find(|m| m.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .expect("every slot is served");
        self.index_of(master.port)
    }

    pub fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .expect("a node of this cluster")
    }

    /// The node id of the node at `index`.
    pub fn id_of(&self, index: usize) -> String {
        self.nodes[index].query(redis::cmd("CLUSTER").arg("MYID"))
    }

    /// The replicas (indexes into `nodes`) of the master at `index`.
    pub fn replicas_of(&self, index: usize) -> Vec<usize> {
        let id = self.id_of(index);
        let text: String = self.nodes[index].query(redis::cmd("CLUSTER").arg("NODES"));
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                (f[2].contains("slave") && f[3] == id).then(|| self.index_of(port))
            })
            .collect()
    }
}
