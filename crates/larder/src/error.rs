//! The one error type of the library.

use std::path::PathBuf;

/// The result type of every fallible larder operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A dependency's error (the image decoder's, the YAML parser's, object_store's) kept as the
/// [`source`](std::error::Error::source) of an [`Error`]. It is boxed so that larder's public
/// API does not name its dependencies' types and versions; downcast it to inspect one.
pub type SourceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in larder, with the file, key or item it concerns.
///
/// Problems with individual dataset files (a corrupt image, a missing caption) are not errors:
/// the scan records them as [`Finding`](crate::Finding)s and goes on. An `Error` means the
/// operation as a whole cannot proceed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config value has the wrong type or an unusable value.
    #[error("{}:{line}: `{key}`: {message}", path.display())]
    Config {
        /// The config file (or the folder given in place of one).
        path: PathBuf,
        /// 1-based line of the offending value; 0 when the problem has no single line.
        line: u64,
        /// The dotted key path, e.g. `datasets[0].resolution`.
        key: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The config file is not valid YAML.
    #[error("{}: invalid YAML: {source}", path.display())]
    Yaml {
        /// The config file.
        path: PathBuf,
        /// The parser's error (serde-saphyr's), whose message has the line and column.
        #[source]
        source: SourceError,
    },
    /// An object (or a local store file) that should exist does not: a store not uploaded
    /// yet, a shard deleted behind the catalog's back.
    #[error("{url}: no such object")]
    NotFound {
        /// Where it was looked for.
        url: String,
    },
    /// Every batch size down to the smallest ran out of memory (the batch-size tuner).
    #[error("{}", out_of_memory_message(*attempts, *batch_size, *min))]
    OutOfMemory {
        /// Out-of-memory steps in a row.
        attempts: u32,
        /// The last batch size that failed.
        batch_size: u32,
        /// The smallest batch size the tuner may use.
        min: u32,
    },
    /// A server (the metrics endpoint, the dashboard) cannot listen on its address.
    #[error("{}", listen_message(addr, source))]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why binding failed (`AddrInUse` for a port another process holds).
        #[source]
        source: std::io::Error,
    },
    /// A larder thread panicked (a bug): what it was doing, so the report can name it.
    #[error("{what} panicked; please report this at https://github.com/larder-rs/larder/issues")]
    Panicked {
        /// What the thread was doing.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A metadata file (JSON, JSONL or CSV list of images) could not be read.
    #[error("{}: {message}", path.display())]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// What was wrong, with the line or record where known.
        message: String,
    },
    /// An argument given to a larder function is out of its allowed range.
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What was wrong and what is allowed.
        message: String,
    },
    /// Stored tensor bytes could not be decoded (corrupt compressed data, wrong length).
    #[error("codec: {message}")]
    Codec {
        /// What was wrong.
        message: String,
    },
    /// A store is damaged, incomplete, or not a larder store.
    #[error("{}: {message}", path.display())]
    Store {
        /// The store, shard or catalog concerned.
        path: PathBuf,
        /// What was wrong and what to run about it.
        message: String,
    },
    /// The catalog database reported an error.
    #[error("{}: catalog: {source}", path.display())]
    Catalog {
        /// The catalog file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog file is damaged (truncated, overwritten, not a SQLite database). larder
    /// cannot rebuild it from the shards: they hold tensors, not the item list, the sources'
    /// hashes or the entry keys.
    #[error(
        "{}: the catalog is damaged ({source}); larder cannot rebuild it from the shards. Restore it from a copy (`larder pull` of a pushed store, a backup), or move it aside and run `larder prepare <config> --out {}` again, which recomputes every entry (the old shards are deleted as strays)",
        path.display(),
        path.parent().unwrap_or(std::path::Path::new(".")).display()
    )]
    CorruptCatalog {
        /// The catalog file.
        path: PathBuf,
        /// What SQLite (or larder's check of the file's size) reported.
        #[source]
        source: rusqlite::Error,
    },
    /// Bytes read from a shard do not match the checksum the catalog records for them: the
    /// shard changed on disk after it was written.
    #[error(
        "{}: chunk {chunk} (bytes {}..{}) does not match its checksum{}: the shard is corrupt; run `larder verify --repair`, then `larder prepare` again to rebuild it",
        shard.display(),
        bytes.start,
        bytes.end,
        item.as_ref().map(|i| format!(" (reading {i})")).unwrap_or_default()
    )]
    CorruptShard {
        /// The shard file.
        shard: PathBuf,
        /// The item (and field) whose read found it, when the reader knows it.
        item: Option<String>,
        /// The damaged chunk's index.
        chunk: u64,
        /// Where the damaged chunk lies in the shard file.
        bytes: std::ops::Range<u64>,
    },
    /// An image could not be decoded, resized or encoded.
    #[error("{}: {source}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The codec's or the resizer's error (or larder's own words when a decoder crashed).
        #[source]
        source: SourceError,
    },
    /// An encoder (a VAE, a text or CLIP model, often a Python callable) failed. Everything
    /// computed before the failure is kept; running prepare again computes only the rest.
    #[error("encoder {field:?} failed on {item}: {message}")]
    Encoder {
        /// The field the encoder fills.
        field: String,
        /// The item (its source path, or the caption) the failing batch began with.
        item: String,
        /// What the encoder reported.
        message: String,
    },
    /// A safetensors file (or a sharded model's index) is malformed, truncated or hostile.
    #[error("{}: {}{message}", path.display(), tensor.as_ref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
    Safetensors {
        /// The file concerned.
        path: PathBuf,
        /// The tensor concerned, when the problem is one tensor's.
        tensor: Option<String>,
        /// What was wrong.
        message: String,
    },
    /// Object storage could not be reached or read, or what it returned failed its checksum.
    #[error("{url}: {message}")]
    Remote {
        /// The URL of the object (or the store) concerned.
        url: String,
        /// What happened, after how many tries, and what to do about it.
        message: String,
        /// object_store's error when a request failed; `None` when larder's own checks of what
        /// came back (a checksum, a length) failed.
        #[source]
        source: Option<SourceError>,
    },
    /// The CUDA driver or GPUDirect Storage failed (a driver call, a device allocation).
    #[error("CUDA: {message}")]
    Cuda {
        /// What failed, with the driver's error name where it gave one.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Remote`] found by larder's own checks (no request failed).
    pub(crate) fn remote(url: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Remote {
            url: url.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Image`] for `path` with `source` (a dependency's error, or larder's words).
    pub(crate) fn image(path: impl Into<PathBuf>, source: impl Into<SourceError>) -> Self {
        Error::Image {
            path: path.into(),
            source: source.into(),
        }
    }

    /// Names what was being read in a [`Error::CorruptShard`] that does not name it yet (the
    /// shard reader knows the bytes, its caller the item); any other error is returned as is.
    pub(crate) fn in_item(self, item: String) -> Self {
        match self {
            Error::CorruptShard {
                shard,
                item: None,
                chunk,
                bytes,
            } => Error::CorruptShard {
                shard,
                item: Some(item),
                chunk,
                bytes,
            },
            other => other,
        }
    }
}

/// The message of [`Error::Listen`]: a port in use says what to do about it.
fn listen_message(addr: &str, source: &std::io::Error) -> String {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "cannot listen on {addr}: the port is in use ({source}); choose another port, or 0 for a free one"
        )
    } else {
        format!("cannot listen on {addr}: {source}")
    }
}

/// The message of [`Error::OutOfMemory`]: at the smallest size there is nowhere left to go.
fn out_of_memory_message(attempts: u32, batch_size: u32, min: u32) -> String {
    let what = if batch_size <= min {
        format!(
            "even the smallest batch size {min} runs out of memory ({attempts} in a row, last at batch size {batch_size})"
        )
    } else {
        format!(
            "out of memory {attempts} times in a row, last at batch size {batch_size} (min {min})"
        )
    };
    format!(
        "{what}: the model does not fit with this configuration; lower the resolution, enable gradient checkpointing, or quantize"
    )
}
