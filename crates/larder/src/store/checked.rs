//! Local shards whose bytes are checked against the catalog's chunk checksums as they are read.
//!
//! A shard is written once and never changed, so a byte that differs from what was written is
//! damage (a failing disk, a bad copy, a stray write). `larder verify` finds it by reading every
//! shard whole; a reader should not have to wait for that to notice. Each 1 MiB chunk of a shard
//! is hashed the first time any read touches it in this process and never again (a bitmap of
//! checked chunks per shard): a training run pays one BLAKE3 pass over the bytes it reads in its
//! first epoch, and an atomic load per chunk after that. The header chunk is checked when the
//! shard is first mapped, so a damaged header fails the first read of the shard, whichever
//! entry it is for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::shard::MappedShard;
use crate::storage::ChunkSums;
use crate::{Error, Result};

/// A mapped local shard and what is known of its chunks.
#[derive(Debug)]
pub(crate) struct CheckedShard {
    pub map: Arc<MappedShard>,
    /// The catalog's checksums; `None` for stores written before they existed (reads from
    /// them are unchecked, and the store warns once).
    sums: Option<ChunkSums>,
    /// One bit per chunk: set once the chunk matched its checksum.
    checked: Box<[AtomicU64]>,
}

impl CheckedShard {
    /// Wraps `map` and checks the chunks that hold its header (the 8-byte length and the JSON
    /// it gives the length of).
    pub fn new(map: MappedShard, sums: Option<ChunkSums>) -> Result<CheckedShard> {
        let chunks = sums.as_ref().map_or(0, |s| s.digests.len());
        let shard = CheckedShard {
            map: Arc::new(map),
            sums,
            checked: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        let bytes = shard.map.bytes();
        let header_end = bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(bytes.len() as u64, |n| {
                u64::from_le_bytes(n).saturating_add(8)
            })
            .min(bytes.len() as u64);
        shard.check(0, header_end.max(1))?;
        Ok(shard)
    }

    /// Checks every chunk that `offset..offset + length` touches and that no read has checked
    /// before. The range must lie within the file (see [`MappedShard::slice`]).
    pub fn check(&self, offset: u64, length: u64) -> Result<()> {
        let Some(sums) = &self.sums else {
            return Ok(());
        };
        if length == 0 {
            return Ok(());
        }
        let size = sums.chunk_bytes;
        let first = offset / size;
        let last = (offset + length - 1) / size;
        for chunk in first..=last {
            let (word, bit) = ((chunk / 64) as usize, 1u64 << (chunk % 64));
            if self
                .checked
                .get(word)
                .is_some_and(|w| w.load(Ordering::Acquire) & bit != 0)
            {
                continue;
            }
            // Two readers may hash the same chunk at once; both get the same answer, and
            // hashing twice is cheaper than making one wait for the other.
            let bytes = self.map.bytes();
            let start = (chunk * size).min(bytes.len() as u64) as usize;
            let end = ((chunk + 1) * size).min(bytes.len() as u64) as usize;
            let sound = sums
                .digests
                .get(chunk as usize)
                .is_some_and(|d| blake3::hash(&bytes[start..end]).as_bytes() == d);
            if !sound {
                return Err(Error::CorruptShard {
                    shard: self.map.path.clone(),
                    item: None,
                    chunk,
                    bytes: start as u64..end as u64,
                });
            }
            if let Some(w) = self.checked.get(word) {
                w.fetch_or(bit, Ordering::Release);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard file of `len` bytes with a safetensors-like 8-byte header length of 100 and its
    /// chunk checksums.
    fn shard(dir: &std::path::Path, len: usize) -> (std::path::PathBuf, ChunkSums) {
        let mut bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        bytes[..8].copy_from_slice(&100u64.to_le_bytes());
        let path = dir.join("s.safetensors");
        std::fs::write(&path, &bytes).expect("write");
        let sums = crate::storage::chunk_sums_of_file(&path).expect("sums");
        (path, sums)
    }

    fn flip(path: &std::path::Path, at: usize) {
        let mut bytes = std::fs::read(path).expect("read");
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).expect("write");
    }

    #[test]
    fn a_flipped_byte_fails_the_reads_of_its_chunk_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mb = crate::storage::CHUNK_BYTES as usize;
        let (path, sums) = shard(dir.path(), 3 * mb + 10);
        flip(&path, 2 * mb + 5);
        let checked =
            CheckedShard::new(MappedShard::open(&path).expect("map"), Some(sums)).expect("open");
        checked.check(200, 1000).expect("chunk 0 is sound");
        checked.check(mb as u64, 10).expect("chunk 1 is sound");
        match checked.check(mb as u64 - 4, mb as u64 + 8) {
            Err(Error::CorruptShard {
                chunk: 2, shard, ..
            }) => assert_eq!(shard, path),
            other => panic!("expected chunk 2 to be corrupt: {other:?}"),
        }
        // A failed chunk is not remembered as checked.
        assert!(checked.check(2 * mb as u64, 1).is_err());
        checked
            .check(3 * mb as u64, 10)
            .expect("the short last chunk is sound");
    }

    #[test]
    fn a_flipped_header_byte_fails_the_first_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, sums) = shard(dir.path(), 4000);
        flip(&path, 50);
        let err = CheckedShard::new(MappedShard::open(&path).expect("map"), Some(sums))
            .expect_err("header chunk is corrupt");
        assert!(matches!(err, Error::CorruptShard { chunk: 0, .. }), "{err}");
        assert!(err.to_string().contains("larder verify --repair"), "{err}");
    }

    #[test]
    fn a_shard_without_checksums_is_read_unchecked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = shard(dir.path(), 4000);
        flip(&path, 50);
        let checked =
            CheckedShard::new(MappedShard::open(&path).expect("map"), None).expect("open");
        checked.check(0, 4000).expect("nothing to check against");
    }
}
