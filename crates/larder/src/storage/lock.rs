//! Exclusive lock files: one writer per store folder and per cache folder, across processes.

use std::path::Path;

use crate::{Error, Result};

/// Takes an exclusive lock on the file `path` (created if need be), held until the returned
/// file is dropped; `None` when another process holds it.
pub(crate) fn try_lock(path: &Path) -> Result<Option<std::fs::File>> {
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}
