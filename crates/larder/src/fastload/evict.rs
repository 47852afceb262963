//! Emptying the page cache of a file, for cold-cache measurements.

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Error, Result};

/// How a file was taken out of the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Eviction {
    /// `echo 1 > /proc/sys/vm/drop_caches` (root, and /proc/sys writable): the whole clean
    /// page cache was dropped.
    DropCaches,
    /// `posix_fadvise(POSIX_FADV_DONTNEED)` on the file: its clean cached pages were dropped
    /// (pages mapped by another process stay).
    Fadvise,
}

impl Eviction {
    /// A phrase for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Eviction::DropCaches => "/proc/sys/vm/drop_caches",
            Eviction::Fadvise => "posix_fadvise(DONTNEED) on the file",
        }
    }
}

/// Takes `path` out of the page cache: drops all caches where permitted, else advises the
/// kernel to drop the file's pages. Dirty pages are written back first (they cannot be
/// dropped).
pub fn evict(path: &Path) -> Result<Eviction> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok() {
        return Ok(Eviction::DropCaches);
    }
    // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        return Err(Error::io(path, std::io::Error::from_raw_os_error(r)));
    }
    Ok(Eviction::Fadvise)
}
