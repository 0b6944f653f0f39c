//! Page-aligned block buffers, recycled through a small pool.
//!
//! A block travels from the network (or the disk cache) to the memory
//! tier, the disk cache and the FUSE reply as one [`Bytes`]. Giving it a
//! page-aligned home does two things: the disk cache can write and read it
//! with `O_DIRECT` (no copy through the page cache, no dirty pages for the
//! kernel to flush on the cores the reader needs), and a buffer freed by
//! the memory tier is handed to the next block instead of the allocator
//! returning it to the kernel, which would fault in and zero fresh pages
//! for every block. Block-sized buffers are their own mappings, in huge
//! pages where the kernel allows.

use parking_lot::Mutex;
use std::alloc::Layout;
use std::ptr::NonNull;

use bytes::Bytes;

/// Alignment of every buffer: a page, which `O_DIRECT` accepts on every
/// Linux file system that supports it.
pub const ALIGN: usize = 4096;

/// Buffers kept for reuse at most (blocks are mostly one size).
const POOL_MAX: usize = 32;

/// Smaller buffers are not pooled: the allocator keeps and reuses memory
/// of that size by itself, and they would crowd out the block-sized ones.
const POOL_MIN: usize = 1 << 20;

/// Room allocated beyond what is asked for, about 1/64 of it: a block and
/// the same block with its checksum trailer (as the disk cache reads it)
/// then fit the same recycled buffers.
fn slack(want: usize) -> usize {
    (want / 64).next_multiple_of(ALIGN)
}

/// A free buffer, owned by the pool alone, with how many of its leading
/// bytes were ever written (initialised).
struct Free(NonNull<u8>, Layout, usize);
// SAFETY: a pooled buffer is plain memory no one else points into.
unsafe impl Send for Free {}

static POOL: Mutex<Vec<Free>> = Mutex::new(Vec::new());

/// A page-aligned buffer, fresh or recycled. Fill it through
/// [`AlignedBuf::copy_of`], [`AlignedBuf::writable`] (a `Read::read`
/// target) or [`AlignedBuf::as_mut_ptr`] (a `pread`), then
/// [`AlignedBuf::freeze`] it into `Bytes`; when the last `Bytes` is dropped
/// the memory goes back to the pool.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Bytes that make up the contents.
    len: usize,
    /// Leading bytes ever written (by us or an earlier user of the memory):
    /// only these may be borrowed as `&[u8]`.
    init: usize,
}

// SAFETY: the buffer is uniquely owned memory; once frozen it is only read.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read it (writing takes `&mut self`).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer with room for at least `capacity` bytes (whole
    /// pages, a little more for a fresh one: see `slack`). Its memory is
    /// not cleared again: nothing is read from it before it is written.
    pub fn with_capacity(capacity: usize) -> std::io::Result<Self> {
        let want = capacity.next_multiple_of(ALIGN).max(ALIGN);
        let most = want + 2 * slack(want);
        // Only buffers of POOL_MIN or more are ever pooled (see Drop).
        let pooled = most >= POOL_MIN;
        let recycled = pooled.then(|| POOL.lock()).and_then(|mut pool| {
            let i = pool
                .iter()
                .position(|f| (want..=most).contains(&f.1.size()))?;
            let f = pool.swap_remove(i);
            Some((f.0, f.1, f.2))
        });
        let (ptr, layout, init) = match recycled {
            Some(p) => p,
            None => Self::fresh(want + slack(want))?,
        };
        Ok(Self {
            ptr,
            layout,
            len: 0,
            init,
        })
    }

    /// A new buffer of `cap` bytes (whole pages) with how many of them are
    /// known to be written. Block-sized ones are mapped straight from the
    /// kernel: on a huge-page boundary and asking for huge pages (the
    /// receive copy, CRC32C and the FUSE reply then walk a block with a
    /// TLB entry per 2 MiB instead of per 4 KiB, and it faults in twice,
    /// not a thousand times), and already zeroed by the kernel, so
    /// [`Self::writable`] does not clear it a second time.
    fn fresh(cap: usize) -> std::io::Result<(NonNull<u8>, Layout, usize)> {
        let layout = Layout::from_size_align(cap, ALIGN)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        if cap >= POOL_MIN {
            return Ok((map(cap)?, layout, cap));
        }
        // SAFETY: the layout has a non-zero size (cap >= ALIGN).
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        Ok((ptr, layout, 0))
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
        buf.init = buf.init.max(buf.len);
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

    /// Declare the first `len` bytes written through [`Self::as_mut_ptr`].
    ///
    /// # Safety
    /// `len <= capacity()` and every byte below `len` has been written.
    pub unsafe fn assume_init(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        self.len = len;
        self.init = self.init.max(len);
    }

    /// The first `upto` bytes (at most the capacity) to write into, say
    /// with `Read::read`. Memory never written before is zeroed first —
    /// once in a buffer's life, not once per block, as buffers are reused.
    pub fn writable(&mut self, upto: usize) -> &mut [u8] {
        let upto = upto.min(self.capacity());
        if upto > self.init {
            // SAFETY: `init..upto` lies within the allocation.
            unsafe {
                std::ptr::write_bytes(self.ptr.as_ptr().add(self.init), 0, upto - self.init);
            }
            self.init = upto;
        }
        // SAFETY: the first `upto` bytes are initialised (above).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), upto) }
    }

    /// Make the first `len` bytes the contents (at most what was ever
    /// written: see [`Self::writable`]).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.init);
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= init`: every byte read was written.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.layout.size() < POOL_MIN {
            // SAFETY: allocated in `fresh` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
            return;
        }
        {
            let mut pool = POOL.lock();
            if pool.len() < POOL_MAX {
                pool.push(Free(self.ptr, self.layout, self.init));
                return;
            }
        }
        unmap(self.ptr, self.layout.size());
    }
}

/// Huge pages, where the kernel has them for this process (transparent
/// huge pages in `always` or `madvise` mode).
const HUGE_PAGE: usize = 2 << 20;

/// `len` bytes (whole pages) of zeroed anonymous memory; from 2 MiB up it
/// starts on a 2 MiB boundary with huge pages asked for.
fn map(len: usize) -> std::io::Result<NonNull<u8>> {
    let extra = if len >= HUGE_PAGE { HUGE_PAGE } else { 0 };
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + extra,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base as usize;
    let start = base.next_multiple_of(extra.max(ALIGN));
    // SAFETY: the head and tail trimmed lie inside the mapping just made
    // and outside [start, start + len).
    unsafe {
        if start > base {
            libc::munmap(base as *mut libc::c_void, start - base);
        }
        let end = start + len;
        if base + len + extra > end {
            libc::munmap(end as *mut libc::c_void, base + len + extra - end);
        }
        let whole = len / HUGE_PAGE * HUGE_PAGE;
        if whole > 0 {
            // A hint: refused (huge pages off), the memory is ordinary pages.
            libc::madvise(start as *mut libc::c_void, whole, libc::MADV_HUGEPAGE);
        }
    }
    NonNull::new(start as *mut u8)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))
}

fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: `ptr..ptr + len` is a mapping made by `map` that nothing
    // refers to any more (its buffer is being dropped).
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
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
        let data = vec![7u8; 2 << 20];
        let a = AlignedBuf::copy_of(&data[..]).expect("alloc");
        assert_eq!(a.len(), 2 << 20);
        assert!(a.capacity() >= 2 << 20 && a.capacity() % ALIGN == 0);
        let b = a.freeze();
        assert!(is_aligned(&b));
        assert!(b.iter().all(|&x| x == 7));
        let addr = b.as_ptr() as usize;
        drop(b);
        // A block-sized buffer comes back from the pool, empty.
        let again = AlignedBuf::with_capacity((2 << 20) - 5000).expect("alloc");
        assert_eq!(again.as_ref().as_ptr() as usize, addr);
        assert!(again.is_empty());
        // Small ones are left to the allocator, but aligned all the same.
        let small = AlignedBuf::copy_of(&[1u8; 10_000][..]).expect("alloc");
        assert!(is_aligned(small.as_ref()) && small.capacity() >= 10_000);
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
        assert!(empty.capacity() >= ALIGN);
    }

    #[test]
    fn a_block_and_the_block_with_its_trailer_share_buffers() {
        let block = 4 << 20;
        let a = AlignedBuf::with_capacity(block).expect("alloc");
        let addr = a.ptr.as_ptr() as usize;
        drop(a);
        let b = AlignedBuf::with_capacity(block + 520).expect("alloc");
        assert_eq!(b.ptr.as_ptr() as usize, addr, "reused for the larger read");
        drop(b);
        let c = AlignedBuf::with_capacity(block).expect("alloc");
        assert_eq!(c.ptr.as_ptr() as usize, addr, "and back");
    }

    #[test]
    fn block_sized_buffers_are_huge_page_aligned_mappings_and_zeroed() {
        // A size no other test uses, so the buffer is fresh.
        let mut b = AlignedBuf::with_capacity((6 << 20) + 12_345).expect("map");
        assert_eq!(b.ptr.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(b.capacity() >= (6 << 20) + 12_345);
        // Fresh from the kernel: all of it counts as written, and is zero.
        let w = b.writable(b.capacity());
        assert!(w.iter().all(|&x| x == 0));
        w[HUGE_PAGE] = 9;
        b.set_len(HUGE_PAGE + 1);
        let frozen = b.freeze();
        assert_eq!(frozen[HUGE_PAGE], 9);
        // Dropped beyond the pool or into it, the mapping is given back or
        // kept whole: a new one of the same size is aligned all the same.
        drop(frozen);
        let again = AlignedBuf::with_capacity(6 << 20).expect("map");
        assert_eq!(again.ptr.as_ptr() as usize % HUGE_PAGE, 0);
    }

    #[test]
    fn never_written_memory_is_zeroed_before_it_is_lent() {
        // A size no other test uses, so the buffer is fresh.
        let mut b = AlignedBuf::with_capacity(40_000).expect("alloc");
        let w = b.writable(30_000);
        assert!(w.iter().all(|&x| x == 0));
        w[..3].copy_from_slice(b"abc");
        // The length cannot claim more than was ever written.
        b.set_len(1 << 20);
        assert_eq!(b.len(), 30_000);
        b.set_len(3);
        assert_eq!(&b.freeze()[..], b"abc");
    }
}
