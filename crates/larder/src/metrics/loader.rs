//! What the loader records about itself, in atomics that reader threads and the training loop
//! update without taking a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Counters a [`Loader`](crate::load::Loader) keeps while it serves batches.
///
/// Every field is an atomic updated with relaxed ordering: each is a statistic on its own, and
/// a reader of a [`snapshot`](Self::snapshot) needs no ordering between them. Updating one
/// costs a few nanoseconds, so the loader records every batch.
#[derive(Debug, Default)]
pub struct LoaderMetrics {
    delivered: AtomicU64,
    wait_ns: AtomicU64,
    queue_depth: AtomicU64,
    assembled: AtomicU64,
    assemble_ns: AtomicU64,
    decode_ns: AtomicU64,
    bytes_read: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// The loader's counters at one moment; totals since the loader was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderSnapshot {
    /// Batches handed to the training loop.
    pub delivered: u64,
    /// Seconds the training loop spent blocked in `next_batch`, waiting for a batch.
    pub wait_s: f64,
    /// Assembled batches that were ready (waiting in the queue) at the last `next_batch` call.
    pub queue_depth: u64,
    /// Batches the reader threads assembled.
    pub assembled: u64,
    /// Seconds the reader threads spent assembling batches, summed over threads.
    pub assemble_s: f64,
    /// Of `assemble_s`, the seconds spent decompressing and dequantizing fields.
    pub decode_s: f64,
    /// Stored bytes read (from the memory map, or fetched from a remote store).
    pub bytes_read: u64,
    /// Reads served from a local cache of a remote store.
    pub cache_hits: u64,
    /// Reads a remote store had to fetch.
    pub cache_misses: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn seconds(ns: u64) -> f64 {
    ns as f64 * 1e-9
}

impl LoaderMetrics {
    /// The training loop waited `waited` for a batch, and `queue_depth` batches were ready when
    /// it asked.
    pub fn record_delivery(&self, waited: Duration, queue_depth: usize) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.wait_ns.fetch_add(nanos(waited), Ordering::Relaxed);
        self.queue_depth
            .store(queue_depth as u64, Ordering::Relaxed);
    }

    /// A reader thread assembled a batch in `took`.
    pub fn record_assembly(&self, took: Duration) {
        self.assembled.fetch_add(1, Ordering::Relaxed);
        self.assemble_ns.fetch_add(nanos(took), Ordering::Relaxed);
    }

    /// A reader thread read `bytes` stored bytes of one entry and took `decode` to decode them
    /// (decompress, dequantize; next to nothing for a raw entry).
    pub fn record_read(&self, bytes: u64, decode: Duration) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.decode_ns.fetch_add(nanos(decode), Ordering::Relaxed);
    }

    /// A read of a remote store was served from its local cache (`hit`) or fetched.
    pub fn record_cache(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> LoaderSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LoaderSnapshot {
            delivered: get(&self.delivered),
            wait_s: seconds(get(&self.wait_ns)),
            queue_depth: get(&self.queue_depth),
            assembled: get(&self.assembled),
            assemble_s: seconds(get(&self.assemble_ns)),
            decode_s: seconds(get(&self.decode_ns)),
            bytes_read: get(&self.bytes_read),
            cache_hits: get(&self.cache_hits),
            cache_misses: get(&self.cache_misses),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_what_was_recorded() {
        let m = LoaderMetrics::default();
        m.record_delivery(Duration::from_millis(3), 2);
        m.record_delivery(Duration::from_millis(1), 4);
        m.record_assembly(Duration::from_millis(10));
        m.record_read(600, Duration::from_millis(3));
        m.record_read(400, Duration::from_millis(1));
        m.record_cache(true);
        m.record_cache(false);
        m.record_cache(false);
        let s = m.snapshot();
        assert_eq!(s.delivered, 2);
        assert!((s.wait_s - 0.004).abs() < 1e-9);
        assert_eq!(s.queue_depth, 4);
        assert_eq!((s.assembled, s.bytes_read), (1, 1000));
        assert!((s.assemble_s - 0.010).abs() < 1e-9 && (s.decode_s - 0.004).abs() < 1e-9);
        assert_eq!((s.cache_hits, s.cache_misses), (1, 2));
    }
}
