//! The one worker pool: a few threads take items in turn from a shared counter, each with
//! state of its own (libostree handles are not `Sync`), and all stop at the first error.

use anyhow::Result;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// As many workers as the machine has cores, at most `cap`.
pub fn workers(cap: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, cap.max(1))
}

/// Runs `work` on every item with up to `workers` threads; `init` makes each thread's state.
/// Returns the results in item order, or the first error (the others stop at their next
/// item). A panic in a worker is passed on.
pub fn map<T, S, R>(
    items: &[T],
    workers: usize,
    init: impl Fn() -> Result<S> + Sync,
    work: impl Fn(&mut S, &T) -> Result<R> + Sync,
) -> Result<Vec<R>>
where
    T: Sync,
    R: Send,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = workers.clamp(1, items.len().max(1));
    let per_thread: Vec<Result<Vec<(usize, R)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, R)>> {
                    let mut state = init()?;
                    let mut done = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        match work(&mut state, item) {
                            Ok(r) => done.push((i, r)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all = Vec::with_capacity(items.len());
    for r in per_thread {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_item_order_with_state_per_worker() {
        let items: Vec<u64> = (0..1000).collect();
        let out = map(
            &items,
            4,
            || Ok(0u64),
            |seen, x| {
                *seen += 1;
                Ok(x * 2)
            },
        )
        .unwrap();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(map(&[] as &[u8], 4, || Ok(()), |_, _| Ok(()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_first_error_stops_the_pool() {
        let items: Vec<u32> = (0..10_000).collect();
        let calls = AtomicUsize::new(0);
        let e = map(
            &items,
            2,
            || Ok(()),
            |_, &x| {
                calls.fetch_add(1, Ordering::Relaxed);
                if x == 10 {
                    anyhow::bail!("item {x} is bad")
                }
                Ok(x)
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "item 10 is bad");
        assert!(calls.load(Ordering::Relaxed) < 10_000);
        let e = map(
            &items,
            2,
            || -> Result<()> { anyhow::bail!("no state") },
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "no state");
    }
}
