//! The mount's part in scheduled metadata backups (`--backup-meta`): at a
//! heartbeat, once the interval has passed since this mount started and
//! since the volume's last backup, one mount of the volume claims the round
//! and writes the backup on a thread of its own (`tessera_chunk` stores it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::Vfs;

/// A claim lasts at least this long, so a slow dump is not taken over.
const MIN_LEASE: Duration = Duration::from_secs(600);

impl Vfs {
    pub(crate) fn maybe_backup(self: &Arc<Self>) {
        let Some(every) = self.config.backup_meta else {
            return;
        };
        if self.config.read_only
            || self.started.elapsed() < every
            || self.backup_running.load(Ordering::Acquire)
        {
            return;
        }
        let lease = every.max(MIN_LEASE).as_secs() as i64;
        match self.meta.claim_backup(every.as_secs() as i64, lease) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                warn!(error = %e, "cannot claim the metadata backup");
                return;
            }
        }
        self.backup_running.store(true, Ordering::Release);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("meta-backup".into())
            .spawn(move || {
                tessera_meta::kv::mark_background_thread();
                if let Err(e) = me.chunks.backup_metadata(&me.meta) {
                    warn!(error = %e, "metadata backup failed; another mount or round will retry");
                    if let Err(e) = me.meta.release_backup_claim() {
                        warn!(error = %e, "cannot release the metadata backup claim");
                    }
                }
                me.backup_running.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the metadata backup");
            self.backup_running.store(false, Ordering::Release);
            let _ = self.meta.release_backup_claim();
        }
    }
}
