//! Measuring what the loader really holds: the process's RSS and PSS from
//! `/proc/self/smaps_rollup`, the resident pages of its maps of the store's shards from
//! `/proc/self/smaps`, and how much of the shards the page cache holds (`mincore` over a
//! mapping that touches no page).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::load::order::{BucketTail, OrderOptions, RankTail};
use crate::load::{Loader, LoaderOptions};
use crate::os::{ProcessMemory, Residency, dir_residency, mapped_rss};
use crate::store::{SHARD_DIR, Store};
use crate::{Error, Result};

/// Page-cache residency of every shard of the store in `root`.
pub fn store_residency(root: &Path) -> Result<Residency> {
    dir_residency(&root.join(SHARD_DIR))
}

/// Settings of [`measure`].
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureOptions {
    /// Items per batch.
    pub batch_size: u32,
    /// Reader threads.
    pub threads: usize,
    /// Batches assembled ahead.
    pub prefetch: usize,
    /// Batches to serve; `None` serves one whole epoch.
    pub batches: Option<u64>,
}

/// What [`measure`] saw.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measurement {
    /// This process before the store was opened.
    pub before: ProcessMemory,
    /// This process after serving, with the loader and its mapped store still alive.
    pub after: ProcessMemory,
    /// Batches served.
    pub batches: u64,
    /// Items served.
    pub items: u64,
    /// Resident bytes of this process's maps of the store's shards, after serving: the part
    /// of the file-backed growth that is the store. The rest is the program's own code and
    /// libraries, paged in as serving runs code not run before (over 10 MB in a debug build).
    pub mapped_store: u64,
    /// The shards in the page cache before serving.
    pub page_cache_before: Residency,
    /// The shards in the page cache after serving.
    pub page_cache_after: Residency,
    /// Seconds spent serving.
    pub seconds: f64,
}

/// Serves the store in `root` with larder's loader and measures this process's memory before
/// and after, and the page cache's hold on the shards. Call it before anything else allocates
/// much in this process: the "before" reading is the baseline the loader's cost is taken from.
pub fn measure(root: &Path, options: &MeasureOptions) -> Result<Measurement> {
    let no_proc = || Error::InvalidArgument {
        name: "measure",
        message: "/proc/self/smaps_rollup is not readable: measuring needs Linux 4.14 or later"
            .into(),
    };
    let page_cache_before = store_residency(root)?;
    let before = ProcessMemory::read().ok_or_else(no_proc)?;
    let store = Arc::new(Store::open(root)?);
    let loader_options = LoaderOptions {
        batch_size: options.batch_size,
        order: OrderOptions {
            seed: 0,
            shuffle: true,
            bucket_tail: BucketTail::Fill,
            rank_tail: RankTail::Pad,
        },
        threads: options.threads,
        prefetch: options.prefetch,
        ..LoaderOptions::default()
    };
    let mut loader = Loader::new(store, loader_options)?;
    let epoch_batches = loader.len() as u64;
    let wanted = options.batches.unwrap_or(epoch_batches);
    let started = Instant::now();
    let (mut batches, mut items) = (0u64, 0u64);
    // Each batch is held until the next one arrives, as a training step holds its batch while
    // the readers assemble the following ones: the loader's memory at its training-time peak.
    let mut held = None;
    let mut epoch = 0u64;
    while batches < wanted {
        let Some(batch) = loader.next_batch() else {
            // The epoch ended before `wanted`: go on with the next one (and stop if it is empty).
            epoch += 1;
            if loader.is_empty() || epoch > wanted {
                break;
            }
            continue;
        };
        let batch = batch?;
        items += batch.len() as u64;
        batches += 1;
        held = Some(batch);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = ProcessMemory::read().ok_or_else(no_proc)?;
    // The kernel names mapped files by their canonical path; `root` may be relative or a link.
    let shards = root.join(SHARD_DIR);
    let shards = shards.canonicalize().map_err(|e| Error::io(&shards, e))?;
    let mapped_store = mapped_rss(&shards).ok_or_else(no_proc)?;
    let page_cache_after = store_residency(root)?;
    drop(held);
    drop(loader);
    Ok(Measurement {
        before,
        after,
        batches,
        items,
        mapped_store,
        page_cache_before,
        page_cache_after,
        seconds,
    })
}
