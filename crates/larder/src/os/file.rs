//! Opening a file for reading, optionally past the page cache.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading, with `O_DIRECT` when `direct`: the page cache is bypassed and
/// reads go from the device to the caller's buffer by DMA, which must then be aligned to the
/// device's logical block, as must every offset and length. File systems without `O_DIRECT`
/// (tmpfs, some FUSE and network ones) refuse it with `EINVAL`, here or at the first read.
///
/// The error is the kernel's, without the path: callers name the file in their own error.
pub(crate) fn open(path: &Path, direct: bool) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_for_reading_and_reports_a_missing_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        let text = std::io::read_to_string(open(&path, false).expect("open")).expect("read");
        assert_eq!(text, "abc");
        let err = open(&dir.path().join("missing"), true).expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
