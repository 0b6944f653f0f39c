//! Redis engine: `redis://[user:pass@]host:port/db`, `rediss://` (TLS) and
//! `redis+sentinel://master@host1:26379,host2:26379/db`.
//!
//! Each key `k` is a string `v{k}`; one sorted set `i` (all scores 0) holds
//! every key for ordered range scans (ZRANGEBYLEX). A writing transaction
//! is optimistic: every key read is WATCHed before it is read (WATCH and
//! read share one round trip), a scan watches the index and the keys it
//! returns, writes are buffered locally (reads see them) and applied in one
//! MULTI/EXEC. EXEC answering nil means something we read changed: a
//! conflict, retried by `run_txn`. Read-only transactions read plainly and
//! commit nothing, so each read is one round trip — a scan too, a script
//! answering the index range and its values together (up to 10,000 keys;
//! the rest of a longer one the plain way), and a directory's listing
//! with its entries' attributes and its files' chunk records another
//! (`read_nested`); like any reader that does not lock, they may see one
//! writer's commit between two of their reads.
//!
//! A connection is taken from a pool per transaction (WATCH state lives on
//! the connection) and dropped on any error, so a restarted server is met
//! with fresh connections. Requests time out after `TIMEOUT`.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Client, Connection, Value};

use super::pool::Pool;
use crate::kv::{Followed, KvEngine, KvTxn, Nested, NestedRead, NestedRow};
use crate::{MetaError, Result};

const TIMEOUT: Duration = Duration::from_secs(5);
const INDEX: &[u8] = b"i";

enum Target {
    Direct(Client),
    Sentinel(Mutex<redis::sentinel::SentinelClient>, i64),
}

pub struct RedisEngine {
    target: Target,
    pool: Pool<Connection>,
    /// The URL without its password, for messages.
    shown: String,
}

fn engine_err(e: redis::RedisError) -> MetaError {
    if e.is_timeout() {
        MetaError::Engine(format!(
            "redis did not answer within {}s (timed out: {e})",
            TIMEOUT.as_secs()
        ))
    } else if e.is_connection_dropped() || e.is_io_error() {
        MetaError::Engine(format!("lost the connection to redis: {e}"))
    } else {
        MetaError::Engine(format!("redis: {e}"))
    }
}

fn value_key(k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.len() + 1);
    v.push(b'v');
    v.extend_from_slice(k);
    v
}

/// Remove `name=value` from a URL's query; returns the URL and the value.
fn take_query_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, format!("#{f}")),
        None => (query, String::new()),
    };
    let mut found = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                found = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    let url = if rest.is_empty() {
        format!("{base}{fragment}")
    } else {
        format!("{base}?{}{fragment}", rest.join("&"))
    };
    (url, found)
}

impl RedisEngine {
    /// Connect to the server a URL names (checked with a PING).
    pub fn open(url: &str, shown: &str) -> Result<Self> {
        if url.starts_with("rediss://") {
            // rustls cannot pick a crypto provider by itself when the build
            // could offer more than one; a provider installed already (by
            // another part of the process) is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let target = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (auth_master, hosts_db) =
                rest.split_once('@').ok_or_else(|| MetaError::BadUrl {
                    url: shown.to_string(),
                    reason: "expected redis+sentinel://MASTER@HOST:PORT,HOST:PORT/DB".into(),
                })?;
            let (hosts, db) = hosts_db.split_once('/').unwrap_or((hosts_db, "0"));
            let db: i64 = db.parse().map_err(|_| MetaError::BadUrl {
                url: shown.to_string(),
                reason: format!("database {db:?} is not a number"),
            })?;
            let master = auth_master.rsplit(':').next().unwrap_or(auth_master);
            let nodes: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}")).collect();
            let client = redis::sentinel::SentinelClient::build(
                nodes,
                master,
                None,
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(engine_err)?;
            Target::Sentinel(Mutex::new(client), db)
        } else {
            let bad = |reason: String| MetaError::BadUrl {
                url: shown.to_string(),
                reason,
            };
            let (url, ca) = take_query_param(url, "tls-cacert");
            let client = match ca {
                // rediss:// with a CA of the user's own (JuiceFS's name for
                // the setting), instead of the system's roots.
                Some(path) => {
                    let pem = std::fs::read(&path)
                        .map_err(|e| bad(format!("cannot read tls-cacert {path}: {e}")))?;
                    Client::build_with_tls(
                        url.as_str(),
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem),
                        },
                    )
                }
                None => Client::open(url.as_str()),
            };
            Target::Direct(client.map_err(|e| bad(e.to_string()))?)
        };
        let engine = RedisEngine {
            target,
            pool: Pool::new(),
            shown: shown.to_string(),
        };
        let mut con = engine.connect()?;
        redis::cmd("PING")
            .query::<()>(&mut con)
            .map_err(engine_err)?;
        engine.put_back(con);
        Ok(engine)
    }

    fn connect(&self) -> Result<Connection> {
        let con = match &self.target {
            Target::Direct(c) => c.get_connection_with_timeout(TIMEOUT),
            Target::Sentinel(s, db) => {
                let mut s = s.lock();
                s.get_connection().and_then(|mut c| {
                    redis::cmd("SELECT").arg(*db).query::<()>(&mut c)?;
                    Ok(c)
                })
            }
        }
        .map_err(|e| MetaError::Engine(format!("cannot reach redis at {}: {e}", self.shown)))?;
        con.set_read_timeout(Some(TIMEOUT)).map_err(engine_err)?;
        con.set_write_timeout(Some(TIMEOUT)).map_err(engine_err)?;
        Ok(con)
    }

    fn take(&self) -> Result<Connection> {
        self.pool.take(|_| true, || self.connect())
    }

    fn put_back(&self, con: Connection) {
        self.pool.put_back(con);
    }
}

/// Follows a pointer on the server (see `KvTxn::get_follow`): one round
/// trip for what would be two dependent GETs.
const FOLLOW_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local at, len = tonumber(ARGV[1]), tonumber(ARGV[2])
if #v < at + len then return {v} end
local w = redis.call('GET', ARGV[3] .. string.sub(v, at + 1, at + len) .. ARGV[4])
if not w then return {v} end
return {v, w}
";

fn follow_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(FOLLOW_SCRIPT))
}

/// Lua shared by the scripts: `values(keys, keep_missing)` answers key,
/// value, key, value… for `keys` (their values under `v`), a missing value
/// as nil when `keep_missing`, else left out. MGET goes in slices: Lua's
/// unpack takes a few thousand arguments at most.
macro_rules! lua_values {
    () => {
        r"
local function values(keys, keep_missing)
  local out = {}
  for i = 1, #keys, 1000 do
    local vkeys = {}
    for j = i, math.min(i + 999, #keys) do vkeys[#vkeys + 1] = 'v' .. keys[j] end
    local vals = redis.call('MGET', unpack(vkeys))
    for j = 1, #vkeys do
      if vals[j] or keep_missing then
        out[#out + 1] = keys[i + j - 1]
        out[#out + 1] = vals[j]
      end
    end
  end
  return out
end
"
    };
}

/// A range scan on the server (read-only transactions): the index range
/// and the keys' values in one round trip instead of two. Answers key,
/// value, key, value…, a missing value as nil.
const SCAN_SCRIPT: &str = concat!(
    lua_values!(),
    r"
return values(redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3])), true)
"
);

/// Keys one scan script returns at most: a script holds the server for
/// its whole run, so a longer scan goes on the plain way.
const SCRIPT_SCAN_PAGE: usize = 10_000;

fn scan_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(SCAN_SCRIPT))
}

/// A directory read whole on the server (see `KvTxn::read_nested`): the
/// entries, their attributes and the files' chunk records in one round
/// trip instead of three. Answers {head, more} when there are more rows
/// than asked for, else {head, 0, rows}, each row {key, value, followed,
/// under} with `under` a flat key, value, key, value… list or nil.
const NESTED_SCRIPT: &str = concat!(
    lua_values!(),
    r"
local limit = tonumber(ARGV[3])
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, limit + 1)
local head = redis.call('GET', ARGV[4])
if #names > limit then return {head, 1} end
local fat, flen = tonumber(ARGV[6]), tonumber(ARGV[7])
local uat, ulen = tonumber(ARGV[10]), tonumber(ARGV[11])
local tat, tag = tonumber(ARGV[13]), tonumber(ARGV[14])
local budget = tonumber(ARGV[15])
local rows = {}
local listed = values(names, false)
for i = 1, #listed, 2 do
  local v = listed[i + 1]
  local followed = false
  if #v >= fat + flen then
    followed = redis.call('GET', 'v' .. ARGV[5] .. string.sub(v, fat + 1, fat + flen) .. ARGV[8])
  end
  local under = false
  if #v > tat and string.byte(v, tat + 1) == tag and #v >= uat + ulen then
    local p = ARGV[9] .. string.sub(v, uat + 1, uat + ulen) .. ARGV[12]
    local e = string.sub(p, 1, -2) .. string.char(string.byte(p, -1) + 1)
    local ks = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. p, '(' .. e, 'LIMIT', 0, budget + 1)
    if #ks <= budget then
      budget = budget - #ks
      under = values(ks, false)
    end
  end
  rows[#rows + 1] = {listed[i], v, followed, under}
end
return {head, 0, rows}
"
);

fn nested_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(NESTED_SCRIPT))
}

/// Bytes of a script's answer; nil (Lua's false) is None.
fn reply_bytes(v: Value) -> Result<Option<Vec<u8>>> {
    match v {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        other => Err(MetaError::Engine(format!(
            "redis: unexpected value in a listing: {other:?}"
        ))),
    }
}

fn reply_array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(MetaError::Engine(format!(
            "redis: unexpected reply to a listing: {other:?}"
        ))),
    }
}

/// Key, value, key, value… into pairs.
fn reply_pairs(v: Value) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut flat = reply_array(v)?.into_iter();
    let mut pairs = Vec::new();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        if let (Some(k), Some(v)) = (reply_bytes(k)?, reply_bytes(v)?) {
            pairs.push((k, v));
        }
    }
    Ok(pairs)
}

fn nested_read(reply: Value) -> Result<NestedRead> {
    let mut top = reply_array(reply)?.into_iter();
    let head = reply_bytes(top.next().unwrap_or(Value::Nil))?;
    let more = matches!(top.next(), Some(Value::Int(1)));
    let mut rows = Vec::new();
    if let Some(listed) = top.next() {
        for row in reply_array(listed)? {
            let mut fields = reply_array(row)?.into_iter();
            let mut next = || fields.next().unwrap_or(Value::Nil);
            let (key, value, followed) = (
                reply_bytes(next())?,
                reply_bytes(next())?,
                reply_bytes(next())?,
            );
            let under = match next() {
                Value::Nil | Value::Boolean(false) => None,
                list => Some(reply_pairs(list)?),
            };
            if let (Some(key), Some(value)) = (key, value) {
                rows.push(NestedRow {
                    key,
                    value,
                    followed,
                    under,
                });
            }
        }
    }
    Ok(NestedRead { head, more, rows })
}

struct RedisTxn<'a> {
    con: &'a mut Connection,
    /// Values read so far: a key read twice costs one round trip (a
    /// writing transaction watches it, so a change would fail the commit).
    read: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Writing transactions WATCH what they read; read-only ones read
    /// plainly and commit nothing.
    watching: bool,
    /// Buffered writes: Some(value) sets, None deletes.
    writes: super::WriteBuffer,
}

impl RedisTxn<'_> {
    /// Run `cmd`, preceded in the same round trip by a WATCH of `keys`
    /// when this transaction writes (the server handles them in order).
    fn watched<T: redis::FromRedisValue>(&mut self, keys: &[&[u8]], cmd: redis::Cmd) -> Result<T> {
        if !self.watching || keys.is_empty() {
            return cmd.query(self.con).map_err(engine_err);
        }
        let mut pipe = redis::pipe();
        let watch = pipe.cmd("WATCH");
        for k in keys {
            watch.arg(*k);
        }
        watch.ignore();
        pipe.add_command(cmd);
        let (out,): (T,) = pipe.query(self.con).map_err(engine_err)?;
        Ok(out)
    }
}

impl KvTxn for RedisTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        if let Some(v) = self.read.get(key) {
            return Ok(v.clone());
        }
        let vk = value_key(key);
        let mut get = redis::cmd("GET");
        get.arg(&vk);
        let v: Option<Vec<u8>> = self.watched(&[&vk], get)?;
        self.read.insert(key.to_vec(), v.clone());
        Ok(v)
    }

    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        // What this transaction wrote or read already needs no request.
        let known = |t: &Self, k: &[u8]| t.writes.get(k).or_else(|| t.read.get(k)).cloned();
        let missing: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| known(self, k).is_none())
            .collect();
        if !missing.is_empty() {
            let vkeys: Vec<Vec<u8>> = missing.iter().map(|k| value_key(k)).collect();
            let refs: Vec<&[u8]> = vkeys.iter().map(Vec::as_slice).collect();
            let mut mget = redis::cmd("MGET");
            mget.arg(&vkeys);
            let values: Vec<Option<Vec<u8>>> = self.watched(&refs, mget)?;
            for (k, v) in missing.into_iter().zip(values) {
                self.read.insert(k.to_vec(), v);
            }
        }
        Ok(keys.iter().map(|k| known(self, k).flatten()).collect())
    }

    fn get_follow(&mut self, key: &[u8], pointer: crate::kv::Pointer<'_>) -> Result<Followed> {
        // A writing transaction must WATCH both keys before reading them,
        // which a script cannot do: it reads them one by one.
        if self.watching || self.writes.contains_key(key) {
            return crate::kv::follow_by_gets(self, key, pointer);
        }
        let found: Option<Vec<Vec<u8>>> = follow_script()
            .key(value_key(key))
            .arg(pointer.at)
            .arg(pointer.len)
            .arg(value_key(pointer.prefix))
            .arg(pointer.suffix)
            .invoke(self.con)
            .map_err(engine_err)?;
        Ok(found.and_then(|mut vals| {
            let second = (vals.len() > 1).then(|| vals.pop()).flatten();
            let first = vals.pop()?;
            Some((first, second))
        }))
    }

    fn read_nested(&mut self, request: &Nested<'_>) -> Result<Option<NestedRead>> {
        // A writing transaction must WATCH what it reads; the script's
        // prefix end needs a last byte below 0xff to step past.
        let steppable = matches!(request.under.suffix.last(), Some(&b) if b < 0xff);
        if self.watching || !self.writes.is_empty() || !steppable || request.begin >= request.end {
            return Ok(None);
        }
        let mut lo = b"[".to_vec();
        lo.extend_from_slice(request.begin);
        let mut hi = b"(".to_vec();
        hi.extend_from_slice(request.end);
        let reply: Value = nested_script()
            .key(INDEX)
            .arg(lo)
            .arg(hi)
            .arg(request.limit)
            .arg(value_key(request.head))
            .arg(request.follow.prefix)
            .arg(request.follow.at)
            .arg(request.follow.len)
            .arg(request.follow.suffix)
            .arg(request.under.prefix)
            .arg(request.under.at)
            .arg(request.under.len)
            .arg(request.under.suffix)
            .arg(request.tag_at)
            .arg(u32::from(request.tag))
            .arg(request.under_limit)
            .invoke(self.con)
            .map_err(engine_err)?;
        nested_read(reply).map(Some)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        // Buffered deletes in range may hide stored keys: ask for that many more.
        let hidden = self
            .writes
            .range(begin.to_vec()..end.to_vec())
            .filter(|(_, v)| v.is_none())
            .count();
        let mut want = limit.saturating_add(hidden);
        let mut lo = Vec::with_capacity(begin.len() + 1);
        lo.push(b'[');
        lo.extend_from_slice(begin);
        let mut hi = Vec::with_capacity(end.len() + 1);
        hi.push(b'(');
        hi.extend_from_slice(end);
        let mut found = BTreeMap::new();
        if !self.watching {
            // Nothing to WATCH: the first page in one round trip.
            let page = want.min(SCRIPT_SCAN_PAGE);
            let flat: Vec<Option<Vec<u8>>> = scan_script()
                .key(INDEX)
                .arg(&lo)
                .arg(&hi)
                .arg(page)
                .invoke(self.con)
                .map_err(engine_err)?;
            let returned = flat.len() / 2;
            let mut last = None;
            for pair in flat.chunks_exact(2) {
                if let [Some(k), v] = pair {
                    if let Some(v) = v {
                        found.insert(k.clone(), v.clone());
                    }
                    last = Some(k);
                }
            }
            match last {
                Some(last) if returned == page && want > page => {
                    // More may follow: the rest after the last key.
                    lo = Vec::with_capacity(last.len() + 1);
                    lo.push(b'(');
                    lo.extend_from_slice(last);
                    want -= page;
                }
                _ => {
                    return Ok(super::overlay_writes(
                        found,
                        &self.writes,
                        begin,
                        end,
                        limit,
                    ))
                }
            }
        }
        let mut c = redis::cmd("ZRANGEBYLEX");
        c.arg(INDEX).arg(&lo).arg(&hi);
        if want < i64::MAX as usize {
            c.arg("LIMIT").arg(0).arg(want);
        }
        let keys: Vec<Vec<u8>> = self.watched(&[INDEX], c)?;
        if !keys.is_empty() {
            let vkeys: Vec<Vec<u8>> = keys.iter().map(|k| value_key(k)).collect();
            let refs: Vec<&[u8]> = vkeys.iter().map(Vec::as_slice).collect();
            let mut mget = redis::cmd("MGET");
            mget.arg(&vkeys);
            let values: Vec<Option<Vec<u8>>> = self.watched(&refs, mget)?;
            for (k, v) in keys.into_iter().zip(values) {
                if let Some(v) = v {
                    found.insert(k, v);
                }
            }
        }
        Ok(super::overlay_writes(
            found,
            &self.writes,
            begin,
            end,
            limit,
        ))
    }
}

impl KvEngine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn run_once(
        &self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()> {
        let mut con = self.take()?;
        let mut tx = RedisTxn {
            con: &mut con,
            read: std::collections::HashMap::new(),
            watching: !read_only,
            writes: BTreeMap::new(),
        };
        let outcome = f(&mut tx).and_then(|()| {
            if read_only {
                // Nothing was watched and there is nothing to commit.
                return match tx.writes.is_empty() {
                    true => Ok(()),
                    false => Err(MetaError::Engine(
                        "a read-only transaction tried to write".into(),
                    )),
                };
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (k, w) in &tx.writes {
                let vk = value_key(k);
                match w {
                    Some(v) => {
                        pipe.cmd("SET").arg(&vk).arg(v).ignore();
                        pipe.cmd("ZADD").arg(INDEX).arg(0).arg(k).ignore();
                    }
                    None => {
                        pipe.cmd("DEL").arg(&vk).ignore();
                        pipe.cmd("ZREM").arg(INDEX).arg(k).ignore();
                    }
                }
            }
            // EXEC answers nil when a watched key changed.
            let done: Value = pipe.query(tx.con).map_err(engine_err)?;
            match done {
                Value::Nil => Err(MetaError::Conflict(1)),
                _ => Ok(()),
            }
        });
        let outcome = outcome.map_err(|e| super::located(e, &self.shown));
        match &outcome {
            Ok(()) | Err(MetaError::Conflict(_)) => self.put_back(con),
            Err(MetaError::Engine(_)) => {} // the connection may be broken: drop it
            Err(_) => {
                if redis::cmd("UNWATCH").query::<()>(&mut con).is_ok() {
                    self.put_back(con);
                }
            }
        }
        outcome
    }

    fn reset(&self) -> Result<()> {
        let mut con = self.take()?;
        redis::cmd("FLUSHDB")
            .query::<()>(&mut con)
            .map_err(engine_err)?;
        self.put_back(con);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_ca_is_taken_from_the_query() {
        assert_eq!(
            take_query_param("rediss://h:1/0?tls-cacert=/ca.pem", "tls-cacert"),
            ("rediss://h:1/0".to_string(), Some("/ca.pem".to_string()))
        );
        assert_eq!(
            take_query_param("rediss://h:1/0?a=1&tls-cacert=x&b=2", "tls-cacert"),
            ("rediss://h:1/0?a=1&b=2".to_string(), Some("x".to_string()))
        );
        assert_eq!(take_query_param("redis://h/0", "tls-cacert").1, None);
    }

    fn suite_at(var: &str) {
        let url = std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} must be set (scripts/services.sh start_redis sets it)")
        });
        crate::conformance::run_all(&|| {
            let e = RedisEngine::open(&url, &url).expect("connect");
            e.reset().expect("flush");
            std::sync::Arc::new(e)
        });
    }

    /// The suite through a Sentinel that names the master.
    #[test]
    #[ignore = "needs redis-server in Sentinel mode; scripts/test.sh runs it"]
    fn conformance_through_sentinel() {
        suite_at("TESSERA_TEST_REDIS_SENTINEL_URL");
    }

    /// The suite over TLS (rediss://).
    #[test]
    #[ignore = "needs a TLS redis-server; scripts/test.sh runs it"]
    fn conformance_over_tls() {
        suite_at("TESSERA_TEST_REDISS_URL");
    }

    /// The whole conformance suite against a real server. The test command
    /// starts redis-server and sets TESSERA_TEST_REDIS_URL.
    #[test]
    #[ignore = "needs a redis-server; scripts/test.sh runs it"]
    fn conformance_on_a_real_server() {
        let url = std::env::var("TESSERA_TEST_REDIS_URL")
            .expect("TESSERA_TEST_REDIS_URL must name a redis server (scripts/test.sh starts one)");
        let next_db = std::sync::atomic::AtomicU32::new(1);
        crate::conformance::run_all(&|| {
            // Each case gets an empty database of its own; database 15 is
            // the Sentinel suite's, which runs meanwhile.
            let db = next_db.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 15;
            let url = format!("{}/{db}", url.trim_end_matches('/'));
            let e = RedisEngine::open(&url, &url).expect("connect");
            e.reset().expect("flush");
            std::sync::Arc::new(e)
        });
        let own_db = format!("{}/14", url.trim_end_matches('/'));
        a_long_read_only_scan_goes_past_the_scripts_page(&own_db);
        nested_reads_are_one_script_when_read_only(&own_db);
    }

    /// Nested reads in one script where they can be (read-only
    /// transactions); a writing transaction must WATCH what it reads, so
    /// it reads plainly.
    fn nested_reads_are_one_script_when_read_only(url: &str) {
        let e = RedisEngine::open(url, url).expect("connect");
        e.reset().expect("flush");
        let request = crate::conformance::nested_reads_in_one_step(&e);
        let writing = crate::kv::run_txn(&e, false, |tx| tx.read_nested(&request)).expect("read");
        assert!(
            writing.is_none(),
            "a writing transaction reads plainly (WATCH)"
        );
        e.reset().expect("flush");
    }

    /// A read-only scan longer than one script's page goes on the plain
    /// way from where the script stopped: every key once, in order, the
    /// limit kept. `url` names a database no other test uses meanwhile.
    fn a_long_read_only_scan_goes_past_the_scripts_page(url: &str) {
        let e = RedisEngine::open(url, url).expect("connect");
        e.reset().expect("flush");
        let total = SCRIPT_SCAN_PAGE + 50;
        let key = |i: usize| format!("k{i:06}").into_bytes();
        for first in (0..total).step_by(1000) {
            crate::kv::run_txn(&e, false, |tx| {
                for i in first..(first + 1000).min(total) {
                    tx.set(&key(i), &i.to_le_bytes())?;
                }
                Ok(())
            })
            .expect("write keys");
        }
        for (limit, want) in [
            (usize::MAX, total),
            (SCRIPT_SCAN_PAGE + 20, SCRIPT_SCAN_PAGE + 20),
            (SCRIPT_SCAN_PAGE, SCRIPT_SCAN_PAGE),
            (7, 7),
        ] {
            let rows = crate::kv::run_txn(&e, true, |tx| tx.scan(b"k", b"l", limit)).expect("scan");
            assert_eq!(rows.len(), want, "limit {limit}");
            for (i, (k, v)) in rows.iter().enumerate() {
                assert_eq!((k, v), (&key(i), &i.to_le_bytes().to_vec()), "row {i}");
            }
        }
        e.reset().expect("flush");
    }
}
