//! Redis Sentinel over local processes: a primary, replicas and sentinels that fail over fast.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::server::{free_port, poll, INSTALL_HINT};

/// `redis-server --sentinel` processes monitoring one primary under one master name; stopped
/// on drop. Failover is fast: the primary counts as down after `down_after`.
pub struct Sentinels {
    nodes: Vec<SentinelNode>,
    pub master: String,
}

struct SentinelNode {
    child: Child,
    port: u16,
    conf: std::path::PathBuf,
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.conf);
    }
}

impl Sentinels {
    /// `n` sentinels (quorum: a majority) watching the primary at `127.0.0.1:<primary>` as
    /// `master`, once each of them knows the others and `replicas` replicas, so that a failover
    /// can start at once.
    pub fn start(n: usize, master: &str, primary: u16, replicas: usize) -> Self {
        Self::start_with(n, master, primary, replicas, Duration::from_secs(4))
    }

    /// [`start`](Self::start) with Sentinel's `failover-timeout`: also how long a replica may
    /// replicate from another address than the primary's (a proxy) before Sentinel points it
    /// at the primary itself, and half the pause before a failed election is tried again.
    pub fn start_with(
        n: usize,
        master: &str,
        primary: u16,
        replicas: usize,
        failover_timeout: Duration,
    ) -> Self {
        let down_after = 400;
        let failover_timeout = failover_timeout.as_millis();
        let quorum = n / 2 + 1;
        let nodes = (0..n)
            .map(|_| {
                let port = free_port();
                let conf = std::env::temp_dir().join(format!(
                    "lock-tests-sentinel-{}-{port}.conf",
                    std::process::id()
                ));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\nlogfile \"\"\ndir {dir}\n\
                         sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
                         sentinel down-after-milliseconds {master} {down_after}\n\
                         sentinel failover-timeout {master} {failover_timeout}\n\
                         sentinel parallel-syncs {master} 1\n",
                        dir = std::env::temp_dir().display(),
                    ),
                )
                .expect("write the sentinel config");
                let child = Command::new(crate::server::server_binary())
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
                SentinelNode { child, port, conf }
            })
            .collect();
        let sentinels = Self {
            nodes,
            master: master.to_owned(),
        };
        sentinels.wait_ready(replicas, Duration::from_secs(20));
        sentinels
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    fn ask<T: redis::FromRedisValue>(&self, index: usize, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(self.urls()[index].as_str()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        cmd.query(&mut conn).ok()
    }

    fn wait_ready(&self, replicas: usize, within: Duration) {
        let others = (self.nodes.len() - 1).to_string();
        let replicas = replicas.to_string();
        poll(
            within,
            "the sentinels to find each other and the replicas",
            || {
                let ready = (0..self.nodes.len()).all(|i| {
                    let fields: Option<Vec<String>> =
                        self.ask(i, redis::cmd("SENTINEL").arg("MASTER").arg(&self.master));
                    let Some(fields) = fields else { return false };
                    let field = |name: &str| {
                        fields
                            .chunks(2)
                            .find(|kv| kv[0] == name)
                            .map(|kv| kv[1].clone())
                    };
                    field("num-other-sentinels") == Some(others.clone())
                        && field("num-slaves") == Some(replicas.clone())
                });
                ready.then_some(())
            },
        );
    }

    /// The primary's port, as the first sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        (0..self.nodes.len()).find_map(|i| {
            let addr: Option<(String, String)> = self.ask(
                i,
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master),
            );
            addr.and_then(|(_, port)| port.parse().ok())
        })
    }

    /// Waits until every sentinel names the primary at `port`.
    pub fn wait_agreed(&self, port: u16, within: Duration) {
        poll(
            within,
            &format!("every sentinel to name port {port}"),
            || {
                let agreed = (0..self.nodes.len()).all(|i| {
                    let addr: Option<(String, String)> = self.ask(
                        i,
                        redis::cmd("SENTINEL")
                            .arg("GET-MASTER-ADDR-BY-NAME")
                            .arg(&self.master),
                    );
                    addr.is_some_and(|(_, p)| p == port.to_string())
                });
                agreed.then_some(())
            },
        );
    }

    /// Waits until the sentinels name a primary other than `old`, and returns its port.
    pub fn wait_failover(&self, old: u16, within: Duration) -> u16 {
        poll(within, &format!("a failover away from port {old}"), || {
            self.primary_port().filter(|&p| p != old)
        })
    }
}
