//! A checkpoint — one safetensors file or a sharded set — opened by its headers, then read
//! whole into host memory or one tensor at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::buffer::{ALIGN, HostBuffer, round_up};
use super::{LoadOptions, LoadPath, LoadReport, index, read};
use crate::safetensors_header::{Header, TensorInfo};
use crate::{Error, Result};

/// One file of a checkpoint: where it is and what its header says.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) path: PathBuf,
    pub(crate) header: Header,
    pub(crate) file_len: u64,
    file: File,
}

/// A safetensors checkpoint opened by its headers: a single file, or the files of a sharded
/// index. Opening reads only the headers (validated, see [`Header`]); tensors are read by
/// [`load`](Checkpoint::load) (all of them, in parallel) or [`read`](Checkpoint::read) (one).
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    pub(crate) shards: Vec<Shard>,
    /// Tensor name to (shard, index in the shard's header).
    pub(crate) names: BTreeMap<String, (usize, usize)>,
    metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, or a sharded checkpoint's `.json` index.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        if index::is_index(path) {
            let idx = index::read(path)?;
            let shards = idx
                .files
                .iter()
                .map(|f| Shard::open(f))
                .collect::<Result<Vec<_>>>()?;
            let mut names = BTreeMap::new();
            for (name, shard) in idx.weight_map {
                let s = &shards[shard];
                let Some(i) = s.header.tensors.iter().position(|t| t.name == name) else {
                    return Err(Error::Safetensors {
                        path: path.to_path_buf(),
                        tensor: Some(name),
                        message: format!(
                            "the weight_map places it in {}, which does not hold it",
                            s.path.display()
                        ),
                    });
                };
                names.insert(name, (shard, i));
            }
            Ok(Checkpoint {
                path: path.to_path_buf(),
                shards,
                names,
                metadata: idx.metadata,
            })
        } else {
            let shard = Shard::open(path)?;
            let names = shard
                .header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), (0, i)))
                .collect();
            let metadata = shard.header.metadata.clone();
            Ok(Checkpoint {
                path: path.to_path_buf(),
                shards: vec![shard],
                names,
                metadata,
            })
        }
    }

    /// The file or index this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files, in index order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The string metadata: the file's `__metadata__`, or an index's `metadata`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The tensor called `name`, as its header describes it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.names
            .get(name)
            .map(|&(s, i)| &self.shards[s].header.tensors[i])
    }

    /// The total size of the tensors' bytes.
    pub fn data_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.header.data_len).sum()
    }

    /// Reads the one tensor called `name` (a positioned read of its bytes alone).
    pub fn read(&self, name: &str) -> Result<OwnedTensor> {
        let &(s, i) = self.names.get(name).ok_or_else(|| Error::Safetensors {
            path: self.path.clone(),
            tensor: Some(name.to_owned()),
            message: "no such tensor".into(),
        })?;
        let shard = &self.shards[s];
        let info = shard.header.tensors[i].clone();
        let len = info.nbytes() as usize;
        let mut buffer = HostBuffer::new(len)?;
        let at = shard.header.data_start + info.range.start;
        let got = read::fill_at(&shard.file, &mut buffer.whole_mut()[..len], at)
            .map_err(|e| Error::io(&shard.path, e))?;
        if got < len {
            return Err(Error::Safetensors {
                path: shard.path.clone(),
                tensor: Some(info.name),
                message: format!("the file ended after {got} of its {len} bytes: truncated"),
            });
        }
        Ok(OwnedTensor {
            info,
            buffer: Arc::new(buffer),
        })
    }

    /// Reads every file whole into host memory, each with parallel positioned reads of large
    /// chunks, and hands the tensors out as views of those buffers.
    ///
    /// Files mostly absent from the page cache are read with `O_DIRECT` unless
    /// `options.direct` says otherwise (see [`LoadOptions::direct`]); with `options.pinned`
    /// the buffers are page-locked. Either falls back — with a warning and a line in the
    /// report — when the file system or the machine does not allow it.
    pub fn load(&self, options: &LoadOptions) -> Result<HostTensors> {
        let started = Instant::now();
        let mut fallbacks = Vec::new();
        let mut pinned = options.pinned;
        let mut direct = options.direct;
        let mut files = Vec::with_capacity(self.shards.len());
        let mut any_direct = false;
        for shard in &self.shards {
            let (buffer, was_direct) = read_host(
                shard,
                options.threads,
                options.chunk_bytes,
                &mut pinned,
                &mut direct,
                &mut fallbacks,
            )?;
            files.push(Arc::new(buffer));
            any_direct |= was_direct;
        }
        let path = if pinned {
            LoadPath::Pinned
        } else if any_direct {
            LoadPath::Direct
        } else {
            LoadPath::Plain
        };
        Ok(HostTensors {
            files,
            report: LoadReport {
                path,
                fallbacks,
                bytes: self.shards.iter().map(|s| s.file_len).sum(),
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }

    /// The view of tensor `name` in `files` (the buffers [`load`](Self::load) made).
    pub(crate) fn locate(&self, name: &str) -> Option<(&TensorInfo, usize, u64)> {
        self.names.get(name).map(|&(s, i)| {
            let shard = &self.shards[s];
            (&shard.header.tensors[i], s, shard.header.data_start)
        })
    }
}

/// Files smaller than this are always read through the page cache: `O_DIRECT` gains little
/// on them, and cached small files serve the next reader.
const AUTO_DIRECT_MIN_BYTES: u64 = 64 << 20;

/// Reads one shard whole into a host buffer, falling back from pinned to ordinary memory and
/// from `O_DIRECT` to buffered reads when they are refused (the flags are cleared so that the
/// next shards do not try again). `direct`: `None` reads with `O_DIRECT` when the file is
/// large and mostly not in the page cache. Returns the buffer and whether `O_DIRECT` was used.
pub(crate) fn read_host(
    shard: &Shard,
    threads: usize,
    chunk: usize,
    pinned: &mut bool,
    direct: &mut Option<bool>,
    fallbacks: &mut Vec<String>,
) -> Result<(HostBuffer, bool)> {
    let len = usize::try_from(shard.file_len).map_err(|_| Error::InvalidArgument {
        name: "path",
        message: format!(
            "{} does not fit in this machine's address space",
            shard.path.display()
        ),
    })?;
    let mut buffer = if *pinned {
        match HostBuffer::pinned(len) {
            Ok(b) => b,
            Err(e) => {
                *pinned = false;
                note(
                    fallbacks,
                    format!("pinned host memory unavailable ({e}): ordinary memory"),
                );
                HostBuffer::new(len)?
            }
        }
    } else {
        HostBuffer::new(len)?
    };
    // O_DIRECT needs every chunk to be a multiple of the block size.
    let chunk = round_up(chunk.max(ALIGN));
    let use_direct = direct.unwrap_or_else(|| {
        shard.file_len >= AUTO_DIRECT_MIN_BYTES
            && crate::os::file_residency(&shard.path)
                .is_ok_and(|(cached, len)| cached.saturating_mul(2) < len)
    });
    if use_direct {
        let attempt = crate::os::open(&shard.path, true)
            .map_err(|e| Error::io(&shard.path, e))
            .and_then(|f| {
                read::read_parallel(
                    &f,
                    &shard.path,
                    buffer.whole_mut(),
                    shard.file_len,
                    chunk,
                    threads,
                )
            });
        match attempt {
            Ok(()) => return Ok((buffer, true)),
            // A file system without O_DIRECT (tmpfs, some FUSE and network ones) refuses it
            // with EINVAL, at open or at the first read.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                *direct = Some(false);
                note(
                    fallbacks,
                    format!(
                        "O_DIRECT refused by the file system of {} ({source}): buffered reads",
                        shard.path.display()
                    ),
                );
            }
            Err(e) => return Err(e),
        }
    }
    read::read_parallel(
        &shard.file,
        &shard.path,
        buffer.whole_mut(),
        shard.file_len,
        chunk,
        threads,
    )?;
    Ok((buffer, false))
}

/// Records a fallback and says it once as a warning.
pub(crate) fn note(fallbacks: &mut Vec<String>, message: String) {
    tracing::warn!("fastload: {message}");
    fallbacks.push(message);
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut prefix = [0u8; 8];
        let got = read::fill_at(&file, &mut prefix, 0).map_err(|e| Error::io(path, e))?;
        let n = Header::json_len(path, &prefix[..got], file_len)?;
        // `n` is bounded by MAX_HEADER_BYTES and by the file's length: safe to allocate.
        let mut json = vec![0u8; n as usize];
        file.read_exact_at(&mut json, 8)
            .map_err(|e| Error::io(path, e))?;
        let header = Header::parse(path, &json, file_len)?;
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            file_len,
            file,
        })
    }
}

/// Every tensor of a checkpoint, in host memory: one buffer per file, tensors viewing it.
#[derive(Debug)]
pub struct HostTensors {
    files: Vec<Arc<HostBuffer>>,
    report: LoadReport,
}

impl HostTensors {
    /// The view of tensor `name` of `checkpoint` (the checkpoint these were loaded from).
    pub fn get<'a>(&'a self, checkpoint: &'a Checkpoint, name: &str) -> Option<TensorView<'a>> {
        let (info, shard, data_start) = checkpoint.locate(name)?;
        Some(TensorView {
            info,
            buffer: &self.files[shard],
            offset: (data_start + info.range.start) as usize,
        })
    }

    /// How the files were read.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The buffers, one per file.
    pub fn buffers(&self) -> &[Arc<HostBuffer>] {
        &self.files
    }
}

/// A tensor in a loaded file's buffer.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Name, dtype, shape and byte range.
    pub info: &'a TensorInfo,
    /// The buffer holding the whole file.
    pub buffer: &'a Arc<HostBuffer>,
    /// Where the tensor's bytes start in `buffer`.
    pub offset: usize,
}

impl<'a> TensorView<'a> {
    /// The tensor's bytes (little-endian, row-major).
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_slice()[self.offset..self.offset + self.info.nbytes() as usize]
    }
}

/// One tensor read on its own ([`Checkpoint::read`]), in a buffer of its own.
#[derive(Debug, Clone)]
pub struct OwnedTensor {
    /// Name, dtype, shape and byte range in its file.
    pub info: TensorInfo,
    /// Exactly the tensor's bytes.
    pub buffer: Arc<HostBuffer>,
}
