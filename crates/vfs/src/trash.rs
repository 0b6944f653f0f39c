//! The mount's part in the trash: purging hours older than the volume's
//! trash days, one mount of the volume at a time (a claim in the engine),
//! at most every [`crate::VfsConfig::trash_purge_every`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use crate::{Vfs, Work};

impl Vfs {
    /// How long trashed files are kept: the test override, else the
    /// volume's trash days; None when the volume has no trash.
    fn trash_keep(&self) -> Option<Duration> {
        let days = self.meta.format().map(|f| f.trash_days).unwrap_or(0);
        if days == 0 {
            return None;
        }
        Some(
            self.config
                .trash_keep
                .unwrap_or(Duration::from_secs(u64::from(days) * 86_400)),
        )
    }

    pub(crate) fn maybe_purge_trash(&self) {
        if self.config.read_only || self.purging.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(keep) = self.trash_keep() {
            let every = self.config.trash_purge_every.as_secs().max(1) as i64;
            match self.meta.claim_trash_purge(every) {
                Ok(true) => match self.meta.purge_trash(tessera_meta::now().0, keep) {
                    Ok((files, hours)) if hours > 0 => {
                        info!(files, hours, "purged the trash");
                        self.send(Work::Clean);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "purging the trash failed"),
                },
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot claim the trash purge"),
            }
        }
        self.purging.store(false, Ordering::Release);
    }
}
