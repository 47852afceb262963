//! Reading a remote store's shards by byte ranges, through the local chunk cache.
//!
//! An entry is read from the chunks that cover it. Chunks in the cache are read from disk;
//! missing ones are fetched with one range request per run of adjacent chunks, checked against
//! the catalog's checksums, and cached. Two threads that need the same chunk wait for one
//! request (the prefetcher's, usually) instead of making two.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use super::ChunkSums;
use super::Storage;
use super::cache::{ChunkCache, ChunkKey, ChunkPlace};
use crate::{Error, Result};

/// Most chunks fetched by one request: a run longer than this is split, so that one slow
/// request does not hold up the rest.
pub(crate) const MAX_RUN: u32 = 16;

/// One shard of a remote store.
#[derive(Debug)]
pub(crate) struct RemoteShard {
    /// Object key, `shards/<file>`.
    pub key: String,
    /// The file name without its extension: the cache's name for the shard.
    pub name: Arc<str>,
    pub bytes: u64,
    pub sums: ChunkSums,
}

impl RemoteShard {
    /// The byte range of chunk `index`.
    fn chunk_range(&self, index: u32) -> Range<u64> {
        let start = index as u64 * self.sums.chunk_bytes;
        start..(start + self.sums.chunk_bytes).min(self.bytes)
    }

    /// The chunks that hold `offset..offset + length` (none for an empty range).
    pub fn chunks_of(&self, offset: u64, length: u64) -> Range<u32> {
        if length == 0 {
            return 0..0;
        }
        let first = offset / self.sums.chunk_bytes;
        let end = (offset + length).div_ceil(self.sums.chunk_bytes);
        first as u32..end as u32
    }

    fn place_of(&self, index: u32) -> ChunkPlace {
        let range = self.chunk_range(index);
        ChunkPlace {
            offset: range.start,
            len: range.end - range.start,
            shard_bytes: self.bytes,
        }
    }

    fn key_of(&self, index: u32) -> ChunkKey {
        ChunkKey {
            shard: self.name.clone(),
            index,
        }
    }
}

/// The shards of one remote store, read through a cache.
#[derive(Debug)]
pub(crate) struct RemoteShards {
    pub storage: Arc<dyn Storage>,
    pub shards: HashMap<i64, RemoteShard>,
    pub cache: Arc<ChunkCache>,
    /// Bytes of upcoming batches the prefetcher may hold pinned.
    pub prefetch_bytes: u64,
    /// Requests the prefetcher makes at once.
    pub concurrency: usize,
    /// Chunks being fetched now.
    flights: Mutex<HashSet<ChunkKey>>,
    landed: Condvar,
}

/// Bytes read for an entry, and whether every chunk came from the cache.
#[derive(Debug)]
pub(crate) struct Read {
    pub bytes: Vec<u8>,
    pub cached: bool,
}

impl RemoteShards {
    pub fn new(
        storage: Arc<dyn Storage>,
        shards: HashMap<i64, RemoteShard>,
        cache: Arc<ChunkCache>,
        options: &super::RemoteOptions,
    ) -> RemoteShards {
        RemoteShards {
            storage,
            shards,
            cache,
            prefetch_bytes: options.prefetch_bytes,
            concurrency: options.concurrency.max(1),
            flights: Mutex::new(HashSet::new()),
            landed: Condvar::new(),
        }
    }

    pub fn shard(&self, id: i64) -> Result<&RemoteShard> {
        self.shards.get(&id).ok_or_else(|| Error::remote(self.storage.url(""), format!(
                "an entry refers to shard {id}, which the catalog does not list (or lists without chunk checksums); push the store again"
            )))
    }

    /// The URL of shard `id`, for messages.
    pub fn url_of(&self, id: i64) -> String {
        match self.shards.get(&id) {
            Some(s) => self.storage.url(&s.key),
            None => self.storage.url(""),
        }
    }

    /// Reads `offset..offset + length` of shard `id`.
    pub fn read(&self, id: i64, offset: u64, length: u64) -> Result<Read> {
        // Checked before allocating: the length comes from the catalog.
        self.check_range(self.shard(id)?, offset, length)?;
        let mut bytes = vec![0u8; length as usize];
        let cached = self.read_into(id, offset, &mut bytes)?;
        Ok(Read { bytes, cached })
    }

    /// An error unless `offset..offset + length` lies within `shard`.
    fn check_range(&self, shard: &RemoteShard, offset: u64, length: u64) -> Result<()> {
        match offset.checked_add(length) {
            Some(end) if end <= shard.bytes => Ok(()),
            _ => Err(Error::remote(
                self.storage.url(&shard.key),
                format!(
                    "entry at {offset}+{length} lies beyond the end of the shard ({} bytes): the catalog and the shard disagree; run `larder verify` on the store",
                    shard.bytes
                ),
            )),
        }
    }

    /// Reads `out.len()` bytes at `offset` of shard `id` into `out` (the loader's batch buffer,
    /// for entries stored raw: no copy in between). Returns true if and only if every chunk
    /// came from the cache.
    pub fn read_into(&self, id: i64, offset: u64, out: &mut [u8]) -> Result<bool> {
        let shard = self.shard(id)?;
        let length = out.len() as u64;
        self.check_range(shard, offset, length)?;
        // Where chunk `i`'s part of the entry lies, within the chunk and within `out`.
        let span = |i: u32| {
            let range = shard.chunk_range(i);
            let from = offset.max(range.start);
            let to = (offset + length).min(range.end);
            (
                (from - range.start) as usize..(to - range.start) as usize,
                (from - offset) as usize..(to - offset) as usize,
            )
        };
        let mut cached = true;
        let chunks = shard.chunks_of(offset, length);
        let mut index = chunks.start;
        while index < chunks.end {
            let (within, at) = span(index);
            let digest = &shard.sums.digests[index as usize];
            if self.cache.read_into(
                &shard.key_of(index),
                shard.place_of(index),
                within.start as u64,
                digest,
                &mut out[at],
            ) {
                index += 1;
                continue;
            }
            cached = false;
            // Fetch the rest of the entry's chunks in one request.
            let run = index..chunks.end.min(index + MAX_RUN);
            let fetched = self.fetch_run(shard, run.clone())?;
            for (i, bytes) in run.clone().zip(fetched) {
                let (within, at) = span(i);
                out[at].copy_from_slice(&bytes[within]);
            }
            index = run.end;
        }
        Ok(cached)
    }

    /// Returns the bytes of chunks `run` of `shard`: those in the cache from there, the rest
    /// fetched with one range request, checked against their checksums and cached. Chunks
    /// another thread is fetching are waited for and then taken from the cache.
    pub fn fetch_run(&self, shard: &RemoteShard, run: Range<u32>) -> Result<Vec<Vec<u8>>> {
        let from_cache = |i: u32| {
            let place = shard.place_of(i);
            let mut bytes = vec![0u8; place.len as usize];
            self.cache
                .read_into(
                    &shard.key_of(i),
                    place,
                    0,
                    &shard.sums.digests[i as usize],
                    &mut bytes,
                )
                .then_some(bytes)
        };
        let (mut chunks, missing) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            while run.clone().any(|i| flights.contains(&shard.key_of(i))) {
                flights = self.landed.wait(flights).unwrap_or_else(|p| p.into_inner());
            }
            let chunks: Vec<Option<Vec<u8>>> = run.clone().map(from_cache).collect();
            let first = chunks.iter().position(Option::is_none);
            let last = chunks.iter().rposition(Option::is_none);
            let (Some(first), Some(last)) = (first, last) else {
                return Ok(chunks.into_iter().flatten().collect());
            };
            let missing = run.start + first as u32..run.start + last as u32 + 1;
            flights.extend(missing.clone().map(|i| shard.key_of(i)));
            (chunks, missing)
        };
        let fetched = {
            // Cleared and announced however the fetch ends, a panic included: a key left in
            // `flights` would keep every later reader of it waiting.
            let _flight = Flight {
                shards: self,
                keys: missing.clone().map(|i| shard.key_of(i)).collect(),
            };
            self.fetch_uncached(shard, missing.clone())
        };
        for (i, bytes) in missing.zip(fetched?) {
            chunks[(i - run.start) as usize] = Some(bytes);
        }
        Ok(chunks.into_iter().flatten().collect())
    }

    fn fetch_uncached(&self, shard: &RemoteShard, run: Range<u32>) -> Result<Vec<Vec<u8>>> {
        let span = shard.chunk_range(run.start).start..shard.chunk_range(run.end - 1).end;
        let bytes = self.storage.get_range(&shard.key, span.clone())?;
        let mut chunks = Vec::with_capacity(run.len());
        for i in run {
            let range = shard.chunk_range(i);
            let part =
                &bytes[(range.start - span.start) as usize..(range.end - span.start) as usize];
            if blake3::hash(part).as_bytes() != &shard.sums.digests[i as usize] {
                return Err(Error::remote(
                    self.storage.url(&shard.key),
                    format!(
                        "bytes {}..{} do not match their checksum in the catalog: the shard was altered after the store was written (nothing was cached); run `larder verify` on the store, and push or prepare it again",
                        range.start, range.end
                    ),
                ));
            }
            // The bytes are good whether or not they can be cached (a full disk, say).
            if let Err(e) = self.cache.insert(&shard.key_of(i), shard.place_of(i), part) {
                tracing::warn!("cannot cache chunk {i} of {}: {e}", shard.key);
            }
            chunks.push(part.to_vec());
        }
        Ok(chunks)
    }
}

/// Chunks one thread is fetching, announced to the waiting readers when dropped.
struct Flight<'a> {
    shards: &'a RemoteShards,
    keys: Vec<ChunkKey>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .shards
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            flights.remove(k);
        }
        self.shards.landed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{RemoteShard, RemoteShards};
    use crate::storage::CHUNK_BYTES;
    use crate::storage::ChunkSums;
    use crate::storage::{ChunkCache, MemoryStorage, RemoteOptions, Storage};

    /// A shard of exactly two chunks in memory, and its reader.
    fn two_chunks(dir: &std::path::Path) -> (RemoteShards, Vec<u8>) {
        let data: Vec<u8> = (0..2 * CHUNK_BYTES).map(|i| (i % 241) as u8).collect();
        let storage = Arc::new(MemoryStorage::new());
        storage.put("shards/s.safetensors", &data).expect("put");
        let sums = ChunkSums {
            chunk_bytes: CHUNK_BYTES,
            digests: data
                .chunks(CHUNK_BYTES as usize)
                .map(|c| *blake3::hash(c).as_bytes())
                .collect(),
        };
        let shard = RemoteShard {
            key: "shards/s.safetensors".into(),
            name: "s".into(),
            bytes: data.len() as u64,
            sums,
        };
        let cache = ChunkCache::open(dir, 1 << 30)
            .expect("open")
            .expect("not held");
        let shards = RemoteShards::new(
            storage,
            HashMap::from([(1, shard)]),
            cache,
            &RemoteOptions::default(),
        );
        (shards, data)
    }

    #[test]
    fn ranges_across_chunks_and_empty_ranges_at_the_end_read_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (shards, data) = two_chunks(dir.path());
        let at = CHUNK_BYTES - 7;
        let read = shards.read(1, at, 20).expect("across the boundary");
        assert_eq!(read.bytes, &data[at as usize..at as usize + 20]);
        assert!(!read.cached);
        assert!(shards.read(1, at, 20).expect("again").cached);
        // An empty entry at the very end of a shard that is a whole number of chunks.
        let end = 2 * CHUNK_BYTES;
        assert_eq!(shards.shards[&1].chunks_of(end, 0), 0..0);
        assert!(shards.read(1, end, 0).expect("empty").bytes.is_empty());
        // Past the end: an error naming the shard, before anything is allocated.
        let err = shards.read(1, end, u64::MAX / 2).expect_err("beyond");
        assert!(
            err.to_string().contains("memory:///shards/s.safetensors"),
            "{err}"
        );
    }
}
