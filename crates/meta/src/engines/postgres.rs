//! PostgreSQL engine: `postgres://user:pass@host:port/db`.
//!
//! One table `tessera_kv (k bytea primary key, v bytea)`. Each transaction
//! runs SERIALIZABLE, so the schema's check-then-write patterns (an empty
//! directory before rmdir, a free name before create) cannot interleave;
//! serialization failures, deadlocks and unique violations come back as
//! conflicts and are retried by `run_txn`. Connections are pooled and a
//! broken one is dropped, so a restarted server is met with fresh ones.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls};

use super::pool::Pool;
use crate::kv::{KvEngine, KvTxn};
use crate::{MetaError, Result};

pub struct PostgresEngine {
    config: postgres::Config,
    pool: Pool<Client>,
    shown: String,
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
        let mut c = engine.connect()?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS tessera_kv (k bytea PRIMARY KEY, v bytea NOT NULL)",
        )
        .map_err(engine_err)?;
        engine.put_back(c);
        Ok(engine)
    }

    fn connect(&self) -> Result<Client> {
        let mut c = self.config.connect(NoTls).map_err(|e| {
            MetaError::Engine(format!("cannot reach postgres at {}: {e}", self.shown))
        })?;
        c.batch_execute("SET statement_timeout = 10000")
            .map_err(engine_err)?;
        Ok(c)
    }

    fn take(&self) -> Result<Client> {
        self.pool.take(|c| !c.is_closed(), || self.connect())
    }

    fn put_back(&self, c: Client) {
        self.pool.put_back(c);
    }
}

struct PgTxn<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
}

impl KvTxn for PgTxn<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let row = self
            .tx
            .query_opt("SELECT v FROM tessera_kv WHERE k = $1", &[&key])
            .map_err(engine_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO tessera_kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                &[&key, &value],
            )
            .map_err(engine_err)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.tx
            .execute("DELETE FROM tessera_kv WHERE k = $1", &[&key])
            .map_err(engine_err)?;
        Ok(())
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .tx
            .query(
                "SELECT k, v FROM tessera_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3",
                &[&begin, &end, &limit],
            )
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
        let mut client = self.take()?;
        let outcome = (|| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .read_only(read_only)
                .start()
                .map_err(engine_err)?;
            f(&mut PgTxn { tx: &mut tx })?;
            tx.commit().map_err(engine_err)
        })();
        let outcome = outcome.map_err(|e| match e {
            MetaError::Engine(m) if !m.contains(&self.shown) => {
                MetaError::Engine(format!("{m} (server {})", self.shown))
            }
            e => e,
        });
        // A failed transaction rolled back when dropped; the connection is
        // reusable unless the server went away.
        if !client.is_closed() {
            self.put_back(client);
        }
        outcome
    }

    fn reset(&self) -> Result<()> {
        let mut c = self.take()?;
        c.batch_execute("TRUNCATE tessera_kv").map_err(engine_err)?;
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
    }
}
