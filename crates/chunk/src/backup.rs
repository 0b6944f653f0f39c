//! Metadata backups into the volume's own bucket (`mount --backup-meta`):
//! the whole metadata dumped (`tessera_meta::dump`), zstd-compressed, stored
//! as `{volume}/meta/dump-{UTC time}.json.zst`, and old backups thinned
//! (`tessera_meta::backup::thin`), sealed like blocks on an encrypted
//! volume. `tessera load --from-bucket` reads them back. The dump pages through the engine while the volume is in use, as
//! `tessera dump` does: a backup is as consistent as a dump of a live volume.

use bytes::Bytes;
use tessera_meta::backup::{backup_object, backup_time, thin, BACKUP_DIR};
use tessera_meta::Meta;
use tracing::{info, warn};

use crate::{ChunkError, ChunkStore, Result};

/// What a backup stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub object: String,
    /// Compressed bytes stored, and metadata keys in the dump.
    pub bytes: u64,
    pub keys: u64,
    /// Older backups deleted by thinning.
    pub thinned: usize,
}

/// zstd level of backups: metadata compresses well at a low level, and a
/// mount should not spend long on it.
const LEVEL: i32 = 3;

impl ChunkStore {
    /// Dump `meta`, store it in the bucket, record it, and thin old ones.
    pub fn backup_metadata(&self, meta: &Meta) -> Result<BackupReport> {
        let at = tessera_meta::now().0;
        let mut compressed = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut compressed, LEVEL)
            .map_err(|e| ChunkError::Backup(format!("zstd: {e}")))?;
        let stats = tessera_meta::dump::dump(meta.engine(), &mut encoder)?;
        encoder
            .finish()
            .map_err(|e| ChunkError::Backup(format!("zstd: {e}")))?;
        let volume = &self.config().volume;
        let object = backup_object(volume, at);
        if let Some(cipher) = &self.config().cipher {
            // A dump names every file: on an encrypted volume it is sealed
            // like a block, bound to its object key.
            compressed = cipher
                .seal(object.as_bytes(), &compressed)
                .map_err(|e| ChunkError::Backup(e.to_string()))?;
        }
        let bytes = compressed.len() as u64;
        self.rt
            .block_on(self.store.put(&object, Bytes::from(compressed).into()))?;
        meta.record_backup(&object, bytes, stats.keys)?;
        let thinned = self.thin_backups(volume, at);
        info!(%object, bytes, keys = stats.keys, thinned, "metadata backed up");
        Ok(BackupReport {
            object,
            bytes,
            keys: stats.keys,
            thinned,
        })
    }

    /// Delete the backups [`thin`] lets go; failures are logged and left
    /// for the next round.
    fn thin_backups(&self, volume: &str, now: i64) -> usize {
        let prefix = format!("{volume}/{BACKUP_DIR}/");
        let listed = match self.rt.block_on(self.store.list(&prefix)) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot list old metadata backups");
                return 0;
            }
        };
        let times: Vec<i64> = listed.iter().filter_map(|o| backup_time(&o.key)).collect();
        let mut deleted = 0;
        for t in thin(now, &times) {
            let key = backup_object(volume, t);
            match self.rt.block_on(self.store.delete(&key)) {
                Ok(()) => deleted += 1,
                Err(e) => warn!(%key, error = %e, "cannot delete an old metadata backup"),
            }
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use tessera_meta::engines::MemoryEngine;

    use crate::{DataPath, DataPathOptions};

    /// A backup lands in the bucket, holds the volume's metadata, and loads
    /// into an empty engine as the same tree.
    #[test]
    fn a_backup_is_stored_recorded_and_loads_back() {
        let meta = Arc::new(tessera_meta::Meta::new(
            Arc::new(MemoryEngine::default()),
            Default::default(),
        ));
        let format = tessera_meta::conformance::test_format();
        meta.init(&format).expect("format");
        let ctx = tessera_meta::Ctx {
            uid: 0,
            gid: 0,
            pid: 1,
            umask: 0,
        };
        meta.mknod(
            &ctx,
            tessera_meta::ROOT_INO,
            b"models",
            tessera_meta::FileType::Dir,
            0o755,
            0,
            None,
        )
        .expect("mkdir");
        let data = DataPath::open(&meta, &format, DataPathOptions::default()).expect("data path");
        let report = data.chunks.backup_metadata(&meta).expect("backup");
        assert!(
            report.object.starts_with("test/meta/dump-"),
            "{}",
            report.object
        );
        let state = meta.backup_state().expect("state");
        assert_eq!(
            (state.object.clone(), state.bytes),
            (report.object.clone(), report.bytes)
        );
        let stored = data
            .runtime
            .block_on(data.chunks.store().get(&report.object, None))
            .expect("stored");
        assert_eq!(stored.len() as u64, report.bytes);
        let mut text = String::new();
        zstd::stream::read::Decoder::new(&stored[..])
            .expect("zstd")
            .read_to_string(&mut text)
            .expect("decompress");
        let copy = MemoryEngine::default();
        tessera_meta::dump::load(&copy, &mut text.as_bytes()).expect("load");
        let loaded = tessera_meta::Meta::new(Arc::new(copy), Default::default());
        loaded.load().expect("a volume");
        let (ino, attr) = loaded.resolve("/models").expect("the tree came back");
        assert!(ino > 0 && attr.typ == tessera_meta::FileType::Dir);
        assert_eq!(
            loaded.backup_state().expect("state").last_at,
            0,
            "a loaded volume starts its own schedule"
        );
    }
}
