//! Idle connections kept for reuse, shared by the engines that hold one
//! connection per transaction (SQLite, Redis, PostgreSQL).

use parking_lot::Mutex;

use crate::Result;

/// Connections kept beyond this are closed when returned.
const MAX_IDLE: usize = 64;

pub(crate) struct Pool<C> {
    idle: Mutex<Vec<C>>,
}

impl<C> Pool<C> {
    pub fn new() -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that `usable` accepts, or a new one from `connect`.
    pub fn take(
        &self,
        usable: impl Fn(&C) -> bool,
        connect: impl FnOnce() -> Result<C>,
    ) -> Result<C> {
        loop {
            let pooled = self.idle.lock().pop();
            match pooled {
                Some(c) if usable(&c) => return Ok(c),
                Some(_) => continue, // broken: drop it, look at the next
                None => return connect(),
            }
        }
    }

    /// Return a connection that is in a clean state (no open transaction).
    pub fn put_back(&self, c: C) {
        {
            let mut p = self.idle.lock();
            if p.len() < MAX_IDLE {
                p.push(c);
            }
        }
    }
}
