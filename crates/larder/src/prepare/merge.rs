//! `larder merge`: the parts of a distributed prepare combined into one store.
//!
//! Each part is a complete store of its own items (see [`Part`]). Merging has two halves,
//! kept apart so that object storage can reuse the first with server-side copies instead of
//! renames:
//! - [`merge_catalogs`] writes the merged catalog from the parts' catalogs: items in the order
//!   of the whole plan (exactly the item list of an unsharded prepare), entries and shards
//!   unioned by key and file name (shard names are content hashes), captions, sources,
//!   findings and the rest carried over with ids remapped; it returns the shard files to place.
//! - [`merge_parts`] does it for local folders: moves the shards into place, renames the
//!   merged catalog over the store's, and removes the parts.
//!
//! The parts are never modified until the merged catalog is in place, and a shard is looked
//! for in both places, so an interrupted merge run again finishes.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{OptionalExtension, params};

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

/// One checked part catalog.
#[derive(Debug, Clone)]
pub(crate) struct PartCatalog {
    pub part: Part,
    /// The part's catalog file.
    pub path: PathBuf,
}

/// The complete, consistent catalogs of all parts of one distributed prepare.
#[derive(Debug, Clone)]
pub(crate) struct PartSet {
    /// One per part, in part order (`parts[i].part.index == i`).
    pub parts: Vec<PartCatalog>,
    /// The config digest every part was prepared from.
    pub digest: String,
}

/// A shard file of the merged catalog and the part it comes from: `<part>/shards/<file>`
/// becomes `<store>/shards/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardToPlace {
    pub part: Part,
    pub file: String,
    pub bytes: u64,
}

/// What [`merge_catalogs`] wrote.
#[derive(Debug, Clone)]
pub(crate) struct MergedCatalog {
    /// Every shard the merged catalog lists, with the part holding it.
    pub shards: Vec<ShardToPlace>,
    pub items: usize,
    pub entries: usize,
    pub duplicate_entries: usize,
}

/// What one part's catalog says of itself.
struct PartMeta {
    part: Part,
    digest: String,
    plan_items: String,
    encoders: Vec<(String, String, String)>,
}

fn store_error(path: &Path, message: String) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        message,
    }
}

impl PartMeta {
    fn read(path: &Path) -> Result<PartMeta> {
        let unfinished = || {
            store_error(
                path,
                "this part has not finished (no completed `larder prepare --shard` wrote it): run its prepare again, then merge"
                    .into(),
            )
        };
        if !path.is_file() {
            return Err(unfinished());
        }
        let cat = Catalog::open(path, false)?;
        let part = cat.meta(META_PART)?.ok_or_else(unfinished)?;
        let part = Part::parse(&part).map_err(|e| store_error(path, format!("meta part: {e}")))?;
        let digest = cat.meta("config_digest")?.ok_or_else(unfinished)?;
        let plan_items = cat.meta(META_PLAN_ITEMS)?.ok_or_else(unfinished)?;
        let encoders = cat.rows(
            "SELECT field, identity, params FROM encoders ORDER BY field",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(PartMeta {
            part,
            digest,
            plan_items,
            encoders,
        })
    }
}

impl PartSet {
    /// Reads and checks the catalogs of a distributed prepare's parts: each finished, all of
    /// one split (same N, each index once, none missing), one config digest, one plan, and the
    /// same encoders. The errors name the part and what differs.
    pub(crate) fn read(catalogs: &[PathBuf]) -> Result<PartSet> {
        let Some(first) = catalogs.first() else {
            return Err(Error::InvalidArgument {
                name: "parts",
                message: "no parts to merge".into(),
            });
        };
        let metas = catalogs
            .iter()
            .map(|p| PartMeta::read(p))
            .collect::<Result<Vec<_>>>()?;
        let count = metas[0].part.count;
        let mut by_index: Vec<Option<usize>> = vec![None; count as usize];
        for (k, m) in metas.iter().enumerate() {
            let path = &catalogs[k];
            if m.part.count != count {
                return Err(store_error(
                    path,
                    format!(
                        "this part is {}, but {} is {}: the parts come from prepares split differently; merge parts of one split",
                        m.part,
                        first.display(),
                        metas[0].part
                    ),
                ));
            }
            // A part folder named `i-of-N` holds part i/N: a mismatch means folders were
            // copied or renamed by hand.
            let folder = path
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|n| n.to_str())
                .and_then(Part::from_dir_name);
            if let Some(named) = folder
                && named != m.part
            {
                return Err(store_error(
                    path,
                    format!(
                        "the folder is named for part {named}, but its catalog is part {}",
                        m.part
                    ),
                ));
            }
            if let Some(other) = by_index[m.part.index as usize].replace(k) {
                return Err(store_error(
                    path,
                    format!(
                        "part {} is given twice: here and in {}",
                        m.part,
                        catalogs[other].display()
                    ),
                ));
            }
            for (what, mine, theirs) in [
                ("config digest", &m.digest, &metas[0].digest),
                ("planned item count", &m.plan_items, &metas[0].plan_items),
            ] {
                if mine != theirs {
                    return Err(store_error(
                        path,
                        format!(
                            "part {} has {what} {mine}, part {} ({}) has {theirs}: the parts were prepared from different configs or saw different files; prepare every part from the same config and data",
                            m.part,
                            metas[0].part,
                            first.display()
                        ),
                    ));
                }
            }
            if m.encoders != metas[0].encoders {
                let names = |e: &[(String, String, String)]| -> Vec<String> {
                    e.iter().map(|(f, i, _)| format!("{f}={i}")).collect()
                };
                let differing: Vec<String> = m
                    .encoders
                    .iter()
                    .filter(|e| !metas[0].encoders.contains(e))
                    .map(|(f, i, p)| format!("{f} (identity {i}, settings {p})"))
                    .collect();
                return Err(store_error(
                    path,
                    format!(
                        "part {} was prepared with encoders {:?}, part {} with {:?} (differing: {}); prepare every part with the same encoders and codecs",
                        m.part,
                        names(&m.encoders),
                        metas[0].part,
                        names(&metas[0].encoders),
                        differing.join(", ")
                    ),
                ));
            }
        }
        let missing: Vec<Part> = by_index
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_none())
            .map(|(i, _)| Part {
                index: i as u32,
                count,
            })
            .collect();
        if !missing.is_empty() {
            // Named where the parts lie: the folder holding the part folders.
            let parts_dir = first.parent().and_then(Path::parent).unwrap_or(first);
            return Err(store_error(
                parts_dir,
                format!(
                    "part(s) {} missing (folders {}): {} of {count} parts found; run `larder prepare CONFIG --out STORE --shard i/{count}` for each missing part, then merge",
                    missing
                        .iter()
                        .map(Part::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    missing
                        .iter()
                        .map(Part::dir_name)
                        .collect::<Vec<_>>()
                        .join(", "),
                    catalogs.len()
                ),
            ));
        }
        Ok(PartSet {
            parts: by_index
                .into_iter()
                .flatten()
                .map(|k| PartCatalog {
                    part: metas[k].part,
                    path: catalogs[k].clone(),
                })
                .collect(),
            digest: metas[0].digest.clone(),
        })
    }
}

/// The columns of `table` in the main database, but `except`.
fn columns(cat: &Catalog, table: &str, except: &[&str]) -> Result<Vec<String>> {
    let names: Vec<String> = cat.rows(&format!("PRAGMA main.table_info({table})"), |r| {
        r.get::<_, String>(1)
    })?;
    Ok(names
        .into_iter()
        .filter(|n| !except.contains(&n.as_str()))
        .collect())
}

/// `cols` as a list, each prefixed with `alias.` when an alias is given.
fn list(cols: &[String], alias: &str) -> String {
    cols.iter()
        .map(|c| {
            if alias.is_empty() {
                format!("\"{c}\"")
            } else {
                format!("{alias}.\"{c}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `f` with the part catalog `path` attached as `part`, inside one transaction.
fn with_attached<T>(cat: &Catalog, path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let err = |e| cat.err(e);
    let name = path.to_str().ok_or_else(|| {
        store_error(
            path,
            "the path is not UTF-8, which SQLite cannot attach".into(),
        )
    })?;
    cat.conn
        .execute("ATTACH DATABASE ?1 AS part", [name])
        .map_err(err)?;
    let result = (|| {
        cat.conn.execute_batch("BEGIN").map_err(err)?;
        let value = f()?;
        cat.conn.execute_batch("COMMIT").map_err(err)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = cat.conn.execute_batch("ROLLBACK");
    }
    cat.conn
        .execute_batch("DETACH DATABASE part")
        .map_err(err)?;
    result
}

/// Writes the merged catalog of `set` to `out` (replacing any file there) and returns the
/// shard files it lists, each with the part that holds it.
///
/// The merged items are the parts' items ordered by their index in the whole plan, numbered
/// from 0: exactly the item list of an unsharded prepare of the config. Entries are unioned by
/// key (the first part's copy is kept), shards by file name; shards whose entries were all
/// kept from another part are left out. Captions are renumbered as an unsharded prepare
/// numbers them (per text encoder: the empty caption, then in order of first use by the
/// items), so the merged store serves the same text embeddings.
///
/// `out` is written without a journal and synced at the end: it is a new file that nothing
/// reads until the caller renames it into place.
pub(crate) fn merge_catalogs(out: &Path, set: &PartSet) -> Result<MergedCatalog> {
    for stale in [
        out.to_path_buf(),
        PathBuf::from(format!("{}-journal", out.display())),
    ] {
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&stale, e)),
        }
    }
    let cat = Catalog::open(out, true)?;
    let err = |e| cat.err(e);
    cat.conn
        .execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TEMP TABLE part_ids (part INTEGER NOT NULL, item INTEGER NOT NULL,
                 plan_index INTEGER NOT NULL, PRIMARY KEY (part, item));
             CREATE TEMP TABLE shard_part (file TEXT PRIMARY KEY, part INTEGER NOT NULL);
             CREATE INDEX main.merging_findings ON findings(path);",
        )
        .map_err(err)?;

    // The global order first: every part's items with their plan index.
    for (k, p) in set.parts.iter().enumerate() {
        with_attached(&cat, &p.path, || {
            let (items, indexed): (i64, i64) = cat
                .conn
                .query_row(
                    "SELECT (SELECT count(*) FROM part.items), (SELECT count(*) FROM part.part_items)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err)?;
            if items != indexed {
                return Err(store_error(
                    &p.path,
                    format!(
                        "part {} lists {items} items but {indexed} plan indices: the part is damaged; prepare it again",
                        p.part
                    ),
                ));
            }
            cat.conn
                .execute(
                    "INSERT INTO temp.part_ids(part, item, plan_index) SELECT ?1, item, plan_index FROM part.part_items",
                    [k as i64],
                )
                .map_err(err)?;
            Ok(())
        })?;
    }
    let overlap: Option<i64> = cat
        .conn
        .query_row(
            "SELECT plan_index FROM temp.part_ids GROUP BY plan_index HAVING count(*) > 1 LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    if let Some(index) = overlap {
        return Err(store_error(
            &set.parts[0].path,
            format!(
                "planned item {index} is in more than one part: the parts were not split alike; prepare them again with one larder version"
            ),
        ));
    }
    cat.conn
        .execute_batch(
            "CREATE TEMP TABLE item_ids AS
                 SELECT part, item, ROW_NUMBER() OVER (ORDER BY plan_index) - 1 AS id FROM temp.part_ids;
             CREATE UNIQUE INDEX temp.item_ids_by_part ON item_ids(part, item);",
        )
        .map_err(err)?;

    let shard_cols = columns(&cat, "shards", &["id"])?;
    let entry_cols = columns(&cat, "entries", &["id", "shard"])?;
    let item_cols = columns(&cat, "items", &["id"])?;
    let source_cols = columns(&cat, "sources", &[])?;
    let finding_cols = columns(&cat, "findings", &[])?;
    let dataset_cols = columns(&cat, "datasets", &[])?;
    let encoder_cols = columns(&cat, "encoders", &[])?;
    let mut duplicate_entries = 0usize;
    let mut captions = CaptionMerge::default();
    for (k, p) in set.parts.iter().enumerate() {
        with_attached(&cat, &p.path, || {
            let run =
                |sql: String| -> Result<usize> { cat.conn.execute(&sql, [k as i64]).map_err(err) };
            run(format!(
                "INSERT INTO main.shards({c}) SELECT {s} FROM part.shards s WHERE ?1 >= 0 ON CONFLICT(file) DO NOTHING",
                c = list(&shard_cols, ""),
                s = list(&shard_cols, "s")
            ))?;
            run("INSERT OR IGNORE INTO temp.shard_part(file, part) SELECT file, ?1 FROM part.shards".into())?;
            let inserted = run(format!(
                "INSERT INTO main.entries({c}, shard)
                 SELECT {e}, m.id FROM part.entries e
                 JOIN part.shards s ON s.id = e.shard JOIN main.shards m ON m.file = s.file
                 WHERE ?1 >= 0 ON CONFLICT(key) DO NOTHING",
                c = list(&entry_cols, ""),
                e = list(&entry_cols, "e")
            ))?;
            let total: i64 = cat
                .conn
                .query_row("SELECT count(*) FROM part.entries", [], |r| r.get(0))
                .map_err(err)?;
            duplicate_entries += (total as usize).saturating_sub(inserted);
            run(format!(
                "INSERT INTO main.items(id, {c}) SELECT m.id, {i} FROM part.items i
                 JOIN temp.item_ids m ON m.part = ?1 AND m.item = i.id",
                c = list(&item_cols, ""),
                i = list(&item_cols, "i")
            ))?;
            // Same statement as prepare's: a reference to an entry no part holds (a part
            // repaired by `verify --repair`) keeps its key, and reads as missing.
            run("INSERT INTO main.item_fields(item, field, entry, entry_id)
                 SELECT m.id, f.field, f.entry, coalesce((SELECT id FROM main.entries WHERE key = f.entry), -1)
                 FROM part.item_fields f JOIN temp.item_ids m ON m.part = ?1 AND m.item = f.item".into())?;
            run(format!(
                "INSERT OR IGNORE INTO main.sources({c}) SELECT {s} FROM part.sources s WHERE ?1 >= 0",
                c = list(&source_cols, ""),
                s = list(&source_cols, "s")
            ))?;
            // Scan and plan findings are the same in every part; each is kept once (found
            // through a temporary index by path: a broken dataset has many).
            let same = finding_cols
                .iter()
                .map(|c| format!("g.\"{c}\" IS f.\"{c}\""))
                .collect::<Vec<_>>()
                .join(" AND ");
            let same = format!("g.path = f.path AND {same}");
            run(format!(
                "INSERT INTO main.findings({c}) SELECT {f} FROM part.findings f
                 WHERE ?1 >= 0 AND NOT EXISTS (SELECT 1 FROM main.findings g WHERE {same})",
                c = list(&finding_cols, ""),
                f = list(&finding_cols, "f")
            ))?;
            if k == 0 {
                for (table, cols) in [("datasets", &dataset_cols), ("encoders", &encoder_cols)] {
                    run(format!(
                        "INSERT INTO main.{table}({c}) SELECT {c} FROM part.{table} WHERE ?1 = 0",
                        c = list(cols, "")
                    ))?;
                }
            }
            // The config's description and the text encoders' outputs; not the part's own
            // marker, nor the schema version the new catalog has already.
            run(format!(
                "INSERT OR IGNORE INTO main.meta(key, value) SELECT key, value FROM part.meta
                 WHERE ?1 >= 0 AND key NOT IN ('{META_PART}', '{META_PLAN_ITEMS}', 'schema_version')"
            ))?;
            captions.read_part(&cat, k)
        })?;
    }
    captions.write(&cat)?;

    let tx = cat.conn.unchecked_transaction().map_err(err)?;
    tx.execute_batch(
        "DELETE FROM shards WHERE id NOT IN (SELECT DISTINCT shard FROM entries);
         DROP INDEX main.merging_findings;",
    )
    .map_err(err)?;
    tx.execute(
        "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![META_MERGED_PARTS, set.parts.len().to_string()],
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    let shards = cat.rows(
        "SELECT s.file, s.bytes, p.part FROM shards s JOIN temp.shard_part p ON p.file = s.file ORDER BY s.id",
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )?;
    let count = |table: &str| -> Result<usize> {
        cat.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(err)
    };
    let merged = MergedCatalog {
        shards: shards
            .into_iter()
            .map(|(file, bytes, k)| ShardToPlace {
                part: set.parts[k as usize].part,
                file,
                bytes: bytes as u64,
            })
            .collect(),
        items: count("items")?,
        entries: count("entries")?,
        duplicate_entries,
    };
    drop(cat);
    File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(out, e))?;
    Ok(merged)
}

/// The caption tables of all parts, renumbered for the merged store.
#[derive(Default)]
struct CaptionMerge {
    /// Text encoders in the order of their first caption (the order prepare numbers them in).
    encoders: Vec<String>,
    /// Per part: caption id → (encoder, key, text).
    captions: Vec<HashMap<i64, (String, String, String)>>,
    /// Per part: (encoder, item) → caption ids, in variant order.
    variants: Vec<HashMap<(String, i64), Vec<i64>>>,
}

impl CaptionMerge {
    /// Reads the caption tables of the part attached as `part` (part number `k`).
    fn read_part(&mut self, cat: &Catalog, k: usize) -> Result<()> {
        let rows = cat.rows(
            "SELECT id, encoder, key, text FROM part.captions ORDER BY id",
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )?;
        let mut captions = HashMap::with_capacity(rows.len());
        for (id, encoder, key, text) in rows {
            if !self.encoders.contains(&encoder) {
                self.encoders.push(encoder.clone());
            }
            captions.insert(id, (encoder, key, text));
        }
        let mut variants: HashMap<(String, i64), Vec<i64>> = HashMap::new();
        for (item, encoder, caption) in cat.rows(
            "SELECT item, encoder, caption FROM part.item_captions ORDER BY item, encoder, variant",
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )? {
            variants.entry((encoder, item)).or_default().push(caption);
        }
        debug_assert_eq!(self.captions.len(), k);
        self.captions.push(captions);
        self.variants.push(variants);
        Ok(())
    }

    /// Writes the merged `captions` and `item_captions`: per encoder, the empty caption, then
    /// the captions in order of first use by the merged items, then any no item uses.
    fn write(&self, cat: &Catalog) -> Result<()> {
        let err = |e| cat.err(e);
        let order = cat.rows("SELECT part, item FROM temp.item_ids ORDER BY id", |r| {
            Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)?))
        })?;
        let tx = cat.conn.unchecked_transaction().map_err(err)?;
        {
            let mut ins_caption = tx
                .prepare("INSERT INTO captions(id, encoder, key, text) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            let mut ins_variant = tx
                .prepare("INSERT INTO item_captions(item, encoder, variant, caption) VALUES (?1, ?2, ?3, ?4)")
                .map_err(err)?;
            let mut next_id = 0i64;
            for encoder in &self.encoders {
                let mut seen: HashMap<String, i64> = HashMap::new();
                let mut assign = |key: &str, text: &str| -> Result<i64> {
                    if let Some(&id) = seen.get(key) {
                        return Ok(id);
                    }
                    ins_caption
                        .execute(params![next_id, encoder, key, text])
                        .map_err(err)?;
                    seen.insert(key.to_owned(), next_id);
                    next_id += 1;
                    Ok(next_id - 1)
                };
                let per_part: Vec<Vec<(i64, &str, &str)>> = self
                    .captions
                    .iter()
                    .map(|part| {
                        let mut v: Vec<(i64, &str, &str)> = part
                            .iter()
                            .filter(|(_, (e, _, _))| e == encoder)
                            .map(|(id, (_, key, text))| (*id, key.as_str(), text.as_str()))
                            .collect();
                        v.sort_unstable();
                        v
                    })
                    .collect();
                if let Some((_, key, text)) = per_part
                    .iter()
                    .flatten()
                    .find(|(_, _, text)| text.is_empty())
                {
                    assign(key, text)?;
                }
                for (new_item, (k, item)) in order.iter().enumerate() {
                    let Some(list) = self.variants[*k].get(&(encoder.clone(), *item)) else {
                        continue;
                    };
                    for (variant, caption) in list.iter().enumerate() {
                        let (_, key, text) = self.captions[*k].get(caption).ok_or_else(|| {
                            store_error(
                                &cat.path,
                                format!(
                                    "a part's item {item} refers to caption {caption}, which the part does not hold; prepare that part again"
                                ),
                            )
                        })?;
                        let id = assign(key, text)?;
                        ins_variant
                            .execute(params![new_item as i64, encoder, variant as i64, id])
                            .map_err(err)?;
                    }
                }
                for (_, key, text) in per_part.iter().flatten() {
                    assign(key, text)?;
                }
            }
        }
        tx.commit().map_err(err)
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
/// `parts` are the part folders (each written by a prepare with [`PrepareOptions::part`]
/// (crate::PrepareOptions::part)); empty, the folders `out/parts/<i>-of-<N>` are merged. The
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
    let _lock = super::lock_store(out)?;
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
        part_locks.push(super::lock_store(dir)?);
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
    Ok(MergeReport {
        parts: set.parts.len(),
        items: merged.items,
        entries: merged.entries,
        duplicate_entries: merged.duplicate_entries,
        shards: merged.shards.len(),
        shards_moved: moved,
        seconds: started.elapsed().as_secs_f64(),
    })
}
