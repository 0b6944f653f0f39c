//! Whole-file reads with O_DIRECT into page-aligned buffers that `Bytes`
//! can own, so a cached block travels from the disk to the FUSE reply
//! without passing through the page cache.

use std::alloc::Layout;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use bytes::Bytes;

const ALIGN: usize = 4096;

/// A page-aligned heap buffer, filled by the kernel.
struct Aligned {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

// SAFETY: the buffer is uniquely owned plain memory; once handed to Bytes it
// is only read.
unsafe impl Send for Aligned {}
unsafe impl Sync for Aligned {}

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by pread.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_MAX {
                pool.push(Free(self.ptr, self.layout));
                return;
            }
        }
        // SAFETY: allocated in `alloc_aligned` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Buffers freed lately, reused so that each block read does not fault in
/// (and the kernel zero) fresh pages.
struct Free(NonNull<u8>, Layout);
// SAFETY: a free buffer is owned by the pool alone.
unsafe impl Send for Free {}
static POOL: std::sync::Mutex<Vec<Free>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 32;

fn alloc_aligned(layout: Layout) -> std::io::Result<NonNull<u8>> {
    if let Ok(mut pool) = POOL.lock() {
        if let Some(i) = pool.iter().position(|f| f.1 == layout) {
            return Ok(pool.swap_remove(i).0);
        }
    }
    // SAFETY: the layout has a non-zero size.
    NonNull::new(unsafe { std::alloc::alloc(layout) })
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))
}

/// Read all of `path` with O_DIRECT. EINVAL means the file system does not
/// support it (tmpfs, for one); the caller falls back to buffered reads.
pub fn read(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let size = file.metadata()?.len() as usize;
    let cap = size.next_multiple_of(ALIGN).max(ALIGN);
    let layout = Layout::from_size_align(cap, ALIGN)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let ptr = alloc_aligned(layout)?;
    let mut buf = Aligned {
        ptr,
        layout,
        len: 0,
    };
    while buf.len < size {
        // Reads stay aligned: every read but the last returns whole pages.
        // SAFETY: the destination lies within the allocation (cap >= size).
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.ptr.as_ptr().add(buf.len).cast(),
                cap - buf.len,
                buf.len as libc::off_t,
            )
        };
        match n {
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => break,
            n => buf.len += n as usize,
        }
    }
    buf.len = buf.len.min(size);
    Ok(Bytes::from_owner(buf))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_unaligned_sizes_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        for len in [1usize, 4095, 4096, 4097, 100_003] {
            let p = dir.path().join(format!("f{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            std::fs::write(&p, &data).expect("write");
            match super::read(&p) {
                Ok(b) => assert_eq!(&b[..], &data[..]),
                // No O_DIRECT on this file system (tmpfs): nothing to check.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => panic!("{e}"),
            }
        }
    }
}
