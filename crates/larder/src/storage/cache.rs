//! The local cache of a remote store: each shard as a sparse file holding the chunks fetched so
//! far, read through a memory map like a local store's shard; least-recently-used chunks go
//! first, never a chunk that a queued batch has pinned.
//!
//! ```text
//! <cache folder>/
//!   .lock               held by the one process using this folder
//!   catalog.sqlite      the store's catalog, fetched when the store is opened
//!   shards/<name>       shard `<name>.safetensors`, sparse: fetched chunks at their offsets
//! ```
//!
//! A chunk is written at its offset in its shard's file; evicting it punches a hole there
//! (`fallocate(PUNCH_HOLE)`), which frees its disk blocks. The chunks present are tracked in
//! memory and, when a cache folder is opened again, found from the files' data regions
//! (`SEEK_DATA`). Every chunk is checked against its catalog checksum the first time this
//! process uses it, whether it was just fetched or found on disk from an earlier run (a crash
//! mid-write, a bad disk, a hole read as zeros); one that fails is punched out and fetched
//! again. Reading pins the chunk for the length of the copy, so a hole is never punched under
//! a reader. Shard names are content hashes, so a cache stays valid across prepares.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::{Error, Result};

/// One chunk: the shard file's name without its extension, and the chunk's index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChunkKey {
    pub shard: Arc<str>,
    pub index: u32,
}

/// Where a chunk lies in its shard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChunkPlace {
    /// Byte offset of the chunk in the shard.
    pub offset: u64,
    /// The chunk's length.
    pub len: u64,
    /// The whole shard's length (the sparse file's size).
    pub shard_bytes: u64,
}

#[derive(Debug)]
struct Cached {
    /// Where the chunk lies in its shard's file.
    offset: u64,
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
    /// Chunks that queued batches (or a reader, while it copies) still need, with how many.
    pins: HashMap<ChunkKey, u32>,
    /// Each shard file's map. The files themselves are opened only to write or punch a chunk,
    /// so a cache of thousands of shards holds no descriptors.
    maps: HashMap<Arc<str>, Arc<memmap2::Mmap>>,
    /// Chunks held per shard file: a file whose count drops to zero is deleted.
    per_shard: HashMap<Arc<str>, usize>,
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

    fn add(&mut self, key: ChunkKey, offset: u64, bytes: u64, verified: bool) {
        self.clock += 1;
        let used = self.clock;
        self.by_use.insert((used, key.clone()));
        *self.per_shard.entry(key.shard.clone()).or_default() += 1;
        self.chunks.insert(
            key,
            Cached {
                offset,
                bytes,
                used,
                verified,
            },
        );
        self.total += bytes;
    }

    fn forget(&mut self, key: &ChunkKey) -> Option<Cached> {
        let c = self.chunks.remove(key)?;
        self.by_use.remove(&(c.used, key.clone()));
        self.total -= c.bytes;
        if let Some(n) = self.per_shard.get_mut(&key.shard) {
            *n -= 1;
        }
        Some(c)
    }

    fn pin(&mut self, key: &ChunkKey) {
        *self.pins.entry(key.clone()).or_default() += 1;
    }

    fn unpin(&mut self, key: &ChunkKey) {
        if let Some(n) = self.pins.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(key);
            }
        }
    }
}

/// A cache folder, shared by every store opened on it in this process.
#[derive(Debug)]
pub(crate) struct ChunkCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// Deleted when dropped (see [`ChunkCache::open_private`]).
    private: bool,
    /// The process that opened it. A forked child must not use it: its lock is the parent's,
    /// and the two would evict each other's chunks unseen.
    pid: u32,
    /// Held for the cache's lifetime: one process per folder.
    _lock: File,
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        if self.private && std::process::id() == self.pid {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Caches open in this process, by folder: a second store or loader on the same folder shares
/// the first one's cache instead of being refused by its lock.
static OPEN: Mutex<Vec<(u32, PathBuf, Weak<ChunkCache>)>> = Mutex::new(Vec::new());

impl ChunkCache {
    /// Opens the cache in `dir` (creating it) with a limit of `limit` bytes, taking its lock;
    /// `None` when another process holds it.
    pub fn open(dir: &Path, limit: u64) -> Result<Option<Arc<ChunkCache>>> {
        ChunkCache::open_as(dir, limit, false)
    }

    /// Opens a private cache in `dir` that is deleted when dropped: for a process that finds
    /// its cache folder held by another.
    pub fn open_private(dir: &Path, limit: u64) -> Result<Arc<ChunkCache>> {
        ChunkCache::open_as(dir, limit, true)?.ok_or_else(|| Error::Store {
            path: dir.to_path_buf(),
            message: "a private cache folder is locked by another process".into(),
        })
    }

    fn open_as(dir: &Path, limit: u64, private: bool) -> Result<Option<Arc<ChunkCache>>> {
        let pid = std::process::id();
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        // Entries of another process are the parent's, inherited through a fork.
        open.retain(|(p, _, w)| *p == pid && w.strong_count() > 0);
        if let Some(cache) = open
            .iter()
            .find(|(_, d, _)| d == dir)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return Ok(Some(cache));
        }
        let shards_dir = dir.join("shards");
        std::fs::create_dir_all(&shards_dir).map_err(|e| Error::io(&shards_dir, e))?;
        let Some(lock) = super::try_lock(&dir.join(".lock"))? else {
            return Ok(None);
        };
        let state = scan(&shards_dir)?;
        let cache = Arc::new(ChunkCache {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
            private,
            pid,
            _lock: lock,
        });
        cache.evict_to(0);
        open.push((pid, dir.to_path_buf(), Arc::downgrade(&cache)));
        Ok(Some(cache))
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, shard: &str) -> PathBuf {
        self.dir.join("shards").join(shard)
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

    /// Copies `out.len()` bytes from `within` bytes into chunk `key` (at `place`) into `out`,
    /// checking the whole chunk against `digest` first if this process has not yet. Returns
    /// false when the chunk is not cached, or was and failed its check (it is then dropped);
    /// `out` is then unspecified.
    pub fn read_into(
        &self,
        key: &ChunkKey,
        place: ChunkPlace,
        within: u64,
        digest: &[u8; 32],
        out: &mut [u8],
    ) -> bool {
        if self.foreign() {
            return false;
        }
        let (map, verified) = {
            let mut state = self.state();
            let Some(verified) = state.chunks.get(key).map(|c| c.verified) else {
                return false;
            };
            let Some(map) = state.maps.get(&key.shard).cloned() else {
                return false;
            };
            state.touch(key);
            // Held while copying: the chunk cannot be punched out from under the copy.
            state.pin(key);
            (map, verified)
        };
        let start = place.offset as usize;
        let chunk = map.get(start..start + place.len as usize);
        let ok = match chunk {
            Some(chunk) if verified || blake3::hash(chunk).as_bytes() == digest => {
                let from = within as usize;
                out.copy_from_slice(&chunk[from..from + out.len()]);
                true
            }
            _ => false,
        };
        let mut state = self.state();
        state.unpin(key);
        if ok
            && !verified
            && let Some(c) = state.chunks.get_mut(key)
        {
            c.verified = true;
        }
        if !ok {
            tracing::warn!(
                "cached chunk {} of shard {} failed its checksum; fetching it again",
                key.index,
                key.shard
            );
            self.drop_chunks(&mut state, std::slice::from_ref(key));
        }
        ok
    }

    /// Returns true if and only if this is a forked child of the process that opened the
    /// cache, which must leave it alone.
    fn foreign(&self) -> bool {
        std::process::id() != self.pid
    }

    /// Stores chunk `key` (already checked against its checksum) at `place`. Makes room by
    /// evicting least-recently-used chunks that no queued batch needs; a chunk that is itself
    /// unpinned and finds no room is not stored (the caller has its bytes), while a pinned one
    /// is stored even over the limit, which is what lets a limit smaller than one batch work.
    pub fn insert(&self, key: &ChunkKey, place: ChunkPlace, bytes: &[u8]) -> Result<()> {
        if self.foreign() {
            return Ok(());
        }
        let pinned = {
            let state = self.state();
            if state.chunks.contains_key(key) {
                return Ok(());
            }
            state.pins.contains_key(key)
        };
        let size = bytes.len() as u64;
        if !self.evict_to(size) && !pinned {
            return Ok(());
        }
        let mut state = self.state();
        let path = self.path(&key.shard);
        let io = |e| Error::io(&path, e);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() != place.shard_bytes {
            file.set_len(place.shard_bytes).map_err(io)?;
        }
        use std::os::unix::fs::FileExt;
        file.write_all_at(bytes, place.offset).map_err(io)?;
        if !state.maps.contains_key(&key.shard) {
            // SAFETY: the file is this cache's own (its folder is locked to this process) and
            // its size never changes once set. Regions not yet fetched read as zeros; nothing
            // reads a chunk that the cache does not list as present, and a present chunk is
            // checked against its checksum before its first use and pinned while it is copied.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            state.maps.insert(key.shard.clone(), Arc::new(map));
        }
        if !state.chunks.contains_key(key) {
            state.add(key.clone(), place.offset, size, true);
        }
        drop(state);
        // The batch that pinned the chunk may have been released (its loader dropped) between
        // the pin check above and now; its unpin found nothing to evict then, so the chunk
        // would stay over the limit with nothing left to evict it. It goes now if unpinned.
        if pinned {
            self.evict_to(0);
        }
        Ok(())
    }

    /// Forgets `keys` and frees their disk blocks by punching holes. Where the file system
    /// cannot punch holes, the whole shard file goes instead (with every chunk of it), so that
    /// the limit still holds and no zeroed region can pass for a chunk.
    fn drop_chunks(&self, state: &mut State, keys: &[ChunkKey]) {
        for key in keys {
            let Some(c) = state.forget(key) else { continue };
            let path = self.path(&key.shard);
            if state.per_shard.get(&key.shard) == Some(&0) {
                // A shard file without chunks goes altogether (a reader still holding its map
                // reads the unlinked file, which stays whole until the map is dropped).
                self.drop_shard(state, &key.shard);
            } else if let Err(e) = punch(&path, c.offset, c.bytes) {
                tracing::warn!(
                    "cannot punch a hole in {} ({e}); dropping the whole cached shard instead",
                    path.display()
                );
                self.drop_shard(state, &key.shard);
            }
        }
    }

    /// Forgets every chunk of shard `name` and deletes its file.
    fn drop_shard(&self, state: &mut State, name: &Arc<str>) {
        let keys: Vec<ChunkKey> = state
            .chunks
            .keys()
            .filter(|k| &k.shard == name)
            .cloned()
            .collect();
        for k in &keys {
            state.forget(k);
        }
        state.per_shard.remove(name);
        state.maps.remove(name);
        let _ = std::fs::remove_file(self.path(name));
    }

    /// Evicts unpinned chunks, oldest first, until `incoming` more bytes fit under the limit.
    /// Returns true if and only if they fit.
    fn evict_to(&self, incoming: u64) -> bool {
        if self.foreign() {
            return false;
        }
        let mut state = self.state();
        let mut need = (state.total + incoming).saturating_sub(self.limit);
        if need == 0 {
            return true;
        }
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
        self.drop_chunks(&mut state, &victims);
        need == 0
    }

    /// Marks `keys` as needed by a queued batch: they are not evicted until unpinned.
    pub fn pin(&self, keys: &[ChunkKey]) {
        if self.foreign() {
            return;
        }
        let mut state = self.state();
        for k in keys {
            state.pin(k);
        }
    }

    /// Releases one batch's pins on `keys`.
    pub fn unpin(&self, keys: &[ChunkKey]) {
        {
            let mut state = self.state();
            for k in keys {
                state.unpin(k);
            }
        }
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

/// Frees the disk blocks of `len` bytes at `offset` of the file at `path`, keeping its size.
fn punch(path: &Path, offset: u64, len: u64) -> std::io::Result<()> {
    let file = File::options().write(true).open(path)?;
    // SAFETY: a valid descriptor and a range inside the file; punching keeps the size.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads back what an earlier run cached: every whole chunk inside a data region of a shard
/// file, unverified, oldest files first.
fn scan(shards_dir: &Path) -> Result<State> {
    let mut files: Vec<(std::time::SystemTime, PathBuf, Arc<str>)> = Vec::new();
    for entry in std::fs::read_dir(shards_dir)
        .map_err(|e| Error::io(shards_dir, e))?
        .flatten()
    {
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let name: Arc<str> = entry.file_name().to_string_lossy().into();
        files.push((modified, entry.path(), name));
    }
    files.sort();
    let mut state = State::default();
    let chunk = super::CHUNK_BYTES;
    for (_, path, name) in files {
        // A file that cannot be read back is removed: its blocks would otherwise count
        // against nothing.
        let opened = File::open(&path).and_then(|file| {
            let size = file.metadata()?.len();
            // SAFETY: as in `ChunkCache::insert`.
            let map = unsafe { memmap2::Mmap::map(&file) }?;
            Ok((size, data_regions(&file, size), map))
        });
        let Ok((size, regions, map)) = opened else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        for (start, end) in regions {
            let first = start.div_ceil(chunk);
            let mut index = first;
            while index * chunk < end {
                let len = chunk.min(size - index * chunk);
                if index * chunk + len > end {
                    break;
                }
                let key = ChunkKey {
                    shard: name.clone(),
                    index: index as u32,
                };
                state.add(key, index * chunk, len, false);
                index += 1;
            }
        }
        state.maps.insert(name, Arc::new(map));
    }
    Ok(state)
}

/// The (start, end) byte ranges of `file` that hold data rather than holes. Where the file
/// system cannot tell, the whole file is data (and unfetched chunks then fail their checksum).
fn data_regions(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on a valid descriptor; it only moves this descriptor's offset.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size as i64 } else { hole };
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{ChunkCache, ChunkKey, ChunkPlace};

    const SHARD: u64 = 4 * crate::storage::CHUNK_BYTES;

    fn key(index: u32) -> ChunkKey {
        ChunkKey {
            shard: "s".into(),
            index,
        }
    }

    fn place(index: u32, len: u64) -> ChunkPlace {
        ChunkPlace {
            offset: u64::from(index) * crate::storage::CHUNK_BYTES,
            len,
            shard_bytes: SHARD,
        }
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        *blake3::hash(bytes).as_bytes()
    }

    fn read(cache: &ChunkCache, index: u32, data: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; data.len()];
        cache
            .read_into(
                &key(index),
                place(index, data.len() as u64),
                0,
                &digest(data),
                &mut out,
            )
            .then_some(out)
    }

    #[test]
    fn least_recently_used_goes_first_and_pinned_never() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = opened(dir.path(), 300);
        let data = [vec![1u8; 100], vec![2u8; 100], vec![3u8; 100]];
        for (i, d) in data.iter().enumerate() {
            cache
                .insert(&key(i as u32), place(i as u32, 100), d)
                .expect("insert");
        }
        // Use chunk 0, pin chunk 1: chunk 2 is then the one to go.
        assert_eq!(read(&cache, 0, &data[0]), Some(data[0].clone()));
        cache.pin(&[key(1)]);
        cache
            .insert(&key(3), place(3, 100), &[4u8; 100])
            .expect("insert");
        assert!(cache.contains(&key(0)) && cache.contains(&key(1)));
        assert!(!cache.contains(&key(2)));
        assert_eq!(cache.total(), 300);
        assert_eq!(
            read(&cache, 2, &data[2]),
            None,
            "an evicted chunk is not served"
        );
    }

    #[test]
    fn a_limit_smaller_than_a_chunk_holds_pinned_chunks_only_while_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = opened(dir.path(), 10);
        // Unpinned and too big: not stored, no error.
        cache
            .insert(&key(0), place(0, 100), &[0u8; 100])
            .expect("insert");
        assert!(!cache.contains(&key(0)));
        cache.pin(&[key(1)]);
        cache
            .insert(&key(1), place(1, 100), &[1u8; 100])
            .expect("insert");
        assert!(cache.contains(&key(1)));
        assert_eq!(cache.pinned_bytes(), 100);
        cache.unpin(&[key(1)]);
        assert!(!cache.contains(&key(1)));
        assert_eq!(cache.total(), 0);
        assert!(
            !dir.path().join("shards/s").exists(),
            "an empty shard file goes"
        );
    }

    #[test]
    fn chunks_survive_a_reopen_and_a_corrupt_one_is_dropped_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chunk = crate::storage::CHUNK_BYTES;
        let good: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
        {
            let cache = opened(dir.path(), 1 << 30);
            cache
                .insert(&key(0), place(0, chunk), &good)
                .expect("insert");
            cache
                .insert(&key(2), place(2, chunk), &good)
                .expect("insert");
        }
        // Flip a byte of chunk 2 on disk, as a crash or a bad disk might.
        let path = dir.path().join("shards/s");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[2 * chunk as usize + 5] ^= 0xff;
        std::fs::write(&path, bytes).expect("write");
        let cache = opened(dir.path(), 1 << 30);
        assert!(cache.contains(&key(0)), "found by the scan");
        assert_eq!(read(&cache, 0, &good), Some(good.clone()));
        assert_eq!(read(&cache, 2, &good), None);
        assert!(!cache.contains(&key(2)), "dropped after failing its check");
        // Chunk 1 was never fetched: a hole, or zeros where holes are not found; either way
        // it is not served.
        assert_eq!(read(&cache, 1, &good), None);
    }

    #[test]
    fn a_second_process_is_refused_the_folder_but_this_one_shares_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = opened(dir.path(), 100);
        let b = opened(dir.path(), 100);
        assert!(std::sync::Arc::ptr_eq(&a, &b), "shared in-process");
        // Another open file description stands for another process.
        let lock = std::fs::File::open(dir.path().join(".lock")).expect("lock file");
        assert!(matches!(
            lock.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
    }

    #[test]
    fn a_private_cache_is_deleted_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private");
        let cache = ChunkCache::open_private(&private, 1 << 20).expect("open");
        cache
            .insert(&key(0), place(0, 10), &[1u8; 10])
            .expect("insert");
        assert!(private.join("shards/s").is_file());
        drop(cache);
        assert!(!private.exists());
    }

    fn opened(dir: &std::path::Path, limit: u64) -> std::sync::Arc<ChunkCache> {
        ChunkCache::open(dir, limit)
            .expect("open")
            .expect("not held by another process")
    }
}
