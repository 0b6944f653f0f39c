//! Whole-file local copies, for kernel passthrough reads.
//!
//! `tessera warmup --local-copy` writes a file's data, as committed now,
//! into one contiguous file `{first cache dir}/{volume}/files/{ino}/{tag}`,
//! the tag made of its length and slice records. A
//! read-only open finds the copy when the tag still matches (any write
//! changes the records, so a stale copy is never used) and the FUSE layer
//! hands the kernel that file: reads then go straight to the local disk,
//! without a FUSE round trip or a copy through this process. The copy is
//! written from checked blocks; after that the kernel reads it as it is.
//! Copies count against the disk cache's quota (`DiskCache::add_copy`).

use std::io::Write;
use std::path::PathBuf;

use tessera_chunk::{Access, Span};
use tessera_meta::{FileType, Ino, CHUNK_SIZE};

use crate::{Result, Vfs, VfsError};

impl Vfs {
    /// Where local copies live, when the mount has a disk cache.
    fn copies_dir(&self, ino: Ino) -> Option<PathBuf> {
        Some(
            self.chunks
                .disk
                .as_ref()?
                .copies_root()
                .join(ino.to_string()),
        )
    }

    /// The file's length and the name its copy has while it is unchanged.
    /// A file open here (the FUSE open looks for a copy right after
    /// opening) is named from what its open read, with no round trip of
    /// its own; otherwise from the attributes and every chunk's records,
    /// read together.
    fn copy_name(&self, ino: Ino) -> Result<(u64, String)> {
        let open = self
            .open_file(ino)
            .filter(|of| !of.writer.has_dirty())
            .map(|of| (of.length.load(std::sync::atomic::Ordering::Relaxed), of))
            .filter(|(length, _)| *length > 0);
        let (length, records) = match open {
            Some((length, of)) => {
                let records = (0..length.div_ceil(CHUNK_SIZE))
                    .map(|index| of.chunk_records(&self.meta, ino, index as u32))
                    .collect::<tessera_meta::Result<Vec<_>>>()?;
                (length, records.iter().map(|r| r.as_ref().clone()).collect())
            }
            None => {
                // Every chunk: a change anywhere must change the name.
                let (attr, records) = self.attr_and_records(ino, u64::from(u32::MAX))?;
                if attr.typ != FileType::File {
                    return Err(VfsError::new(libc::EISDIR, "only files have local copies"));
                }
                (attr.length, records)
            }
        };
        let mut named = length.to_le_bytes().to_vec();
        for (index, records) in records.iter().enumerate() {
            named.extend_from_slice(format!("{index}:{records:?}").as_bytes());
        }
        let tag = tessera_blockcache::checksum::crc32c(&named);
        Ok((length, format!("{tag:08x}-{length}")))
    }

    /// The local copy of a file, if one matches the file as it is now.
    pub fn local_copy(&self, ino: Ino) -> Option<PathBuf> {
        let dir = self.copies_dir(ino)?;
        // Cheap first: no copy of this inode at all, no metadata reads.
        if !dir.is_dir() {
            return None;
        }
        let (_, name) = self.copy_name(ino).ok()?;
        let path = dir.join(name);
        if path.is_file() {
            return Some(path);
        }
        // The file changed since its copy was made: the copy is of no use.
        self.drop_local_copy(ino);
        None
    }

    /// Write a local copy of a file (its blocks come from the caches, or
    /// object storage for any not cached), replacing older copies of it.
    /// Returns the bytes written.
    pub fn make_local_copy(&self, ino: Ino) -> Result<u64> {
        let _span = tracing::debug_span!("make_local_copy", ino).entered();
        let dir = self.copies_dir(ino).ok_or_else(|| {
            VfsError::new(
                libc::EINVAL,
                "a local copy needs a disk cache (--cache-dir)",
            )
        })?;
        std::fs::create_dir_all(&dir).map_err(|e| VfsError::new(libc::EIO, e.to_string()))?;
        let (length, name) = self.copy_name(ino)?;
        let path = dir.join(&name);
        if path.is_file() {
            return Ok(length);
        }
        // Copies count against the disk cache's quota: refuse one that
        // cannot fit before writing a byte of it. A stale copy of this file
        // is about to give way to it, so its bytes are not in the way.
        if let Some(disk) = &self.chunks.disk {
            let stale = tessera_blockcache::copies_bytes(&dir);
            disk.copy_fits(length.saturating_sub(stale))
                .map_err(|e| VfsError::new(libc::ENOSPC, e.to_string()))?;
        }
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let written = (|| -> Result<()> {
            let io = |e: std::io::Error| VfsError::new(libc::EIO, e.to_string());
            let mut out = std::io::BufWriter::with_capacity(
                4 << 20,
                std::fs::File::create(&tmp).map_err(io)?,
            );
            let mut records = |index| Ok(std::sync::Arc::new(self.meta.read_chunk(ino, index)?));
            let step = self.chunks.config().block_size as u64;
            let mut off = 0;
            while off < length {
                let n = step.min(length - off);
                for span in
                    self.chunks
                        .read_committed(off, n as usize, Access::Sequential, &mut records)?
                {
                    match span {
                        Span::Data(b) => out.write_all(&b).map_err(io)?,
                        Span::Zero(z) => out.write_all(&vec![0u8; z]).map_err(io)?,
                    }
                }
                off += n;
            }
            out.into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        self.drop_local_copies_except(ino, Some(&name));
        if let Some(disk) = &self.chunks.disk {
            disk.add_copy(length);
        }
        Ok(length)
    }

    /// Remove every local copy of a file.
    pub fn drop_local_copy(&self, ino: Ino) {
        self.drop_local_copies_except(ino, None);
    }

    fn drop_local_copies_except(&self, ino: Ino, keep: Option<&str>) {
        let Some(dir) = self.copies_dir(ino) else {
            return;
        };
        let mut released = 0;
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if Some(name.as_str()) != keep {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                // Copies in progress were never counted.
                if std::fs::remove_file(e.path()).is_ok()
                    && !tessera_blockcache::is_temporary_copy(&name)
                {
                    released += len;
                }
            }
        }
        if let Some(disk) = &self.chunks.disk {
            disk.release_copy(released);
        }
        if keep.is_none() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
