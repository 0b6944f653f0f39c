//! The mount's part in the trash: purging hours older than the volume's
//! trash days, one mount of the volume at a time (a claim in the engine),
//! at most every [`crate::VfsConfig::trash_purge_every`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use crate::{Vfs, Work};

/// Delayed slices handed to the data path per purge round.
const DELAYED_PER_ROUND: usize = 10_000;

impl Vfs {
    /// Slices nothing refers to any more (a truncate, a punched hole, a
    /// compaction): kept for the trash days when the volume has a trash,
    /// else their blocks deleted, in the background when `later`.
    pub(crate) fn release_slices(&self, freed: &[(u64, u64)], later: bool) {
        match self.meta.delay_slices(freed) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot keep freed slices for the trash; deleting them"),
        }
        if later {
            self.chunks.delete_slices_later(freed);
        } else {
            self.chunks.delete_slices(freed);
        }
    }

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

    /// Delete the blocks of delayed slices whose time is up.
    fn purge_delayed_slices(&self, now: i64, keep: Duration) {
        match self
            .meta
            .expired_delayed_slices(now, keep, DELAYED_PER_ROUND)
        {
            Ok(expired) if !expired.is_empty() => {
                let slices: Vec<(u64, u64)> =
                    expired.iter().map(|&(_, id, size)| (id, size)).collect();
                self.chunks.delete_slices(&slices);
                match self.meta.forget_delayed(&expired) {
                    Ok(()) => info!(slices = slices.len(), "purged slices kept by the trash"),
                    Err(e) => warn!(error = %e, "cannot drop the records of purged slices"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot list slices kept by the trash"),
        }
    }

    pub(crate) fn maybe_purge_trash(&self) {
        if self.config.read_only || self.purging.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(keep) = self.trash_keep() {
            let every = self.config.trash_purge_every.as_secs().max(1) as i64;
            match self.meta.claim_trash_purge(every) {
                Ok(true) => {
                    let now = tessera_meta::now().0;
                    match self.meta.purge_trash(now, keep) {
                        Ok((files, hours)) if hours > 0 => {
                            info!(files, hours, "purged the trash");
                            self.send(Work::Clean);
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "purging the trash failed"),
                    }
                    self.purge_delayed_slices(now, keep);
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot claim the trash purge"),
            }
        }
        self.purging.store(false, Ordering::Release);
    }
}
