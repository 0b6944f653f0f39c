//! Cache-control requests as a mount receives them from `tessera warmup`
//! (warm, check, evict, unpin a range; write a file's local copy), and the
//! workers that do them off the request threads.
//!
//! The adapter decodes a request and hands it to [`Vfs::submit_cache_control`];
//! the answer comes back through a callback, so no FUSE worker waits on
//! object storage. Foreground requests (the command waits for each range's
//! report) run on a pool of up to [`FOREGROUND_WORKERS`] threads; background
//! ones (`--background`: answered at once, done later) on a pool of
//! [`BACKGROUND_WORKERS`], so queued warm-ups never hold back a command
//! that waits. Threads start on first use and end with the [`Vfs`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;
use tessera_chunk::{CacheAction, CacheReport};
use tessera_meta::{CloneReport, Ctx, Ino, RemoveReport};
use tracing::warn;

use crate::{Result, Vfs};

/// Threads that answer requests the command waits for; `tessera warmup`
/// keeps 8 ranges in flight by default.
pub const FOREGROUND_WORKERS: usize = 16;
/// Threads that work through background warm-ups, one range at a time each.
pub const BACKGROUND_WORKERS: usize = 4;

/// What a request asks of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    Check,
    Warm {
        pin: Option<Duration>,
    },
    Evict,
    Unpin,
    /// Write the whole file's local copy, for kernel passthrough reads.
    LocalCopy,
}

/// One cache-control request for a range of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub op: ControlOp,
    pub offset: u64,
    pub length: u64,
    /// Act through this cache group: each block's owner does the work.
    pub group: Option<String>,
    /// Queue the work and answer at once.
    pub background: bool,
}

impl CacheControl {
    /// The block-cache action behind the request.
    pub fn action(&self) -> CacheAction {
        match (self.op, self.group.is_some()) {
            (ControlOp::Warm { .. }, true) => CacheAction::GroupWarm,
            (ControlOp::Check, true) => CacheAction::GroupCheck,
            (ControlOp::Evict, true) => CacheAction::GroupEvict,
            (ControlOp::Check | ControlOp::LocalCopy, _) => CacheAction::Check,
            (ControlOp::Evict, false) => CacheAction::Evict,
            (ControlOp::Unpin, _) => CacheAction::Unpin,
            (ControlOp::Warm { pin }, false) => CacheAction::Warm { pin },
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads, started as work arrives, up to a bound, that pull jobs from one
/// queue. They end when the pool is dropped.
pub(crate) struct WorkPool {
    name: &'static str,
    max: usize,
    state: Mutex<PoolState>,
    idle: Arc<AtomicUsize>,
}

struct PoolState {
    tx: Option<mpsc::Sender<Job>>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    threads: usize,
}

impl WorkPool {
    pub(crate) fn new(name: &'static str, max: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        WorkPool {
            name,
            max: max.max(1),
            state: Mutex::new(PoolState {
                tx: Some(tx),
                rx: Arc::new(Mutex::new(rx)),
                threads: 0,
            }),
            idle: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Queue `job`, starting a thread when none is idle and the bound
    /// allows. Fails only when no thread runs and none can be started.
    pub(crate) fn submit(&self, job: Job) -> std::io::Result<()> {
        let mut state = self.state.lock();
        if self.idle.load(Ordering::Acquire) == 0 && state.threads < self.max {
            let (rx, idle) = (state.rx.clone(), self.idle.clone());
            let started = std::thread::Builder::new()
                .name(format!("{}-{}", self.name, state.threads))
                .spawn(move || loop {
                    idle.fetch_add(1, Ordering::AcqRel);
                    let next = rx.lock().recv();
                    idle.fetch_sub(1, Ordering::AcqRel);
                    match next {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            match started {
                Ok(_) => state.threads += 1,
                Err(e) if state.threads == 0 => return Err(e),
                Err(e) => warn!(pool = self.name, error = %e, "cannot start another worker"),
            }
        }
        let tx = state
            .tx
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the pool is stopped"))?;
        tx.send(job)
            .map_err(|_| std::io::Error::other("the pool's workers are gone"))
    }

    #[cfg(test)]
    fn threads(&self) -> usize {
        self.state.lock().threads
    }
}

impl Drop for WorkPool {
    fn drop(&mut self) {
        // Closing the queue ends every idle worker.
        self.state.lock().tx = None;
    }
}

/// The two pools of one mount's cache control.
pub(crate) struct ControlWorkers {
    foreground: WorkPool,
    pub(crate) background: WorkPool,
}

impl Default for ControlWorkers {
    fn default() -> Self {
        ControlWorkers {
            foreground: WorkPool::new("cache-control", FOREGROUND_WORKERS),
            background: WorkPool::new("warmup", BACKGROUND_WORKERS),
        }
    }
}

/// Run `work` on `pool` and hand its result to `done`; when the job
/// cannot be queued (no thread could start), `done` hears that instead.
fn answer_on<R: Send + 'static>(
    pool: &WorkPool,
    work: impl FnOnce() -> Result<R> + Send + 'static,
    done: impl FnOnce(Result<R>) + Send + 'static,
) {
    // `done` moves into the job; a job that cannot be queued is dropped
    // unrun, so the failure is answered through a shared slot.
    let done = Arc::new(Mutex::new(Some(done)));
    let answer = done.clone();
    let queued = pool.submit(Box::new(move || {
        let r = work();
        if let Some(done) = answer.lock().take() {
            done(r);
        }
    }));
    if let Err(e) = queued {
        if let Some(done) = done.lock().take() {
            done(Err(crate::VfsError::new(
                libc::EAGAIN,
                format!("no worker: {e}"),
            )));
        }
    }
}

impl Vfs {
    /// Do a cache-control request now, on this thread.
    pub fn cache_control(&self, ino: Ino, req: &CacheControl) -> Result<CacheReport> {
        if let Some(refused) = self.refuse_group(req.group.as_deref()) {
            return Ok(refused);
        }
        match req.op {
            ControlOp::LocalCopy => {
                let n = self.make_local_copy(ino)?;
                return Ok(CacheReport {
                    bytes: n,
                    cached: n,
                    ..Default::default()
                });
            }
            // An evicted file's local copy goes too; through the group the
            // request is about the members' caches, not this mount's disk.
            ControlOp::Evict if req.group.is_none() => self.drop_local_copy(ino),
            _ => {}
        }
        self.cache_range(ino, req.offset, req.length, req.action())
    }

    /// A report that refuses a request for a cache group this mount is not
    /// in, naming the group it is in.
    fn refuse_group(&self, wanted: Option<&str>) -> Option<CacheReport> {
        let wanted = wanted?;
        let mine = self.chunks.group().map(|g| g.name().to_string());
        if mine.as_deref() == Some(wanted) {
            return None;
        }
        Some(CacheReport {
            failed_blocks: 1,
            error: Some(match mine {
                Some(g) => format!("this mount is in cache group {g:?}, not {wanted:?}"),
                None => format!(
                    "this mount is not in cache group {wanted:?} (mount it with --cache-group)"
                ),
            }),
            ..Default::default()
        })
    }

    /// Do a cache-control request on the mount's workers and hand `done`
    /// its report: when the work is done, or at once for a background
    /// request (whose failures are logged).
    pub fn submit_cache_control(
        self: &Arc<Self>,
        ino: Ino,
        req: CacheControl,
        done: impl FnOnce(Result<CacheReport>) + Send + 'static,
    ) {
        let pool_error =
            |e: std::io::Error| crate::VfsError::new(libc::EAGAIN, format!("no worker: {e}"));
        if req.background {
            if let Some(refused) = self.refuse_group(req.group.as_deref()) {
                return done(Ok(refused));
            }
            let vfs = self.clone();
            let queued = self.control.background.submit(Box::new(move || {
                match vfs.cache_control(ino, &req) {
                    Ok(rep) if rep.failed_blocks > 0 => warn!(
                        ino,
                        failed = rep.failed_blocks,
                        error = rep.error.as_deref().unwrap_or(""),
                        "background warm-up could not fetch every block"
                    ),
                    Ok(_) => {}
                    Err(e) => warn!(ino, error = %e.reason, "background warm-up failed"),
                }
            }));
            return done(queued.map(|()| CacheReport::default()).map_err(pool_error));
        }
        let vfs = self.clone();
        answer_on(
            &self.control.foreground,
            move || vfs.cache_control(ino, &req),
            done,
        );
    }
}

impl Vfs {
    /// Clone `src` (a file, symlink or directory tree) as `name` in
    /// `parent`, as metadata only (`tessera clone`; see
    /// `Meta::clone_tree`). Writes this mount still buffers are flushed
    /// first, so the clone holds every byte written before the request.
    pub fn clone_entry(
        &self,
        ctx: &Ctx,
        src: Ino,
        parent: Ino,
        name: &[u8],
        preserve: bool,
    ) -> Result<CloneReport> {
        let _span = tracing::debug_span!("clone", src, parent).entered();
        self.metrics().op("clone");
        self.writable()?;
        let open: Vec<_> = self
            .open_files
            .lock()
            .iter()
            .map(|(ino, of)| (*ino, of.clone()))
            .collect();
        for (ino, of) in open {
            if of.writer.has_dirty() {
                self.flush_file(ino, &of)?;
            }
        }
        Ok(self.meta.clone_tree(ctx, src, parent, name, preserve)?)
    }

    /// Remove `name` in `parent` with everything under it, in the engine
    /// (`tessera rmr`), as `ctx` may.
    pub fn remove_tree(&self, ctx: &Ctx, parent: Ino, name: &[u8]) -> Result<RemoveReport> {
        let _span = tracing::debug_span!("rmr", parent).entered();
        self.metrics().op("rmr");
        self.writable()?;
        self.forget_all_opens();
        let r = self.meta.remove_tree(ctx, parent, name)?;
        if r.files > 0 {
            self.send(crate::Work::Clean);
        }
        Ok(r)
    }

    /// [`Vfs::remove_tree`] on the mount's workers.
    pub fn submit_remove_tree(
        self: &Arc<Self>,
        ctx: Ctx,
        parent: Ino,
        name: Vec<u8>,
        done: impl FnOnce(Result<RemoveReport>) + Send + 'static,
    ) {
        let vfs = self.clone();
        answer_on(
            &self.control.foreground,
            move || vfs.remove_tree(&ctx, parent, &name),
            done,
        );
    }

    /// Put trashed file `name` of trash hour directory `hour_dir` back
    /// where it was (`tessera restore`); returns that directory and name.
    pub fn restore(&self, ctx: &Ctx, hour_dir: Ino, name: &[u8]) -> Result<(Ino, Vec<u8>)> {
        self.metrics().op("restore");
        self.writable()?;
        Ok(self.meta.restore(ctx, hour_dir, name)?)
    }

    /// [`Vfs::restore`] on the mount's workers.
    pub fn submit_restore(
        self: &Arc<Self>,
        ctx: Ctx,
        hour_dir: Ino,
        name: Vec<u8>,
        done: impl FnOnce(Result<(Ino, Vec<u8>)>) + Send + 'static,
    ) {
        let vfs = self.clone();
        answer_on(
            &self.control.foreground,
            move || vfs.restore(&ctx, hour_dir, &name),
            done,
        );
    }

    /// [`Vfs::clone_entry`] on the mount's workers; `done` gets the result.
    pub fn submit_clone(
        self: &Arc<Self>,
        ctx: Ctx,
        src: Ino,
        parent: Ino,
        name: Vec<u8>,
        preserve: bool,
        done: impl FnOnce(Result<CloneReport>) + Send + 'static,
    ) {
        let vfs = self.clone();
        answer_on(
            &self.control.foreground,
            move || vfs.clone_entry(&ctx, src, parent, &name, preserve),
            done,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_pool_grows_to_its_bound_and_runs_every_job() {
        let pool = WorkPool::new("test", 3);
        let done = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(std::sync::Barrier::new(4));
        for _ in 0..3 {
            let (done, gate) = (done.clone(), gate.clone());
            pool.submit(Box::new(move || {
                gate.wait();
                done.fetch_add(1, Ordering::SeqCst);
            }))
            .unwrap();
        }
        // Three jobs wait at the barrier on three threads, so a fourth job
        // queues without a fourth thread.
        let d = done.clone();
        pool.submit(Box::new(move || {
            d.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        assert_eq!(pool.threads(), 3);
        gate.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn idle_threads_are_reused() {
        let pool = WorkPool::new("test", 8);
        for _ in 0..20 {
            let (tx, rx) = mpsc::channel();
            pool.submit(Box::new(move || tx.send(()).unwrap())).unwrap();
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
            // Let the worker go back to waiting before the next job.
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(pool.threads() <= 2, "threads: {}", pool.threads());
    }

    #[test]
    fn requests_map_to_their_cache_actions() {
        let req = |op, group: Option<&str>| CacheControl {
            op,
            offset: 0,
            length: 1,
            group: group.map(str::to_string),
            background: false,
        };
        let pin = Some(Duration::from_secs(60));
        assert_eq!(
            req(ControlOp::Warm { pin }, None).action(),
            CacheAction::Warm { pin }
        );
        assert_eq!(
            req(ControlOp::Warm { pin }, Some("g")).action(),
            CacheAction::GroupWarm
        );
        assert_eq!(req(ControlOp::Evict, None).action(), CacheAction::Evict);
        assert_eq!(
            req(ControlOp::Evict, Some("g")).action(),
            CacheAction::GroupEvict
        );
        assert_eq!(
            req(ControlOp::Check, Some("g")).action(),
            CacheAction::GroupCheck
        );
        assert_eq!(req(ControlOp::LocalCopy, None).action(), CacheAction::Check);
        assert_eq!(
            req(ControlOp::Unpin, Some("g")).action(),
            CacheAction::Unpin
        );
    }
}
