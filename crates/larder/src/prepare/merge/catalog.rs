//! The merged catalog, written from the parts' catalogs: the half of a merge that does not
//! touch shard files, so that stores in object storage reuse it with server-side copies.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::captions::CaptionMerge;
use super::parts::PartSet;
use super::{META_MERGED_PARTS, META_PART, META_PLAN_ITEMS, store_error};
use crate::prepare::Part;
use crate::store::catalog::Catalog;
use crate::{Error, Result};

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
    cat.conn
        .execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TEMP TABLE shard_part (file TEXT PRIMARY KEY, part INTEGER NOT NULL);
             CREATE INDEX main.merging_findings ON findings(path);",
        )
        .map_err(|e| cat.err(e))?;
    number_items(&cat, set)?;
    let columns = Columns::read(&cat)?;
    let mut duplicate_entries = 0;
    let mut captions = CaptionMerge::default();
    for (k, p) in set.parts.iter().enumerate() {
        with_attached(&cat, &p.path, || {
            duplicate_entries += copy_part(&cat, k, &columns)?;
            captions.read_part(&cat, k)
        })?;
    }
    captions.write(&cat)?;
    let merged = finish(&cat, set, duplicate_entries)?;
    drop(cat);
    File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(out, e))?;
    Ok(merged)
}

/// Numbers the parts' items in the order of the whole plan: the temporary table
/// `item_ids(part, item, id)` maps part `part`'s item `item` to its merged id.
fn number_items(cat: &Catalog, set: &PartSet) -> Result<()> {
    let err = |e| cat.err(e);
    cat.conn
        .execute_batch(
            "CREATE TEMP TABLE part_ids (part INTEGER NOT NULL, item INTEGER NOT NULL,
                 plan_index INTEGER NOT NULL, PRIMARY KEY (part, item));",
        )
        .map_err(err)?;
    for (k, p) in set.parts.iter().enumerate() {
        with_attached(cat, &p.path, || {
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
        .map_err(err)
}

/// The columns copied as they are, read from the schema so that columns added later come
/// along.
struct Columns {
    shards: Vec<String>,
    entries: Vec<String>,
    items: Vec<String>,
    sources: Vec<String>,
    findings: Vec<String>,
    datasets: Vec<String>,
    encoders: Vec<String>,
}

impl Columns {
    fn read(cat: &Catalog) -> Result<Columns> {
        Ok(Columns {
            shards: columns(cat, "shards", &["id"])?,
            entries: columns(cat, "entries", &["id", "shard"])?,
            items: columns(cat, "items", &["id"])?,
            sources: columns(cat, "sources", &[])?,
            findings: columns(cat, "findings", &[])?,
            datasets: columns(cat, "datasets", &[])?,
            encoders: columns(cat, "encoders", &[])?,
        })
    }
}

/// Copies part `k`, attached as `part`, into the merged catalog (all but the captions).
/// Returns the number of its entries that an earlier part had already given.
fn copy_part(cat: &Catalog, k: usize, cols: &Columns) -> Result<usize> {
    // Every statement takes the part number as ?1, used or not.
    let run = |sql: String| -> Result<usize> {
        cat.conn.execute(&sql, [k as i64]).map_err(|e| cat.err(e))
    };
    run(format!(
        "INSERT INTO main.shards({c}) SELECT {s} FROM part.shards s WHERE ?1 >= 0 ON CONFLICT(file) DO NOTHING",
        c = list(&cols.shards, ""),
        s = list(&cols.shards, "s")
    ))?;
    // Chunk checksums follow their shard, by file name (the ids differ between catalogs).
    run(
        "INSERT OR IGNORE INTO main.shard_chunks(shard, chunk_bytes, blake3)
         SELECT m.id, c.chunk_bytes, c.blake3 FROM part.shard_chunks c
         JOIN part.shards s ON s.id = c.shard JOIN main.shards m ON m.file = s.file WHERE ?1 >= 0"
            .into(),
    )?;
    run(
        "INSERT OR IGNORE INTO temp.shard_part(file, part) SELECT file, ?1 FROM part.shards".into(),
    )?;
    let inserted = run(format!(
        "INSERT INTO main.entries({c}, shard)
         SELECT {e}, m.id FROM part.entries e
         JOIN part.shards s ON s.id = e.shard JOIN main.shards m ON m.file = s.file
         WHERE ?1 >= 0 ON CONFLICT(key) DO NOTHING",
        c = list(&cols.entries, ""),
        e = list(&cols.entries, "e")
    ))?;
    let total: i64 = cat
        .conn
        .query_row("SELECT count(*) FROM part.entries", [], |r| r.get(0))
        .map_err(|e| cat.err(e))?;
    run(format!(
        "INSERT INTO main.items(id, {c}) SELECT m.id, {i} FROM part.items i
         JOIN temp.item_ids m ON m.part = ?1 AND m.item = i.id",
        c = list(&cols.items, ""),
        i = list(&cols.items, "i")
    ))?;
    // As prepare does: a reference to an entry no part holds (a part repaired by `verify
    // --repair`) keeps its key, and reads as missing.
    run("INSERT INTO main.item_fields(item, field, entry, entry_id)
         SELECT m.id, f.field, f.entry, coalesce((SELECT id FROM main.entries WHERE key = f.entry), -1)
         FROM part.item_fields f JOIN temp.item_ids m ON m.part = ?1 AND m.item = f.item"
        .into())?;
    run(format!(
        "INSERT OR IGNORE INTO main.sources({c}) SELECT {s} FROM part.sources s WHERE ?1 >= 0",
        c = list(&cols.sources, ""),
        s = list(&cols.sources, "s")
    ))?;
    // Scan and plan findings are the same in every part; each is kept once (found through a
    // temporary index by path: a broken dataset has many).
    let same = cols
        .findings
        .iter()
        .map(|c| format!("g.\"{c}\" IS f.\"{c}\""))
        .collect::<Vec<_>>()
        .join(" AND ");
    run(format!(
        "INSERT INTO main.findings({c}) SELECT {f} FROM part.findings f
         WHERE ?1 >= 0 AND NOT EXISTS (SELECT 1 FROM main.findings g WHERE g.path = f.path AND {same})",
        c = list(&cols.findings, ""),
        f = list(&cols.findings, "f")
    ))?;
    // The parts agree on these (checked by `PartSet::read`): part 0's are the store's.
    for (table, c) in [("datasets", &cols.datasets), ("encoders", &cols.encoders)] {
        run(format!(
            "INSERT INTO main.{table}({c}) SELECT {c} FROM part.{table} WHERE ?1 = 0",
            c = list(c, "")
        ))?;
    }
    // The config's description and the text encoders' outputs; not the part's own marker,
    // nor the schema version the new catalog has already.
    run(format!(
        "INSERT OR IGNORE INTO main.meta(key, value) SELECT key, value FROM part.meta
         WHERE ?1 >= 0 AND key NOT IN ('{META_PART}', '{META_PLAN_ITEMS}', 'schema_version')"
    ))?;
    Ok((total as usize).saturating_sub(inserted))
}

/// Drops the shards left without entries and the merge's index, marks the store merged, and
/// says what the catalog holds.
fn finish(cat: &Catalog, set: &PartSet, duplicate_entries: usize) -> Result<MergedCatalog> {
    let err = |e| cat.err(e);
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
    Ok(MergedCatalog {
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
    })
}
