//! Fast loading of safetensors checkpoints (model weights, cache shards) into host or GPU
//! memory.
//!
//! ```no_run
//! use larder::fastload::{Checkpoint, LoadOptions};
//!
//! let ckpt = Checkpoint::open("model.safetensors.index.json")?;
//! let host = ckpt.load(&LoadOptions::default())?;
//! for name in ckpt.names() {
//!     let t = host.get(&ckpt, name).expect("every name has a view");
//!     println!("{name}: {:?} {:?}, {} bytes", t.info.dtype, t.info.shape, t.data().len());
//! }
//! println!("{:?} in {:.2} s", host.report().path, host.report().seconds);
//! # Ok::<(), larder::Error>(())
//! ```
//!
//! How a file is read, fastest path first:
//! - **to a GPU** ([`Checkpoint::load_to`]): GPUDirect Storage (cuFile DMA from the drive to
//!   GPU memory) when every requirement holds (see [`crate::cuda::probe`]); else reads into a
//!   ring of page-locked buffers whose asynchronous copies to the GPU overlap the reads of the
//!   next chunks; else reads into ordinary memory and synchronous copies. Each failure falls
//!   back to the next path with a warning, and the [`LoadReport`] says which path was taken
//!   and why the faster ones were not.
//! - **to host memory** ([`Checkpoint::load`]): parallel positioned reads of large aligned
//!   chunks into one page-aligned buffer per file, optionally page-locked (`pinned`, so that a
//!   later copy to the GPU is fast) and optionally with `O_DIRECT`.
//!
//! `O_DIRECT` bypasses the page cache: it helps for cold reads of large files — large requests
//! go straight from the drive to the buffer, with no copy out of the cache, no eviction of other
//! data and no read-ahead heuristics — and most when the file is larger than the free page
//! cache. It does nothing for data already cached (it reads it from the drive again) and leaves
//! nothing cached for the next reader. So by default larder asks the kernel (`mincore` over a mapping it never
//! reads) how much of each file is cached and uses `O_DIRECT` only for large files that mostly are not.

mod buffer;
mod checkpoint;
mod device;
mod evict;
mod generate;
mod index;
mod read;

pub use crate::safetensors_header::{Dtype, Header, MAX_HEADER_BYTES, TensorInfo};
pub use buffer::HostBuffer;
pub use checkpoint::{Checkpoint, HostTensors, OwnedTensor, TensorView};
pub use device::{DeviceTensors, DeviceView};
pub use evict::{Eviction, evict};
pub use generate::write_synthetic;

/// How a checkpoint was (or is to be) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadPath {
    /// Buffered positioned reads into ordinary memory (and synchronous copies to a GPU).
    Plain,
    /// `O_DIRECT` reads into ordinary memory (host loads only).
    Direct,
    /// Reads into page-locked memory (and, to a GPU, asynchronous copies overlapping reads).
    Pinned,
    /// GPUDirect Storage: cuFile reads straight into GPU memory.
    Cufile,
}

impl LoadPath {
    /// The path's name: "plain", "direct", "pinned" or "cufile".
    pub fn name(self) -> &'static str {
        match self {
            LoadPath::Plain => "plain",
            LoadPath::Direct => "direct",
            LoadPath::Pinned => "pinned",
            LoadPath::Cufile => "cufile",
        }
    }
}

impl std::str::FromStr for LoadPath {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<LoadPath> {
        Ok(match s {
            "plain" => LoadPath::Plain,
            "direct" => LoadPath::Direct,
            "pinned" => LoadPath::Pinned,
            "cufile" => LoadPath::Cufile,
            other => {
                return Err(crate::Error::InvalidArgument {
                    name: "path",
                    message: format!(
                        "unknown load path {other:?}: plain, direct, pinned or cufile"
                    ),
                });
            }
        })
    }
}

/// Settings of a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Reads in flight at once. Reading is I/O-bound: more requests in flight than cores keep
    /// a fast drive busy.
    pub threads: usize,
    /// Bytes per read request (rounded up to 4 KiB).
    pub chunk_bytes: usize,
    /// Host loads: `Some(true)` reads with `O_DIRECT` (bypassing the page cache), `Some(false)`
    /// through the page cache; `None` (the default) uses `O_DIRECT` for a file of 64 MiB or
    /// more that is mostly not cached, and the page cache otherwise (see the module docs).
    pub direct: Option<bool>,
    /// Host loads: page-locked buffers (falls back to ordinary memory without CUDA).
    pub pinned: bool,
    /// GPU loads: the one path to use (failing rather than falling back), or `None` to choose
    /// the fastest available.
    pub only: Option<LoadPath>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 8,
            chunk_bytes: 16 << 20,
            direct: None,
            pinned: false,
            only: None,
        }
    }
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadReport {
    /// The path taken.
    pub path: LoadPath,
    /// Why each faster path was not taken, or failed and was left (one line each).
    pub fallbacks: Vec<String>,
    /// Bytes read (whole files, headers included).
    pub bytes: u64,
    /// Wall time of the load.
    pub seconds: f64,
}
