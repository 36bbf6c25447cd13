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
    try_for_each_with(items, threads, || Ok(()), |_, item| job(item))
}

/// Like [`try_for_each`], for jobs that need a thread's own state (a handle that may not be
/// shared between threads): each thread makes one with `init` before its first item.
pub fn try_for_each_with<T: Sync, S, E: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> Result<S, E> + Sync,
    job: impl Fn(&mut S, &T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let worker = || -> Result<(), E> {
        let mut state = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return Ok(());
            };
            let ran = match &mut state {
                Some(state) => job(state, item),
                None => init().and_then(|s| job(state.insert(s), item)),
            };
            if let Err(e) = ran {
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

    #[test]
    fn each_thread_makes_its_state_once() {
        let made = AtomicUsize::new(0);
        let sums = std::sync::Mutex::new(Vec::new());
        try_for_each_with(
            &(1..=100).collect::<Vec<u32>>(),
            3,
            || {
                made.fetch_add(1, Ordering::Relaxed);
                Ok::<_, ()>(Counter(0, &sums))
            },
            |counter, i| {
                counter.0 += i;
                Ok(())
            },
        )
        .unwrap();
        // Each thread's state is dropped when it is done, adding its sum.
        let sums = sums.into_inner().unwrap();
        assert_eq!(sums.len(), made.load(Ordering::Relaxed));
        assert!((1..=3).contains(&sums.len()));
        assert_eq!(sums.iter().sum::<u32>(), 5050);
        assert_eq!(
            try_for_each_with(&[1], 2, || Err::<(), _>("no state"), |_, _| Ok(())),
            Err("no state")
        );
    }

    struct Counter<'a>(u32, &'a std::sync::Mutex<Vec<u32>>);

    impl Drop for Counter<'_> {
        fn drop(&mut self) {
            self.1.lock().unwrap().push(self.0);
        }
    }
}
