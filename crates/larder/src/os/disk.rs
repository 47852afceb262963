//! The size and free space of file systems, `/dev/shm` among them.

use std::path::Path;

/// Size and free space (to unprivileged users), in bytes, of the file system holding `path`,
/// from `statvfs`.
pub(crate) fn fs_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

/// Size and free space of `/dev/shm`, the shared memory PyTorch DataLoader workers hand their
/// batches over in; `None` where it is not a mounted folder.
pub(crate) fn shm_space() -> Option<(u64, u64)> {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return None;
    }
    fs_space(shm).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_sees_the_current_file_system() {
        let (total, free) = fs_space(Path::new(".")).expect("statvfs");
        assert!(total > 0 && free <= total);
        assert!(fs_space(Path::new("/no/such/dir")).is_err());
        assert!(fs_space(Path::new("nul\0byte")).is_err());
    }

    #[test]
    fn shm_is_measured_where_it_is_a_folder() {
        assert_eq!(shm_space().is_some(), Path::new("/dev/shm").is_dir());
    }
}
