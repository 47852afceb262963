//! Moving whole stores: `larder push` (local → object storage) and `larder pull` (back).
//!
//! Both copy shards first and the catalog last, and both skip what is already there: shard
//! files are named by their content hash, so a shard of the right size under its name is the
//! right shard (a pull checks its hash anyway). An interrupted transfer run again sends only
//! the rest.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{CATALOG_KEY, RemoteOptions, Storage, shard_key, storage_for};
use crate::store::catalog::Catalog;
use crate::store::shard::chunk_sums_of_file;
use crate::store::{CATALOG_FILE, SHARD_DIR, TMP_DIR};
use crate::{Error, Result};

/// Shards sent or fetched at once.
const PARALLEL_SHARDS: usize = 4;

/// What [`push`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PushReport {
    /// Where the store went.
    pub url: String,
    /// Shards uploaded in this run.
    pub shards_uploaded: usize,
    /// Shards that were there already.
    pub shards_present: usize,
    /// Bytes of shards uploaded.
    pub bytes_uploaded: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What [`pull`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PullReport {
    /// Where the store came to.
    pub dir: String,
    /// Shards downloaded in this run.
    pub shards_downloaded: usize,
    /// Shards that were there already (and matched their checksum).
    pub shards_present: usize,
    /// Bytes of shards downloaded.
    pub bytes_downloaded: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Uploads the local store in `dir` to `url`: shards first, the catalog last.
pub fn push(dir: &Path, url: &str, options: &RemoteOptions) -> Result<PushReport> {
    let storage = storage_for(url, options)?;
    push_to(dir, storage.as_ref())
}

/// [`push`] to any storage.
pub fn push_to(dir: &Path, storage: &dyn Storage) -> Result<PushReport> {
    let _lock = crate::store::lock_store(dir)?;
    upload_store(dir, storage)
}

/// Uploads the store in `dir`, the caller holding its lock.
fn upload_store(dir: &Path, storage: &dyn Storage) -> Result<PushReport> {
    let started = std::time::Instant::now();
    let catalog_path = dir.join(CATALOG_FILE);
    // Opening for writing adds the chunk-checksum table to a catalog from before it existed.
    let catalog = Catalog::open(&catalog_path, true)?;
    let shards = catalog.shards()?;
    let mut sums = catalog.shard_chunks()?;
    for (id, file, _, _) in &shards {
        if !sums.contains_key(id) {
            let path = dir.join(SHARD_DIR).join(file);
            let s = chunk_sums_of_file(&path).map_err(|e| Error::io(&path, e))?;
            catalog.set_shard_chunks(*id, &s)?;
            sums.insert(*id, s);
        }
    }
    drop(catalog);

    let tally = for_each_shard(&shards, storage, |(_, file, size, _)| {
        let key = shard_key(file);
        if storage.size(&key)? == Some(*size) {
            return Ok(Tally::present());
        }
        storage.put_file(&key, &dir.join(SHARD_DIR).join(file))?;
        Ok(Tally::moved(*size))
    })?;
    let mut report = PushReport {
        url: storage.url(""),
        shards_uploaded: tally.moved,
        shards_present: tally.present,
        bytes_uploaded: tally.bytes,
        ..Default::default()
    };
    let bytes = std::fs::read(&catalog_path).map_err(|e| Error::io(&catalog_path, e))?;
    storage.put(CATALOG_KEY, &bytes)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Downloads the store at `url` into the folder `dir`: shards first (each checked against its
/// checksum), the catalog last.
pub fn pull(url: &str, dir: &Path, options: &RemoteOptions) -> Result<PullReport> {
    let storage = storage_for(url, options)?;
    download_store(storage.as_ref(), dir)
}

fn download_store(storage: &dyn Storage, dir: &Path) -> Result<PullReport> {
    let started = std::time::Instant::now();
    for d in [dir.to_path_buf(), dir.join(SHARD_DIR), dir.join(TMP_DIR)] {
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let _lock = crate::store::lock_store(dir)?;
    let catalog_bytes = storage.get(CATALOG_KEY)?;
    let staged = dir.join(TMP_DIR).join(CATALOG_FILE);
    std::fs::write(&staged, &catalog_bytes).map_err(|e| Error::io(&staged, e))?;
    let shards = Catalog::open(&staged, false)?.shards()?;

    let tally = for_each_shard(&shards, storage, |(_, file, size, blake3)| {
        let path = dir.join(SHARD_DIR).join(file);
        let have = crate::store::shard::hash_file(&path).ok();
        if have.is_some_and(|(n, h)| n == *size && &h == blake3) {
            return Ok(Tally::present());
        }
        let key = shard_key(file);
        let data = storage.get(&key)?;
        let hash = blake3::hash(&data).to_hex();
        if data.len() as u64 != *size || hash.as_str() != blake3 {
            return Err(Error::Remote {
                url: storage.url(&key),
                message: format!(
                    "the shard does not match its checksum in the catalog ({} bytes, blake3 {}…; expected {size} bytes, {}…): it was altered after the store was written",
                    data.len(),
                    &hash.as_str()[..16],
                    blake3.get(..16).unwrap_or(blake3)
                ),
            });
        }
        let tmp = dir.join(TMP_DIR).join(format!("{file}.part"));
        std::fs::write(&tmp, &data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Tally::moved(*size))
    })?;
    let mut report = PullReport {
        dir: dir.display().to_string(),
        shards_downloaded: tally.moved,
        shards_present: tally.present,
        bytes_downloaded: tally.bytes,
        ..Default::default()
    };
    let catalog = dir.join(CATALOG_FILE);
    std::fs::rename(&staged, &catalog).map_err(|e| Error::io(&catalog, e))?;
    crate::store::shard::sync_dir(dir)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Shards moved (with their bytes) or found in place already.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    moved: usize,
    present: usize,
    bytes: u64,
}

impl Tally {
    fn moved(bytes: u64) -> Tally {
        Tally {
            moved: 1,
            bytes,
            ..Tally::default()
        }
    }

    fn present() -> Tally {
        Tally {
            present: 1,
            ..Tally::default()
        }
    }

    fn add(self, other: Tally) -> Tally {
        Tally {
            moved: self.moved + other.moved,
            present: self.present + other.present,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// Runs `each` over `shards` on a few threads and adds up what they did; the first error ends
/// the transfer (what was moved stays moved, and a rerun skips it).
fn for_each_shard<T: Sync>(
    shards: &[T],
    storage: &dyn Storage,
    each: impl Fn(&T) -> Result<Tally> + Sync,
) -> Result<Tally> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..PARALLEL_SHARDS)
            .map(|_| {
                s.spawn(|| -> Result<Tally> {
                    let mut tally = Tally::default();
                    while let Some(shard) = shards.get(next.fetch_add(1, Ordering::Relaxed)) {
                        tally = tally.add(each(shard)?);
                    }
                    Ok(tally)
                })
            })
            .collect();
        workers.into_iter().try_fold(Tally::default(), |sum, w| {
            let tally = w.join().unwrap_or_else(|_| {
                Err(Error::Remote {
                    url: storage.url(""),
                    message: "a transfer thread panicked".into(),
                })
            })?;
            Ok(sum.add(tally))
        })
    })
}

/// Prepares `config` into the store at `url`: the store is built in a local staging folder
/// (inside the cache folder, so a rerun resumes it), each shard is uploaded as soon as it is
/// committed, and the catalog is uploaded last, once every shard is there.
///
/// An interrupted run, run again, redoes nothing that is finished: the staging folder resumes
/// as a local prepare does, and shards already uploaded are skipped.
pub fn prepare(
    config: &crate::Config,
    url: &str,
    options: &crate::PrepareOptions,
    encoders: &mut crate::encode::Encoders,
    remote: &RemoteOptions,
) -> Result<crate::PrepareReport> {
    let storage = storage_for(url, remote)?;
    prepare_into(config, storage.as_ref(), options, encoders, remote)
}

/// [`prepare`] into any storage.
pub fn prepare_into(
    config: &crate::Config,
    storage: &dyn Storage,
    options: &crate::PrepareOptions,
    encoders: &mut crate::encode::Encoders,
    remote: &RemoteOptions,
) -> Result<crate::PrepareReport> {
    let staging = remote.cache_folder(&storage.url("")).join("staging");
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    std::thread::scope(|s| {
        let uploader = s.spawn(|| -> Result<()> {
            for file in rx {
                let key = shard_key(&file);
                let path = staging.join(SHARD_DIR).join(&file);
                // Uploads as shards complete; one that fails here is tried again below.
                if let Err(e) = storage.put_file(&key, &path) {
                    tracing::warn!("uploading {file} failed, will retry at the end: {e}");
                }
            }
            Ok(())
        });
        let prepared =
            crate::prepare::prepare_inner(config, &staging, options, encoders, Some(&tx));
        drop(tx);
        let uploaded = uploader.join().unwrap_or(Ok(()));
        let report = prepared?;
        uploaded?;
        let _lock = crate::store::lock_store(&staging)?;
        upload_store(&staging, storage)?;
        Ok(report)
    })
}
