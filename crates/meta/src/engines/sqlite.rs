//! SQLite engine: one file in WAL mode, shared safely by several processes on
//! one host. Write transactions take the write lock up front (`BEGIN
//! IMMEDIATE`), so they never deadlock on lock upgrades; a lock that cannot be
//! had within the busy timeout is reported as a conflict and retried.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::pool::Pool;
use crate::kv::{KvEngine, KvTxn};
use crate::{MetaError, Result};

pub struct SqliteEngine {
    path: PathBuf,
    /// Idle connections; a transaction takes one and puts it back.
    pool: Pool<Connection>,
}

fn engine_err(e: rusqlite::Error) -> MetaError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => MetaError::Conflict(1),
        _ => MetaError::Engine(format!("sqlite: {e}")),
    }
}

impl SqliteEngine {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(MetaError::Engine(format!(
                    "cannot open SQLite database {}: directory {} does not exist (create it first)",
                    path.display(),
                    dir.display()
                )));
            }
        }
        let engine = Self {
            path: path.to_path_buf(),
            pool: Pool::new(),
        };
        let conn = engine.connect()?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )
        .map_err(|e| {
            MetaError::Engine(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })?;
        engine.put_back(conn);
        Ok(engine)
    }

    fn connect(&self) -> Result<Connection> {
        let conn = Connection::open(&self.path).map_err(|e| {
            MetaError::Engine(format!(
                "cannot open SQLite database {}: {e}",
                self.path.display()
            ))
        })?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(engine_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(engine_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(engine_err)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection> {
        self.pool.take(|_| true, || self.connect())
    }

    fn put_back(&self, conn: Connection) {
        self.pool.put_back(conn);
    }
}

struct SqliteTxn<'a> {
    conn: &'a Connection,
}

impl KvTxn for SqliteTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT v FROM kv WHERE k = ?1")
            .map_err(engine_err)?;
        stmt.query_row(params![key], |r| r.get(0))
            .optional()
            .map_err(engine_err)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")
            .map_err(engine_err)?;
        stmt.execute(params![key, value]).map_err(engine_err)?;
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM kv WHERE k = ?1")
            .map_err(engine_err)?;
        stmt.execute(params![key]).map_err(engine_err)?;
        Ok(())
    }

    fn scan(&mut self, begin: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k LIMIT ?3")
            .map_err(engine_err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![begin, end, limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(engine_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(engine_err)
    }
}

impl KvEngine for SqliteEngine {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn run_once(
        &self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn KvTxn) -> Result<()>,
    ) -> Result<()> {
        let conn = self.take()?;
        let begin = if read_only {
            "BEGIN DEFERRED"
        } else {
            "BEGIN IMMEDIATE"
        };
        if let Err(e) = conn.execute_batch(begin) {
            self.put_back(conn);
            return Err(engine_err(e));
        }
        let res = f(&mut SqliteTxn { conn: &conn });
        let end = match res {
            Ok(()) => conn.execute_batch("COMMIT").map_err(engine_err),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        };
        if end.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        self.put_back(conn);
        end
    }

    fn reset(&self) -> Result<()> {
        let conn = self.take()?;
        let res = conn.execute_batch("DELETE FROM kv").map_err(engine_err);
        self.put_back(conn);
        res
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = AtomicU32::new(0);
        crate::conformance::run_all(&|| {
            let path = dir
                .path()
                .join(format!("meta-{}.db", n.fetch_add(1, Ordering::Relaxed)));
            Arc::new(SqliteEngine::open(&path).expect("open sqlite"))
        });
    }

    #[test]
    fn two_handles_share_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shared.db");
        let a = SqliteEngine::open(&path).expect("a");
        let b = SqliteEngine::open(&path).expect("b");
        crate::kv::run_txn(&a, false, |tx| tx.set(b"k", b"v")).expect("write");
        let got = crate::kv::run_txn(&b, true, |tx| tx.get(b"k")).expect("read");
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
    }
}
