//! Write-back: blocks are made durable on the local disk cache and the slice
//! is committed at once; uploads follow in the background.
//!
//! A staged block is never evicted: it leaves the staging area only after
//! its upload succeeds (it then becomes an ordinary cached block). Staged
//! blocks left by a crash or an unmount are found again when the next mount
//! opens the cache, and uploaded. Reads find staged blocks through the disk
//! tier, so committed data is readable before it reaches object storage.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use crate::{ChunkError, ChunkStore, Result};

impl ChunkStore {
    /// Stage a block durably and queue its upload.
    pub(crate) async fn stage_block(self: &Arc<Self>, key: String, data: Bytes) -> Result<()> {
        let me = self.clone();
        let (k, d) = (key.clone(), data.clone());
        tokio::task::spawn_blocking(move || match &me.disk {
            Some(disk) => disk.stage(&k, &d),
            None => Err(std::io::Error::other("write-back without a disk cache")),
        })
        .await
        .map_err(|source| ChunkError::Task {
            what: "staging a block",
            source,
        })?
        .map_err(ChunkError::Cache)?;
        self.metrics.staging_blocks.inc();
        self.metrics.staging_bytes.inc_by(data.len() as i64);
        self.mem.insert(&key, data);
        let me = self.clone();
        self.rt.spawn(async move { me.upload_staged(key).await });
        Ok(())
    }

    /// Upload staged blocks left by an earlier mount.
    pub(crate) fn resume_staged(self: &Arc<Self>) {
        let Some(disk) = &self.disk else {
            return;
        };
        let keys = disk.staged();
        if keys.is_empty() {
            return;
        }
        info!(
            blocks = keys.len(),
            "uploading blocks staged by an earlier mount"
        );
        for key in keys {
            self.metrics.staging_blocks.inc();
            let me = self.clone();
            self.rt.spawn(async move { me.upload_staged(key).await });
        }
    }

    /// Upload one staged block, retrying until it is stored; then move it
    /// into the cache. A block deleted meanwhile is dropped.
    async fn upload_staged(self: Arc<Self>, key: String) {
        let mut wait = Duration::from_millis(200);
        loop {
            let me = self.clone();
            let k = key.clone();
            let staged = tokio::task::spawn_blocking(move || {
                me.disk.as_ref().and_then(|d| d.read_staged(&k))
            })
            .await
            .ok()
            .flatten();
            let Some(data) = staged else {
                // Deleted (its slice is gone) or damaged: nothing to upload.
                self.metrics.staging_blocks.dec();
                return;
            };
            match self.upload_block(&key, &data).await {
                Ok(()) => {
                    let me = self.clone();
                    let len = data.len() as i64;
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Some(d) = &me.disk {
                            d.commit_staged(&key);
                        }
                    })
                    .await;
                    self.metrics.staging_blocks.dec();
                    self.metrics.staging_bytes.dec_by(len);
                    return;
                }
                Err(e) => {
                    warn!(%key, error = %e, retry_in = ?wait, "upload of staged block failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
