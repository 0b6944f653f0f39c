//! Metadata engines and the URL scheme that selects one. Each engine but
//! the in-memory one is a cargo feature (all on by default); a URL of an
//! engine left out of the build is refused with the feature's name.

// Helpers shared by some engines are unused when those are left out.
#![cfg_attr(
    not(all(
        feature = "sqlite",
        feature = "redis",
        feature = "postgres",
        feature = "mysql",
        feature = "etcd"
    )),
    allow(dead_code, unused_imports)
)]

#[cfg(feature = "etcd")]
mod etcd;
mod memory;
#[cfg(feature = "mysql")]
mod mysql;
mod pool;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;

#[cfg(feature = "etcd")]
pub use etcd::EtcdEngine;
pub use memory::MemoryEngine;
#[cfg(feature = "mysql")]
pub use mysql::MysqlEngine;
#[cfg(feature = "postgres")]
pub use postgres::PostgresEngine;
#[cfg(feature = "redis")]
pub use redis::RedisEngine;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteEngine;

/// A URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:****{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// Put the password from `META_PASSWORD` into a URL that names a user but
/// no password (`redis://:@host` or `postgres://user@host`), so it need not
/// appear on command lines.
fn with_env_password(url: &str) -> String {
    let Ok(pass) = std::env::var("META_PASSWORD") else {
        return url.to_string();
    };
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.password().is_none() && parsed.set_password(Some(&pass)).is_ok() {
        parsed.to_string()
    } else {
        url.to_string()
    }
}

use crate::{KvEngine, MetaError, Result};

/// Name the server in an engine error that does not already, so a log line
/// says which database failed.
fn located(e: MetaError, shown: &str) -> MetaError {
    match e {
        MetaError::Engine(m) if !m.contains(shown) => {
            MetaError::Engine(format!("{m} (server {shown})"))
        }
        e => e,
    }
}

/// Writes a transaction buffers until its commit: Some(value) sets, None
/// deletes (the optimistic engines, Redis and etcd).
type WriteBuffer = std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The rows a scan of `[begin, end)` sees: what the server returned with
/// the transaction's own buffered writes laid over it, at most `limit`.
fn overlay_writes(
    mut found: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    writes: &WriteBuffer,
    begin: &[u8],
    end: &[u8],
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    for (k, w) in writes.range(begin.to_vec()..end.to_vec()) {
        match w {
            Some(v) => {
                found.insert(k.clone(), v.clone());
            }
            None => {
                found.remove(k);
            }
        }
    }
    found.into_iter().take(limit).collect()
}

/// The error for a URL of an engine this build was made without.
#[cfg(not(all(
    feature = "sqlite",
    feature = "redis",
    feature = "postgres",
    feature = "mysql",
    feature = "etcd"
)))]
fn left_out(url: &str, feature: &str) -> MetaError {
    MetaError::BadUrl {
        url: redact(url),
        reason: format!(
            "this build of tessera has no {feature} engine (built without the `{feature}` feature)"
        ),
    }
}

/// Open the engine a metadata URL names. An SQLite database file must
/// exist unless `create` (format, load): a mistyped path is an error, not a
/// new empty database left behind.
pub fn open(url: &str, create: bool) -> Result<Arc<dyn KvEngine>> {
    let bad = |reason: &str| MetaError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad("expected SCHEME://..., for example sqlite:///var/lib/tessera/meta.db")
    })?;
    match scheme {
        "sqlite" | "sqlite3" => {
            if rest.is_empty() {
                return Err(bad(
                    "the database path is missing: sqlite:///path/to/meta.db",
                ));
            }
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut sync_full = false;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.to_ascii_lowercase().as_str() {
                    "synchronous=full" => sync_full = true,
                    "synchronous=normal" => sync_full = false,
                    other => {
                        return Err(bad(&format!(
                            "unknown SQLite option {other:?}: only synchronous=full or synchronous=normal"
                        )))
                    }
                }
            }
            let path = std::path::Path::new(path);
            // (A missing directory gets the engine's own message below.)
            let dir_there = path
                .parent()
                .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir());
            if !create && dir_there && !path.exists() {
                return Err(MetaError::NotFormatted);
            }
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(SqliteEngine::open_with(path, sync_full)?));
            #[cfg(not(feature = "sqlite"))]
            return {
                let _ = sync_full;
                Err(left_out(url, "sqlite"))
            };
        }
        "mem" | "memory" => Ok(Arc::new(MemoryEngine::default())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+sentinel" => Ok(Arc::new(RedisEngine::open(
            &with_env_password(url),
            &redact(url),
        )?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(PostgresEngine::open(
            &with_env_password(url),
            &redact(url),
        )?)),
        #[cfg(feature = "mysql")]
        "mysql" => Ok(Arc::new(MysqlEngine::open(
            &with_env_password(url),
            &redact(url),
        )?)),
        #[cfg(feature = "etcd")]
        "etcd" => Ok(Arc::new(EtcdEngine::open(
            &with_env_password(url),
            &redact(url),
        )?)),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis+sentinel" => Err(left_out(url, "redis")),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(left_out(url, "postgres")),
        #[cfg(not(feature = "mysql"))]
        "mysql" => Err(left_out(url, "mysql")),
        #[cfg(not(feature = "etcd"))]
        "etcd" => Err(left_out(url, "etcd")),
        "tikv" => Err(bad(
            "the tikv engine is not built into this version yet; use sqlite://, redis://, postgres://, mysql:// or etcd://",
        )),
        other => Err(bad(&format!(
            "unknown engine {other:?}; use sqlite:///path/to/meta.db, redis://host:port/db, postgres://user@host/db, mysql://user@host/db or etcd://host:2379/prefix"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let msg = |u: &str| {
            open(u, true)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(msg("meta.db").contains("expected SCHEME://"));
        assert!(msg("foo://x").contains("unknown engine \"foo\""));
        assert!(msg("sqlite://").contains("path is missing"));
        assert!(msg("sqlite:///nonexistent-dir/x/meta.db").contains("does not exist"));
    }
}
