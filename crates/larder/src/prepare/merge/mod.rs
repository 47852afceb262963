//! `larder merge`: the parts of a distributed prepare combined into one store.
//!
//! Each part is a complete store of its own items (see [`Part`]). Merging has two halves, kept
//! apart so that stores in object storage can reuse the first with server-side copies instead
//! of renames:
//! - [`catalog::merge_catalogs`] writes the merged catalog from the parts' catalogs
//!   ([`parts::PartSet`], checked to belong together): items in the order of the whole plan
//!   (exactly the item list of an unsharded prepare), entries and shards unioned by key and
//!   file name (shard names are content hashes), captions, sources, findings and the rest
//!   carried over with ids remapped; it returns the shard files to place.
//! - [`merge_parts`] does it for local folders: moves the shards into place, renames the
//!   merged catalog over the store's, and removes the parts.
//!
//! The parts are never modified until the merged catalog is in place, and a shard is looked
//! for in both places, so an interrupted merge run again finishes.

mod captions;
pub(crate) mod catalog;
pub(crate) mod parts;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use self::catalog::merge_catalogs;
use self::parts::PartSet;
use super::part::{PARTS_DIR, Part};
use crate::store::catalog::Catalog;
use crate::store::shard::sync_dir;
use crate::store::{CATALOG_FILE, SHARD_DIR, TMP_DIR};
use crate::{Error, Result};

/// Meta key of a part's store: which part it is, `"i/N"`.
pub(crate) const META_PART: &str = "part";
/// Meta key of a part's store: the number of items in the whole plan.
pub(crate) const META_PLAN_ITEMS: &str = "plan_items";
/// Meta key of a merged store: how many parts it was merged from.
const META_MERGED_PARTS: &str = "merged_parts";
/// Where `merge_parts` moves `parts/` once the merged catalog is in place, before deleting it:
/// one rename, so that a store never has half a `parts/` folder.
const MERGED_PARTS_DIR: &str = ".parts-merged";

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MergeReport {
    /// Parts merged.
    pub parts: usize,
    /// Items in the merged store.
    pub items: usize,
    /// Entries in the merged store.
    pub entries: usize,
    /// Entries found in more than one part (a caption shared by items of several parts, an
    /// image in two datasets), kept once.
    pub duplicate_entries: usize,
    /// Shard files of the merged store.
    pub shards: usize,
    /// Shard files moved (or copied) from the parts in this run; the others were in place
    /// already (an interrupted merge run again).
    pub shards_moved: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl MergeReport {
    /// The report of merging `set` into `merged`, `moved` shards placed, begun at `started`.
    pub(crate) fn of(
        set: &PartSet,
        merged: &catalog::MergedCatalog,
        moved: usize,
        started: Instant,
    ) -> MergeReport {
        MergeReport {
            parts: set.parts.len(),
            items: merged.items,
            entries: merged.entries,
            duplicate_entries: merged.duplicate_entries,
            shards: merged.shards.len(),
            shards_moved: moved,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

fn store_error(path: &Path, message: String) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        message,
    }
}

/// The part folders under `out/parts/`, named `<i>-of-<N>`.
fn discover(out: &Path) -> Result<Vec<PathBuf>> {
    let dir = out.join(PARTS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let merged = Catalog::open(&out.join(CATALOG_FILE), false)
                .ok()
                .and_then(|c| c.meta(META_MERGED_PARTS).ok().flatten());
            let message = match merged {
                Some(n) => format!(
                    "nothing to merge: this store was merged from {n} parts already and has no parts/ folder"
                ),
                None => "no parts/ folder: run `larder prepare CONFIG --out STORE --shard i/N` for each part first".into(),
            };
            return Err(store_error(out, message));
        }
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut found: Vec<(Part, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        if let Some(part) = entry.file_name().to_str().and_then(Part::from_dir_name) {
            found.push((part, entry.path()));
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(store_error(
            &dir,
            "holds no part folders named <i>-of-<N>: run `larder prepare CONFIG --out STORE --shard i/N` for each part first".into(),
        ));
    }
    let counts: BTreeSet<u32> = found.iter().map(|(p, _)| p.count).collect();
    if counts.len() > 1 {
        return Err(store_error(
            &dir,
            format!(
                "holds parts of splits into {counts:?} parts: remove the folders of the split you do not want to merge, or name the parts to merge"
            ),
        ));
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Refuses to merge over a store of another config.
fn check_target(out: &Path, set: &PartSet) -> Result<()> {
    let path = out.join(CATALOG_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let digest = Catalog::open(&path, false)?.meta("config_digest")?;
    match digest {
        Some(d) if d != set.digest => Err(store_error(
            &path,
            format!(
                "this store was prepared from another config (digest {d}; the parts' is {}): merge into a new folder, or remove this store first",
                set.digest
            ),
        )),
        _ => Ok(()),
    }
}

/// Moves `from` to `to`: a rename, or where that fails (another file system) a copy, synced,
/// renamed into place through `tmp`, and the source removed.
fn move_file(from: &Path, to: &Path, tmp: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let staged = tmp.join(to.file_name().unwrap_or_default());
    std::fs::copy(from, &staged).map_err(|e| Error::io(from, e))?;
    File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&staged, e))?;
    std::fs::rename(&staged, to).map_err(|e| Error::io(to, e))?;
    std::fs::remove_file(from).map_err(|e| Error::io(from, e))
}

/// Merges the parts of a distributed prepare into the store `out`.
///
/// `parts` are the part folders, each written by a prepare with
/// [`PrepareOptions::part`](crate::PrepareOptions::part); empty, the folders
/// `out/parts/<i>-of-<N>` are merged. The
/// merge refuses, naming the part and what is wrong, when a part is missing or unfinished,
/// when the parts disagree on N, the config or the encoders, or when `out` holds a store of
/// another config. The merged store lists exactly the items, in the same order, of an
/// unsharded prepare of the config, so a loader serves the same batches from it.
///
/// Shards are moved into `out/shards/`, the merged catalog replaces `out`'s, and the parts are
/// removed. Interrupted, it can be run again and finishes.
pub fn merge_parts(out: &Path, parts: &[PathBuf]) -> Result<MergeReport> {
    let started = Instant::now();
    if parts.is_empty() && !out.is_dir() {
        return Err(store_error(
            out,
            "no such folder: name the store folder the parts were prepared for (`--out` of `larder prepare --shard`)".into(),
        ));
    }
    let _lock = super::make_and_lock(out)?;
    let leftover = out.join(MERGED_PARTS_DIR);
    if leftover.exists() {
        std::fs::remove_dir_all(&leftover).map_err(|e| Error::io(&leftover, e))?;
    }
    let discovered = parts.is_empty();
    let dirs = if discovered {
        discover(out)?
    } else {
        parts.to_vec()
    };
    // A part still being prepared holds its lock: merging it now would miss its end.
    let mut part_locks = Vec::with_capacity(dirs.len());
    for dir in &dirs {
        if !dir.is_dir() {
            return Err(store_error(dir, "no such part folder".into()));
        }
        part_locks.push(super::make_and_lock(dir)?);
    }
    let catalogs: Vec<PathBuf> = dirs.iter().map(|d| d.join(CATALOG_FILE)).collect();
    let set = PartSet::read(&catalogs)?;
    check_target(out, &set)?;
    let tmp = out.join(TMP_DIR);
    let staged = tmp.join("catalog.merging.sqlite");
    let merged = merge_catalogs(&staged, &set)?;

    let shard_dir = out.join(SHARD_DIR);
    let mut moved = 0;
    for s in &merged.shards {
        let to = shard_dir.join(&s.file);
        // Shards are named by their content hash and renamed into place whole: a file of the
        // name and size is this shard.
        if std::fs::metadata(&to).is_ok_and(|m| m.is_file() && m.len() == s.bytes) {
            continue;
        }
        let dir = &dirs[s.part.index as usize];
        let from = dir.join(SHARD_DIR).join(&s.file);
        if !from.is_file() {
            return Err(store_error(
                &from,
                format!(
                    "shard {} of part {} is neither in the part nor in {}: prepare that part again, then merge",
                    s.file,
                    s.part,
                    shard_dir.display()
                ),
            ));
        }
        move_file(&from, &to, &tmp)?;
        moved += 1;
    }
    sync_dir(&shard_dir)?;
    let catalog = out.join(CATALOG_FILE);
    std::fs::rename(&staged, &catalog).map_err(|e| Error::io(&catalog, e))?;
    sync_dir(out)?;
    // Shards of a store this merge replaced (same config) that the merged catalog does not
    // list are strays, as after any prepare.
    crate::store::remove_strays(out, &Catalog::open(&catalog, false)?)?;

    drop(part_locks);
    if discovered {
        let parts_dir = out.join(PARTS_DIR);
        std::fs::rename(&parts_dir, &leftover).map_err(|e| Error::io(&parts_dir, e))?;
        std::fs::remove_dir_all(&leftover).map_err(|e| Error::io(&leftover, e))?;
    } else {
        for dir in &dirs {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    Ok(MergeReport::of(&set, &merged, moved, started))
}
