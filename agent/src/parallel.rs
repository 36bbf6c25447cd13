//! Blocking work spread over a few threads: the one way Periscope runs a list of blocking jobs
//! (hashing files back from disk, fsyncing a tree) on more than one core or disk queue.
//!
//! Each thread takes the next item until none are left; the first error stops every thread
//! from taking more, since the caller fails whatever the others would find. This module never
//! decides how many threads are right: its callers do.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `job` on every item, on at most `threads` threads (the calling one included); returns the
/// first error any thread met. Items after an error may not be run.
pub fn try_for_each<T: Sync, E: Send>(
    items: &[T],
    threads: usize,
    job: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let worker = || -> Result<(), E> {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return Ok(());
            };
            if let Err(e) = job(item) {
                next.store(items.len(), Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads.clamp(1, items.len().max(1)))
            .map(|_| scope.spawn(worker))
            .collect();
        let mut result = worker();
        for h in handles {
            // A job only panics on a bug; pass the panic on rather than hide it.
            let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            result = result.and(r);
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_item_once_and_reports_an_error() {
        let seen = std::sync::Mutex::new(Vec::new());
        try_for_each(&(0..100).collect::<Vec<u32>>(), 4, |i| {
            seen.lock().unwrap().push(*i);
            Ok::<(), ()>(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        let failed = try_for_each(&[1, 2, 3], 2, |i| if *i == 2 { Err(*i) } else { Ok(()) });
        assert_eq!(failed, Err(2));
        assert_eq!(try_for_each(&[] as &[u8], 0, |_| Err(())), Ok(()));
    }
}
