//! Stores in object storage: `s3://`, `gs://`, `az://` and read-only `http(s)://` URLs.
//!
//! A remote store has the layout of a local one (docs/store-format.md) under its URL. Reading
//! one fetches the catalog once into a local cache folder, then reads shards by byte ranges in
//! [`CHUNK_BYTES`](crate::store::CHUNK_BYTES) chunks, each checked against its checksum in the
//! catalog and kept in the cache (see `cache.rs`); the loader prefetches the chunks of this
//! rank's next batches (see `prefetch.rs`). Writing one uploads shards, then the catalog last,
//! so a reader never sees a catalog whose shards are not all there.
//!
//! ```no_run
//! # fn main() -> larder::Result<()> {
//! let options = larder::remote::RemoteOptions::from_env()?;
//! let store = larder::Store::open_location("s3://bucket/stores/faces", &options)?;
//! println!("{} items", store.items()?.len());
//! # Ok(()) }
//! ```

mod cache;
mod object;
mod options;
mod prefetch;
mod shards;
mod storage;
mod transfer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use object::ObjectStorage;
pub use options::RemoteOptions;
pub(crate) use storage::read_in_pieces;
pub use storage::{LocalStorage, MemoryStorage, Storage, is_not_found};
pub use transfer::{
    PullReport, PushReport, merge, merge_in, prepare, prepare_into, pull, push, push_to,
};

pub(crate) use cache::ChunkCache;
pub(crate) use prefetch::{BatchEntries, Prefetch};
pub(crate) use shards::{RemoteShard, RemoteShards};

use crate::store::{CATALOG_FILE, SHARD_DIR};
use crate::{Error, Result};

/// The catalog's object key.
pub(crate) const CATALOG_KEY: &str = CATALOG_FILE;

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

/// The object key of shard file `file`.
pub(crate) fn shard_key(file: &str) -> String {
    format!("{SHARD_DIR}/{file}")
}

/// Fetches a remote store's catalog into its cache folder and opens the cache.
///
/// Returns the local catalog path and the shard reader.
pub(crate) fn open_store(
    storage: Arc<dyn Storage>,
    options: &RemoteOptions,
) -> Result<(PathBuf, Arc<RemoteShards>)> {
    let folder = options.cache_folder(&storage.url(""));
    let cache = match ChunkCache::open(&folder, options.cache_limit)? {
        Some(cache) => cache,
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
            ChunkCache::open_private(&private, options.cache_limit)?
        }
    };
    let catalog = fetch_catalog(storage.as_ref(), cache.dir())?;
    let cat = crate::store::catalog::Catalog::open(&catalog, false)?;
    let sums = cat.shard_chunks()?;
    let mut shards = std::collections::HashMap::new();
    for (id, file, bytes, _) in cat.shards()? {
        // A shard without chunk checksums (or with a list that does not cover it) cannot be
        // read in ranges; reading an entry in it says so and what to run.
        let Some(sums) = sums.get(&id).filter(|s| covers(s, bytes)).cloned() else {
            continue;
        };
        let name: Arc<str> = file.trim_end_matches(".safetensors").into();
        shards.insert(
            id,
            RemoteShard {
                key: shard_key(&file),
                name,
                bytes,
                sums,
            },
        );
    }
    Ok((
        catalog,
        Arc::new(RemoteShards::new(storage, shards, cache, options)),
    ))
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

/// Returns true if and only if `sums` are checksums of 1 MiB chunks (the cache's unit) that
/// cover a shard of `bytes` bytes.
pub(crate) fn covers(sums: &crate::store::catalog::ChunkSums, bytes: u64) -> bool {
    sums.chunk_bytes == crate::store::CHUNK_BYTES
        && sums.digests.len() as u64 == bytes.div_ceil(sums.chunk_bytes)
}

/// Downloads the catalog into `folder` (replacing what an earlier open fetched).
fn fetch_catalog(storage: &dyn Storage, folder: &Path) -> Result<PathBuf> {
    let bytes = storage.get(CATALOG_KEY).map_err(|e| {
        if is_not_found(&e) {
            Error::Remote {
                url: storage.url(CATALOG_KEY),
                message: "no catalog here: not a larder store, or its upload has not finished (the catalog is uploaded last)".into(),
            }
        } else {
            e
        }
    })?;
    let path = folder.join(CATALOG_FILE);
    let tmp = folder.join(format!(".{CATALOG_FILE}.tmp"));
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(&path, e))?;
    Ok(path)
}
