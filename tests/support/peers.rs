//! The other servers and clients the tests meet: Valkey, redis-py, and scripts sent by hand.

use std::process::Command;

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
