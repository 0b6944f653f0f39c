//! MySQL / MariaDB engine: `mysql://user:pass@host:port/db` (JuiceFS's
//! `mysql://user:pass@(host:port)/db` form is accepted too).
//!
//! One InnoDB table `tessera_kv (k varbinary primary key, v longblob)`.
//! Writing transactions run SERIALIZABLE, where InnoDB turns every read into
//! a shared (next-key) lock, so the schema's check-then-write patterns
//! cannot interleave; deadlocks and lock-wait timeouts come back as
//! conflicts and are retried by `run_txn`. Read-only work runs in
//! autocommit mode: each statement is a consistent read of its own, with
//! no BEGIN or COMMIT round trips (two statements may see a commit between
//! them, as with any reader that does not lock). Connections are pooled; a broken
//! one is dropped, so a restarted server is met with fresh ones.

use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, TxOpts};

use super::pool::Pool;
use crate::kv::{Followed, KvEngine, KvTxn, Nested, NestedRead};
use crate::{MetaError, Result};

const TIMEOUT: Duration = Duration::from_secs(10);
/// MySQL error codes that mean "another transaction got in the way".
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_CHECKREAD: u16 = 1020;

/// A directory read whole in one statement (see `KvTxn::read_nested`):
/// part 0 the head, 1 the rows, 2 the key each row points at, 3 the rows
/// under each tagged row's prefix, each with its row; MariaDB has no
/// LATERAL, so part 3 is capped as a whole only (`kv::nested_under_cap`).
const NESTED_SQL: &str = "\
WITH listed AS (SELECT k, v FROM tessera_kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?) \
SELECT 0, k, k, v FROM tessera_kv WHERE k = ? \
UNION ALL SELECT 1, k, k, v FROM listed \
UNION ALL SELECT 2, r.k, f.k, f.v FROM listed r JOIN tessera_kv f \
  ON f.k = CONCAT(?, SUBSTRING(r.v, ?, ?), ?) \
UNION ALL (SELECT 3, r.k, u.k, u.v FROM listed r JOIN tessera_kv u \
  ON u.k >= CONCAT(?, SUBSTRING(r.v, ?, ?), ?) AND u.k < CONCAT(?, SUBSTRING(r.v, ?, ?), ?) \
  WHERE LENGTH(r.v) > ? AND ASCII(SUBSTRING(r.v, ?, 1)) = ? \
  ORDER BY r.k, u.k LIMIT ?)";

pub struct MysqlEngine {
    opts: Opts,
    pool: Pool<Conn>,
    shown: String,
}

fn engine_err(e: mysql::Error) -> MetaError {
    match &e {
        mysql::Error::MySqlError(m)
            if matches!(
                m.code,
                ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK | ER_CHECKREAD
            ) =>
        {
            MetaError::Conflict(1)
        }
        mysql::Error::IoError(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            MetaError::Engine(format!(
                "mysql did not answer within {}s (timed out: {e})",
                TIMEOUT.as_secs()
            ))
        }
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => {
            MetaError::Engine(format!("lost the connection to mysql: {e}"))
        }
        _ => MetaError::Engine(format!("mysql: {e}")),
    }
}

/// Rewrite `user:pass@(host:port)/db` (the Go driver's form) as
/// `user:pass@host:port/db`.
fn normalise(url: &str) -> String {
    match (url.find("@("), url.rfind(")/")) {
        (Some(open), Some(close)) if close > open => {
            format!(
                "{}@{}{}",
                &url[..open],
                &url[open + 2..close],
                &url[close + 1..]
            )
        }
        _ => url.to_string(),
    }
}

impl MysqlEngine {
    pub fn open(url: &str, shown: &str) -> Result<Self> {
        let opts = Opts::from_url(&normalise(url)).map_err(|e| MetaError::BadUrl {
            url: shown.to_string(),
            reason: e.to_string(),
        })?;
        if opts.get_db_name().is_none_or(str::is_empty) {
            return Err(MetaError::BadUrl {
                url: shown.to_string(),
                reason: "the database name is missing: mysql://user:pass@host:port/DATABASE".into(),
            });
        }
        let opts: Opts = OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(Duration::from_secs(5)))
            .read_timeout(Some(TIMEOUT))
            .write_timeout(Some(TIMEOUT))
            .stmt_cache_size(Some(16))
            .into();
        let engine = MysqlEngine {
            opts,
            pool: Pool::new(),
            shown: shown.to_string(),
        };
        let mut c = engine.connect()?;
        c.query_drop(
            "CREATE TABLE IF NOT EXISTS tessera_kv (k VARBINARY(1024) NOT NULL PRIMARY KEY, \
             v LONGBLOB NOT NULL) ENGINE=InnoDB",
        )
        .map_err(engine_err)?;
        engine.pool.put_back(c);
        Ok(engine)
    }

    fn connect(&self) -> Result<Conn> {
        let mut c = Conn::new(self.opts.clone())
            .map_err(|e| MetaError::Engine(format!("cannot reach mysql at {}: {e}", self.shown)))?;
        // A lock held by a stuck transaction turns into a retried conflict
        // after a few seconds rather than InnoDB's default 50.
        c.query_drop("SET SESSION innodb_lock_wait_timeout = 5")
            .map_err(engine_err)?;
        c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .map_err(engine_err)?;
        Ok(c)
    }
}

/// A transaction, or for read-only work a plain connection in autocommit
/// mode (each statement its own consistent read, and no BEGIN/COMMIT round
/// trips).
struct MyTxn<'a, Q: Queryable> {
    tx: &'a mut Q,
}

impl<Q: Queryable> KvTxn for MyTxn<'_, Q> {
    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.len() < 2 {
            return keys.iter().map(|k| self.get(k)).collect();
        }
        let marks = vec!["?"; keys.len()].join(",");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .tx
            .exec(
                format!("SELECT k, v FROM tessera_kv WHERE k IN ({marks})"),
                keys.to_vec(),
            )
            .map_err(engine_err)?;
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
        Ok(keys.iter().map(|k| found.get(*k).cloned()).collect())
    }

    fn get_follow(&mut self, key: &[u8], pointer: crate::kv::Pointer<'_>) -> Result<Followed> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .tx
            .exec_first(
                "SELECT a.v, b.v FROM tessera_kv a LEFT JOIN tessera_kv b \
                 ON b.k = CONCAT(?, SUBSTRING(a.v, ?, ?), ?) WHERE a.k = ?",
                (
                    pointer.prefix,
                    pointer.at as u64 + 1,
                    pointer.len as u64,
                    pointer.suffix,
                    key,
                ),
            )
            .map_err(engine_err)?;
        Ok(row.map(|(first, second)| {
            // A value too short to hold the pointer points nowhere.
            let second = second.filter(|_| first.len() >= pointer.at + pointer.len);
            (first, second)
        }))
    }

    fn read_nested(&mut self, request: &Nested<'_>) -> Result<Option<NestedRead>> {
        let Some(under_end) = crate::kv::suffix_past(request.under.suffix) else {
            return Ok(None);
        };
        let (follow, under) = (request.follow, request.under);
        let n = |n: usize| mysql::Value::from(u64::try_from(n).unwrap_or(u64::MAX));
        let b = |b: &[u8]| mysql::Value::from(b);
        let params = vec![
            b(request.begin),
            b(request.end),
            n(request.limit.saturating_add(1)),
            b(request.head),
            b(follow.prefix),
            n(follow.at + 1),
            n(follow.len),
            b(follow.suffix),
            b(under.prefix),
            n(under.at + 1),
            n(under.len),
            b(under.suffix),
            b(under.prefix),
            n(under.at + 1),
            n(under.len),
            b(&under_end),
            n(request.tag_at),
            n(request.tag_at + 1),
            n(usize::from(request.tag)),
            n(crate::kv::nested_under_cap(request)),
        ];
        let parts: Vec<crate::kv::NestedPart> = self
            .tx
            .exec(NESTED_SQL, mysql::Params::Positional(params))
            .map_err(engine_err)?;
        Ok(Some(crate::kv::nested_from_parts(
            request,
            parts.into_iter(),
        )))
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.tx
            .exec_first("SELECT v FROM tessera_kv WHERE k = ?", (key,))
            .map_err(engine_err)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx
            .exec_drop(
                "INSERT INTO tessera_kv (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)",
                (key, value),
            )
            .map_err(engine_err)
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.tx
            .exec_drop("DELETE FROM tessera_kv WHERE k = ?", (key,))
            .map_err(engine_err)
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.tx
            .exec(
                "SELECT k, v FROM tessera_kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?",
                (begin, end, limit),
            )
            .map_err(engine_err)
    }
}

impl KvEngine for MysqlEngine {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn run_once(
        &self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.pool.take(|_| true, || self.connect())?;
        let outcome = if read_only {
            f(&mut MyTxn { tx: &mut conn })
        } else {
            // The session is SERIALIZABLE already (set at connect), so
            // BEGIN needs no SET TRANSACTION before it.
            (|| {
                let mut tx = conn
                    .start_transaction(TxOpts::default())
                    .map_err(engine_err)?;
                f(&mut MyTxn { tx: &mut tx })?;
                tx.commit().map_err(engine_err)
            })()
        };
        // A failed transaction rolled back when dropped. The connection is
        // reused unless the failure was the link itself.
        match &outcome {
            Err(MetaError::Engine(_)) => {}
            _ => self.pool.put_back(conn),
        }
        outcome.map_err(|e| super::located(e, &self.shown))
    }

    fn reset(&self) -> Result<()> {
        let mut c = self.pool.take(|_| true, || self.connect())?;
        c.query_drop("TRUNCATE TABLE tessera_kv")
            .map_err(engine_err)?;
        self.pool.put_back(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_driver_urls_are_accepted() {
        assert_eq!(
            normalise("mysql://u:p@(db.local:3306)/tessera"),
            "mysql://u:p@db.local:3306/tessera"
        );
        assert_eq!(normalise("mysql://u@h:1/d"), "mysql://u@h:1/d");
    }

    /// The whole conformance suite against a real server. The test command
    /// starts MariaDB and sets TESSERA_TEST_MYSQL_URL.
    #[test]
    #[ignore = "needs a MySQL/MariaDB server; scripts/test.sh runs it"]
    fn conformance_on_a_real_server() {
        let url = std::env::var("TESSERA_TEST_MYSQL_URL").expect(
            "TESSERA_TEST_MYSQL_URL must name a MySQL database (scripts/test.sh starts one)",
        );
        crate::conformance::run_all(&|| {
            let e = MysqlEngine::open(&url, &url).expect("connect");
            e.reset().expect("truncate");
            std::sync::Arc::new(e)
        });
        let e = MysqlEngine::open(&url, &url).expect("connect");
        e.reset().expect("truncate");
        crate::conformance::nested_reads_in_one_step(&e);
        e.reset().expect("truncate");
    }
}
