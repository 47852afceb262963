//! How much of a file the page cache holds, asked of the kernel with `mincore` over a mapping
//! that is never read.

use std::path::Path;

use crate::{Error, Result};

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

/// Page-cache residency of every file directly inside the folder `dir`.
pub(crate) fn dir_residency(dir: &Path) -> Result<Residency> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Residency::default();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let (resident, bytes) = file_residency(&path)?;
        out.files += 1;
        out.bytes += bytes;
        out.resident += resident;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_just_written_is_cached_and_an_empty_one_is_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a"), vec![3u8; 10_000]).expect("write");
        std::fs::write(dir.path().join("empty"), b"").expect("write");
        let (resident, len) = file_residency(&dir.path().join("a")).expect("a");
        assert_eq!(len, 10_000);
        // Whole pages, never more than the file's pages.
        assert!(resident <= 10_000u64.next_multiple_of(4096), "{resident}");
        assert_eq!(
            file_residency(&dir.path().join("empty")).expect("empty"),
            (0, 0)
        );
        let r = dir_residency(dir.path()).expect("dir");
        assert_eq!((r.files, r.bytes), (2, 10_000));
        assert!(matches!(
            dir_residency(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }
}
