//! A `redis-server` child process on a free loopback port: started, killed, restarted, paused,
//! made a replica.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:<port>`, with no persistence. Stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
    /// `redis-server`, or a `valkey-server` binary.
    binary: String,
}

pub(crate) const INSTALL_HINT: &str =
    "`redis-server` was not found on PATH. The integration tests start \
their own Redis servers; install it first: `apt-get install redis-server` (Debian/Ubuntu), \
`brew install redis` (macOS), or see https://redis.io/docs/latest/operate/oss_and_stack/install/";

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("could not find a free loopback port")
}

/// The server binary the tests start: `$LOCK_TESTS_SERVER` (a `redis-server` or
/// `valkey-server` of another version: `.ci/run` runs the semantic suite on each server of
/// its matrix this way), else `redis-server` on PATH.
pub fn server_binary() -> String {
    std::env::var("LOCK_TESTS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The directory (under the temp dir) of a test server's append-only files, for servers
/// started with `["--appendonly", "yes", "--appenddirname", AOF_DIR]`: one per port, so that no
/// server writes to, or starts from, another's files; removed when the server stops.
pub const AOF_DIR: &str = "lock-tests-{port}-aof";

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g. `["--requirepass", "s3cret"]`.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_binary(&server_binary(), extra_args)
    }

    /// Starts `binary` (`redis-server`, or a `valkey-server`: see [`valkey_server`](crate::valkey_server)) with extra
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
        // The append-only files of a server started with `--appenddirname {port}`-style
        // arguments (see [`AOF_DIR`]).
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(AOF_DIR.replace("{port}", &self.port.to_string())),
        );
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

    /// The server's version as it reports it (`valkey_version` on Valkey, else
    /// `redis_version`), e.g. `"6.2.5"`.
    pub fn version(&self) -> String {
        self.info_server("valkey_version")
            .or_else(|| self.info_server("redis_version"))
            .expect("INFO server names a version")
    }

    /// Whether the server has sharded pub/sub (`SPUBLISH`, Redis 7 and Valkey, which reports
    /// a Redis 7 `redis_version`): lock-core uses it on a cluster whose every primary has it,
    /// classic `PUBLISH` elsewhere.
    pub fn sharded_pubsub(&self) -> bool {
        self.info_server("redis_version")
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .is_some_and(|major| major >= 7)
    }

    /// Whether the server has `DELIFEQ` (Valkey 9), asked as lock-core does not: by sending
    /// it, on a key no test uses.
    pub fn has_delifeq(&self) -> bool {
        redis::cmd("DELIFEQ")
            .arg("harness:probe")
            .arg("x")
            .query::<redis::Value>(&mut self.conn())
            .is_ok()
    }

    /// Whether `SET` takes `IFEQ` (Valkey 8.1+), asked by sending it (the key is never there,
    /// so nothing is written).
    pub fn has_set_ifeq(&self) -> bool {
        redis::cmd("SET")
            .arg("harness:probe")
            .arg("x")
            .arg("IFEQ")
            .arg("y")
            .query::<redis::Value>(&mut self.conn())
            .is_ok()
    }

    /// A field of `INFO server`.
    fn info_server(&self, field: &str) -> Option<String> {
        let info: String = self.query(redis::cmd("INFO").arg("server"));
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
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
    /// released attempt (`<lock>:gone:<token>`), nor the records a force-release leaves for
    /// the holders it evicted (`<lock>:evicted:<token>`, a day).
    pub fn lock_keys(&self) -> Vec<String> {
        let mut keys = self.keys("lock:*");
        keys.retain(|k| {
            !k.ends_with(":fence") && !k.contains("}:gone:") && !k.contains("}:evicted:")
        });
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
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
pub(crate) fn poll<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
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
pub(crate) fn offset(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl RedisServer {
    /// How many clients of this server are subscribed to `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let (_, n): (String, i64) = self.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel));
        n
    }
}
