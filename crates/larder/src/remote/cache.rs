//! The local cache of a remote store: shard chunks as files, least-recently-used first out,
//! never a chunk that a queued batch has pinned.
//!
//! ```text
//! <cache folder>/
//!   .lock                     held by the one process using this folder
//!   catalog.sqlite            the store's catalog, fetched when the store is opened
//!   chunks/<shard>/<index>    chunk `index` of shard file `<shard>.safetensors`
//! ```
//!
//! A chunk file is written to a temporary name and renamed, so a crash leaves whole chunks or
//! none. A chunk is checked against its catalog checksum the first time this process uses it,
//! whether it was just fetched or found on disk from an earlier run; one that fails is deleted
//! and fetched again. Chunks are named by the shard's content hash, so a cache stays valid
//! across prepares of the same store: a changed shard has another name.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::{Error, Result};

/// One chunk: the shard file's name without its extension, and the chunk's index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChunkKey {
    pub shard: Arc<str>,
    pub index: u32,
}

#[derive(Debug)]
struct Cached {
    bytes: u64,
    /// When it was last used (a tick of the cache's clock).
    used: u64,
    /// Checked against its checksum by this process.
    verified: bool,
}

#[derive(Debug, Default)]
struct State {
    chunks: HashMap<ChunkKey, Cached>,
    /// (last use, chunk), oldest first: the eviction order.
    by_use: BTreeSet<(u64, ChunkKey)>,
    /// Chunks that queued batches still need, with how many batches need each.
    pins: HashMap<ChunkKey, u32>,
    total: u64,
    clock: u64,
}

impl State {
    fn touch(&mut self, key: &ChunkKey) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(c) = self.chunks.get_mut(key) {
            self.by_use.remove(&(c.used, key.clone()));
            c.used = clock;
            self.by_use.insert((clock, key.clone()));
        }
    }

    fn forget(&mut self, key: &ChunkKey) -> Option<Cached> {
        let c = self.chunks.remove(key)?;
        self.by_use.remove(&(c.used, key.clone()));
        self.total -= c.bytes;
        Some(c)
    }
}

/// A cache folder, shared by every store opened on it in this process.
#[derive(Debug)]
pub(crate) struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// Held for the cache's lifetime: one process per folder.
    _lock: File,
}

/// Caches open in this process, by folder: a second store or loader on the same folder shares
/// the first one's cache instead of being refused by its lock.
static OPEN: Mutex<Vec<(PathBuf, Weak<ChunkCache>)>> = Mutex::new(Vec::new());

impl ChunkCache {
    /// Opens the cache in `dir` (creating it) with a limit of `limit` bytes, taking its lock.
    pub fn open(dir: &Path, limit: u64) -> Result<Arc<ChunkCache>> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, w)| w.strong_count() > 0);
        if let Some(cache) = open
            .iter()
            .find(|(d, _)| d == dir)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(cache);
        }
        let chunks_dir = dir.join("chunks");
        std::fs::create_dir_all(&chunks_dir).map_err(|e| Error::io(&chunks_dir, e))?;
        let lock_path = dir.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Store {
                    path: dir.to_path_buf(),
                    message: "this cache folder is in use by another process; give each process its own (LARDER_CACHE_DIR, or LOCAL_RANK under torchrun)".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let state = scan(&chunks_dir)?;
        let cache = Arc::new(ChunkCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
            _lock: lock,
        });
        cache.evict_to(0);
        open.push((dir.to_path_buf(), Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, key: &ChunkKey) -> PathBuf {
        self.dir
            .join("chunks")
            .join(&*key.shard)
            .join(key.index.to_string())
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.state().total
    }

    /// Returns true if and only if the cache holds `key`.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.state().chunks.contains_key(key)
    }

    /// Reads `range` (within the chunk) of chunk `key` into `out`, checking the whole chunk
    /// against `digest` first if this process has not yet. Returns false when the chunk is not
    /// cached, or was and failed its check (it is then deleted); `out` is then unspecified.
    pub fn read_into(
        &self,
        key: &ChunkKey,
        range: std::ops::Range<usize>,
        digest: &[u8; 32],
        out: &mut [u8],
    ) -> bool {
        let verified = {
            let mut state = self.state();
            let Some(c) = state.chunks.get(key) else {
                return false;
            };
            let verified = c.verified;
            state.touch(key);
            verified
        };
        let path = self.path(key);
        let ok = if verified {
            read_range(&path, range.start as u64, out)
        } else {
            match std::fs::read(&path) {
                Ok(all) if blake3::hash(&all).as_bytes() == digest => {
                    if let Some(c) = self.state().chunks.get_mut(key) {
                        c.verified = true;
                    }
                    match all.get(range) {
                        Some(part) if part.len() == out.len() => {
                            out.copy_from_slice(part);
                            true
                        }
                        _ => false,
                    }
                }
                Ok(_) => {
                    tracing::warn!(
                        "cached chunk {} failed its checksum; fetching it again",
                        path.display()
                    );
                    false
                }
                Err(_) => false,
            }
        };
        if !ok {
            // Unreadable, altered or removed behind our back: forget it, so the caller's fetch
            // replaces it.
            self.remove(key);
        }
        ok
    }

    /// [`read_into`](Self::read_into) a new buffer; `None` when the chunk is not served from
    /// the cache.
    pub fn read(
        &self,
        key: &ChunkKey,
        range: std::ops::Range<usize>,
        digest: &[u8; 32],
    ) -> Option<Vec<u8>> {
        let mut out = vec![0u8; range.len()];
        self.read_into(key, range, digest, &mut out).then_some(out)
    }

    /// Stores chunk `key` (already checked against its checksum). Makes room by evicting
    /// least-recently-used chunks that no queued batch needs; a chunk that is itself unpinned
    /// and finds no room is not stored (the caller has its bytes), while a pinned one is
    /// stored even over the limit, which is what lets a limit smaller than one batch work.
    pub fn insert(&self, key: &ChunkKey, bytes: &[u8]) -> Result<()> {
        let pinned = self.state().pins.contains_key(key);
        if self.contains(key) {
            return Ok(());
        }
        let size = bytes.len() as u64;
        if !self.evict_to(size) && !pinned {
            return Ok(());
        }
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = dir.join(format!(".{}.tmp", key.index));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(&path, e)
            })?;
        let mut state = self.state();
        state.clock += 1;
        let used = state.clock;
        state.chunks.insert(
            key.clone(),
            Cached {
                bytes: size,
                used,
                verified: true,
            },
        );
        state.by_use.insert((used, key.clone()));
        state.total += size;
        Ok(())
    }

    /// Evicts unpinned chunks, oldest first, until `incoming` more bytes fit under the limit.
    /// Returns true if and only if they fit.
    fn evict_to(&self, incoming: u64) -> bool {
        let (victims, fits) = {
            let mut state = self.state();
            let mut need = (state.total + incoming).saturating_sub(self.limit);
            let mut victims = Vec::new();
            for (_, key) in &state.by_use {
                if need == 0 {
                    break;
                }
                if state.pins.contains_key(key) {
                    continue;
                }
                need = need.saturating_sub(state.chunks.get(key).map_or(0, |c| c.bytes));
                victims.push(key.clone());
            }
            for key in &victims {
                state.forget(key);
            }
            (victims, need == 0)
        };
        for key in victims {
            let _ = std::fs::remove_file(self.path(&key));
        }
        fits
    }

    fn remove(&self, key: &ChunkKey) {
        if self.state().forget(key).is_some() {
            let _ = std::fs::remove_file(self.path(key));
        }
    }

    /// Marks `keys` as needed by a queued batch: they are not evicted until unpinned.
    pub fn pin(&self, keys: &[ChunkKey]) {
        let mut state = self.state();
        for k in keys {
            *state.pins.entry(k.clone()).or_default() += 1;
        }
    }

    /// Releases one batch's pins on `keys`.
    pub fn unpin(&self, keys: &[ChunkKey]) {
        let mut state = self.state();
        for k in keys {
            if let Some(n) = state.pins.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    state.pins.remove(k);
                }
            }
        }
        drop(state);
        // Chunks stored over the limit while pinned go as soon as nothing needs them.
        self.evict_to(0);
    }

    /// Bytes of pinned chunks held now.
    #[cfg(test)]
    pub fn pinned_bytes(&self) -> u64 {
        let state = self.state();
        state
            .pins
            .keys()
            .filter_map(|k| state.chunks.get(k))
            .map(|c| c.bytes)
            .sum()
    }
}

/// Reads back what an earlier run cached, oldest first by modification time; temporary files
/// of an interrupted write are removed.
fn scan(chunks_dir: &Path) -> Result<State> {
    let mut found: Vec<(std::time::SystemTime, ChunkKey, u64)> = Vec::new();
    let shards = std::fs::read_dir(chunks_dir).map_err(|e| Error::io(chunks_dir, e))?;
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        let name: Arc<str> = shard.file_name().to_string_lossy().into();
        for file in files.flatten() {
            let file_name = file.file_name().to_string_lossy().into_owned();
            let Ok(meta) = file.metadata() else { continue };
            match file_name.parse::<u32>() {
                Ok(index) => found.push((
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                    ChunkKey {
                        shard: name.clone(),
                        index,
                    },
                    meta.len(),
                )),
                Err(_) => {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
    }
    found.sort();
    let mut state = State::default();
    for (_, key, bytes) in found {
        state.clock += 1;
        let used = state.clock;
        state.by_use.insert((used, key.clone()));
        state.chunks.insert(
            key,
            Cached {
                bytes,
                used,
                verified: false,
            },
        );
        state.total += bytes;
    }
    Ok(state)
}

/// Fills `out` from `path` at `offset`; false if the file is gone or shorter.
fn read_range(path: &Path, offset: u64, out: &mut [u8]) -> bool {
    use std::os::unix::fs::FileExt;
    File::open(path)
        .and_then(|f| f.read_exact_at(out, offset))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::{ChunkCache, ChunkKey};

    fn key(shard: &str, index: u32) -> ChunkKey {
        ChunkKey {
            shard: shard.into(),
            index,
        }
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        *blake3::hash(bytes).as_bytes()
    }

    #[test]
    fn least_recently_used_goes_first_and_pinned_never() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::open(dir.path(), 300).expect("open");
        let data = [vec![1u8; 100], vec![2u8; 100], vec![3u8; 100]];
        for (i, d) in data.iter().enumerate() {
            cache.insert(&key("s", i as u32), d).expect("insert");
        }
        // Use chunk 0, pin chunk 1: chunk 2 is then the one to go.
        assert!(cache.read(&key("s", 0), 0..10, &digest(&data[0])).is_some());
        cache.pin(&[key("s", 1)]);
        cache.insert(&key("s", 3), &[4u8; 100]).expect("insert");
        assert!(cache.contains(&key("s", 0)) && cache.contains(&key("s", 1)));
        assert!(!cache.contains(&key("s", 2)));
        assert_eq!(cache.total(), 300);
    }

    #[test]
    fn a_limit_smaller_than_a_chunk_holds_pinned_chunks_only_while_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::open(dir.path(), 10).expect("open");
        // Unpinned and too big: not stored, no error.
        cache.insert(&key("s", 0), &[0u8; 100]).expect("insert");
        assert!(!cache.contains(&key("s", 0)));
        cache.pin(&[key("s", 1)]);
        cache.insert(&key("s", 1), &[1u8; 100]).expect("insert");
        assert!(cache.contains(&key("s", 1)));
        assert_eq!(cache.pinned_bytes(), 100);
        cache.unpin(&[key("s", 1)]);
        assert!(!cache.contains(&key("s", 1)));
        assert_eq!(cache.total(), 0);
    }

    #[test]
    fn a_corrupt_cached_chunk_is_dropped_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = vec![7u8; 64];
        {
            let cache = ChunkCache::open(dir.path(), 1 << 20).expect("open");
            cache.insert(&key("s", 0), &good).expect("insert");
        }
        // Flip a byte on disk, as a crash or a bad disk might.
        let path = dir.path().join("chunks/s/0");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[5] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let cache = ChunkCache::open(dir.path(), 1 << 20).expect("reopen");
        assert!(cache.contains(&key("s", 0)), "found by the scan");
        assert_eq!(cache.read(&key("s", 0), 0..64, &digest(&good)), None);
        assert!(!cache.contains(&key("s", 0)) && !path.exists());
    }

    #[test]
    fn a_second_process_is_refused_the_folder_but_this_one_shares_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ChunkCache::open(dir.path(), 100).expect("open");
        let b = ChunkCache::open(dir.path(), 100).expect("shared in-process");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        // Another open file description stands for another process.
        let lock = std::fs::File::open(dir.path().join(".lock")).expect("lock file");
        assert!(matches!(
            lock.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
    }
}
