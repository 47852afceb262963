//! The catalog: one SQLite file that describes a store.
//!
//! SQLite because it is one file, transactional (a prepare commits each shard and its entries
//! atomically, and the item list last), and readable by every tool users have: `sqlite3`,
//! pandas, DuckDB. The schema is specified in docs/store-format.md.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::codec::Codec;
use crate::caption::CaptionRecipe;
use crate::storage::ChunkSums;
use crate::{Error, Result};

/// Version of the catalog schema; a store with another version is refused with advice.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY, bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, blake3 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY, file TEXT NOT NULL UNIQUE, bytes INTEGER NOT NULL, blake3 TEXT NOT NULL);
-- Checksums of each shard's consecutive chunk_bytes-sized pieces (32-byte BLAKE3 digests,
-- concatenated): a reader of byte ranges (object storage) verifies what it fetched without
-- reading whole shards.
CREATE TABLE IF NOT EXISTS shard_chunks (
    shard INTEGER PRIMARY KEY REFERENCES shards(id), chunk_bytes INTEGER NOT NULL,
    blake3 BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS shard_chunks_follow_shards AFTER DELETE ON shards
BEGIN DELETE FROM shard_chunks WHERE shard = OLD.id; END;
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,
    shard INTEGER NOT NULL REFERENCES shards(id), tensor TEXT NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
    codec TEXT NOT NULL, raw_len INTEGER NOT NULL, scale TEXT NOT NULL, bias TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_shard ON entries(shard);
-- items.frames is 1 for an image and the clip's frame count for a video, whose frame_indices
-- lists the frames it trains with (JSON); both came with video support, and `add_columns`
-- gives older catalogs them.
-- caption_recipe is the CaptionRecipe the loader applies, as JSON; NULL in stores prepared
-- before it was recorded (the loader then reads the recipe from config). Catalogs made before
-- the column existed get it from `add_columns` when a prepare opens them.
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, config TEXT NOT NULL, caption_recipe TEXT);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, dataset INTEGER NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL,
    content_hash TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    orientation INTEGER NOT NULL, resolution INTEGER NOT NULL, bucket_w INTEGER NOT NULL,
    bucket_h INTEGER NOT NULL, scale_to_w INTEGER NOT NULL, scale_to_h INTEGER NOT NULL,
    crop_x INTEGER NOT NULL, crop_y INTEGER NOT NULL, flip TEXT NOT NULL, repeat INTEGER NOT NULL,
    caption TEXT NOT NULL, caption_short TEXT, is_reg INTEGER NOT NULL,
    loss_multiplier REAL NOT NULL, network_weight REAL NOT NULL, item_key TEXT NOT NULL,
    frames INTEGER NOT NULL DEFAULT 1, frame_indices TEXT);
CREATE INDEX IF NOT EXISTS items_by_bucket ON items(bucket_w, bucket_h);
-- item_fields.entry has no foreign key on purpose: `verify --repair` drops the entries of a
-- broken shard while items still name them, until the next prepare recomputes them.
-- entry_id repeats entries.id for entry so that a reader maps a million references without
-- hashing a million keys.
CREATE TABLE IF NOT EXISTS item_fields (
    item INTEGER NOT NULL REFERENCES items(id), field TEXT NOT NULL,
    entry TEXT NOT NULL, entry_id INTEGER NOT NULL, PRIMARY KEY (item, field));
CREATE INDEX IF NOT EXISTS item_fields_by_entry ON item_fields(entry);
CREATE TABLE IF NOT EXISTS findings (
    dataset INTEGER NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS encoders (
    field TEXT PRIMARY KEY, identity TEXT NOT NULL, params TEXT NOT NULL);
-- Text embeddings are stored once per distinct caption: entries `<captions.key>.<output>`.
-- item_captions lists each item's precomputed caption variants per text encoder.
CREATE TABLE IF NOT EXISTS captions (
    id INTEGER PRIMARY KEY, encoder TEXT NOT NULL, key TEXT NOT NULL, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS item_captions (
    item INTEGER NOT NULL, encoder TEXT NOT NULL, variant INTEGER NOT NULL,
    caption INTEGER NOT NULL REFERENCES captions(id), PRIMARY KEY (item, encoder, variant));
-- A part of a distributed prepare (meta `part` = `i/N`) records each item's index in the
-- whole plan: `larder merge` orders the merged store's items by it.
CREATE TABLE IF NOT EXISTS part_items (
    item INTEGER PRIMARY KEY REFERENCES items(id), plan_index INTEGER NOT NULL);
";

/// An open catalog.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub conn: Connection,
    pub path: PathBuf,
}

/// One stored entry (a tensor of one field of one item), as the catalog records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EntryRow {
    pub shard: i64,
    pub offset: u64,
    pub length: u64,
    /// Shared between entries of equal shape: a store of a million items has a handful.
    pub shape: std::sync::Arc<[usize]>,
    pub codec: Codec,
    pub raw_len: u64,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Catalog {
    /// Opens (creating when `create`) the catalog at `path`.
    pub fn open(path: &Path, create: bool) -> Result<Catalog> {
        if !create && !path.is_file() {
            return Err(Error::Store {
                path: path.to_path_buf(),
                message: "no catalog here: not a larder store (run `larder prepare` to make one)"
                    .into(),
            });
        }
        // NO_MUTEX: a connection is used by one thread at a time (rusqlite's Connection is not
        // Sync), and SQLite's per-call locking otherwise costs a third of reading a catalog.
        let base =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let flags = if create {
            base | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        } else {
            base
        };
        let conn = Connection::open_with_flags(path, flags).map_err(|e| catalog_error(path, e))?;
        let cat = Catalog {
            conn,
            path: path.to_path_buf(),
        };
        cat.conn
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| cat.err(e))?;
        cat.check_length()?;
        if create {
            cat.conn.execute_batch(SCHEMA).map_err(|e| cat.err(e))?;
            let version: Option<String> = cat.meta("schema_version")?;
            match version {
                None => cat.set_meta("schema_version", &SCHEMA_VERSION.to_string())?,
                Some(v) => cat.check_version(&v)?,
            }
            cat.add_columns()?;
        } else {
            let v = cat.meta("schema_version")?.unwrap_or_default();
            cat.check_version(&v)?;
        }
        Ok(cat)
    }

    /// Refuses a catalog file shorter than its own header says, or not a whole number of pages:
    /// one cut short by a full disk or a partial copy.
    ///
    /// SQLite notices a file shorter than its header's page count only when it next reads the
    /// header, and a file cut inside its last page not at all: it reads the missing bytes as
    /// zeros, which may decode as wrong rows rather than an error. Comparing the file's length
    /// with the header is two pragmas and a `stat`, so it runs on every open; a full check of
    /// the b-trees (`PRAGMA quick_check`) reads the whole file and is left to `larder verify`.
    fn check_length(&self) -> Result<()> {
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        if len == 0 {
            // A new catalog, or an empty file SQLite treats as an empty database.
            return Ok(());
        }
        // Inside a read transaction, so that no writer commits between reading the header and
        // measuring the file: the first pragma takes SQLite's shared lock.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let pages: i64 = tx
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let page_size: i64 = tx
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let len = std::fs::metadata(&self.path)
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        drop(tx);
        let expected = (pages.max(0) as u64).saturating_mul(page_size.max(1) as u64);
        if len < expected || !len.is_multiple_of(page_size.max(1) as u64) {
            return Err(Error::CorruptCatalog {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(format!(
                        "the file is {len} bytes, its header says {pages} pages of {page_size} bytes ({expected}): it was cut short"
                    )),
                ),
            });
        }
        Ok(())
    }

    /// Adds the tables, indexes and columns of the current schema that an older catalog lacks
    /// (every statement of the schema is `IF NOT EXISTS`; columns are added one by one).
    pub fn ensure_schema(&self) -> Result<()> {
        self.conn.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
        self.add_columns()
    }

    /// Adds the columns added to existing tables since schema version 2, which `CREATE TABLE IF
    /// NOT EXISTS` leaves out of an older catalog. Each is nullable, so older rows stay valid
    /// and a catalog opened read-only without them still reads (see [`Self::has_column`]).
    fn add_columns(&self) -> Result<()> {
        for (table, column, definition) in [
            ("datasets", "caption_recipe", "TEXT"),
            ("items", "frames", "INTEGER NOT NULL DEFAULT 1"),
            ("items", "frame_indices", "TEXT"),
        ] {
            if !self.has_column(table, column)? {
                self.conn
                    .execute(
                        &format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"),
                        [],
                    )
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Returns true if and only if table `table` has the column `column` (columns added to the
    /// schema later are missing from older catalogs opened read-only).
    pub fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Runs SQLite's check of every page and b-tree of the catalog (it reads the whole file:
    /// about as long as reading the catalog once). A damaged catalog is an error.
    pub fn quick_check(&self) -> Result<()> {
        let lines: Vec<String> = self.rows("PRAGMA quick_check", |r| r.get(0))?;
        if lines.len() == 1 && lines[0] == "ok" {
            return Ok(());
        }
        Err(Error::CorruptCatalog {
            path: self.path.clone(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!(
                    "PRAGMA quick_check: {}",
                    lines.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                )),
            ),
        })
    }

    fn check_version(&self, v: &str) -> Result<()> {
        if v == SCHEMA_VERSION.to_string() {
            return Ok(());
        }
        Err(Error::Store {
            path: self.path.clone(),
            message: format!(
                "catalog schema version {v:?}, this larder reads version {SCHEMA_VERSION}: prepare the dataset into a new store"
            ),
        })
    }

    /// Returns true if and only if the catalog has the table `name` (tables added to the schema
    /// later are missing from older catalogs opened read-only).
    pub fn has_table(&self, name: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    pub fn err(&self, e: rusqlite::Error) -> Error {
        catalog_error(&self.path, e)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Runs `sql` and maps every row with `f`.
    pub fn rows<T>(
        &self,
        sql: &str,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], f).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// The keys of every stored entry.
    pub fn entry_keys(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self
            .rows("SELECT key FROM entries", |r| r.get(0))?
            .into_iter()
            .collect())
    }

    /// Every entry with its id, in id order, for readers.
    ///
    /// This runs each time a store is opened, so it allocates as little as it can: the list
    /// columns hold plain numbers, which [`numbers`] reads directly; shapes and codecs repeat,
    /// so each distinct one is parsed and stored once.
    pub fn entries(&self) -> Result<Vec<(i64, EntryRow)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, shard, offset, length, shape, codec, raw_len, scale, bias FROM entries ORDER BY id")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut codecs: std::collections::HashMap<String, Codec> = std::collections::HashMap::new();
        let mut shapes: std::collections::HashMap<String, std::sync::Arc<[usize]>> =
            std::collections::HashMap::new();
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let text = |i: usize| -> Result<&str> {
                r.get_ref(i)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(|e| self.err(e))
            };
            let id: i64 = r.get(0).map_err(|e| self.err(e))?;
            let bad = |what: &str, text: &str| Error::Store {
                path: self.path.clone(),
                message: format!(
                    "entry {id}: unreadable {what} {text:?}; run `larder verify --repair`"
                ),
            };
            let shape_text = text(4)?;
            let shape = match shapes.get(shape_text) {
                Some(s) => s.clone(),
                None => {
                    let s: std::sync::Arc<[usize]> = numbers::<usize>(shape_text)
                        .ok_or_else(|| bad("shape", shape_text))?
                        .into();
                    shapes.insert(shape_text.to_owned(), s.clone());
                    s
                }
            };
            let scale_text = text(7)?;
            let scale = numbers::<f32>(scale_text).ok_or_else(|| bad("scale", scale_text))?;
            let bias_text = text(8)?;
            let bias = numbers::<f32>(bias_text).ok_or_else(|| bad("bias", bias_text))?;
            let codec_text = text(5)?;
            let codec = match codecs.get(codec_text) {
                Some(c) => *c,
                None => {
                    let c = Codec::parse(codec_text).map_err(|_| bad("codec", codec_text))?;
                    codecs.insert(codec_text.to_owned(), c);
                    c
                }
            };
            let int = |i: usize| -> Result<i64> { r.get::<_, i64>(i).map_err(|e| self.err(e)) };
            let row = EntryRow {
                shard: int(1)?,
                offset: int(2)? as u64,
                length: int(3)? as u64,
                shape,
                codec,
                raw_len: int(6)? as u64,
                scale,
                bias,
            };
            out.push((id, row));
        }
        Ok(out)
    }

    /// Every shard: (id, file, bytes, blake3).
    ///
    /// A file name that is not a plain name in `shards/` (a path, `..`) is refused: a catalog
    /// fetched from object storage is input, and a reader or `larder pull` must never be led
    /// outside the store by it.
    pub fn shards(&self) -> Result<Vec<(i64, String, u64, String)>> {
        let rows: Vec<(i64, String, u64, String)> = self.rows(
            "SELECT id, file, bytes, blake3 FROM shards ORDER BY id",
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?)),
        )?;
        if let Some((id, file, _, _)) = rows.iter().find(|(_, f, _, _)| !plain_file_name(f)) {
            return Err(Error::Store {
                path: self.path.clone(),
                message: format!(
                    "shard {id} is named {file:?}, which is not a file name in shards/: the catalog is damaged or was not written by larder"
                ),
            });
        }
        Ok(rows)
    }
}

impl Catalog {
    /// Every shard's chunk checksums, by shard id. Stores written before checksums per chunk
    /// existed have none; `larder push` adds them.
    pub fn shard_chunks(&self) -> Result<std::collections::HashMap<i64, ChunkSums>> {
        // An old catalog opened read-only may lack the table.
        if !self.has_table("shard_chunks")? {
            return Ok(Default::default());
        }
        let rows = self.rows("SELECT shard, chunk_bytes, blake3 FROM shard_chunks", |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = std::collections::HashMap::new();
        for (shard, chunk_bytes, blob) in rows {
            out.insert(shard, self.chunk_sums(shard, chunk_bytes, &blob)?);
        }
        Ok(out)
    }

    /// The chunk checksums of shard `shard`, if the catalog has them.
    pub fn shard_chunks_of(&self, shard: i64) -> Result<Option<ChunkSums>> {
        if !self.has_table("shard_chunks")? {
            return Ok(None);
        }
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT chunk_bytes, blake3 FROM shard_chunks WHERE shard = ?1",
                [shard],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(chunk_bytes, blob)| self.chunk_sums(shard, chunk_bytes, &blob))
            .transpose()
    }

    /// Reads one `shard_chunks` row.
    fn chunk_sums(&self, shard: i64, chunk_bytes: i64, blob: &[u8]) -> Result<ChunkSums> {
        if chunk_bytes <= 0 || !blob.len().is_multiple_of(32) {
            return Err(Error::Store {
                path: self.path.clone(),
                message: format!(
                    "shard {shard}: malformed chunk checksums; run `larder push` again"
                ),
            });
        }
        let digests = blob
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect();
        Ok(ChunkSums {
            chunk_bytes: chunk_bytes as u64,
            digests,
        })
    }

    /// Records the chunk checksums of shard `shard`.
    pub fn set_shard_chunks(&self, shard: i64, sums: &ChunkSums) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO shard_chunks(shard, chunk_bytes, blake3) VALUES (?1, ?2, ?3)",
                params![shard, sums.chunk_bytes as i64, sums.digests.concat()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

impl Catalog {
    /// Records each dataset's caption recipe, by dataset index, in the rows of `datasets`
    /// (written first, with their config): what the loader applies to the stored captions.
    pub fn set_caption_recipes(&self, recipes: &[CaptionRecipe]) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("UPDATE datasets SET caption_recipe = ?2 WHERE id = ?1")
            .map_err(|e| self.err(e))?;
        for (id, recipe) in recipes.iter().enumerate() {
            let json = serde_json::to_string(recipe).map_err(|e| Error::Store {
                path: self.path.clone(),
                message: format!("dataset {id}: the caption recipe cannot be written: {e}"),
            })?;
            let updated = stmt
                .execute(params![id as i64, json])
                .map_err(|e| self.err(e))?;
            if updated != 1 {
                return Err(Error::Store {
                    path: self.path.clone(),
                    message: format!(
                        "dataset {id}: no row to record its caption recipe in (the datasets are written first)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Each dataset's caption recipe, by dataset index.
    ///
    /// A store prepared before recipes were recorded has only each dataset's settings (the
    /// `config` JSON); its recipe is read from them, here and nowhere else. A recipe this larder
    /// cannot read (a newer larder's, or damaged) is an error that says to prepare again, which
    /// rewrites the catalog and recomputes nothing whose key is unchanged.
    pub fn caption_recipes(&self) -> Result<Vec<CaptionRecipe>> {
        let recorded = if self.has_column("datasets", "caption_recipe")? {
            "caption_recipe"
        } else {
            "NULL"
        };
        let rows: Vec<(i64, String, Option<String>)> = self.rows(
            &format!("SELECT id, config, {recorded} FROM datasets ORDER BY id"),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        rows.into_iter()
            .enumerate()
            .map(|(index, (id, config, recipe))| {
                let unreadable = |what: &str, e: String| Error::Store {
                    path: self.path.clone(),
                    message: format!(
                        "dataset {id}: unreadable {what} ({e}); run `larder prepare` again with this larder to record it"
                    ),
                };
                // The loader indexes recipes by the items' dataset number.
                if id != index as i64 {
                    return Err(unreadable(
                        "dataset list",
                        format!("dataset {index} is missing"),
                    ));
                }
                match recipe {
                    Some(json) => serde_json::from_str(&json)
                        .map_err(|e| unreadable("caption recipe", e.to_string())),
                    None => serde_json::from_str(&config)
                        .map_err(|e| e.to_string())
                        .and_then(|v| CaptionRecipe::from_recorded_config(&v))
                        .map_err(|e| unreadable("caption settings", e)),
                }
            })
            .collect()
    }

    /// Each dataset's batching, by dataset index, from the settings the prepare recorded.
    pub fn dataset_batching(&self) -> Result<Vec<DatasetBatching>> {
        let rows: Vec<(i64, Option<i64>, Option<bool>)> = self.rows(
            "SELECT id, json_extract(config, '$.batch_size'), json_extract(config, '$.buckets') FROM datasets ORDER BY id",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        rows.into_iter()
            .map(|(id, size, buckets)| match size {
                None => Ok(DatasetBatching {
                    batch_size: None,
                    buckets: buckets.unwrap_or(true),
                }),
                Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(DatasetBatching {
                    batch_size: Some(n as u32),
                    buckets: buckets.unwrap_or(true),
                }),
                Some(n) => Err(Error::Store {
                    path: self.path.clone(),
                    message: format!(
                        "dataset {id}: recorded batch_size {n} is not a batch size; run `larder prepare` again"
                    ),
                }),
            })
            .collect()
    }
}

/// How the loader batches one dataset's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetBatching {
    /// The dataset's own batch size (`batch_size`); `None` for the loader's.
    pub batch_size: Option<u32>,
    /// `buckets`: batched on its own, bucket by bucket; false for datasets batched together
    /// (AI Toolkit without buckets).
    pub buckets: bool,
}

/// Returns true if and only if `name` names a file directly inside a folder: not empty, no
/// path separator, not `.` or `..`.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Reads a JSON list of plain numbers such as `[3,64,64]`, `[0.5,1e-3]` or `[]`.
fn numbers<T: std::str::FromStr>(text: &str) -> Option<Vec<T>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|n| n.trim().parse().ok()).collect()
}

/// The error for `source`, which SQLite reported for the catalog at `path`: damage to the file
/// (SQLITE_CORRUPT, SQLITE_NOTADB) is [`Error::CorruptCatalog`], which says what to do about it,
/// wherever in a store's life the damaged page is first read.
pub(crate) fn catalog_error(path: &Path, source: rusqlite::Error) -> Error {
    let path = path.to_path_buf();
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            Error::CorruptCatalog { path, source }
        }
        _ => Error::Catalog { path, source },
    }
}

/// A flip as the catalog stores it ([`Flip::name`](crate::plan::Flip::name)); any other text
/// is a damaged catalog, not an unflipped item.
impl rusqlite::types::FromSql for crate::plan::Flip {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let name = value.as_str()?;
        crate::plan::Flip::from_name(name).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("not a flip: {name:?}").into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::numbers;

    #[test]
    fn shard_names_that_leave_the_folder_are_not_plain() {
        assert!(super::plain_file_name("0123abcd.safetensors"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "x\0y"] {
            assert!(!super::plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_catalog_naming_a_shard_outside_the_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = super::Catalog::open(&dir.path().join("catalog.sqlite"), true).expect("open");
        cat.conn
            .execute(
                "INSERT INTO shards(file, bytes, blake3) VALUES ('../../escape.safetensors', 1, 'x')",
                [],
            )
            .expect("insert");
        let err = cat.shards().expect_err("refused");
        assert!(err.to_string().contains("not a file name"), "{err}");
    }

    #[test]
    fn number_lists_read_back_what_serde_json_writes() {
        assert_eq!(numbers::<usize>("[3,64,64]"), Some(vec![3, 64, 64]));
        assert_eq!(numbers::<usize>("[]"), Some(vec![]));
        let floats = vec![0.5f32, -1.25e-7, 3.4028235e38];
        assert_eq!(
            numbers::<f32>(&serde_json::json!(floats).to_string()),
            Some(floats)
        );
        assert_eq!(numbers::<usize>("[3,x]"), None);
        assert_eq!(numbers::<usize>("3,4"), None);
    }
}
