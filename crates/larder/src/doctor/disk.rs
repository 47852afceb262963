//! The store's disk: how much of it the page cache holds, how fast its disk reads
//! sequentially, and whether the page cache keeps what was read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Check, Status};
use crate::os::{dir_residency, file_residency, open};
use crate::size::human;
use crate::store::SHARD_DIR;

/// Bytes read for the speed test at most.
const SPEED_BYTES: u64 = 1 << 30;
/// Read size: large enough that system-call overhead does not count.
const CHUNK: usize = 4 << 20;
/// O_DIRECT needs buffers aligned to the device's logical block; 4096 covers every common one.
const DIRECT_ALIGN: usize = 4096;
/// Sequential reads below this (MB/s) are a spinning disk or a network file system.
const SLOW_MB_S: f64 = 200.0;

/// How a read test read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// With O_DIRECT: from the device, past the page cache, which is left as it was.
    Direct,
    /// Through the page cache (the file system refused O_DIRECT).
    Buffered,
}

/// Reads up to `limit` bytes of `path` sequentially and returns (bytes read, seconds, mode).
/// O_DIRECT is tried first so that the figure is the disk's and the page cache is not
/// disturbed; file systems that refuse it (tmpfs, some overlays) are read buffered.
pub fn read_speed(path: &Path, limit: u64) -> std::io::Result<(u64, f64, ReadMode)> {
    match read_with(path, limit, true) {
        Ok((n, s)) => Ok((n, s, ReadMode::Direct)),
        Err(_) => read_with(path, limit, false).map(|(n, s)| (n, s, ReadMode::Buffered)),
    }
}

fn read_with(path: &Path, limit: u64, direct: bool) -> std::io::Result<(u64, f64)> {
    let mut file = open(path, direct)?;
    let mut storage = vec![0u8; CHUNK + DIRECT_ALIGN];
    let skip = storage.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut storage[skip..skip + CHUNK];
    let started = Instant::now();
    let mut total = 0u64;
    while total < limit {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

/// The store's shard files, largest first.
fn shards(store: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(store.join(SHARD_DIR))? {
        let entry = entry?;
        out.push((entry.path(), entry.metadata()?.len()));
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

fn mb_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// Page-cache residency, sequential read speed and a page-cache hit test for `store`.
pub fn store_checks(store: &Path) -> Vec<Check> {
    let files = match shards(store) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            return vec![Check::new(
                "store",
                Status::Info,
                format!("{} has no shards to test", store.display()),
            )];
        }
        Err(e) => {
            return vec![
                Check::new("store", Status::Fail, format!("{}: {e}", store.display()))
                    .advise("pass the folder `larder prepare --out` wrote"),
            ];
        }
    };
    let mut out = Vec::new();
    let cached = dir_residency(&store.join(SHARD_DIR));
    out.push(match &cached {
        Ok(r) => Check::new(
            "store in page cache",
            Status::Info,
            format!(
                "{} of {} ({:.0}%) of the store's {} shards are in the page cache",
                human(r.resident.min(r.bytes)),
                human(r.bytes),
                100.0 * r.resident.min(r.bytes) as f64 / r.bytes.max(1) as f64,
                r.files
            ),
        ),
        Err(e) => Check::new("store in page cache", Status::Info, e.to_string()),
    });

    // Sequential read of the largest shard: the disk's speed with O_DIRECT.
    let (largest, _) = &files[0];
    out.push(match read_speed(largest, SPEED_BYTES) {
        Ok((n, s, mode)) => {
            let speed = mb_s(n, s);
            let how = match mode {
                ReadMode::Direct => "O_DIRECT, past the page cache".to_owned(),
                ReadMode::Buffered => {
                    let resident = file_residency(largest).map_or(0, |r| r.0);
                    format!(
                        "buffered: this file system refuses O_DIRECT, and {:.0}% of the file was cached",
                        100.0 * resident.min(n) as f64 / n.max(1) as f64
                    )
                }
            };
            let detail = format!("{speed:.0} MB/s reading {} ({how})", human(n));
            if mode == ReadMode::Direct && speed < SLOW_MB_S {
                Check::new("sequential read", Status::Warn, detail).advise(
                    "a slow disk: keep the store in the page cache (enough RAM, see `larder diagnose`) or move it to a local NVMe disk",
                )
            } else {
                Check::new("sequential read", Status::Ok, detail)
            }
        }
        Err(e) => Check::new(
            "sequential read",
            Status::Fail,
            format!("{}: {e}", largest.display()),
        ),
    });

    // Hit test: read the smallest shard through the page cache twice; the kernel should keep
    // every page, and the second read come from memory.
    let (sample, _) = &files[files.len() - 1];
    out.push(hit_test(sample));
    out
}

fn hit_test(sample: &Path) -> Check {
    let read = || read_with(sample, u64::MAX, false);
    let result = read().and_then(|first| {
        let resident = file_residency(sample).map_err(std::io::Error::other)?;
        let second = read()?;
        Ok((first, resident, second))
    });
    match result {
        Ok(((n, _), (resident, len), (_, warm))) => {
            let share = resident.min(len) as f64 / len.max(1) as f64;
            let detail = format!(
                "after reading {}, {:.0}% of it stays cached; a second read runs at {:.0} MB/s",
                human(n),
                100.0 * share,
                mb_s(n, warm)
            );
            if share < 0.9 {
                Check::new("page-cache hit test", Status::Warn, detail).advise(
                    "the page cache does not keep what was just read: memory pressure or a cgroup memory limit; every batch will come from disk",
                )
            } else {
                Check::new("page-cache hit test", Status::Ok, detail)
            }
        }
        Err(e) => Check::new(
            "page-cache hit test",
            Status::Fail,
            format!("{}: {e}", sample.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_speed_reads_the_whole_file_or_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * CHUNK + 100]).expect("write");
        let (n, s, _) = read_speed(&path, u64::MAX).expect("read");
        assert_eq!(n, (3 * CHUNK + 100) as u64);
        assert!(s >= 0.0);
        let (n, _, _) = read_speed(&path, 1).expect("read");
        assert_eq!(
            n, CHUNK as u64,
            "stops after the chunk that passes the limit"
        );
    }

    #[test]
    fn a_folder_without_shards_is_reported_not_a_crash() {
        let dir = tempfile::tempdir().expect("tmp");
        let checks = store_checks(dir.path());
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        std::fs::create_dir(dir.path().join(SHARD_DIR)).expect("mkdir");
        assert_eq!(store_checks(dir.path())[0].status, Status::Info);
    }
}
