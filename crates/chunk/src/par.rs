//! Bounded parallel loops over a slice: a fixed number of scoped threads,
//! each taking the next item nobody has taken yet. For blocking work
//! (metadata transactions, file I/O, control ioctls) done item by item.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Run `f` on every item, on at most `threads` threads (at least one).
pub fn par_for_each<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    f(item);
                }
            });
        }
    });
}

/// `f` of every item, in the items' order, computed on at most `threads`
/// threads.
pub fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let slots: Vec<parking_lot::Mutex<Option<R>>> = items
        .iter()
        .map(|_| parking_lot::Mutex::new(None))
        .collect();
    let indexed: Vec<(usize, &T)> = items.iter().enumerate().collect();
    par_for_each(&indexed, threads, |&(i, item)| {
        let r = f(item);
        {
            let mut slot = slots[i].lock();
            *slot = Some(r);
        }
    });
    slots.into_iter().filter_map(|s| s.into_inner()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_item_once_on_the_threads_asked_for() {
        let items: Vec<u64> = (0..1000).collect();
        let sum = std::sync::atomic::AtomicU64::new(0);
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        par_for_each(&items, 3, |&x| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            sum.fetch_add(x, Ordering::Relaxed);
            running.fetch_sub(1, Ordering::SeqCst);
        });
        assert_eq!(sum.into_inner(), 999 * 1000 / 2);
        assert!(most.into_inner() <= 3);
        assert_eq!(
            par_map(&items, 4, |x| x * 2),
            (0..1000).map(|x| x * 2).collect::<Vec<_>>()
        );
        par_for_each(&Vec::<u8>::new(), 0, |_| unreachable!("no items"));
    }
}
