//! Where a store's bytes live: the layer below [`store`](crate::store).
//!
//! One [`Storage`] trait with three backends — a local folder, memory, and object storage
//! (`s3://`, `gs://`, `az://`, read-only `http(s)://`, through the object_store crate) — plus
//! what reading shards in pieces needs: [`CHUNK_BYTES`] chunks and their checksums
//! (`chunks.rs`), the local chunk cache of a remote store (`cache.rs`), the shard reader that
//! fetches, checks and caches chunks (`shards.rs`), the prefetcher of a rank's next batches
//! (`prefetch.rs`), and lock files (`lock.rs`). It knows nothing of catalogs or items: the
//! store's layout is [`store`](crate::store)'s, and moving whole stores (push, pull, prepare
//! into a URL, merge) is [`transfer`](crate::transfer)'s.
//!
//! ```no_run
//! # fn main() -> larder::Result<()> {
//! let options = larder::storage::RemoteOptions::from_env()?;
//! let store = larder::Store::open_location("s3://bucket/stores/faces", &options)?;
//! println!("{} items", store.items()?.len());
//! # Ok(()) }
//! ```

mod backend;
mod cache;
mod chunks;
mod location;
mod lock;
mod object;
mod options;
mod prefetch;
mod shards;

use std::path::Path;
use std::sync::Arc;

pub(crate) use backend::read_in_pieces;
pub use backend::{LocalStorage, MemoryStorage, Storage, is_not_found};
pub use location::Location;
pub use object::ObjectStorage;
pub use options::RemoteOptions;

pub(crate) use cache::ChunkCache;
pub use chunks::CHUNK_BYTES;
pub(crate) use chunks::{ChunkHasher, ChunkSums, chunk_sums_of_file};
pub(crate) use lock::try_lock;
pub(crate) use prefetch::{BatchEntries, Prefetch};
pub(crate) use shards::{RemoteShard, RemoteShards};

use crate::Result;

/// Returns true if and only if `location` is a URL larder reads as object storage (rather than
/// a local path).
pub fn is_url(location: &str) -> bool {
    let Some((scheme, rest)) = location.split_once("://") else {
        return false;
    };
    !rest.is_empty()
        && matches!(
            scheme.to_ascii_lowercase().as_str(),
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "http" | "https"
        )
}

/// The storage behind `url`.
pub fn storage_for(url: &str, options: &RemoteOptions) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(ObjectStorage::new(url, options)?))
}

/// Opens the chunk cache of the store at `url` in its folder under the cache directory, or,
/// when another process holds that folder, in a private one of this process's own.
pub(crate) fn open_cache(url: &str, options: &RemoteOptions) -> Result<Arc<ChunkCache>> {
    let folder = options.cache_folder(url);
    match ChunkCache::open(&folder, options.cache_limit)? {
        Some(cache) => Ok(cache),
        None => {
            // Another process (a second training run, an `inspect` beside a running job) has
            // this folder: work in a private one rather than fail or share unsafely.
            remove_stale_private_folders(&folder);
            let private = folder.with_extension(format!("pid{}", std::process::id()));
            tracing::warn!(
                "the cache folder {} is in use by another process; this one caches in {} (deleted at exit); give each process its own LARDER_CACHE_DIR to keep what it fetches",
                folder.display(),
                private.display()
            );
            ChunkCache::open_private(&private, options.cache_limit)
        }
    }
}

/// Removes the private cache folders beside `folder` (`<folder>.pid<P>`) whose process is gone:
/// a process that exits without unwinding (`os._exit`, as multiprocessing's workers do) cannot
/// delete its own.
fn remove_stale_private_folders(folder: &Path) {
    let (Some(parent), Some(name)) = (folder.parent(), folder.file_name()) else {
        return;
    };
    let prefix = format!("{}.pid", name.to_string_lossy());
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = entry_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
