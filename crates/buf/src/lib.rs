//! Page-aligned block buffers, recycled through a small pool.
//!
//! A block travels from the network (or the disk cache) to the memory
//! tier, the disk cache and the FUSE reply as one [`Bytes`]. Giving it a
//! page-aligned home does two things: the disk cache can write and read it
//! with `O_DIRECT` (no copy through the page cache, no dirty pages for the
//! kernel to flush on the cores the reader needs), and a buffer freed by
//! the memory tier is handed to the next block instead of the allocator
//! returning it to the kernel, which would fault in and zero fresh pages
//! for every block.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Mutex;

use bytes::Bytes;

/// Alignment of every buffer: a page, which `O_DIRECT` accepts on every
/// Linux file system that supports it.
pub const ALIGN: usize = 4096;

/// Buffers kept for reuse at most (of any size; blocks are mostly one size).
const POOL_MAX: usize = 64;

/// A free buffer, owned by the pool alone.
struct Free(NonNull<u8>, Layout);
// SAFETY: a pooled buffer is plain memory no one else points into.
unsafe impl Send for Free {}

static POOL: Mutex<Vec<Free>> = Mutex::new(Vec::new());

/// A page-aligned buffer, fresh or recycled. Fill it through
/// [`AlignedBuf::copy_of`] or through [`AlignedBuf::as_mut_ptr`] and
/// [`AlignedBuf::set_len`], then [`AlignedBuf::freeze`] it into `Bytes`;
/// when the last `Bytes` is dropped the memory goes back to the pool.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Bytes written so far (the only ones ever read).
    len: usize,
}

// SAFETY: the buffer is uniquely owned memory; once frozen it is only read.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer with room for at least `capacity` bytes (rounded up
    /// to whole pages). Its memory is not cleared: nothing is read from it
    /// before it is written.
    pub fn with_capacity(capacity: usize) -> std::io::Result<Self> {
        let cap = capacity.next_multiple_of(ALIGN).max(ALIGN);
        let layout = Layout::from_size_align(cap, ALIGN)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let recycled = POOL.lock().ok().and_then(|mut pool| {
            let i = pool.iter().position(|f| f.1 == layout)?;
            Some(pool.swap_remove(i).0)
        });
        let ptr = match recycled {
            Some(p) => p,
            // SAFETY: the layout has a non-zero size (cap >= ALIGN).
            None => NonNull::new(unsafe { std::alloc::alloc(layout) })
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?,
        };
        Ok(Self {
            ptr,
            layout,
            len: 0,
        })
    }

    /// A copy of `data` (one slice or a rope of chunks) in an aligned buffer.
    pub fn copy_of(mut data: impl bytes::Buf) -> std::io::Result<Self> {
        let mut buf = Self::with_capacity(data.remaining())?;
        while data.has_remaining() {
            let chunk = data.chunk();
            // SAFETY: the allocation holds `remaining()` bytes past `len`,
            // and a chunk is at most what remains; source and destination
            // are distinct allocations.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    chunk.as_ptr(),
                    buf.ptr.as_ptr().add(buf.len),
                    chunk.len(),
                );
            }
            buf.len += chunk.len();
            let n = chunk.len();
            data.advance(n);
        }
        Ok(buf)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole allocation in bytes (whole pages).
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// Where the kernel (a `pread`) may write up to [`Self::capacity`] bytes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Declare the first `len` bytes written.
    ///
    /// # Safety
    /// `len <= capacity()` and every byte below `len` has been written
    /// through [`Self::as_mut_ptr`] (or by `copy_of`).
    pub unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        self.len = len;
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_MAX {
                pool.push(Free(self.ptr, self.layout));
                return;
            }
        }
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Whether `data` starts on a page boundary (so its whole pages can be
/// written with `O_DIRECT`).
pub fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize) % ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let a = AlignedBuf::copy_of(&[7u8; 10_000][..]).expect("alloc");
        assert_eq!(a.len(), 10_000);
        assert_eq!(a.capacity(), 12_288);
        let b = a.freeze();
        assert!(is_aligned(&b));
        assert!(b.iter().all(|&x| x == 7));
        let addr = b.as_ptr() as usize;
        drop(b);
        // The same size comes back from the pool, empty.
        let again = AlignedBuf::with_capacity(9_000).expect("alloc");
        assert_eq!(again.as_ref().as_ptr() as usize, addr);
        assert!(again.is_empty());
    }

    #[test]
    fn copies_a_rope_of_chunks() {
        use bytes::Buf;
        let rope = Bytes::from_static(b"hello ").chain(Bytes::from_static(b"world"));
        let b = AlignedBuf::copy_of(rope).expect("copy").freeze();
        assert_eq!(&b[..], b"hello world");
        assert!(is_aligned(&b));
        let empty = AlignedBuf::with_capacity(0).expect("alloc");
        assert!(empty.is_empty());
        assert_eq!(empty.capacity(), ALIGN);
    }
}
