//! Write-back staging (`--writeback`): written blocks kept on the cache
//! disk until they are uploaded, and found again after a restart.

use super::*;

impl DiskCache {
    /// Store a block durably in the staging area; it stays there until
    /// [`DiskCache::commit_staged`] after its upload.
    pub fn stage(&self, key: &str, data: &[u8]) -> std::io::Result<()> {
        self.write_file(&self.staging_path(key), self.tag(key), data, true)
    }

    /// A staged block, checked.
    pub fn read_staged(&self, key: &str) -> Option<Bytes> {
        let path = self.staging_path(key);
        let stored = std::fs::read(&path).ok()?;
        match checksum::open(stored, self.tag(key)) {
            Ok(b) => Some(b),
            Err(damage) => {
                warn!(path = %path.display(), %damage, "staged block is damaged");
                self.metrics.corrupt_blocks.inc();
                None
            }
        }
    }

    /// Keys of every staged block (after a restart: what is left to upload).
    pub fn staged(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for root in &self.roots {
            let base = root.join("staging");
            walk(&base, &mut |path, _| {
                if let Some(k) = path.strip_prefix(&base).ok().and_then(|p| p.to_str()) {
                    if !k.contains(".tmp.") {
                        keys.push(k.to_string());
                    }
                }
            });
        }
        keys
    }

    /// The staged block is in object storage now: move it into the cache.
    pub fn commit_staged(&self, key: &str) {
        let from = self.staging_path(key);
        let stored = match std::fs::metadata(&from) {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        let dir = self.dir_of(key);
        let to = self.raw_path(dir, key);
        let moved = to
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|()| std::fs::rename(&from, &to));
        if moved.is_err() || stored > self.config.capacity {
            let _ = std::fs::remove_file(&from);
            let _ = std::fs::remove_file(&to);
            return;
        }
        self.add_to_index(key, dir, stored);
    }

    /// Index a file just put in place, then evict what the quota (and the
    /// expiry) asks for.
    pub(crate) fn add_to_index(&self, key: &str, dir: usize, stored: u64) {
        let victims = {
            let mut index = self.index.lock();
            let k: Key = Arc::from(key);
            let entry = Entry {
                dir: dir as u16,
                stored,
                used_at: now_secs(),
            };
            if let Some(old) = index.entries.insert(k.clone(), entry) {
                index.used -= old.stored;
            }
            index.used += stored;
            if !index.pins.contains_key(&k) {
                index.policy.insert(k);
            }
            let mut victims = self.evict_over_quota(&mut index);
            victims.extend(self.sweep_expired(&mut index));
            self.report(&index, victims.len() as u64);
            victims
        };
        self.unlink(victims);
    }

    /// Drop a staged block whose upload is no longer wanted (its slice was
    /// deleted before it reached object storage).
    pub fn discard_staged(&self, key: &str) {
        let _ = std::fs::remove_file(self.staging_path(key));
    }
}
