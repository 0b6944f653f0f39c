//! Block caches. Blocks are immutable and named by their object key, so a
//! cached copy is never stale; the only invalidation is deletion of a slice.
//!
//! * [`MemCache`]: the memory tier, bounded by `--mem-cache-size`.
//! * [`DiskCache`]: the disk tier (`--cache-dir`), checksummed files that
//!   survive restarts, and the write-back staging area.
//! * [`Eviction`]: the policies both tiers share (2-random, LRU, S3-FIFO).
//! * [`gc`]: bringing a cache directory under a size from outside a mount.

pub mod checksum;
mod direct;
mod disk;
mod evict;
pub mod gc;
mod mem;

pub use disk::{copies_bytes, is_temporary_copy, DiskCache, DiskCacheConfig};
pub use evict::Eviction;
pub use mem::MemCache;
