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
        if let Some(o) = self.externals.lock().get(&id).cloned() {
            return Ok(o);
        }
        let obj = Arc::new(self.meta.get_external(id)?);
        {
            let mut m = self.externals.lock();
            m.insert(id, obj.clone());
        }
        Ok(obj)
    }

    /// [`ChunkStore::external_object`] from async code: a record not yet
    /// cached is read on a blocking thread, because the metadata engines
    /// are synchronous and some (etcd, PostgreSQL) run their own runtime,
    /// which panics inside another. A peer asking this member for a block
    /// of an object it never read itself takes this path.
    async fn external_object_off_async(self: &Arc<Self>, id: u64) -> Result<Arc<ExternalObject>> {
        if let Some(o) = self.externals.lock().get(&id).cloned() {
            return Ok(o);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.external_object(id))
            .await
            .map_err(|source| crate::ChunkError::Task {
                what: "reading an imported object's record",
                source,
            })?
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
            .get(&id)
            .copied()
            .is_some_and(|at| at.elapsed() < RECHECK);
        if fresh {
            return Ok(());
        }
        let name = format!("{}/{}", obj.source.trim_end_matches('/'), obj.key);
        let store = self.source_store(obj)?;
        let now = self.rt.block_on(store.head(&obj.key));
        let fail = |why: String| {
            warn!(object = %name, "{why}");
            Err(crate::ChunkError::Stale { reason: why })
        };
        match now {
            Ok(info)
                if info.size == obj.size
                    && (obj.etag.is_none() || info.etag.is_none() || info.etag == obj.etag) =>
            {
                {
 let mut m = self.checked.lock();
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
        if let Some(s) = self.sources.lock().get(&id).cloned() {
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
        {
            let mut m = self.sources.lock();
            m.insert(id, store.clone());
        }
        Ok(store)
    }

    /// Fetch one block of an external object (the key says which).
    pub(crate) async fn load_external(
        self: &Arc<Self>,
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
            .external_object_off_async(id)
            .await
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
        let stale = |what: String| {
            warn!(block = key, "{what}");
            FetchError::Stale(what)
        };
        let data = got.map_err(|e| match e {
            ObjectError::NotFound(_) => stale(format!(
                "imported object {name} is gone from its bucket; the file cannot be read"
            )),
            e if e.is_condition_not_match() => stale(format!(
                "imported object {name} changed in its bucket (ETag {:?} imported); run `tessera import` again",
                obj.etag
            )),
            e => failed(format!(
                "imported object {name} cannot be read as the version imported (ETag {:?}): {e}",
                obj.etag
            )),
        })?;
        if data.len() as u64 != len {
            return Err(stale(format!(
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

    /// A metadata engine that blocks on a runtime of its own, as the etcd
    /// and PostgreSQL engines do: called on an async thread it panics as
    /// they do ("Cannot start a runtime from within a runtime").
    struct SyncOnly(tessera_meta::engines::MemoryEngine);

    impl tessera_meta::kv::KvEngine for SyncOnly {
        fn name(&self) -> &'static str {
            "sync-only"
        }

        fn run_once(
            &self,
            read_only: bool,
            f: &mut dyn FnMut(&mut dyn tessera_meta::kv::KvTxn) -> tessera_meta::Result<()>,
        ) -> tessera_meta::Result<()> {
            let own = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("the engine's runtime");
            own.block_on(async { self.0.run_once(read_only, f) })
        }

        fn reset(&self) -> tessera_meta::Result<()> {
            self.0.reset()
        }
    }

    /// A peer asks this member for a block of an imported object it has
    /// never read itself: the object's record is looked up in the metadata
    /// off the async threads.
    #[test]
    fn a_block_of_an_imported_object_served_to_a_peer_looks_metadata_up_off_the_async_threads() {
        const BLOCK: usize = 64 << 10;
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("obj"), &data).expect("source object");
        let meta = Arc::new(tessera_meta::Meta::new(
            Arc::new(SyncOnly(Default::default())),
            tessera_meta::MetaConfig::default(),
        ));
        let mut format = tessera_meta::conformance::test_format();
        format.block_size = BLOCK as u32;
        meta.init(&format).expect("format");
        let id = meta
            .put_external(&ExternalObject {
                source: format!("file://{}", dir.path().display()),
                key: "obj".into(),
                size: data.len() as u64,
                etag: None,
                endpoint: None,
                region: None,
                access_key: None,
                secret_key: None,
            })
            .expect("external record");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = tessera_object::open_store("mem://", &Default::default()).expect("store");
        let config = crate::ChunkConfig {
            volume: "t".into(),
            uuid: "uuid-ext".into(),
            block_size: BLOCK,
            ..Default::default()
        };
        let chunks = crate::ChunkStore::new(
            store,
            meta,
            rt.handle().clone(),
            config,
            Arc::new(tessera_metrics::Metrics::new()),
        )
        .expect("chunk store");
        let serving = crate::group::Serving(chunks);
        let key = format!("{PREFIX}{id}-00000000/1");
        let got =
            tessera_cachegroup::BlockSource::fetch(&serving, &key, BLOCK as u64).expect("served");
        assert_eq!(&got[..], &data[BLOCK..2 * BLOCK]);
    }
}
