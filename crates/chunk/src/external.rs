//! Reads of imported files: their slices point at objects that already sat
//! in a bucket (`SliceKind::External`). Such an object is read in blocks of
//! the volume's block size by range GETs that name the version recorded at
//! import (If-Match on the ETag, and the length checked), and cached like any
//! block under a key that includes that version, so a replaced object is
//! never served from a stale cache; before serving any of its bytes the
//! object is checked with a HEAD (at most once a second). A read of
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
/// How long a checked object is taken to be unchanged.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// part of it. The object is checked against its bucket first (see
    /// [`ChunkStore::check_external`]).
    pub(crate) fn external_key(&self, id: u64, index: u64) -> Result<String> {
        let obj = self.external_object(id)?;
        self.check_external(id, &obj)?;
        let version = obj.etag.as_deref().unwrap_or("-");
        let tag = tessera_blockcache::checksum::crc32c(
            format!("{}\0{}\0{version}", obj.source, obj.key).as_bytes(),
        );
        Ok(format!("{PREFIX}{id}-{tag:08x}/{index}"))
    }

    /// Make sure the object is still the version imported before any of its
    /// bytes are served, cached ones included: one HEAD, repeated at most
    /// once per [`RECHECK`] per object (a warm read makes no GET).
    fn check_external(&self, id: u64, obj: &ExternalObject) -> Result<()> {
        let fresh = self
            .checked
            .lock()
            .ok()
            .and_then(|m| m.get(&id).copied())
            .is_some_and(|at| at.elapsed() < RECHECK);
        if fresh {
            return Ok(());
        }
        let name = format!("{}/{}", obj.source.trim_end_matches('/'), obj.key);
        let store = self.source_store(obj)?;
        let now = self.rt.block_on(store.head(&obj.key));
        let fail = |why: String| {
            warn!(object = %name, "{why}");
            Err(crate::ChunkError::Unsupported(why))
        };
        match now {
            Ok(info)
                if info.size == obj.size
                    && (obj.etag.is_none() || info.etag.is_none() || info.etag == obj.etag) =>
            {
                if let Ok(mut m) = self.checked.lock() {
                    m.insert(id, std::time::Instant::now());
                }
                Ok(())
            }
            Ok(info) => fail(format!(
                "imported object {name} changed in its bucket (now {} bytes, ETag {:?}; imported {} bytes, ETag {:?}); run `tessera import` again",
                info.size, info.etag, obj.size, obj.etag
            )),
            Err(ObjectError::NotFound(_)) => fail(format!(
                "imported object {name} is gone from its bucket; the file cannot be read"
            )),
            Err(e) => fail(format!("imported object {name} cannot be checked: {e}")),
        }
    }

    /// The store of an object's bucket, opened once: endpoint, region and
    /// keys recorded at import when there are any, else the environment's
    /// at read time; behind the same metrics and `--download-limit` as the
    /// volume's store.
    fn source_store(&self, obj: &ExternalObject) -> Result<DynStore> {
        let id = format!("{}\0{:?}", obj.source, obj.endpoint);
        if let Some(s) = self.sources.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        let options = StorageOptions {
            endpoint: obj.endpoint.clone(),
            region: obj.region.clone(),
            access_key: obj.access_key.clone(),
            secret_key: obj.secret_key.clone(),
            ..Default::default()
        }
        .or(StorageOptions::from_env());
        // Imported reads count and are limited like the volume's own.
        let store = self
            .store
            .beside(tessera_object::open_store(&obj.source, &options)?);
        if let Ok(mut m) = self.sources.lock() {
            m.insert(id, store.clone());
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
            .source_store(&obj)
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
