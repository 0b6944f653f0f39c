//! PostgreSQL engine: `postgres://user:pass@host:port/db`.
//!
//! One table `tessera_kv (k bytea primary key, v bytea)`. Read-only work
//! runs in autocommit mode (each statement a snapshot of its own, no
//! BEGIN/COMMIT round trips); each writing transaction runs SERIALIZABLE,
//! so the schema's check-then-write patterns (an empty directory before
//! rmdir, a free name before create) cannot interleave;
//! serialization failures, deadlocks and unique violations come back as
//! conflicts and are retried by `run_txn`. Connections are pooled and a
//! broken one is dropped, so a restarted server is met with fresh ones.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls, Statement};

use super::pool::Pool;
use crate::kv::{Followed, KvEngine, KvTxn, Nested, NestedRead};
use crate::{MetaError, Result};

pub struct PostgresEngine {
    config: postgres::Config,
    pool: Pool<PgConn>,
    shown: String,
}

/// A connection with its statements prepared once: a statement given as
/// text costs a round trip to prepare on every call.
struct PgConn {
    client: Client,
    stmts: Statements,
}

#[derive(Clone)]
struct Statements {
    get: Statement,
    set: Statement,
    delete: Statement,
    scan: Statement,
    follow: Statement,
    many: Statement,
    nested: Statement,
}

fn engine_err(e: postgres::Error) -> MetaError {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            MetaError::Conflict(1)
        }
        _ => MetaError::Engine(format!("postgres: {e}")),
    }
}

impl PostgresEngine {
    pub fn open(url: &str, shown: &str) -> Result<Self> {
        let mut config: postgres::Config = url.parse().map_err(|e| MetaError::BadUrl {
            url: shown.to_string(),
            reason: format!("{e}"),
        })?;
        config.connect_timeout(Duration::from_secs(5));
        // A server cut off by the network is noticed within seconds rather
        // than at the kernel's default TCP retry limit (minutes).
        config.tcp_user_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(10));
        let engine = PostgresEngine {
            config,
            pool: Pool::new(),
            shown: shown.to_string(),
        };
        // The table must exist before statements naming it can be prepared.
        let mut c = engine
            .config
            .connect(NoTls)
            .map_err(|e| MetaError::Engine(format!("cannot reach postgres at {shown}: {e}")))?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS tessera_kv (k bytea PRIMARY KEY, v bytea NOT NULL)",
        )
        .map_err(engine_err)?;
        drop(c);
        let c = engine.connect()?;
        engine.put_back(c);
        Ok(engine)
    }

    fn connect(&self) -> Result<PgConn> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            MetaError::Engine(format!("cannot reach postgres at {}: {e}", self.shown))
        })?;
        client
            .batch_execute("SET statement_timeout = 10000")
            .map_err(engine_err)?;
        let mut prepare = |sql: &str| client.prepare(sql).map_err(engine_err);
        let stmts = Statements {
            get: prepare("SELECT v FROM tessera_kv WHERE k = $1")?,
            set: prepare(
                "INSERT INTO tessera_kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            )?,
            delete: prepare("DELETE FROM tessera_kv WHERE k = $1")?,
            scan: prepare(
                "SELECT k, v FROM tessera_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3",
            )?,
            many: prepare("SELECT k, v FROM tessera_kv WHERE k = ANY($1)")?,
            follow: prepare(
                "SELECT a.v, b.v FROM tessera_kv a LEFT JOIN tessera_kv b \
                 ON b.k = $2::bytea || substring(a.v from $3 for $4) || $5::bytea WHERE a.k = $1",
            )?,
            nested: prepare(NESTED_SQL)?,
        };
        Ok(PgConn { client, stmts })
    }

    fn take(&self) -> Result<PgConn> {
        self.pool.take(|c| !c.client.is_closed(), || self.connect())
    }

    fn put_back(&self, c: PgConn) {
        self.pool.put_back(c);
    }
}

/// A directory read whole in one statement (see `KvTxn::read_nested`):
/// part 0 the head, part 1 the rows, part 2 the key each row points at,
/// part 3 the rows under each tagged row's prefix (at most `$14` per row,
/// `$17` in all: `kv::nested_under_cap`), each with the row it belongs to;
/// `$13` is the under pointer's suffix past its last byte (the prefix's
/// end).
const NESTED_SQL: &str = "\
WITH rows AS (SELECT k, v FROM tessera_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3) \
SELECT 0::int2, k, k, v FROM tessera_kv WHERE k = $4 \
UNION ALL SELECT 1::int2, k, k, v FROM rows \
UNION ALL SELECT 2::int2, r.k, f.k, f.v FROM rows r JOIN tessera_kv f \
  ON f.k = $5::bytea || substring(r.v from $6 for $7) || $8::bytea \
UNION ALL (SELECT 3::int2, r.k, u.k, u.v FROM rows r CROSS JOIN LATERAL ( \
  SELECT k, v FROM tessera_kv \
  WHERE k >= $9::bytea || substring(r.v from $10 for $11) || $12::bytea \
    AND k < $9::bytea || substring(r.v from $10 for $11) || $13::bytea \
  ORDER BY k LIMIT $14) u \
  WHERE length(r.v) > $15 AND get_byte(r.v, $15) = $16 \
  ORDER BY r.k, u.k LIMIT $17)";

/// A transaction, or for read-only work the client itself in autocommit
/// mode (each statement its own snapshot, no BEGIN/COMMIT round trips).
struct PgTxn<'a, C: postgres::GenericClient> {
    tx: &'a mut C,
    stmts: &'a Statements,
}

impl<C: postgres::GenericClient> KvTxn for PgTxn<'_, C> {
    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.len() < 2 {
            return keys.iter().map(|k| self.get(k)).collect();
        }
        let rows = self
            .tx
            .query(&self.stmts.many, &[&keys])
            .map_err(engine_err)?;
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(keys.iter().map(|k| found.get(*k).cloned()).collect())
    }

    fn get_follow(&mut self, key: &[u8], pointer: crate::kv::Pointer<'_>) -> Result<Followed> {
        let (Ok(from), Ok(len)) = (i32::try_from(pointer.at + 1), i32::try_from(pointer.len))
        else {
            return Err(MetaError::Invalid("pointer out of range".into()));
        };
        let row = self
            .tx
            .query_opt(
                &self.stmts.follow,
                &[&key, &pointer.prefix, &from, &len, &pointer.suffix],
            )
            .map_err(engine_err)?;
        Ok(row.map(|r| {
            let first: Vec<u8> = r.get(0);
            // A value too short to hold the pointer points nowhere.
            let second = if first.len() >= pointer.at + pointer.len {
                r.get(1)
            } else {
                None
            };
            (first, second)
        }))
    }

    fn read_nested(&mut self, request: &Nested<'_>) -> Result<Option<NestedRead>> {
        let Some(under_end) = crate::kv::suffix_past(request.under.suffix) else {
            return Ok(None);
        };
        let int = |n: usize| {
            i32::try_from(n).map_err(|_| MetaError::Invalid("pointer out of range".into()))
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (follow, under) = (request.follow, request.under);
        let rows = self
            .tx
            .query(
                &self.stmts.nested,
                &[
                    &request.begin,
                    &request.end,
                    &count(request.limit.saturating_add(1)),
                    &request.head,
                    &follow.prefix,
                    &int(follow.at + 1)?,
                    &int(follow.len)?,
                    &follow.suffix,
                    &under.prefix,
                    &int(under.at + 1)?,
                    &int(under.len)?,
                    &under.suffix,
                    &under_end.as_slice(),
                    &count(request.under_limit.saturating_add(1)),
                    &int(request.tag_at)?,
                    &i32::from(request.tag),
                    &count(crate::kv::nested_under_cap(request)),
                ],
            )
            .map_err(engine_err)?;
        let parts = rows.into_iter().map(|r| {
            let part: i16 = r.get(0);
            (part, r.get(1), r.get(2), r.get(3))
        });
        Ok(Some(crate::kv::nested_from_parts(request, parts)))
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let row = self
            .tx
            .query_opt(&self.stmts.get, &[&key])
            .map_err(engine_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx
            .execute(&self.stmts.set, &[&key, &value])
            .map_err(engine_err)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.tx
            .execute(&self.stmts.delete, &[&key])
            .map_err(engine_err)?;
        Ok(())
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .tx
            .query(&self.stmts.scan, &[&begin, &end, &limit])
            .map_err(engine_err)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl KvEngine for PostgresEngine {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn run_once(
        &self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.take()?;
        let PgConn { client, stmts } = &mut conn;
        let outcome = if read_only {
            f(&mut PgTxn { tx: client, stmts })
        } else {
            (|| {
                let mut tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::Serializable)
                    .start()
                    .map_err(engine_err)?;
                f(&mut PgTxn { tx: &mut tx, stmts })?;
                tx.commit().map_err(engine_err)
            })()
        };
        let outcome = outcome.map_err(|e| super::located(e, &self.shown));
        // A failed transaction rolled back when dropped; the connection is
        // reusable unless the server went away.
        if !conn.client.is_closed() {
            self.put_back(conn);
        }
        outcome
    }

    fn reset(&self) -> Result<()> {
        let mut c = self.take()?;
        c.client
            .batch_execute("TRUNCATE tessera_kv")
            .map_err(engine_err)?;
        self.put_back(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole conformance suite against a real server. The test command
    /// starts PostgreSQL and sets TESSERA_TEST_POSTGRES_URL.
    #[test]
    #[ignore = "needs a PostgreSQL server; scripts/test.sh runs it"]
    fn conformance_on_a_real_server() {
        let url = std::env::var("TESSERA_TEST_POSTGRES_URL").expect(
            "TESSERA_TEST_POSTGRES_URL must name a PostgreSQL database (scripts/test.sh starts one)",
        );
        crate::conformance::run_all(&|| {
            let e = PostgresEngine::open(&url, &url).expect("connect");
            e.reset().expect("truncate");
            std::sync::Arc::new(e)
        });
        let e = PostgresEngine::open(&url, &url).expect("connect");
        e.reset().expect("truncate");
        crate::conformance::nested_reads_in_one_step(&e);
        e.reset().expect("truncate");
    }
}
