//! One storage trait with three backends: a local folder, memory, and object storage
//! ([`ObjectStorage`](super::ObjectStorage), in its own file).
//!
//! The trait is synchronous on purpose: the loader's readers and the prefetcher are plain
//! threads, and a store's objects are few and large, so an async interface would buy nothing but
//! a runtime in every caller. Keys are `/`-separated paths relative to the store's root
//! (`catalog.sqlite`, `shards/<hash>.safetensors`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Where a store's objects live.
///
/// Every backend runs the same conformance tests (`tests/integration/remote.rs`): what a reader
/// or a writer may rely on is the same whichever one holds the store.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The URL (or path) of `key`, for messages.
    fn url(&self, key: &str) -> String;

    /// The whole object `key`. A missing object is an error that says so.
    fn get(&self, key: &str) -> Result<Vec<u8>>;

    /// The bytes `range` of object `key`; a range beyond the object's end is an error.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;

    /// The size of object `key`, or `None` when there is no such object.
    fn size(&self, key: &str) -> Result<Option<u64>>;

    /// Writes object `key`; readers see the old object or the new one, never a part.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;

    /// Uploads the file at `source` as object `key` (in parts when it is large); the object
    /// appears only once the upload is complete.
    fn put_file(&self, key: &str, source: &Path) -> Result<()>;

    /// Every object whose key starts with `prefix`, with its size, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;

    /// Removes object `key`; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<()>;

    /// Copies object `from` to `to` (inside the storage, without downloading it where the
    /// backend allows).
    fn copy(&self, from: &str, to: &str) -> Result<()>;
}

/// Bytes per request when a whole object is read in pieces.
const PIECE_BYTES: u64 = 16 << 20;

/// Reads object `key` of `size` bytes in pieces of 16 MiB, one request each, handing them to
/// `sink` in order: a large object over a slow link is not one request that must finish within
/// one timeout (and start over on every retry), nor all in memory at once.
pub(crate) fn read_in_pieces(
    storage: &dyn Storage,
    key: &str,
    size: u64,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut at = 0;
    while at < size {
        let end = (at + PIECE_BYTES).min(size);
        sink(&storage.get_range(key, at..end)?)?;
        at = end;
    }
    Ok(())
}

/// The error for a missing object, worded the same by every backend.
pub(crate) fn not_found(url: String) -> Error {
    Error::NotFound { url }
}

/// Returns true if and only if `e` says the object does not exist.
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound { .. })
}

/// The error for a range that does not lie within the object.
fn bad_range(url: String, range: &Range<u64>, size: u64) -> Error {
    Error::remote(
        url,
        format!(
            "bytes {}..{} requested of an object of {size} bytes: the object is shorter than the catalog says (altered or truncated)",
            range.start, range.end
        ),
    )
}

/// Objects as files under a folder. Writes go to a temporary file renamed into place.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Objects under `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Writes `fill`'s output to a temporary file beside `key`'s path, then renames it into
    /// place.
    fn write_atomically(
        &self,
        key: &str,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = self.path(key);
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let result = File::create(&tmp)
            .and_then(|mut f| {
                fill(&mut f)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        Ok(())
    }
}

impl Storage for LocalStorage {
    fn url(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        std::fs::read(self.path(key)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(self.url(key)),
            _ => Error::io(self.path(key), e),
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_found(self.url(key)),
            _ => Error::io(&path, e),
        })?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if range.start > range.end || range.end > size {
            return Err(bad_range(self.url(key), &range, size));
        }
        let mut out = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut out, range.start)
            .map_err(|e| Error::io(&path, e))?;
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        match std::fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.path(key), e)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.write_atomically(key, |f| f.write_all(bytes))
    }

    fn put_file(&self, key: &str, source: &Path) -> Result<()> {
        let mut from = File::open(source).map_err(|e| Error::io(source, e))?;
        self.write_atomically(key, |f| std::io::copy(&mut from, f).map(drop))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let path = entry.path();
                let meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                // Temporary files of writes in progress are not objects yet.
                let hidden = rel
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if key.starts_with(prefix) && !hidden {
                    out.push((key, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(self.path(key), e)),
        }
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        if self.size(from)?.is_none() {
            return Err(not_found(self.url(from)));
        }
        self.put_file(to, &self.path(from))
    }
}

/// Objects in memory: the backend of tests, which count the requests a reader makes.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, std::sync::Arc<Vec<u8>>>>,
    reads: AtomicU64,
    bytes_read: AtomicU64,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// Read requests served so far (`get` and `get_range`).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Bytes returned by read requests so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, std::sync::Arc<Vec<u8>>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn object(&self, key: &str) -> Result<std::sync::Arc<Vec<u8>>> {
        self.objects()
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(self.url(key)))
    }

    fn count(&self, bytes: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl Storage for MemoryStorage {
    fn url(&self, key: &str) -> String {
        format!("memory:///{key}")
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let object = self.object(key)?;
        self.count(object.len());
        Ok(object.to_vec())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let object = self.object(key)?;
        let size = object.len() as u64;
        if range.start > range.end || range.end > size {
            return Err(bad_range(self.url(key), &range, size));
        }
        let out = object[range.start as usize..range.end as usize].to_vec();
        self.count(out.len());
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.objects().get(key).map(|o| o.len() as u64))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        self.objects()
            .insert(key.to_owned(), std::sync::Arc::new(bytes.to_vec()));
        Ok(())
    }

    fn put_file(&self, key: &str, source: &Path) -> Result<()> {
        let bytes = std::fs::read(source).map_err(|e| Error::io(source, e))?;
        self.put(key, &bytes)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .objects()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.objects().remove(key);
        Ok(())
    }

    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let object = self.object(from)?;
        self.objects().insert(to.to_owned(), object);
        Ok(())
    }
}
