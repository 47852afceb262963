//! Memory, /dev/shm, the open-file limit and free disk space.

use std::path::Path;

use super::{Check, Status};
use crate::os::{SystemMemory, fs_space, open_files, shm_space};
use crate::size::human;

/// /dev/shm below this breaks PyTorch DataLoader workers, which hand every batch to the main
/// process through shared memory: Docker's default is 64 MB, and a worker that cannot grow its
/// segment dies with a bus error.
const SHM_FAIL: u64 = 512 << 20;
/// /dev/shm below this is tight for batches of large images with several workers.
const SHM_WARN: u64 = 4 << 30;
/// An open-file limit below this runs out under DataLoader workers (each shares tensors
/// through file descriptors) and with many shards or images open.
const NOFILE_WARN: u64 = 4096;
/// Free space below this fraction of the file system (or this many bytes) warns.
const DISK_FREE_FRACTION: f64 = 0.10;
const DISK_FREE_BYTES: u64 = 10_000_000_000;

/// The RAM row.
fn ram() -> Check {
    match SystemMemory::read() {
        Some(m) => {
            let detail = format!("{} total, {} available", human(m.total), human(m.available));
            if (m.available as f64) < 0.1 * m.total as f64 {
                Check::new("memory", Status::Warn, detail).advise(
                    "less than 10% of RAM is available: a training run will swap or be killed; stop other work or lower the batch size",
                )
            } else {
                Check::new("memory", Status::Ok, detail)
            }
        }
        None => Check::new("memory", Status::Info, "/proc/meminfo is not readable"),
    }
}

/// The /dev/shm row, judged on its size `total` (bytes).
pub(crate) fn shm_check(total: Option<u64>, free: u64) -> Check {
    let advice = "run the container with --shm-size=8g (or --ipc=host); larder's own loader uses threads and needs no /dev/shm";
    match total {
        None => Check::new(
            "/dev/shm",
            Status::Warn,
            "not mounted: PyTorch DataLoader workers cannot share batches",
        )
        .advise(advice),
        Some(t) if t < SHM_FAIL => Check::new(
            "/dev/shm",
            Status::Fail,
            format!(
                "{} ({} free): PyTorch DataLoader workers die with a bus error when a batch does not fit",
                human(t),
                human(free)
            ),
        )
        .advise(advice),
        Some(t) if t < SHM_WARN => Check::new(
            "/dev/shm",
            Status::Warn,
            format!(
                "{} ({} free): tight for several DataLoader workers with large batches",
                human(t),
                human(free)
            ),
        )
        .advise(advice),
        Some(t) => Check::new(
            "/dev/shm",
            Status::Ok,
            format!("{} ({} free)", human(t), human(free)),
        ),
    }
}

/// The open-files row, judged on the soft and hard limits.
pub(crate) fn nofile_check(soft: u64, hard: u64) -> Check {
    let detail = format!("soft limit {soft}, hard limit {hard}");
    if soft < NOFILE_WARN {
        Check::new("open files", Status::Warn, detail).advise(format!(
            "raise it with `ulimit -n {}` before training: DataLoader workers share tensors through file descriptors",
            hard.min(65_536)
        ))
    } else {
        Check::new("open files", Status::Ok, detail)
    }
}

/// The free-disk row for the file system of `path`.
pub(crate) fn disk_check(path: &Path, total: u64, free: u64) -> Check {
    let detail = format!(
        "{} free of {} on the file system of {}",
        human(free),
        human(total),
        path.display()
    );
    if free < DISK_FREE_BYTES || (free as f64) < DISK_FREE_FRACTION * total as f64 {
        Check::new("free disk", Status::Warn, detail).advise(
            "prepare and checkpoints need room: free space, or point --out and the training folder at a larger disk",
        )
    } else {
        Check::new("free disk", Status::Ok, detail)
    }
}

/// RAM, /dev/shm, open files, and free disk where `store` lives (or the current directory).
pub fn system_checks(store: Option<&Path>) -> Vec<Check> {
    let mut out = vec![ram()];
    out.push(match shm_space() {
        Some((total, free)) => shm_check(Some(total), free),
        None => shm_check(None, 0),
    });
    out.push(match open_files() {
        Ok((soft, hard)) => nofile_check(soft, hard),
        Err(e) => Check::new("open files", Status::Info, format!("getrlimit failed: {e}")),
    });
    let here = store.unwrap_or(Path::new("."));
    out.push(match fs_space(here) {
        Ok((total, free)) => disk_check(here, total, free),
        Err(e) => Check::new(
            "free disk",
            Status::Fail,
            format!("{}: {e}", here.display()),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_of_dockers_default_size_fails_with_the_fix() {
        let c = shm_check(Some(64 << 20), 64 << 20);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.advice
                .as_deref()
                .is_some_and(|a| a.contains("--shm-size"))
        );
        assert_eq!(shm_check(Some(2 << 30), 0).status, Status::Warn);
        assert_eq!(shm_check(Some(16 << 30), 0).status, Status::Ok);
        assert_eq!(shm_check(None, 0).status, Status::Warn);
    }

    #[test]
    fn low_open_file_limits_warn_with_a_ulimit_within_the_hard_limit() {
        let c = nofile_check(1024, 4096);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.advice
                .as_deref()
                .is_some_and(|a| a.contains("ulimit -n 4096"))
        );
        assert_eq!(nofile_check(65_536, 65_536).status, Status::Ok);
    }

    #[test]
    fn disk_space_warns_below_ten_percent_or_ten_gigabytes() {
        let p = Path::new("/data");
        assert_eq!(
            disk_check(p, 1_000_000_000_000, 50_000_000_000).status,
            Status::Warn
        );
        assert_eq!(
            disk_check(p, 50_000_000_000, 9_000_000_000).status,
            Status::Warn
        );
        assert_eq!(
            disk_check(p, 100_000_000_000, 40_000_000_000).status,
            Status::Ok
        );
    }
}
