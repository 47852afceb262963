//! Measuring what the loader really holds: the process's RSS and PSS from
//! `/proc/self/smaps_rollup`, and how much of the store's shards the page cache holds
//! (`mincore` over a mapping that touches no page).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::load::plan::{BucketTail, OrderOptions, RankTail};
use crate::load::{Loader, LoaderOptions};
use crate::store::{SHARD_DIR, Store};
use crate::{Error, Result};

/// The memory of this process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    /// Resident set size: private memory plus every resident page of mapped files.
    pub rss: u64,
    /// Proportional set size: shared pages divided among the processes that map them.
    pub pss: u64,
    /// Anonymous (private, not file-backed) resident memory.
    pub anonymous: u64,
}

impl ProcessMemory {
    /// Reads this process's memory from `/proc/self/smaps_rollup`; `None` where the file does
    /// not exist (not Linux, or a kernel older than 4.14).
    pub fn read() -> Option<ProcessMemory> {
        ProcessMemory::parse(&std::fs::read_to_string("/proc/self/smaps_rollup").ok()?)
    }

    /// Reads the `Rss:`, `Pss:` and `Anonymous:` lines (in kB) of smaps_rollup text.
    fn parse(text: &str) -> Option<ProcessMemory> {
        let field = |name| kb_field(text, name);
        Some(ProcessMemory {
            rss: field("Rss:")?,
            pss: field("Pss:")?,
            anonymous: field("Anonymous:")?,
        })
    }

    /// Resident pages of mapped files: RSS less anonymous memory.
    pub fn file_backed(&self) -> u64 {
        self.rss.saturating_sub(self.anonymous)
    }
}

/// The value of a `Name:   123 kB` line of a /proc file, in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// How much of a set of files the page cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Residency {
    /// Files looked at.
    pub files: u64,
    /// Their size.
    pub bytes: u64,
    /// Bytes of them in the page cache (whole pages; the last page of a file counts whole).
    pub resident: u64,
}

/// Bytes of `path` in the page cache, and its size.
pub fn file_residency(path: &Path) -> Result<(u64, u64)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: the mapping is read-only and never read through: mincore only asks the kernel
    // which of its pages are resident, so a concurrent change to the file cannot be observed
    // as torn memory here.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let pages = map.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is a live mapping of `map.len()` bytes starting at a page boundary, and
    // `vec` has one byte for each of its pages, as mincore requires.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            vec.as_mut_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    let resident = vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64;
    Ok((resident.min(len.next_multiple_of(page as u64)), len))
}

/// Page-cache residency of every shard of the store in `root`.
pub fn store_residency(root: &Path) -> Result<Residency> {
    let dir = root.join(SHARD_DIR);
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut out = Residency::default();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let (resident, bytes) = file_residency(&path)?;
        out.files += 1;
        out.bytes += bytes;
        out.resident += resident;
    }
    Ok(out)
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
    let page_cache_after = store_residency(root)?;
    drop(held);
    drop(loader);
    Ok(Measurement {
        before,
        after,
        batches,
        items,
        page_cache_before,
        page_cache_after,
        seconds,
    })
}

/// The machine's memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SystemMemory {
    /// Physical memory (`MemTotal`).
    pub total: u64,
    /// Memory available to new work without swapping (`MemAvailable`): free memory plus the
    /// page cache the kernel can drop.
    pub available: u64,
}

impl SystemMemory {
    /// Reads `/proc/meminfo`; `None` where it is not readable.
    pub fn read() -> Option<SystemMemory> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name| kb_field(&text, name);
        Some(SystemMemory {
            total: field("MemTotal:")?,
            available: field("MemAvailable:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ProcessMemory;

    #[test]
    fn parses_smaps_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              204800 kB\nPss:              102400 kB\nPss_Anon:          1000 kB\nAnonymous:         51200 kB\n";
        let m = ProcessMemory::parse(text).expect("all three lines");
        assert_eq!(
            (m.rss, m.pss, m.anonymous),
            (200 << 20, 100 << 20, 50 << 20)
        );
        assert_eq!(m.file_backed(), 150 << 20);
        assert_eq!(ProcessMemory::parse("Rss: 4 kB\n"), None);
    }
}
