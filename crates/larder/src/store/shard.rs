//! Shard files: valid safetensors files written atomically, read through a memory map.
//!
//! A shard is built in memory up to its target size, then written in one pass to a temporary
//! file, fsynced, hashed and renamed into `shards/` under its content hash. A crash leaves either
//! no shard or a whole one; the catalog records a shard only after the rename, so a reader can
//! never take a partial file for a whole one.
//!
//! Layout (the safetensors format): an 8-byte little-endian header length N, N bytes of JSON
//! header, then the tensor data. larder pads the header with spaces so the data starts at a
//! multiple of [`ALIGN`], and orders tensors by element size (largest first) so that every
//! tensor starts at a multiple of its element size: f32 and f16 fields can be viewed in place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::storage::{ChunkHasher, ChunkSums};
use crate::{Error, Result};

/// Alignment of the data section within a shard file.
pub const ALIGN: usize = 64;

/// The `__metadata__` value that marks a larder shard.
pub const FORMAT: &str = "larder-shard/1";

/// One tensor to put into a shard.
#[derive(Debug, Clone)]
pub(crate) struct PendingTensor {
    pub name: String,
    /// safetensors dtype of the stored bytes ("U8" for compressed data).
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Where a tensor landed in a written shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    pub name: String,
    /// Absolute byte offset in the shard file.
    pub offset: u64,
    pub length: u64,
}

/// A shard that has been written, synced and renamed.
#[derive(Debug, Clone)]
pub(crate) struct WrittenShard {
    /// File name inside `shards/`.
    pub file: String,
    pub bytes: u64,
    pub blake3: String,
    pub chunks: ChunkSums,
    pub tensors: Vec<Placed>,
}

/// Tensors accumulating towards one shard.
#[derive(Debug, Default)]
pub(crate) struct ShardBuilder {
    tensors: Vec<PendingTensor>,
    metadata: BTreeMap<String, String>,
    data_bytes: usize,
}

fn element_size(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

impl ShardBuilder {
    /// Adds a tensor; `metadata` (if any) is recorded under the tensor's name in the header.
    pub fn push(&mut self, tensor: PendingTensor, metadata: Option<String>) {
        self.data_bytes += tensor.bytes.len();
        if let Some(m) = metadata {
            self.metadata.insert(tensor.name.clone(), m);
        }
        self.tensors.push(tensor);
    }

    /// Bytes of tensor data so far.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// Returns true if and only if no tensor has been added.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Writes the shard to `tmp_dir`, syncs it, and renames it into `shard_dir` under its
    /// content hash.
    pub fn write(mut self, tmp_dir: &Path, shard_dir: &Path) -> Result<WrittenShard> {
        // Largest elements first keeps every tensor aligned to its element size; the sort is
        // stable, so items stay in the order they were added within each element size.
        self.tensors
            .sort_by_key(|t| std::cmp::Reverse(element_size(t.dtype)));
        let mut header = serde_json::Map::new();
        let mut metadata = serde_json::Map::new();
        metadata.insert("format".into(), FORMAT.into());
        for (k, v) in &self.metadata {
            metadata.insert(k.clone(), v.clone().into());
        }
        header.insert("__metadata__".into(), metadata.into());
        let mut offset = 0usize;
        for t in &self.tensors {
            let end = offset + t.bytes.len();
            header.insert(
                t.name.clone(),
                serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut json =
            serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| Error::Store {
                path: shard_dir.to_path_buf(),
                message: format!("cannot encode shard header: {e}"),
            })?;
        // Trailing spaces are allowed by the format and align the data section.
        while (8 + json.len()) % ALIGN != 0 {
            json.push(b' ');
        }
        let data_start = (8 + json.len()) as u64;

        let tmp = tmp_dir.join(format!(
            "{}-{}.safetensors.tmp",
            std::process::id(),
            unique()
        ));
        let io = |e| Error::io(&tmp, e);
        let file = File::create(&tmp).map_err(io)?;
        let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        out.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        for t in &self.tensors {
            out.write_all(&t.bytes).map_err(io)?;
        }
        let (writer, hash, chunks, bytes) = out.finish();
        let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);

        let blake3 = hash.to_hex().to_string();
        let name = format!("{}.safetensors", &blake3[..32]);
        let final_path = shard_dir.join(&name);
        std::fs::rename(&tmp, &final_path).map_err(|e| Error::io(&final_path, e))?;
        sync_dir(shard_dir)?;

        let mut placed = Vec::with_capacity(self.tensors.len());
        let mut rel = 0u64;
        for t in &self.tensors {
            placed.push(Placed {
                name: t.name.clone(),
                offset: data_start + rel,
                length: t.bytes.len() as u64,
            });
            rel += t.bytes.len() as u64;
        }
        Ok(WrittenShard {
            file: name,
            bytes,
            blake3,
            chunks,
            tensors: placed,
        })
    }
}

/// A process-wide counter, so concurrent writers never share a temporary name.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Makes a rename inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Hashes everything written through it, whole and per chunk, so a shard is hashed without
/// being read back.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    chunks: ChunkHasher,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            chunks: ChunkHasher::default(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, blake3::Hash, ChunkSums, u64) {
        (
            self.inner,
            self.hasher.finalize(),
            self.chunks.finish(),
            self.bytes,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.chunks.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a whole file with BLAKE3.
///
/// Streams the file rather than mapping it, which keeps memory flat for any size; returns the
/// byte count and the full hex digest. Sources and shards are hashed with this one function.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, hasher.finalize().to_hex().to_string()))
}

/// A read-only memory map of a shard file.
#[derive(Debug)]
pub(crate) struct MappedShard {
    pub path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedShard {
    pub fn open(path: &Path) -> Result<MappedShard> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: shards are immutable once renamed into place: larder never writes to a
        // committed shard (gc deletes whole files, which keeps existing maps valid on Unix).
        // Another program truncating the file while it is mapped would make reads fault; that
        // is the documented contract of a store directory.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedShard {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The bytes at `offset..offset + length`, checked against the file's size.
    pub fn slice(&self, offset: u64, length: u64) -> Result<&[u8]> {
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= self.map.len() as u64);
        match end {
            Some(end) => Ok(&self.map[offset as usize..end as usize]),
            None => Err(Error::Store {
                path: self.path.clone(),
                message: format!(
                    "entry at {offset}+{length} lies beyond the end of the shard ({} bytes): the shard is truncated; run `larder verify` and prepare again",
                    self.map.len()
                ),
            }),
        }
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Any safetensors file — a larder shard, or one written by Python — opened through a memory
/// map, with its header validated (by the crate's one validator of
/// safetensors headers) before any tensor is touched.
#[derive(Debug)]
pub struct SafetensorsFile {
    map: MappedShard,
    header: crate::safetensors_header::Header,
}

/// One tensor of a [`SafetensorsFile`], viewing the file's bytes without a copy.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// safetensors dtype name, e.g. "F32", "BF16", "U8".
    pub dtype: &'a str,
    /// The shape.
    pub shape: &'a [usize],
    /// Little-endian element bytes.
    pub data: &'a [u8],
}

impl SafetensorsFile {
    /// Opens and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        let map = MappedShard::open(path)?;
        let bytes = map.bytes();
        let header =
            crate::safetensors_header::Header::from_prefix(path, bytes, bytes.len() as u64)?;
        Ok(SafetensorsFile { map, header })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.names().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// The `__metadata__` map of the header.
    pub fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.header.metadata.clone().into_iter().collect()
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let info = self
            .header
            .get(name)
            .ok_or_else(|| Error::InvalidArgument {
                name: "name",
                message: format!("{}: no tensor {name:?}", self.map.path.display()),
            })?;
        // The header's validation checked that the range lies within the file.
        let data = self
            .map
            .slice(self.header.data_start + info.range.start, info.nbytes())?;
        Ok(TensorRef {
            dtype: dtype_name(info.dtype),
            shape: &info.shape,
            data,
        })
    }
}

fn dtype_name(d: safetensors::Dtype) -> &'static str {
    use safetensors::Dtype::*;
    match d {
        BOOL => "BOOL",
        U8 => "U8",
        I8 => "I8",
        F8_E5M2 => "F8_E5M2",
        F8_E4M3 => "F8_E4M3",
        I16 => "I16",
        U16 => "U16",
        F16 => "F16",
        BF16 => "BF16",
        I32 => "I32",
        U32 => "U32",
        F32 => "F32",
        F64 => "F64",
        I64 => "I64",
        U64 => "U64",
        _ => "OTHER",
    }
}
