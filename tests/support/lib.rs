//! Test support: real `redis-server` processes on free loopback ports, which a test can kill,
//! restart, pause and resume. Shared by every integration test and example of the workspace.
//!
//! Tests never touch the shared server on port 6379.

#![allow(missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use lock_examples::{flag, remove_keys, run_workers};

/// A `redis-server` child process on `127.0.0.1:<port>`, with no persistence. Stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
    /// `redis-server`, or a `valkey-server` binary.
    binary: String,
}

/// The `valkey-server` binary to test against: `$VALKEY_SERVER`, else `valkey-server` on PATH,
/// else none. With `LOCK_TESTS_VALKEY=required` (as `.ci/run` sets it), a missing one panics
/// instead, so that CI cannot skip the Valkey tests.
pub fn valkey_server() -> Option<String> {
    let found = std::env::var("VALKEY_SERVER").ok().or_else(|| {
        Command::new("valkey-server")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| "valkey-server".to_owned())
    });
    if found.is_none() && std::env::var("LOCK_TESTS_VALKEY").as_deref() == Ok("required") {
        panic!(
            "LOCK_TESTS_VALKEY=required, but no valkey-server: set VALKEY_SERVER or put it on PATH"
        );
    }
    found
}

/// `EVAL source numkeys keys... args...`: one of lock-core's scripts as the client sends it,
/// for tests that run a script on a server themselves.
pub fn eval_cmd(source: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(source).arg(keys.len()).arg(keys).arg(args);
    cmd
}

/// A `python3` command that can `import redis` (redis-py), for the tests that share keys with
/// other clients of the same protocol: `$REDIS_PY_PATH` is put on `PYTHONPATH` (`.ci/run`
/// installs redis-py there). `None` when it cannot; with `LOCK_TESTS_REDIS_PY=required` (as
/// `.ci/run` sets it) that panics instead, so that CI cannot skip those tests.
pub fn redis_py() -> Option<Command> {
    let command = || {
        let mut python = Command::new("python3");
        if let Ok(path) = std::env::var("REDIS_PY_PATH") {
            python.env("PYTHONPATH", path);
        }
        python
    };
    let found = command()
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("LOCK_TESTS_REDIS_PY").as_deref() == Ok("required") {
        panic!(
            "LOCK_TESTS_REDIS_PY=required, but python3 cannot import redis: `pip install redis`, \
             or `pip install --target DIR redis` and set REDIS_PY_PATH=DIR"
        );
    }
    found.then(command)
}

const INSTALL_HINT: &str = "`redis-server` was not found on PATH. The integration tests start \
their own Redis servers; install it first: `apt-get install redis-server` (Debian/Ubuntu), \
`brew install redis` (macOS), or see https://redis.io/docs/latest/operate/oss_and_stack/install/";

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("could not find a free loopback port")
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g. `["--requirepass", "s3cret"]`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_binary("redis-server", extra_args)
    }

    /// Starts `binary` (`redis-server`, or a `valkey-server`: see [`valkey_server`]) with extra
    /// arguments.
    pub fn start_binary(binary: &str, extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        // A port found free can be taken before the server binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                extra_args: extra_args.clone(),
                binary: binary.to_owned(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let child = Command::new(&self.binary)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // Nothing on disk, ever: a replica loads its first sync straight from the socket,
            // and no server starts from another's file (`dump.rdb` in the shared temp dir).
            .args(["--repl-diskless-load", "on-empty-db"])
            // A replica's first sync starts at once (the default waits 5 s for more replicas).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--dbfilename", &format!("lock-tests-{port}.rdb")])
            .args(["--dir", dir.to_str().expect("temp dir is UTF-8")])
            .args(["--logfile", ""])
            // `{port}` in an extra argument stands for this server's port (per-node files).
            .args(self.extra_args.iter().map(|a| a.replace("{port}", &port)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    panic!("{INSTALL_HINT}");
                }
                format!("spawning redis-server: {e}")
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() && self.ping()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "redis-server on port {} did not answer in 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING").query(&mut conn);
        // A server started with `--requirepass` answers NOAUTH: it is up.
        match pong {
            Ok(_) => true,
            Err(e) => e.code() == Some("NOAUTH"),
        }
    }

    /// Not killed (a paused server counts as running).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGKILL: the server dies at once, with all its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("could not restart redis-server: {e}"),
            }
        }
    }

    /// SIGSTOP: the server stops answering but keeps its connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn stop(&mut self) {
        if self.child.is_some() {
            // A paused server ignores SIGTERM; SIGKILL works on stopped processes too.
            self.kill();
        }
    }

    /// A plain client for inspecting the server from a test.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    /// A blocking connection for inspecting the server from a test.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis-server")
    }

    /// Runs one command on a fresh blocking connection.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.conn()).expect("redis command")
    }

    /// How many times `command` (lowercase, e.g. `"evalsha"`) has run since start or
    /// `CONFIG RESETSTAT`, from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats"));
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Every key matching `pattern` (with `KEYS`; test servers are small).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.query(redis::cmd("KEYS").arg(pattern))
    }

    /// The lock keys under the default prefix: not fencing counters, nor the tombs that a
    /// client that re-sends (Cluster, Sentinel) leaves for at most a lease after a refused or
    /// released attempt (`<lock>:gone:<token>`).
    pub fn lock_keys(&self) -> Vec<String> {
        let mut keys = self.keys("lock:*");
        keys.retain(|k| !k.ends_with(":fence") && !k.contains("}:gone:"));
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

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
        Self::start_binary("redis-server", masters, replicas)
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

impl RedisServer {
    /// A replica of `primary` (`--replicaof`), once its replication link is up.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        Self::start_replica_of_port(primary.port())
    }

    /// A replica of whatever listens on `127.0.0.1:<port>` (a primary, or a proxy to one).
    pub fn start_replica_of_port(port: u16) -> Self {
        let port = port.to_string();
        let replica = Self::start_with(&["--replicaof", "127.0.0.1", &port]);
        replica.wait_replicating(Duration::from_secs(10));
        // After its first sync, a primary holds the stream back until the replica's first
        // acknowledgement (up to a second later): until then, `WAIT` counts it out. Write a
        // probe and wait until this replica has it.
        let primary = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut primary = primary
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the primary");
        let probe = "lock-tests:replication-probe";
        let _: () = redis::cmd("SET")
            .arg(probe)
            .arg(1)
            .query(&mut primary)
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut primary)
            .unwrap();
        let written = offset(&info, "master_repl_offset:");
        poll(Duration::from_secs(10), "the replica to catch up", || {
            let info: String = replica.query(redis::cmd("INFO").arg("replication"));
            (offset(&info, "slave_repl_offset:") >= written).then_some(())
        });
        let _: () = redis::cmd("DEL").arg(probe).query(&mut primary).unwrap();
        replica
    }

    /// Waits until this replica's link to its primary is up and the first sync is done.
    pub fn wait_replicating(&self, within: Duration) {
        poll(within, "the replica's link to its primary", || {
            let info: String = self.query(redis::cmd("INFO").arg("replication"));
            info.contains("master_link_status:up").then_some(())
        });
    }
}

/// Calls `check` every 20 ms until it returns `Some`, which it returns; panics when `within`
/// runs out first, saying it waited for `what`. Blocking: for set-up code.
fn poll<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number after `field` in an `INFO` reply, or 0.
fn offset(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

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
                let child = Command::new("redis-server")
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

/// Polls `check` every few milliseconds until it holds or `within` runs out; returns whether
/// it held. For conditions that cannot be awaited directly (a key expiring in Redis).
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A fresh server and a manager connected to it: the start of most tests.
pub async fn server_and_manager() -> (RedisServer, lock_core::LockManager) {
    let server = RedisServer::start();
    let locks = lock_core::LockManager::connect(&server.url())
        .await
        .expect("connect to the test redis-server");
    (server, locks)
}

/// An application's error type, as annotated job handlers have: lock failures convert into it.
#[derive(Debug)]
pub enum JobError {
    Lock(lock_core::LockError),
    Failed(&'static str),
}

impl From<lock_core::LockError> for JobError {
    fn from(e: lock_core::LockError) -> Self {
        JobError::Lock(e)
    }
}

/// A TCP proxy between clients and a Redis server that injects faults on demand: latency, a
/// reply dropped after the server applied the command, a request held back and delivered late
/// after its client's connection died, all connections cut, or a blackhole.
/// Runs on the current tokio runtime; stops with it or on drop.
pub struct FaultProxy {
    port: u16,
    faults: std::sync::Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Faults {
    latency_us: std::sync::atomic::AtomicU64,
    drop_replies: std::sync::atomic::AtomicUsize,
    blackhole: std::sync::atomic::AtomicBool,
    stalled: std::sync::atomic::AtomicBool,
    blackhole_after_drop: std::sync::atomic::AtomicBool,
    hold_next_us: std::sync::atomic::AtomicU64,
    cut: tokio::sync::Notify,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream>`.
    pub async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = std::sync::Arc::new(Faults::default());
        let task = tokio::spawn({
            let faults = faults.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let faults = faults.clone();
                    tokio::spawn(async move {
                        if let Ok(server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            pump(client, server, faults).await;
                        }
                    });
                }
            }
        });
        Self { port, faults, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Delay added to every chunk in each direction.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.latency_us.store(
            latency.as_micros() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The next reply from the server (whatever the server sends next, on any connection) is
    /// swallowed and that connection closed: the command was applied, its client never hears
    /// so. (TCP never loses a reply on a live connection; a lost reply is a broken one.)
    pub fn drop_next_reply(&self) {
        self.faults
            .drop_replies
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Like [`drop_next_reply`](Self::drop_next_reply), then a blackhole from that moment:
    /// the command ran, and Redis is unreachable right after.
    pub fn drop_next_reply_then_blackhole(&self) {
        self.faults
            .blackhole_after_drop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_next_reply();
    }

    /// The next request (whatever a client sends next, on any connection) sits in the network:
    /// its client's connection is closed at once, and the request reaches the server `after`
    /// that, on the old server-side connection, whose reply nobody reads. The client cannot
    /// tell whether it ran; it runs later, after whatever the client sends meanwhile.
    pub fn hold_next_request(&self, after: Duration) {
        self.faults.hold_next_us.store(
            after.as_micros().max(1) as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Closes every open connection at once (new ones are accepted).
    pub fn cut_all(&self) {
        self.faults.cut.notify_waiters();
    }

    /// While on, the link is silent: nothing moves in either direction, and nothing is lost
    /// (as a TCP connection through a network that drops every packet for a while: no RST, the
    /// bytes are retransmitted once it heals). Off again, every connection that is still open
    /// delivers what was sent meanwhile, in order.
    pub fn stall(&self, on: bool) {
        self.faults
            .stalled
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// While on, bytes in both directions vanish: requests never reach the server.
    pub fn blackhole(&self, on: bool) {
        self.faults
            .blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.faults.cut.notify_waiters();
    }
}

async fn pump(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    faults: std::sync::Arc<Faults>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let cut = faults.cut.notified();
    tokio::pin!(cut);
    // Read when a chunk arrives, so that a change applies to the very next chunk.
    let delay = || Duration::from_micros(faults.latency_us.load(SeqCst));
    loop {
        while faults.stalled.load(SeqCst) {
            tokio::select! {
                () = &mut cut => return,
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        tokio::select! {
            () = &mut cut => return,
            n = client_rx.read(&mut from_client) => {
                let Ok(n @ 1..) = n else { return };
                if faults.blackhole.load(SeqCst) { continue; }
                let hold = faults.hold_next_us.swap(0, SeqCst);
                if hold > 0 {
                    let held = from_client[..n].to_vec();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_micros(hold)).await;
                        let _ = server_tx.write_all(&held).await;
                        let mut reply = vec![0u8; 1024];
                        let _ = tokio::time::timeout(Duration::from_secs(2), server_rx.read(&mut reply)).await;
                    });
                    return; // the client's side of the connection closes now
                }
                tokio::time::sleep(delay()).await;
                // Still on the wire when the blackhole began: gone too.
                if faults.blackhole.load(SeqCst) { continue; }
                if server_tx.write_all(&from_client[..n]).await.is_err() { return; }
            }
            n = server_rx.read(&mut from_server) => {
                let Ok(n @ 1..) = n else { return };
                if faults.blackhole.load(SeqCst) { continue; }
                let dropped = faults
                    .drop_replies
                    .fetch_update(SeqCst, SeqCst, |d| d.checked_sub(1))
                    .is_ok();
                if dropped {
                    if faults.blackhole_after_drop.swap(false, SeqCst) {
                        faults.blackhole.store(true, SeqCst);
                    }
                    return;
                }
                tokio::time::sleep(delay()).await;
                if faults.blackhole.load(SeqCst) { continue; }
                if client_tx.write_all(&from_server[..n]).await.is_err() { return; }
            }
        }
    }
}

/// Polls `fut` at most `polls` times, then drops it: cancellation at an exact await point,
/// independent of timer resolution and machine speed. `None` when it was cancelled.
pub async fn cancel_after_polls<F: std::future::Future>(fut: F, polls: u64) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut done = 0;
    std::future::poll_fn(|cx| {
        if done == polls {
            return std::task::Poll::Ready(None);
        }
        done += 1;
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process of this machine, so that
/// timestamps taken by different processes (the leader-election checker's) compare.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}
