//! Reads of imported files: their slices point at objects that already sat
//! in a bucket (`SliceKind::External`). Such an object is read in blocks of
//! the volume's block size by range GETs that name the version recorded at
//! import (If-Match on the ETag, and the length checked), and cached like any
//! block under a key that includes that version, so a replaced object is
//! never served from a stale cache. Before serving any of its bytes the
//! object is checked with a HEAD; a check less than a second old stands,
//! and one up to 30 s old is renewed in the background while reads go on
//! (over a far link the HEAD is then off the read path: a loaded model's
//! files cost one HEAD each, not one per second of reading). A read of a
//! changed or vanished object fails with ESTALE and a log line naming it;
//! bytes cached before the change may be served for the one to two
//! seconds it takes to notice.

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
/// Up to this age a check is renewed in the background; an older one (or
/// none) is made before any byte is served.
const REVALIDATE: std::time::Duration = std::time::Duration::from_secs(30);

/// The last check of an imported object against its bucket.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    at: std::time::Instant,
    /// Why the object may not be read (changed or gone), if so.
    refused: Option<String>,
    /// A check is running in the background.
    renewing: bool,
}

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
    /// bytes are served, cached ones included (see the module comment for
    /// when a HEAD is made, and whether the read waits for it).
    fn check_external(&self, id: u64, obj: &Arc<ExternalObject>) -> Result<()> {
        let last = self.checked.lock().get(&id).cloned();
        if let Some(c) = &last {
            let age = c.at.elapsed();
            match &c.refused {
                Some(why) if age < RECHECK => {
                    return Err(crate::ChunkError::Stale {
                        reason: why.clone(),
                    })
                }
                Some(_) => {} // checked again, in case it is back
                None if age < RECHECK || (c.renewing && age < REVALIDATE) => return Ok(()),
                None if age < REVALIDATE => {
                    self.renew_in_background(id, obj.clone());
                    return Ok(());
                }
                None => {}
            }
        }
        let store = self.source_store(obj)?;
        let verdict = judge(obj, self.rt.block_on(store.head(&obj.key)));
        record(&self.checked, id, verdict.clone());
        verdict.map_err(|reason| crate::ChunkError::Stale { reason })
    }

    /// HEAD the object on the I/O runtime and record what it says; reads
    /// meanwhile go on with the last check's answer.
    fn renew_in_background(&self, id: u64, obj: Arc<ExternalObject>) {
        let store = match self.source_store(&obj) {
            Ok(s) => s,
            Err(e) => return record(&self.checked, id, Err(e.to_string())),
        };
        {
            let mut m = self.checked.lock();
            if let Some(c) = m.get_mut(&id) {
                c.renewing = true;
            }
        }
        let checked = self.checked.clone();
        self.rt.spawn(async move {
            let verdict = judge(&obj, store.head(&obj.key).await);
            record(&checked, id, verdict);
        });
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

    /// One level of an import's bucket under `prefix` (a lazy import's
    /// directory), through the same store, metrics and limits as its reads.
    pub fn list_source(
        &self,
        origin: &ExternalObject,
        prefix: &str,
    ) -> Result<tessera_object::Listing> {
        let store = self.source_store(origin)?;
        Ok(self.rt.block_on(store.list_dir(prefix))?)
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

/// Whether a HEAD's answer shows the object as imported; the reason to
/// refuse it (logged) if not.
fn judge(
    obj: &ExternalObject,
    now: std::result::Result<tessera_object::ObjectInfo, ObjectError>,
) -> std::result::Result<(), String> {
    let name = format!("{}/{}", obj.source.trim_end_matches('/'), obj.key);
    let why = match now {
        Ok(info)
            if info.size == obj.size
                && (obj.etag.is_none() || info.etag.is_none() || info.etag == obj.etag) =>
        {
            return Ok(())
        }
        Ok(info) => format!(
            "imported object {name} changed in its bucket (now {} bytes, ETag {:?}; imported {} bytes, ETag {:?}); run `tessera import` again",
            info.size, info.etag, obj.size, obj.etag
        ),
        Err(ObjectError::NotFound(_)) => {
            format!("imported object {name} is gone from its bucket; the file cannot be read")
        }
        Err(e) => format!("imported object {name} cannot be checked: {e}"),
    };
    warn!(object = %name, "{why}");
    Err(why)
}

fn record(
    checked: &parking_lot::Mutex<std::collections::HashMap<u64, Checked>>,
    id: u64,
    verdict: std::result::Result<(), String>,
) {
    checked.lock().insert(
        id,
        Checked {
            at: std::time::Instant::now(),
            refused: verdict.err(),
            renewing: false,
        },
    );
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

    /// A chunk store over metadata `engine` whose volume has imported the
    /// file `obj` of `dir` (with `len` bytes), in blocks of `block`.
    fn imported(
        dir: &std::path::Path,
        len: u64,
        block: usize,
        engine: Arc<dyn tessera_meta::kv::KvEngine>,
    ) -> (Arc<crate::ChunkStore>, u64, tokio::runtime::Runtime) {
        let meta = Arc::new(tessera_meta::Meta::new(
            engine,
            tessera_meta::MetaConfig::default(),
        ));
        let mut format = tessera_meta::conformance::test_format();
        format.block_size = block as u32;
        meta.init(&format).expect("format");
        let id = meta
            .put_external(&ExternalObject {
                source: format!("file://{}", dir.display()),
                key: "obj".into(),
                size: len,
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
            block_size: block,
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
        (chunks, id, rt)
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
        let engine = Arc::new(SyncOnly(Default::default()));
        let (chunks, id, _rt) = imported(dir.path(), data.len() as u64, BLOCK, engine);
        let serving = crate::group::Serving(chunks);
        let key = format!("{PREFIX}{id}-00000000/1");
        let got =
            tessera_cachegroup::BlockSource::fetch(&serving, &key, BLOCK as u64).expect("served");
        assert_eq!(&got[..], &data[BLOCK..2 * BLOCK]);
    }

    /// A check under a second old stands; an older one is renewed in the
    /// background while reads go on, and what it finds holds from then on:
    /// a changed object is refused, and taken again once it is back.
    #[test]
    fn imported_objects_are_checked_again_in_the_background() {
        let dir = tempfile::tempdir().expect("tempdir");
        let obj = dir.path().join("obj");
        std::fs::write(&obj, vec![1u8; 1000]).expect("source object");
        let engine = Arc::new(tessera_meta::engines::MemoryEngine::default());
        let (chunks, id, _rt) = imported(dir.path(), 1000, 64 << 10, engine);
        let record = chunks.external_object(id).expect("record");
        let check = || chunks.check_external(id, &record);
        check().expect("first check: the object is as imported");
        std::fs::write(&obj, vec![2u8; 999]).expect("changed behind our back");
        check().expect("the check of a moment ago stands");
        std::thread::sleep(RECHECK + std::time::Duration::from_millis(100));
        check().expect("an older check is renewed without making the read wait");
        let started = std::time::Instant::now();
        let refused = loop {
            match check() {
                Err(e) => break e,
                Ok(()) => {
                    assert!(
                        started.elapsed() < std::time::Duration::from_secs(5),
                        "never refused"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        assert!(
            refused.to_string().contains("changed in its bucket"),
            "{refused}"
        );
        assert_eq!(refused.errno(), libc::ESTALE);
        std::fs::write(&obj, vec![1u8; 1000]).expect("put back");
        std::thread::sleep(RECHECK + std::time::Duration::from_millis(100));
        check().expect("taken again once it is back");
    }
}
