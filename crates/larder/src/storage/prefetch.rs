//! Plan-driven prefetch: the loader knows which batches this rank reads next, so their chunks
//! are fetched before the readers ask for them.
//!
//! One coordinator thread walks the rank's batches in order. For each it pins the chunks the
//! batch needs (the cache will not evict them) and hands the missing ones, in runs of adjacent
//! chunks, to a few fetch threads. It stays at most [`RemoteOptions::prefetch_bytes`] ahead of
//! the consumer, but always pins the batch the consumer waits for, so a look-ahead or cache
//! smaller than one batch slows reading down and never stops it. When the consumer takes a
//! batch its pins are released.
//!
//! [`RemoteOptions::prefetch_bytes`]: super::RemoteOptions::prefetch_bytes

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::cache::ChunkKey;
use super::shards::RemoteShards;

/// Where one entry lies: (shard id, offset, length).
pub(crate) type EntryRange = (i64, u64, u64);

/// The entries batch `n` of the rank's sequence reads.
pub(crate) type BatchEntries = Box<dyn Fn(usize) -> Vec<EntryRange> + Send>;

#[derive(Debug, Default)]
struct Window {
    /// Batches the consumer has taken.
    consumed: usize,
    /// Pinned batches not yet taken, with their chunks and bytes.
    pinned: BTreeMap<usize, (Vec<ChunkKey>, u64)>,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    shards: Arc<RemoteShards>,
    window: Mutex<Window>,
    moved: Condvar,
    stop: AtomicBool,
    budget: u64,
}

impl Shared {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Prefetches a rank's batches while it lives; dropping it stops the threads and releases
/// every pin.
#[derive(Debug)]
pub(crate) struct Prefetch {
    shared: Arc<Shared>,
}

impl Prefetch {
    /// Starts prefetching the `count` batches that `entries` describes, with at most the
    /// store's `prefetch_bytes` of pinned batches ahead of the consumer and `concurrency`
    /// requests at once.
    pub fn start(shards: Arc<RemoteShards>, count: usize, entries: BatchEntries) -> Prefetch {
        let (budget, concurrency) = (shards.prefetch_bytes, shards.concurrency);
        let shared = Arc::new(Shared {
            shards,
            window: Mutex::new(Window::default()),
            moved: Condvar::new(),
            stop: AtomicBool::new(false),
            budget,
        });
        let (work_tx, work_rx) =
            crossbeam_channel::bounded::<(i64, std::ops::Range<u32>)>(concurrency);
        for _ in 0..concurrency.max(1) {
            let (shared, work_rx) = (shared.clone(), work_rx.clone());
            std::thread::spawn(move || {
                for (id, run) in work_rx {
                    if shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(shard) = shared.shards.shard(id) else {
                        continue;
                    };
                    // A failed prefetch is not an error yet: the reader that needs the chunk
                    // fetches it again and reports the failure with its batch.
                    if let Err(e) = shared.shards.fetch_run(shard, run) {
                        tracing::debug!("prefetch failed: {e}");
                    }
                }
            });
        }
        let coordinator = shared.clone();
        std::thread::spawn(move || coordinate(&coordinator, count, &entries, &work_tx));
        Prefetch { shared }
    }

    /// The consumer has taken batch `n` (and every batch before it): their pins go.
    pub fn consumed(&self, n: usize) {
        self.release(|w| {
            w.consumed = w.consumed.max(n + 1);
            let keep = w.pinned.split_off(&(n + 1));
            std::mem::replace(&mut w.pinned, keep)
        });
    }

    /// Updates the window with `change`, which returns the pinned batches to release, and
    /// releases their pins.
    fn release(&self, change: impl FnOnce(&mut Window) -> BTreeMap<usize, (Vec<ChunkKey>, u64)>) {
        let released = change(&mut self.shared.window());
        for (keys, _) in released.into_values() {
            self.shared.shards.cache.unpin(&keys);
        }
        self.shared.moved.notify_all();
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.release(|w| {
            w.stopped = true;
            std::mem::take(&mut w.pinned)
        });
        // The threads end on their own: the coordinator at its next look at the window, the
        // fetchers after the request in flight (joining them here could wait a request's
        // whole retry budget against a server that is down).
    }
}

fn coordinate(
    shared: &Shared,
    count: usize,
    entries: &BatchEntries,
    work: &crossbeam_channel::Sender<(i64, std::ops::Range<u32>)>,
) {
    let cache = &shared.shards.cache;
    for n in 0..count {
        // The batch's chunks, each once, with the shard each belongs to.
        let mut chunks: Vec<(i64, ChunkKey)> = Vec::new();
        let mut seen: HashSet<ChunkKey> = HashSet::new();
        let mut bytes = 0u64;
        for (id, offset, length) in entries(n) {
            let Ok(shard) = shared.shards.shard(id) else {
                continue;
            };
            for index in shard.chunks_of(offset, length) {
                let key = ChunkKey {
                    shard: shard.name.clone(),
                    index,
                };
                if seen.insert(key.clone()) {
                    bytes += shard.sums.chunk_bytes;
                    chunks.push((id, key));
                }
            }
        }
        let keys: Vec<ChunkKey> = chunks.iter().map(|(_, k)| k.clone()).collect();
        {
            let mut w = shared.window();
            loop {
                if w.stopped {
                    return;
                }
                if n < w.consumed {
                    break;
                }
                let ahead: u64 = w.pinned.values().map(|(_, b)| b).sum();
                // The batch the consumer waits for is always let through.
                if n == w.consumed || ahead + bytes <= shared.budget {
                    cache.pin(&keys);
                    w.pinned.insert(n, (keys, bytes));
                    break;
                }
                w = shared
                    .moved
                    .wait_timeout(w, Duration::from_millis(200))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if n < w.consumed {
                continue;
            }
        }
        // Pinned now, so what is cached stays: fetch the rest, adjacent chunks together.
        let mut missing: Vec<(i64, u32)> = chunks
            .iter()
            .filter(|(_, k)| !cache.contains(k))
            .map(|(id, k)| (*id, k.index))
            .collect();
        missing.sort_unstable();
        let mut runs: Vec<(i64, std::ops::Range<u32>)> = Vec::new();
        for (id, index) in missing {
            match runs.last_mut() {
                Some((last, run))
                    if *last == id
                        && run.end == index
                        && run.len() < super::shards::MAX_RUN as usize =>
                {
                    run.end += 1
                }
                _ => runs.push((id, index..index + 1)),
            }
        }
        for run in runs {
            // Blocks while every fetcher is busy: that is the concurrency bound.
            let mut job = run;
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                match work.send_timeout(job, Duration::from_millis(200)) {
                    Ok(()) => break,
                    Err(crossbeam_channel::SendTimeoutError::Timeout(j)) => job = j,
                    Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return,
                }
            }
        }
    }
}
