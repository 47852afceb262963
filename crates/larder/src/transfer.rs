//! Moving whole stores: `larder push` (local → object storage) and `larder pull` (back),
//! preparing into a folder or straight into a URL ([`prepare`], [`Prepare::run`]), and merging
//! the parts of a distributed prepare in either ([`merge`]) — the layer above the prepare
//! stage and the [`storage`](crate::storage) backends, and the one place that decides, by the
//! [`Location`], whether a store is local or remote.
//!
//! Both copy shards first and the catalog last, and both skip what is already there: shard
//! files are named by their content hash, so a shard of the right size under its name is the
//! right shard (a pull checks its hash anyway). An interrupted transfer run again sends only
//! the rest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;
use crate::prepare::{PARTS_DIR, Prepare, PrepareOptions, PrepareReport};
use crate::storage::{Location, RemoteOptions, Storage, chunk_sums_of_file, storage_for};
use crate::store::catalog::Catalog;
use crate::store::remote::{CATALOG_KEY, shard_key};
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
    // Refuses a folder that is not a store (opening for writing would make one).
    drop(Catalog::open(&catalog_path, false)?);
    // Opening for writing adds the chunk-checksum table to a catalog from before it existed.
    let catalog = Catalog::open(&catalog_path, true)?;
    let shards = catalog.shards()?;
    let sums = catalog.shard_chunks()?;
    for (id, file, _, _) in &shards {
        if !sums.contains_key(id) {
            let path = dir.join(SHARD_DIR).join(file);
            let s = chunk_sums_of_file(&path).map_err(|e| Error::io(&path, e))?;
            catalog.set_shard_chunks(*id, &s)?;
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
        let tmp = dir.join(TMP_DIR).join(format!("{file}.part"));
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        let mut hasher = blake3::Hasher::new();
        // Exactly the catalog's size is read (a shorter object is an error there), so the
        // local copy is right if and only if its hash is.
        crate::storage::read_in_pieces(storage, &key, *size, |piece| {
            hasher.update(piece);
            std::io::Write::write_all(&mut out, piece).map_err(|e| Error::io(&tmp, e))
        })?;
        let hash = hasher.finalize().to_hex();
        if hash.as_str() != blake3 {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::remote(
                storage.url(&key),
                format!(
                    "the shard does not match its checksum in the catalog (blake3 {}…, expected {}…): it was altered after the store was written",
                    &hash.as_str()[..16],
                    blake3.get(..16).unwrap_or(blake3)
                ),
            ));
        }
        out.into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))
            .and_then(|f| f.sync_all().map_err(|e| Error::io(&tmp, e)))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
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
                Err(Error::Panicked {
                    what: format!("a transfer thread for {}", storage.url("")),
                })
            })?;
            Ok(sum.add(tally))
        })
    })
}

/// Prepares `config` (scanned and planned now) into `out`, a store folder or URL, with no
/// encoders: the short form of [`Prepare`]`::new(config).options(..).run(out)`.
///
/// ```no_run
/// use larder::{Config, PrepareOptions};
///
/// let config = Config::load("examples/sample/config.yaml")?;
/// larder::prepare(&config, "stores/sample", &PrepareOptions::default())?;
/// # Ok::<(), larder::Error>(())
/// ```
pub fn prepare(
    config: &Config,
    out: impl Into<Location>,
    options: &PrepareOptions,
) -> Result<PrepareReport> {
    Prepare::new(config).options(options.clone()).run(out)
}

impl Prepare<'_> {
    /// Runs the prepare into `out`: a store folder, or a URL of object storage (see
    /// [`Location`]). With [`PrepareOptions::part`], the part goes to `out/parts/<i>-of-<N>`,
    /// for [`merge`].
    ///
    /// Into a URL, the store is built in a local staging folder (inside the cache folder, so
    /// a rerun resumes it), each shard is uploaded as soon as it is committed, and the catalog
    /// is uploaded last, once every shard is there. An interrupted run, run again, redoes
    /// nothing that is finished: the staging folder resumes as a local prepare does, and
    /// shards already uploaded are skipped.
    pub fn run(self, out: impl Into<Location>) -> Result<PrepareReport> {
        let url = match out.into() {
            Location::Local(dir) => return self.run_in(&dir, None),
            Location::Url(url) => url,
        };
        let remote = match &self.remote {
            Some(remote) => remote.clone(),
            None => RemoteOptions::from_env()?,
        };
        let target = self.options.part.map_or(url.clone(), |p| p.location(&url));
        let storage = storage_for(&target, &remote)?;
        let staging = remote.cache_folder(&url).join("staging");
        self.run_staged(storage.as_ref(), &staging)
    }

    /// [`Prepare::run`] into any storage, staging in `staging` (a part in its
    /// `parts/<i>-of-<N>`).
    fn run_staged(self, storage: &dyn Storage, staging: &Path) -> Result<PrepareReport> {
        let local = self
            .options
            .part
            .map_or(staging.to_path_buf(), |p| p.dir(staging));
        let (tx, rx) = crossbeam_channel::unbounded::<String>();
        std::thread::scope(|s| {
            let uploader = s.spawn(|| {
                for file in rx {
                    let key = shard_key(&file);
                    let path = local.join(SHARD_DIR).join(&file);
                    // Uploads as shards complete; one that fails here is tried again below.
                    if let Err(e) = storage.put_file(&key, &path) {
                        tracing::warn!("uploading {file} failed, will retry at the end: {e}");
                    }
                }
            });
            let prepared = self.run_in(staging, Some(&tx));
            drop(tx);
            let _ = uploader.join();
            let report = prepared?;
            let _lock = crate::store::lock_store(&local)?;
            upload_store(&local, storage)?;
            Ok(report)
        })
    }
}

/// Merges the parts of a distributed prepare in `store`, a folder or URL (see
/// docs/distributed.md).
///
/// In a folder: the parts named in `parts`, or with none named, the folders
/// `store/parts/<i>-of-<N>` ([`merge_parts`](crate::merge_parts)). At a URL: the parts'
/// catalogs are downloaded and merged as local parts are, their shards are copied into
/// `shards/` inside the storage (nothing is downloaded), the merged catalog is uploaded, and
/// `parts/` is removed; part folders cannot be named there. `remote` says how to reach object
/// storage; `None` reads [`RemoteOptions::from_env`] (for a URL only).
pub fn merge(
    store: impl Into<Location>,
    parts: &[PathBuf],
    remote: Option<&RemoteOptions>,
) -> Result<crate::MergeReport> {
    let url = match store.into() {
        Location::Local(dir) => return crate::merge_parts(&dir, parts),
        Location::Url(url) => url,
    };
    if !parts.is_empty() {
        return Err(Error::InvalidArgument {
            name: "parts",
            message: format!(
                "parts of a store in object storage are found under {url}/parts/; name no part folders"
            ),
        });
    }
    let remote = match remote {
        Some(remote) => remote.clone(),
        None => RemoteOptions::from_env()?,
    };
    let storage = storage_for(&url, &remote)?;
    let work = remote.cache_folder(&url).join("merge");
    merge_in(storage.as_ref(), &work)
}

/// [`merge`] in any storage, with `work` as a local scratch folder.
pub fn merge_in(storage: &dyn Storage, work: &Path) -> Result<crate::MergeReport> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let prefix = format!("{PARTS_DIR}/");
    let listed = storage.list(&prefix)?;
    let mut catalogs = Vec::new();
    for (key, _) in &listed {
        let Some(name) = key
            .strip_prefix(&prefix)
            .and_then(|k| k.strip_suffix(&format!("/{CATALOG_KEY}")))
        else {
            continue;
        };
        let path = work.join(format!("{name}.sqlite"));
        std::fs::write(&path, storage.get(key)?).map_err(|e| Error::io(&path, e))?;
        catalogs.push(path);
    }
    if catalogs.is_empty() {
        return Err(Error::remote(
            storage.url(&prefix),
            "no parts to merge here (prepare with --shard i/N into this URL first)",
        ));
    }
    // The catalogs were downloaded to a scratch folder; problems with them are the URL's.
    let set =
        crate::prepare::merge::parts::PartSet::read(&catalogs).map_err(|e| Error::Remote {
            url: storage.url(&prefix),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
    let merged_path = work.join(CATALOG_FILE);
    let merged = crate::prepare::merge::catalog::merge_catalogs(&merged_path, &set)?;
    let mut moved = 0;
    for shard in &merged.shards {
        let to = shard_key(&shard.file);
        if storage.size(&to)? == Some(shard.bytes) {
            continue;
        }
        let from = format!(
            "{PARTS_DIR}/{}/{}",
            shard.part.dir_name(),
            shard_key(&shard.file)
        );
        storage.copy(&from, &to)?;
        moved += 1;
    }
    let bytes = std::fs::read(&merged_path).map_err(|e| Error::io(&merged_path, e))?;
    storage.put(CATALOG_KEY, &bytes)?;
    // The parts go once the merged store is complete: their shards first, their catalogs last,
    // so that a rerun after an interruption here still finds every part, skips every copy (the
    // shards are in place) and writes the same catalog.
    let (part_catalogs, rest): (Vec<_>, Vec<_>) =
        listed.iter().partition(|(k, _)| k.ends_with(CATALOG_KEY));
    for (key, _) in rest.into_iter().chain(part_catalogs) {
        storage.delete(key)?;
    }
    let _ = std::fs::remove_dir_all(work);
    Ok(crate::MergeReport::of(&set, &merged, moved, started))
}
