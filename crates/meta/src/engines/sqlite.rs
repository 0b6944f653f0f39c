//! SQLite engine: one file in WAL mode, shared safely by several processes on
//! one host. Write transactions take the write lock up front (`BEGIN
//! IMMEDIATE`), so they never deadlock on lock upgrades; a lock that cannot be
//! had within the busy timeout is reported as a conflict and retried.
//!
//! Durability: WAL with `synchronous=NORMAL` by default. A committed
//! transaction (every fsync and close of a file on the volume ends in one)
//! survives the mount being killed, as the WAL is written before the commit
//! returns; on power loss the last transactions before the WAL's next sync
//! (at checkpoint) can be lost. `?synchronous=full` in the URL syncs the WAL
//! at every commit, so a returned fsync survives power loss too.
//!
//! A database file removed or replaced while the engine has it open (an
//! operator's `rm`, a restore copied over it) would silently take every
//! later write into an unlinked file; each writing transaction checks that
//! the path still names the file it opened and fails otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::pool::Pool;
use crate::kv::{KvEngine, KvTxn};
use crate::{MetaError, Result};

pub struct SqliteEngine {
    path: PathBuf,
    /// `synchronous` pragma: NORMAL, or FULL when the URL asks.
    synchronous: &'static str,
    /// Device and inode of the database file as opened.
    identity: (u64, u64),
    /// Idle connections; a transaction takes one and puts it back.
    pool: Pool<Connection>,
}

fn engine_err(e: rusqlite::Error) -> MetaError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => MetaError::Conflict(1),
        _ => MetaError::Engine(format!("sqlite: {e}")),
    }
}

/// Device and inode of the file at `path`.
fn identity_of(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl SqliteEngine {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, false)
    }

    /// Open the database; with `sync_full`, every commit syncs the WAL.
    pub fn open_with(path: &Path, sync_full: bool) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(MetaError::Engine(format!(
                    "cannot open SQLite database {}: directory {} does not exist (create it first)",
                    path.display(),
                    dir.display()
                )));
            }
        }
        let mut engine = Self {
            path: path.to_path_buf(),
            synchronous: if sync_full { "FULL" } else { "NORMAL" },
            identity: (0, 0),
            pool: Pool::new(),
        };
        let conn = engine.connect()?;
        engine.identity = identity_of(path).map_err(|e| {
            MetaError::Engine(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        })?;
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
        conn.pragma_update(None, "synchronous", self.synchronous)
            .map_err(engine_err)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection> {
        self.pool.take(|_| true, || self.connect())
    }

    fn put_back(&self, conn: Connection) {
        self.pool.put_back(conn);
    }

    /// Fail when the path no longer names the file this engine opened.
    fn check_identity(&self) -> Result<()> {
        match identity_of(&self.path) {
            Ok(id) if id == self.identity => Ok(()),
            Ok(_) => Err(MetaError::Engine(format!(
                "the metadata database {} was replaced while in use; writes are refused (remount to use the new file)",
                self.path.display()
            ))),
            Err(e) => Err(MetaError::Engine(format!(
                "the metadata database {} is gone ({e}); writes are refused",
                self.path.display()
            ))),
        }
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
        let mut res = f(&mut SqliteTxn { conn: &conn });
        if res.is_ok() && !read_only {
            // Checked while holding the write lock, right before the commit.
            res = self.check_identity();
        }
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
    fn a_database_removed_or_replaced_under_the_engine_refuses_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        let e = SqliteEngine::open(&path).expect("open");
        crate::kv::run_txn(&e, false, |tx| tx.set(b"k", b"v")).expect("write");
        std::fs::remove_file(&path).expect("rm");
        let err = crate::kv::run_txn(&e, false, |tx| tx.set(b"k2", b"v")).expect_err("gone");
        assert!(err.to_string().contains("is gone"), "{err}");
        assert_eq!(err.errno(), libc::EIO);
        // A new file at the same path (a restore) is not the one opened.
        let _other = SqliteEngine::open(&path).expect("new file");
        let err = crate::kv::run_txn(&e, false, |tx| tx.set(b"k2", b"v")).expect_err("replaced");
        assert!(err.to_string().contains("replaced"), "{err}");
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
