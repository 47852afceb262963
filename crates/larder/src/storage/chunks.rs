//! Shards in checked pieces: the 1 MiB chunks whose BLAKE3 checksums the catalog records, so
//! that a reader can check what it reads (from a local map or by byte range from object
//! storage) without hashing a whole shard.

use std::fs::File;
use std::path::Path;

/// Size of the pieces of a shard that carry their own checksum in the catalog: the unit in
/// which a remote store's shards are fetched, verified and cached, and in which a local
/// shard's reads are checked.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// The chunk checksums of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkSums {
    /// Bytes per chunk (the last chunk may be shorter).
    pub chunk_bytes: u64,
    /// One BLAKE3 digest per chunk.
    pub digests: Vec<[u8; 32]>,
}

impl ChunkSums {
    /// Returns true if and only if these are checksums of [`CHUNK_BYTES`] chunks (the cache's
    /// unit) that cover a shard of `bytes` bytes.
    pub fn covers(&self, bytes: u64) -> bool {
        self.chunk_bytes == CHUNK_BYTES
            && self.digests.len() as u64 == bytes.div_ceil(self.chunk_bytes)
    }
}

/// Hashes a stream in [`CHUNK_BYTES`] pieces.
#[derive(Default)]
pub(crate) struct ChunkHasher {
    current: blake3::Hasher,
    in_current: u64,
    digests: Vec<[u8; 32]>,
}

impl ChunkHasher {
    pub fn update(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let take = ((CHUNK_BYTES - self.in_current) as usize).min(buf.len());
            self.current.update(&buf[..take]);
            self.in_current += take as u64;
            buf = &buf[take..];
            if self.in_current == CHUNK_BYTES {
                self.digests.push(*self.current.finalize().as_bytes());
                self.current.reset();
                self.in_current = 0;
            }
        }
    }

    pub fn finish(mut self) -> ChunkSums {
        if self.in_current > 0 {
            self.digests.push(*self.current.finalize().as_bytes());
        }
        ChunkSums {
            chunk_bytes: CHUNK_BYTES,
            digests: self.digests,
        }
    }
}

/// The chunk checksums of the file at `path`, read in one pass.
pub(crate) fn chunk_sums_of_file(path: &Path) -> std::io::Result<ChunkSums> {
    let mut file = File::open(path)?;
    let mut hasher = ChunkHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}
