//! Reads of imported files: their slices point at objects that already sat
//! in a bucket (`SliceKind::External`). Such an object is read in blocks of
//! the volume's block size by range GETs that name the version recorded at
//! import (If-Match on the ETag, and the length checked), and cached like any
//! block under a key that includes that version, so a replaced object is
//! never served from a stale cache and never returns other bytes: a read of
//! a changed or vanished object fails with EIO and a log line naming it.

use std::sync::Arc;

use bytes::Bytes;
use tessera_meta::ExternalObject;
use tessera_object::{DynStore, ObjectError, StorageOptions};
use tracing::warn;

use crate::read::FetchError;
use crate::{ChunkStore, Result};

/// Cache keys of external blocks start with this; no volume block key does.
pub(crate) const PREFIX: &str = "ext/";

impl ChunkStore {
    /// The object an external slice id names (cached after the first ask).
    pub(crate) fn external_object(&self, id: u64) -> Result<Arc<ExternalObject>> {
        if let Some(o) = self.externals.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(o);
        }
        let obj = Arc::new(self.meta.get_external(id)?);
        if let Ok(mut m) = self.externals.lock() {
            m.insert(id, obj.clone());
        }
        Ok(obj)
    }

    /// Cache key of block `index` of external object `id`: the version is
    /// part of it.
    pub(crate) fn external_key(&self, id: u64, index: u64) -> Result<String> {
        let obj = self.external_object(id)?;
        let version = obj.etag.as_deref().unwrap_or("-");
        let tag = crc32c::crc32c(format!("{}\0{}\0{version}", obj.source, obj.key).as_bytes());
        Ok(format!("{PREFIX}{id}-{tag:08x}/{index}"))
    }

    /// The store a source URL names, opened once; credentials come from the
    /// environment at read time.
    fn source_store(&self, url: &str) -> Result<DynStore> {
        if let Some(s) = self.sources.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Ok(s);
        }
        let store = tessera_object::open_store(url, &StorageOptions::from_env())?;
        if let Ok(mut m) = self.sources.lock() {
            m.insert(url.to_string(), store.clone());
        }
        Ok(store)
    }

    /// Fetch one block of an external object (the key says which).
    pub(crate) async fn load_external(
        &self,
        key: &str,
        len: u64,
    ) -> std::result::Result<Bytes, FetchError> {
        let failed = |what: String| {
            warn!(block = key, "{what}");
            FetchError::Failed(what)
        };
        let (id, index) =
            parse_key(key).ok_or_else(|| failed(format!("bad external key {key}")))?;
        let obj = self
            .external_object(id)
            .map_err(|e| failed(format!("imported object #{id}: {e}")))?;
        let name = format!("{}/{}", obj.source.trim_end_matches('/'), obj.key);
        let store = self
            .source_store(&obj.source)
            .map_err(|e| failed(format!("imported object {name}: {e}")))?;
        let start = index * self.config.block_size as u64;
        let permit = self.downloads.acquire().await;
        let got = store
            .get_version(&obj.key, start..start + len, obj.etag.as_deref())
            .await;
        drop(permit);
        let data = got.map_err(|e| match e {
            ObjectError::NotFound(_) => failed(format!(
                "imported object {name} is gone from its bucket; the file cannot be read"
            )),
            e => failed(format!(
                "imported object {name} cannot be read as the version imported (ETag {:?}): {e}",
                obj.etag
            )),
        })?;
        if data.len() as u64 != len {
            return Err(failed(format!(
                "imported object {name} changed: {} bytes where {len} were expected at offset {start}",
                data.len()
            )));
        }
        Ok(data)
    }
}

/// `ext/{id}-{tag}/{index}` → (id, index).
fn parse_key(key: &str) -> Option<(u64, u64)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (head, index) = rest.split_once('/')?;
    let id = head.split_once('-')?.0;
    Some((id.parse().ok()?, index.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_key("ext/42-0badf00d/7"), Some((42, 7)));
        assert_eq!(parse_key("vol/chunks/1"), None);
    }
}
