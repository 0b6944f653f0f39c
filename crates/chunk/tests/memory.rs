//! The writer's memory stays within the mount's budgets under random small
//! writes (the pages an mmap writer dirties): counted with a global
//! allocator that tracks live heap bytes, not with the writer's own books.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tessera_chunk::writer::FileWriter;
use tessera_chunk::{ChunkConfig, ChunkStore};
use tessera_meta::{Meta, MetaConfig};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter only adds and subtracts the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn random_page_writes_stay_within_the_buffer_and_memory_cache_budgets() {
    const PAGE: usize = 4096;
    const SPAN: u64 = 256 << 20;
    const BUFFER: usize = 8 << 20;
    const MEM_CACHE: usize = 16 << 20;
    let meta = Arc::new(Meta::new(
        Arc::new(tessera_meta::engines::MemoryEngine::default()),
        MetaConfig::default(),
    ));
    meta.init(&tessera_meta::conformance::test_format())
        .expect("format");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let chunks = ChunkStore::new(
        tessera_object::open_store("mem://", &Default::default()).expect("store"),
        meta.clone(),
        rt.handle().clone(),
        ChunkConfig {
            volume: "t".into(),
            uuid: "uuid-memory".into(),
            block_size: 4 << 20,
            buffer_size: BUFFER,
            mem_cache_size: MEM_CACHE,
            prefetch: false,
            ..Default::default()
        },
        Arc::new(tessera_metrics::Metrics::new()),
    )
    .expect("chunk store");
    let (ino, _) = meta
        .mknod(
            &tessera_meta::Ctx::ROOT,
            tessera_meta::ROOT_INO,
            b"f",
            tessera_meta::FileType::File,
            0o644,
            0,
            None,
        )
        .expect("file");
    let writer = FileWriter::new(ino, chunks);
    let baseline = LIVE.load(Ordering::Relaxed);
    let mut peak = 0usize;
    let page = vec![0xa5u8; PAGE];
    // A fixed odd stride visits distinct pages in a scattered order.
    let pages = SPAN / PAGE as u64;
    for i in 0..16_384u64 {
        let at = (i * 7919 % pages) * PAGE as u64;
        if writer.write(at, &page).expect("write") {
            writer.flush().expect("flush over budget");
        }
        peak = peak.max(LIVE.load(Ordering::Relaxed).saturating_sub(baseline));
    }
    writer.flush().expect("final flush");
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
    // Buffers, the memory cache, slice bookkeeping and the in-memory
    // object store's copies of what was written (64 MiB of pages) aside,
    // little else may stay: 32 MiB of slack over the two budgets.
    let stored = 16_384 * PAGE;
    let limit = BUFFER + MEM_CACHE + stored + (32 << 20);
    eprintln!("peak {} MiB live, {} MiB after", peak >> 20, held >> 20);
    assert!(
        peak <= limit,
        "peak {peak} bytes live, limit {limit} (after: {held})"
    );
}
