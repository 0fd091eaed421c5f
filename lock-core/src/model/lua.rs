//! The script runner: the lock's Lua scripts, run in Lua 5.1 (the version Redis embeds) against
//! a [`Keyspace`], with Redis 7.0's `redis.*` API and its conversion rules.
//!
//! What a script sees, as in Redis' `script_lua.c`:
//! - `KEYS` and `ARGV`: arrays of strings. Globals are read-only: reading an undefined one or
//!   assigning any raises an error (Redis' globals protection), so a typo in a script fails here
//!   as it fails there.
//! - `redis.call(...)`/`redis.pcall(...)`: arguments must be strings or numbers; a number is sent
//!   as `printf("%.17g")` prints it (`luaArgsToRedisArgv`). Replies come back as
//!   `redisProtocolToLuaType` converts them: integer -> number, bulk -> string, nil bulk ->
//!   `false`, array -> table (nil elements -> `false`), status -> `{ok=...}`, error ->
//!   `{err=...}`. An error reply is raised by `call` and returned by `pcall`. (One difference:
//!   a script that catches `redis.call`'s error with Lua's own `pcall` gets an mlua error value,
//!   not the `{err=...}` table: mlua raises a Rust function's error as a userdata. The lock's
//!   scripts use `redis.pcall` for that.)
//! - `redis.error_reply(s)`/`redis.status_reply(s)`: the `{err=...}`/`{ok=...}` tables; an error
//!   without a code gets `ERR` (`luaPushErrorBuff`).
//! - Only Lua's base, `table`, `string` and `math` libraries, and of `redis.*` only the four
//!   above: the scripts use nothing else (Redis also has `cjson`, `struct`, `cmsgpack`, `bit`,
//!   `redis.log`, `redis.sha1hex`, `redis.setresp`, ...; a script that starts using one fails
//!   here on a nonexistent global, and the differential test says so).
//!
//! And what the script's value becomes (`luaReplyToRedisReply`): string -> bulk, number ->
//! integer (truncated toward zero; out of range saturates here, where C's cast is undefined),
//! `true` -> 1, `false`/`nil` -> nil, a table with a string `err` -> error, with a string `ok` ->
//! status, any other table -> array of its elements 1, 2, ... up to the first `nil`. A script
//! that raises answers `<message> script: <sha1>, on @user_script:<line>.`, the line being
//! the script's where the error was raised (for `redis.call`, the line of the call), as Redis'
//! `__redis__err__handler` finds it.
//!
//! There is no rollback: a script that fails part-way keeps the writes it made, as in Redis.

use std::collections::HashMap;

use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value, Variadic};

use super::keyspace::{Caller, Keyspace, Now};
use super::reply::Reply;

/// The chunk name Redis 7.0 gives every `EVAL` body (`luaCreateFunction` in eval.c).
const SCRIPT_CHUNK: &str = "@user_script";
/// Runs scripts. One Lua state, reused: compiled scripts are cached by their text, so running a
/// script again costs the call and its commands, not a compile.
pub(crate) struct Scripts {
    lua: Lua,
    xpcall: Function,
    handler: Function,
    compiled: HashMap<String, Compiled>,
    /// The texts of the scripts the server knows, by SHA1 (lowercase hex): what `EVALSHA` finds.
    /// `EVAL` adds to it, `SCRIPT FLUSH` empties it.
    by_sha: HashMap<String, String>,
}

/// A compiled script and the name Redis reports it by.
#[derive(Clone)]
struct Compiled {
    function: Function,
    /// The SHA1 of the body, in hex (Redis 7.0 names a script by it, without `f_`).
    name: String,
}

/// What `redis.call` works on while a script runs: lent to the Lua state for one `eval`.
struct Running {
    keyspace: Keyspace,
    now: Now,
    /// The error `redis.call` raised last, with where: mlua raises a Rust callback's error as
    /// a userdata, so the handler looks here for the `{err=..., source=..., line=...}` table
    /// Redis would have raised.
    raised: Option<Raised>,
    /// The script has sent a write command (`SCRIPT_WRITE_DIRTY`): from then on nothing is
    /// refused for memory, since the script cannot stop half-way.
    dirty: bool,
}

/// An error reply that `redis.call` raised, and the script line that called it.
struct Raised {
    message: String,
    source: Option<String>,
    line: Option<usize>,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    /// A Lua 5.1 state with Redis' `redis` table and read-only globals.
    pub(crate) fn new() -> Self {
        Self::build().expect("a fresh Lua state can always be set up (only OOM could fail)")
    }

    fn build() -> mlua::Result<Self> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH,
            LuaOptions::default(),
        )?;
        let globals = lua.globals();
        let redis = lua.create_table()?;
        redis.set(
            "pcall",
            lua.create_function(|lua, args: Variadic<Value>| {
                Ok(match command(lua, args)? {
                    Ok(reply) => reply,
                    Err(error) => error,
                })
            })?,
        )?;
        redis.set(
            "error_reply",
            lua.create_function(|lua, args: Variadic<Value>| match args.as_slice() {
                [Value::String(s)] => {
                    let text = error_text(&format!("-{}", s.to_string_lossy()));
                    single_field(lua, "err", &text)
                }
                _ => single_field(lua, "err", "ERR wrong number or type of arguments"),
            })?,
        )?;
        redis.set(
            "status_reply",
            lua.create_function(|lua, args: Variadic<Value>| match args.as_slice() {
                [Value::String(s)] => single_field(lua, "ok", &s.to_string_lossy()),
                _ => single_field(lua, "err", "ERR wrong number or type of arguments"),
            })?,
        )?;
        redis.set(
            "call",
            lua.create_function(|lua, args: Variadic<Value>| {
                let error = match command(lua, args)? {
                    Ok(reply) => return Ok(reply),
                    Err(Value::Table(error)) => error,
                    Err(_) => unreachable!("command() answers errors as tables"),
                };
                // A C function keeps its caller's frame even when tail-called (`return
                // redis.call(...)`), so level 1 is the script's line, as in Redis.
                let (source, line) = lua
                    .inspect_stack(1, |d| {
                        (d.source().source.map(|s| s.into_owned()), d.current_line())
                    })
                    .unwrap_or_default();
                let message: String = error.raw_get("err")?;
                if let Some(mut running) = lua.app_data_mut::<Running>() {
                    running.raised = Some(Raised {
                        message: message.clone(),
                        source,
                        line,
                    });
                }
                Err(mlua::Error::runtime(message))
            })?,
        )?;
        globals.set("redis", redis)?;

        // Globals protection (Redis' `scriptingEnableGlobalsProtection`/readonly tables).
        let protect = lua.create_table()?;
        protect.set(
            "__index",
            lua.create_function(|lua, (_, name): (Value, Value)| -> mlua::Result<()> {
                // luaL_error: positioned at the reading line.
                Err(mlua::Error::runtime(format!(
                    "user_script:{}: Script attempted to access nonexistent global variable '{}'",
                    caller_line(lua),
                    name.to_string().unwrap_or_default()
                )))
            })?,
        )?;
        protect.set(
            "__newindex",
            lua.create_function(|lua, _: MultiValue| -> mlua::Result<()> {
                // luaG_runerror: positioned at the assigning line.
                Err(mlua::Error::runtime(format!(
                    "user_script:{}: Attempt to modify a readonly table",
                    caller_line(lua)
                )))
            })?,
        )?;
        globals.set_metatable(Some(protect))?;

        let xpcall = globals.raw_get("xpcall")?;
        let handler = lua.create_function(error_handler)?;
        Ok(Scripts {
            lua,
            xpcall,
            handler,
            compiled: HashMap::new(),
            by_sha: HashMap::new(),
        })
    }

    /// `EVAL script numkeys keys... args...` against `keyspace`, at `now`: the script sees one
    /// instant (see the module docs of `model` for what Redis 7.0 does).
    pub(crate) fn eval<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &mut self,
        keyspace: &mut Keyspace,
        now: Now,
        script: &str,
        keys: &[K],
        argv: &[A],
    ) -> Reply {
        let compiled = match self.compile(script) {
            Ok(compiled) => compiled,
            Err(reply) => return reply,
        };
        self.lua.set_app_data(Running {
            keyspace: std::mem::take(keyspace),
            now,
            raised: None,
            dirty: false,
        });
        let reply = self
            .run(&compiled, keys, argv)
            .unwrap_or_else(|e| Reply::error(format!("ERR the model's Lua failed: {e}")));
        let running = self
            .lua
            .remove_app_data::<Running>()
            .expect("the keyspace lent for this eval is still there");
        *keyspace = running.keyspace;
        reply
    }

    /// `EVALSHA sha1 numkeys keys... args...`: the script `EVAL` ran with that SHA1, in any case, or `NOSCRIPT`.
    pub(crate) fn evalsha<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &mut self,
        keyspace: &mut Keyspace,
        now: Now,
        sha1: &str,
        keys: &[K],
        argv: &[A],
    ) -> Reply {
        match self.by_sha.get(&sha1.to_ascii_lowercase()) {
            Some(script) => {
                let script = script.clone();
                self.eval(keyspace, now, &script, keys, argv)
            }
            None => Reply::error("NOSCRIPT No matching script. Please use EVAL."),
        }
    }

    #[cfg(test)]
    /// `SCRIPT FLUSH`: `EVALSHA` knows no script until `EVAL` runs it again
    /// (the fault a client meets after a restart or a failover).
    pub(crate) fn flush(&mut self) {
        self.compiled.clear();
        self.by_sha.clear();
    }

    /// The cached function for `script`, compiled on first use.
    fn compile(&mut self, script: &str) -> Result<Compiled, Reply> {
        if let Some(compiled) = self.compiled.get(script) {
            return Ok(compiled.clone());
        }
        let function = self
            .lua
            .load(script)
            .set_name(SCRIPT_CHUNK)
            .into_function()
            .map_err(|e| {
                Reply::error(format!(
                    "ERR Error compiling script (new function): {}",
                    lua_message(&e)
                ))
            })?;
        let compiled = Compiled {
            function,
            name: redis::Script::new(script).get_hash().to_owned(),
        };
        self.compiled.insert(script.to_owned(), compiled.clone());
        self.by_sha.insert(compiled.name.clone(), script.to_owned());
        Ok(compiled)
    }

    fn run<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &self,
        compiled: &Compiled,
        keys: &[K],
        argv: &[A],
    ) -> mlua::Result<Reply> {
        let globals = self.lua.globals();
        globals.raw_set("KEYS", self.array(keys)?)?;
        globals.raw_set("ARGV", self.array(argv)?)?;
        let mut out = self
            .xpcall
            .call::<MultiValue>((compiled.function.clone(), self.handler.clone()))?
            .into_iter();
        let ok = matches!(out.next(), Some(Value::Boolean(true)));
        let value = out.next().unwrap_or(Value::Nil);
        if ok {
            return to_reply(&value);
        }
        // The handler made every error a table: {err=..., source=..., line=...}.
        let Value::Table(error) = value else {
            return Ok(Reply::error("ERR Error running script: execution failure"));
        };
        let message: String = error.raw_get("err")?;
        let source: Option<String> = error.raw_get("source")?;
        let line: Option<i64> = error.raw_get("line")?;
        Ok(Reply::Error(match (source, line) {
            (Some(source), Some(line)) => {
                format!("{message} script: {}, on {source}:{line}.", compiled.name)
            }
            _ => message,
        }))
    }

    fn array<T: AsRef<[u8]>>(&self, items: &[T]) -> mlua::Result<Table> {
        let table = self.lua.create_table_with_capacity(items.len(), 0)?;
        for (i, item) in items.iter().enumerate() {
            table.raw_set(i + 1, self.lua.create_string(item.as_ref())?)?;
        }
        Ok(table)
    }
}

/// One `redis.call`/`redis.pcall`: `Ok(reply as Lua)`, or `Err({err=...})` for an error reply.
fn command(lua: &Lua, args: Variadic<Value>) -> mlua::Result<Result<Value, Value>> {
    if args.is_empty() {
        let text = "ERR Please specify at least one argument for this redis lib call";
        return Ok(Err(single_field(lua, "err", text)?));
    }
    let mut argv: Vec<Vec<u8>> = Vec::with_capacity(args.len());
    for arg in args.iter() {
        argv.push(match arg {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Integer(n) => format_g17(*n as f64).into_bytes(),
            Value::Number(n) => format_g17(*n).into_bytes(),
            _ => {
                let text = "ERR Lua redis lib command arguments must be strings or integers";
                return Ok(Err(single_field(lua, "err", text)?));
            }
        });
    }
    let argv: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let reply = {
        let Some(mut running) = lua.app_data_mut::<Running>() else {
            let text = "ERR redis.call/pcall can only be called inside a script invocation";
            return Err(mlua::Error::runtime(text));
        };
        let now = running.now;
        // script.c's scriptVerifyOOM, then the write flag, before the command runs.
        let name = String::from_utf8_lossy(argv[0]).to_ascii_uppercase();
        if running.keyspace.is_full() && !running.dirty && super::keyspace::denies_oom(&name) {
            Reply::error(super::reply::errors::OOM)
        } else {
            running.dirty |= super::keyspace::writes(&name);
            running.keyspace.exec(now, &argv, Caller::Script)
        }
    };
    Ok(match reply {
        Reply::Error(text) => Err(single_field(lua, "err", &error_text(&format!("-{text}")))?),
        reply => Ok(to_lua(lua, &reply)?),
    })
}

/// `luaPushErrorBuff`: `-CODE message` keeps its code, a message without one gets `ERR`;
/// newlines at either end go.
fn error_text(buffer: &str) -> String {
    let text = match buffer.strip_prefix('-') {
        Some(rest) if rest.contains(' ') => rest.to_owned(),
        Some(rest) => format!("ERR {rest}"),
        None => format!("ERR {buffer}"),
    };
    text.trim_matches(|c| c == '\r' || c == '\n').to_owned()
}

/// `{ok=...}` or `{err=...}`.
fn single_field(lua: &Lua, field: &str, text: &str) -> mlua::Result<Value> {
    let table = lua.create_table_with_capacity(0, 1)?;
    table.raw_set(field, text)?;
    Ok(Value::Table(table))
}

/// A reply as `redisProtocolToLuaType` hands it to the script.
fn to_lua(lua: &Lua, reply: &Reply) -> mlua::Result<Value> {
    Ok(match reply {
        Reply::Nil => Value::Boolean(false),
        Reply::Int(n) => Value::Number(*n as f64),
        Reply::Bulk(bytes) => Value::String(lua.create_string(bytes)?),
        Reply::Status(text) => single_field(lua, "ok", text)?,
        Reply::Error(text) => single_field(lua, "err", text)?,
        Reply::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

/// A script's value as `luaReplyToRedisReply` answers it (RESP2).
fn to_reply(value: &Value) -> mlua::Result<Reply> {
    Ok(match value {
        Value::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        Value::Boolean(true) => Reply::Int(1),
        Value::Integer(n) => Reply::Int(*n),
        // Truncated toward zero, as C's `(long long)` cast.
        Value::Number(n) => Reply::Int(*n as i64),
        Value::Table(table) => {
            if let Value::String(err) = table.raw_get::<Value>("err")? {
                return Ok(Reply::Error(err.to_string_lossy()));
            }
            if let Value::String(ok) = table.raw_get::<Value>("ok")? {
                return Ok(Reply::Status(
                    ok.to_string_lossy().replace(['\r', '\n'], " "),
                ));
            }
            let mut items = Vec::new();
            for i in 1.. {
                match table.raw_get::<Value>(i)? {
                    Value::Nil => break,
                    item => items.push(to_reply(&item)?),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    })
}

/// Redis' `__redis__err__handler`: makes every error a table `{err=..., source=..., line=...}`,
/// the line being that of the script frame where it was raised (C functions skipped, as Redis
/// skips its C `redis.call`).
fn error_handler(lua: &Lua, error: Value) -> mlua::Result<Table> {
    if let Value::Error(e) = &error {
        let raised = lua
            .app_data_mut::<Running>()
            .and_then(|mut r| r.raised.take());
        if let Some(raised) = raised.filter(|r| r.message == lua_message(e)) {
            let table = lua.create_table()?;
            table.raw_set("err", raised.message)?;
            table.raw_set("source", raised.source)?;
            table.raw_set("line", raised.line.map(|l| l as i64))?;
            return Ok(table);
        }
    }
    let table = match error {
        Value::Table(table) => table,
        other => {
            let text = match &other {
                Value::String(s) => s.to_string_lossy(),
                Value::Error(e) => lua_message(e),
                other => other.to_string().unwrap_or_default(),
            };
            let table = lua.create_table()?;
            table.raw_set("err", format!("ERR {text}"))?;
            table
        }
    };
    for level in 1.. {
        let frame = lua.inspect_stack(level, |d| {
            let source = d.source();
            let skip = source.what == "C";
            (
                skip,
                source.source.map(|s| s.into_owned()),
                d.current_line(),
            )
        });
        match frame {
            None => break,
            Some((true, ..)) => continue,
            Some((false, source, line)) => {
                table.raw_set("source", source)?;
                table.raw_set("line", line.map(|l| l as i64))?;
                break;
            }
        }
    }
    Ok(table)
}

/// The current line of the Lua function that called the running Rust function.
fn caller_line(lua: &Lua) -> usize {
    lua.inspect_stack(1, |d| d.current_line())
        .flatten()
        .unwrap_or(0)
}

/// The message of an error raised in Rust code or by Lua, without mlua's wrapping.
fn lua_message(error: &mlua::Error) -> String {
    match error {
        mlua::Error::RuntimeError(message) | mlua::Error::SyntaxError { message, .. } => {
            message.clone()
        }
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        other => other.to_string(),
    }
}

/// C's `printf("%.17g", x)`, which Redis uses to pass a Lua number to a command.
pub(crate) fn format_g17(x: f64) -> String {
    if x.is_nan() {
        return if x.is_sign_negative() { "-nan" } else { "nan" }.to_owned();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.to_owned();
    }
    if x == x.trunc() && x.abs() < 1e17 {
        return format!("{}", x as i64);
    }
    // %g: scientific when the exponent is < -4 or >= the precision (17), fixed otherwise;
    // trailing zeros (and a bare point) dropped either way.
    let sci = format!("{x:.16e}");
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s.to_owned()
        }
    };
    if !(-4..17).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    } else {
        trim(&format!("{x:.*}", (16 - exponent) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(script: &str, keys: &[&str], argv: &[&str]) -> Reply {
        let mut keyspace = Keyspace::new();
        Scripts::new().eval(&mut keyspace, Now::from_ms(1_000), script, keys, argv)
    }

    #[test]
    fn lua_values_become_replies_as_in_redis() {
        assert_eq!(eval("return 3.9", &[], &[]), Reply::Int(3));
        assert_eq!(eval("return -3.9", &[], &[]), Reply::Int(-3));
        assert_eq!(eval("return true", &[], &[]), Reply::Int(1));
        assert_eq!(eval("return false", &[], &[]), Reply::Nil);
        assert_eq!(eval("return nil", &[], &[]), Reply::Nil);
        assert_eq!(
            eval("return {1, 'a', false, 2}", &[], &[]),
            Reply::Array(vec![
                Reply::Int(1),
                Reply::bulk("a"),
                Reply::Nil,
                Reply::Int(2)
            ])
        );
        assert_eq!(
            eval("return {1, nil, 2}", &[], &[]),
            Reply::Array(vec![Reply::Int(1)])
        );
        assert_eq!(
            eval("return redis.status_reply('PONG')", &[], &[]),
            Reply::Status("PONG".into())
        );
        assert_eq!(
            eval("return redis.error_reply('LOCKPERMITS 2')", &[], &[]),
            Reply::error("LOCKPERMITS 2")
        );
        assert_eq!(
            eval("return redis.error_reply('oops')", &[], &[]),
            Reply::error("ERR oops")
        );
        assert_eq!(
            eval("return {KEYS[1], ARGV[2]}", &["k"], &["a", "b"]),
            Reply::Array(vec![Reply::bulk("k"), Reply::bulk("b")])
        );
    }

    #[test]
    fn replies_become_lua_values_as_in_redis() {
        let script = "redis.call('HSET', KEYS[1], 'f', 1.5)
            local r = redis.pcall('GET', KEYS[1])
            return {type(redis.call('GET', 'none')), r.err, redis.call('TYPE', KEYS[1]).ok,
                    redis.call('HGET', KEYS[1], 'f'), type(redis.call('HLEN', KEYS[1]))}";
        assert_eq!(
            eval(script, &["h"], &[]),
            Reply::Array(vec![
                Reply::bulk("boolean"),
                Reply::bulk(super::super::reply::errors::WRONGTYPE),
                Reply::bulk("hash"),
                Reply::bulk("1.5"),
                Reply::bulk("number"),
            ])
        );
    }

    #[test]
    fn a_raised_error_names_the_script_and_line_and_keeps_earlier_writes() {
        let script = "redis.call('SET', KEYS[1], 'v')\nreturn redis.call('HGET', KEYS[1], 'f')";
        let mut keyspace = Keyspace::new();
        let mut scripts = Scripts::new();
        let now = Now::from_ms(1_000);
        let sha = redis::Script::new(script).get_hash().to_owned();
        assert_eq!(
            scripts.eval(&mut keyspace, now, script, &["k"], &[] as &[&str]),
            Reply::Error(format!(
                "{} script: {sha}, on @user_script:2.",
                super::super::reply::errors::WRONGTYPE
            ))
        );
        assert_eq!(keyspace.call(now, &["GET", "k"]), Reply::bulk("v"));
    }

    #[test]
    fn globals_are_read_only() {
        assert!(matches!(eval("return x", &[], &[]),
            Reply::Error(e) if e.starts_with("ERR user_script:1: Script attempted to access nonexistent global variable 'x'")));
        assert!(matches!(eval("x = 1", &[], &[]),
            Reply::Error(e) if e.starts_with("ERR user_script:1: Attempt to modify a readonly table")));
    }

    #[test]
    fn numbers_are_sent_as_printf_g17() {
        assert_eq!(format_g17(1733574000123.0), "1733574000123");
        assert_eq!(format_g17(2.0), "2");
        assert_eq!(format_g17(1.5), "1.5");
        assert_eq!(format_g17(0.1), "0.10000000000000001");
        assert_eq!(format_g17(1e17), "1e+17");
        assert_eq!(format_g17(-0.0001), "-0.0001");
        assert_eq!(format_g17(0.00001), "1.0000000000000001e-05");
    }
}
