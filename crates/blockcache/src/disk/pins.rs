//! Pins: blocks kept from eviction until a deadline (`warmup --pin`),
//! saved in the volume's pins file so they survive a restart.

use super::*;

impl DiskCache {
    /// Keep these cached blocks from eviction for `ttl`. Keys not cached
    /// are skipped; returns how many are pinned now.
    pub fn pin(&self, keys: &[String], ttl: Duration) -> usize {
        let until = now_secs().saturating_add(ttl.as_secs().max(1));
        let mut index = self.index.lock();
        let mut pinned = 0;
        for key in keys {
            let Some((k, _)) = index.entries.get_key_value(key.as_str()) else {
                continue;
            };
            let k = k.clone();
            index.policy.remove(&k);
            let slot = index.pins.entry(k).or_insert(0);
            *slot = (*slot).max(until);
            index.next_unpin = index.next_unpin.min(until);
            pinned += 1;
        }
        if pinned > 0 {
            index.pins_changed += 1;
        }
        drop(index);
        self.save_pins();
        pinned
    }

    /// End the pins of these keys; the blocks stay cached, evictable again.
    pub fn unpin(&self, keys: &[String]) -> usize {
        let mut index = self.index.lock();
        let mut unpinned = 0;
        for key in keys {
            if let Some((k, _)) = index.pins.remove_entry(key.as_str()) {
                if index.entries.contains_key(&k) {
                    index.policy.insert(k);
                }
                unpinned += 1;
            }
        }
        if unpinned > 0 {
            index.next_unpin = index.pins.values().copied().min().unwrap_or(u64::MAX);
            index.pins_changed += 1;
        }
        drop(index);
        self.save_pins();
        unpinned
    }

    /// Whether a block is cached and pinned (an expired pin counts as gone).
    pub fn is_pinned(&self, key: &str) -> bool {
        self.index
            .lock()
            .pins
            .get(key)
            .is_some_and(|until| *until > now_secs())
    }

    pub(crate) fn pins_path(&self) -> PathBuf {
        self.roots[0].join(PINS_FILE)
    }

    /// The pin table as saved, pins still in force.
    pub(crate) fn load_pins(&self) -> Vec<(String, u64)> {
        read_pins(&self.pins_path(), now_secs())
    }

    /// Rewrite the pin table (one line per pinned block) if it changed
    /// since it was last saved: the table is copied under the index lock,
    /// the file written without it. Call with the index unlocked.
    pub(crate) fn save_pins(&self) {
        let mut saved = self.pins_saved.lock();
        let (text, changed) = {
            let index = self.index.lock();
            if index.pins_changed == *saved {
                return;
            }
            let mut text = String::with_capacity(index.pins.len() * 64);
            for (key, until) in &index.pins {
                text.push_str(&format!("{until} {key}\n"));
            }
            (text, index.pins_changed)
        };
        let path = self.pins_path();
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => *saved = changed,
            Err(e) => warn!(path = %path.display(), error = %e, "cannot save the pinned blocks"),
        }
    }

    /// Write a block and its checksum trailer to a temporary name and
    /// rename, so a reader never sees half a file; with `durable`, the data
    /// and the rename reach the disk first.
    pub(crate) fn write_file(
        &self,
        path: &Path,
        tag: u32,
        data: &[u8],
        durable: bool,
    ) -> std::io::Result<()> {
        let dir = path.parent().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "block path has no parent")
        })?;
        std::fs::create_dir_all(dir)?;
        let tmp = PathBuf::from(format!(
            "{}.tmp.{}.{}",
            path.display(),
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let trailer = checksum::trailer(data, tag);
            let f = match self.write_direct(&tmp, data, &trailer) {
                Some(f) => f,
                None => {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(data)?;
                    f.write_all(&trailer)?;
                    f
                }
            };
            if durable {
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            if durable {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Write a page-aligned block with O_DIRECT (see `direct::write`);
    /// None when that is not possible here, for the caller to write it
    /// through the page cache. A failure other than EINVAL is reported by
    /// the buffered attempt that follows.
    pub(crate) fn write_direct(
        &self,
        tmp: &Path,
        data: &[u8],
        trailer: &[u8],
    ) -> Option<std::fs::File> {
        if !self.direct_io.load(Ordering::Relaxed)
            || data.len() < tessera_buf::ALIGN
            || !tessera_buf::is_aligned(data)
        {
            return None;
        }
        match crate::direct::write(tmp, data, trailer) {
            Ok(f) => Some(f),
            Err(e) => {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    debug!(path = %tmp.display(), "no O_DIRECT here; writing through the page cache");
                    self.direct_io.store(false, Ordering::Relaxed);
                }
                let _ = std::fs::remove_file(tmp);
                None
            }
        }
    }
}
