//! Metadata engines and the URL scheme that selects one.

mod memory;
mod sqlite;

use std::sync::Arc;

pub use memory::MemoryEngine;
pub use sqlite::SqliteEngine;

use crate::{KvEngine, MetaError, Result};

/// Open the engine a metadata URL names.
pub fn open(url: &str) -> Result<Arc<dyn KvEngine>> {
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
            let path = rest.split('?').next().unwrap_or(rest);
            Ok(Arc::new(SqliteEngine::open(std::path::Path::new(path))?))
        }
        "mem" | "memory" => Ok(Arc::new(MemoryEngine::default())),
        "redis" | "rediss" | "redis+sentinel" | "postgres" | "postgresql" | "mysql" | "etcd"
        | "tikv" => Err(bad(&format!(
            "the {scheme} engine is not built into this version yet; use sqlite:///path"
        ))),
        other => Err(bad(&format!(
            "unknown engine {other:?}; use sqlite:///path/to/meta.db"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let msg = |u: &str| open(u).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg("meta.db").contains("expected SCHEME://"));
        assert!(msg("foo://x").contains("unknown engine \"foo\""));
        assert!(msg("sqlite://").contains("path is missing"));
        assert!(msg("sqlite:///nonexistent-dir/x/meta.db").contains("does not exist"));
    }
}
