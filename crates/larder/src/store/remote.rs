//! Opening a store that lives in object storage: its catalog is fetched once into the store's
//! cache folder, and its shards are read in checked chunks through the storage layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::catalog::Catalog;
use super::{CATALOG_FILE, SHARD_DIR};
use crate::storage::{RemoteOptions, RemoteShard, RemoteShards, Storage, is_not_found};
use crate::{Error, Result};

/// The catalog's object key.
pub(crate) const CATALOG_KEY: &str = CATALOG_FILE;

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
    let cache = crate::storage::open_cache(&storage.url(""), options)?;
    let catalog = fetch_catalog(storage.as_ref(), cache.dir())?;
    let cat = Catalog::open(&catalog, false)?;
    let sums = cat.shard_chunks()?;
    let mut shards = std::collections::HashMap::new();
    for (id, file, bytes, _) in cat.shards()? {
        // A shard without chunk checksums (or with a list that does not cover it) cannot be
        // read in ranges; reading an entry in it says so and what to run.
        let Some(sums) = sums.get(&id).filter(|s| s.covers(bytes)).cloned() else {
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

/// Downloads the catalog into `folder` (replacing what an earlier open fetched).
fn fetch_catalog(storage: &dyn Storage, folder: &Path) -> Result<PathBuf> {
    let bytes = storage.get(CATALOG_KEY).map_err(|e| {
        if is_not_found(&e) {
            Error::remote(storage.url(CATALOG_KEY), "no catalog here: not a larder store, or its upload has not finished (the catalog is uploaded last)")
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
