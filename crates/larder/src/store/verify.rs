//! Looking after a store: `inspect` (what is in it), `verify` (is every byte as recorded) and
//! `gc` (drop what nothing references).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use super::shard::MappedShard;
use super::{CATALOG_FILE, SHARD_DIR, Store, strays};
use crate::{Error, Result};

/// A summary of a store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The store folder, or its URL.
    pub root: PathBuf,
    /// Digest of the config that made it.
    pub config_digest: Option<String>,
    /// The config file or folder it was made from.
    pub config_source: Option<String>,
    /// Items in the item list.
    pub items: u64,
    /// Items per bucket ("WxH").
    pub buckets: BTreeMap<String, u64>,
    /// Per field: entries, dtype, codec, stored and raw bytes.
    pub fields: BTreeMap<String, FieldStats>,
    /// Shard files and their total size.
    pub shards: u64,
    /// Total bytes of shard files.
    pub shard_bytes: u64,
    /// Findings recorded by the last prepare, per kind, with paths.
    pub findings: BTreeMap<String, Vec<String>>,
    /// Pipeline identity per field.
    pub encoders: BTreeMap<String, String>,
}

/// Statistics of one field.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FieldStats {
    /// Distinct entries.
    pub entries: u64,
    /// Element dtype(s).
    pub dtypes: Vec<String>,
    /// Codec(s).
    pub codecs: Vec<String>,
    /// Bytes as stored.
    pub stored_bytes: u64,
    /// Bytes before compression.
    pub raw_bytes: u64,
    /// raw_bytes / stored_bytes.
    pub compression_ratio: f64,
}

/// One thing `verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The shard file, or the catalog.
    pub path: PathBuf,
    /// The entry or item concerned, if one.
    pub entry: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The result of `verify`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: u64,
    /// Entries checked.
    pub entries: u64,
    /// Items checked.
    pub items: u64,
    /// Everything found wrong; empty when the store is sound.
    pub problems: Vec<Problem>,
    /// Files in the store that the catalog does not know (harmless; `gc` removes them).
    pub strays: Vec<PathBuf>,
}

/// The result of `gc`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Entries removed from the catalog.
    pub entries_removed: u64,
    /// Shard files deleted.
    pub shards_removed: u64,
    /// Bytes freed on disk.
    pub bytes_freed: u64,
}

/// Where the catalog says an entry lies.
struct Located {
    key: String,
    shard: i64,
    tensor: String,
    offset: u64,
    length: u64,
}

fn field_family(field: &str) -> &str {
    field.split('.').next().unwrap_or(field)
}

/// A whole shard file, for verification.
enum WholeShard {
    Mapped(MappedShard),
    Fetched(Vec<u8>),
}

impl WholeShard {
    fn bytes(&self) -> &[u8] {
        match self {
            WholeShard::Mapped(m) => m.bytes(),
            WholeShard::Fetched(b) => b,
        }
    }
}

impl Store {
    /// Summarizes the store.
    pub fn inspect(&self) -> Result<Inspection> {
        let cat = self.catalog();
        let items = cat
            .rows("SELECT COUNT(*) FROM items", |r| r.get::<_, i64>(0))?
            .first()
            .copied()
            .unwrap_or(0) as u64;
        let buckets = cat
            .rows(
                "SELECT bucket_w, bucket_h, COUNT(*) FROM items GROUP BY bucket_w, bucket_h",
                |r| {
                    Ok((
                        format!("{}x{}", r.get::<_, u32>(0)?, r.get::<_, u32>(1)?),
                        r.get::<_, i64>(2)? as u64,
                    ))
                },
            )?
            .into_iter()
            .collect();
        let mut fields: BTreeMap<String, FieldStats> = BTreeMap::new();
        // An entry shared by several items (repeats, equal crops) is stored, and counted,
        // once: the distinct entries per field are summed in SQL, joined by integer id.
        // Text embeddings count under their encoder's name: entries `<caption key>.<output>`
        // lie between `<caption key>.` and `<caption key>/` in key order.
        let captions = if super::captions::caption_tables_exist(&cat)? {
            " UNION ALL
             SELECT c.encoder, e.dtype, e.codec, COUNT(*), SUM(e.length), SUM(e.raw_len)
             FROM captions c JOIN entries e ON e.key > c.key || '.' AND e.key < c.key || '/'
             GROUP BY c.encoder, e.dtype, e.codec"
        } else {
            ""
        };
        let rows = cat.rows(
            &format!(
                "SELECT field, dtype, codec, COUNT(*), SUM(length), SUM(raw_len) FROM (
                 SELECT DISTINCT f.field, e.id, e.dtype, e.codec, e.length, e.raw_len
                 FROM item_fields f JOIN entries e ON e.id = f.entry_id)
             GROUP BY field, dtype, codec{captions}"
            ),
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )?;
        for (field, dtype, codec, count, len, raw) in rows {
            let s = fields.entry(field_family(&field).to_owned()).or_default();
            s.entries += count as u64;
            s.stored_bytes += len as u64;
            s.raw_bytes += raw as u64;
            if !s.dtypes.contains(&dtype) {
                s.dtypes.push(dtype);
            }
            if !s.codecs.contains(&codec) {
                s.codecs.push(codec);
            }
        }
        for s in fields.values_mut() {
            s.compression_ratio = s.raw_bytes as f64 / s.stored_bytes.max(1) as f64;
        }
        let shards = cat.shards()?;
        let mut findings: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (kind, path, detail) in cat.rows(
            "SELECT kind, path, detail FROM findings ORDER BY kind, path",
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )? {
            findings
                .entry(kind)
                .or_default()
                .push(format!("{path}: {detail}"));
        }
        let encoders = cat
            .rows("SELECT field, identity FROM encoders", |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .into_iter()
            .collect();
        Ok(Inspection {
            root: PathBuf::from(self.location()),
            config_digest: cat.meta("config_digest")?,
            config_source: cat.meta("config_source")?,
            items,
            buckets,
            fields,
            shards: shards.len() as u64,
            shard_bytes: shards.iter().map(|s| s.2).sum(),
            findings,
            encoders,
        })
    }

    /// Checks every shard's checksum and header, and every catalog entry and item reference.
    pub fn verify(&self) -> Result<VerifyReport> {
        let cat = self.catalog();
        // A damaged catalog cannot be checked against, and `--repair` cannot mend it: the error
        // says what can.
        cat.quick_check()?;
        let mut report = VerifyReport::default();
        let shards = cat.shards()?;
        // The catalog as it is on disk, not as this reader loaded it.
        let located = cat.rows(
            "SELECT key, shard, tensor, offset, length FROM entries",
            |r| {
                Ok(Located {
                    key: r.get(0)?,
                    shard: r.get(1)?,
                    tensor: r.get(2)?,
                    offset: r.get::<_, i64>(3)? as u64,
                    length: r.get::<_, i64>(4)? as u64,
                })
            },
        )?;
        let mut by_shard: BTreeMap<i64, Vec<&Located>> = BTreeMap::new();
        for e in &located {
            by_shard.entry(e.shard).or_default().push(e);
        }
        let known: HashSet<i64> = shards.iter().map(|s| s.0).collect();
        let chunk_sums = cat.shard_chunks()?;
        for (id, file, bytes, blake3) in &shards {
            report.shards += 1;
            let path = self.shard_origin(file);
            let problem = |message: String, entry: Option<String>| Problem {
                path: path.clone(),
                entry,
                message,
            };
            let whole = match self.whole_shard(file) {
                Ok(Some(w)) => w,
                Ok(None) => {
                    report
                        .problems
                        .push(problem("shard file is missing".into(), None));
                    continue;
                }
                Err(e) => {
                    report.problems.push(problem(e.to_string(), None));
                    continue;
                }
            };
            let content = whole.bytes();
            let actual_bytes = content.len() as u64;
            let actual_hash = blake3::hash(content).to_hex();
            if actual_bytes != *bytes || actual_hash.as_str() != blake3 {
                report.problems.push(problem(
                    format!("checksum mismatch: catalog says {bytes} bytes, blake3 {}…; file has {actual_bytes} bytes, blake3 {}…", &blake3[..16], &actual_hash.as_str()[..16]),
                    None,
                ));
                continue;
            }
            // A remote store is read in checksummed chunks: a shard without them cannot be read.
            if self.is_remote() && !chunk_sums.get(id).is_some_and(|s| s.covers(*bytes)) {
                report.problems.push(problem(
                    "the catalog has no chunk checksums for this shard, so it cannot be read by range: `larder pull` the store and `larder push` it again (push adds them)".into(),
                    None,
                ));
            }
            if let Some(sums) = chunk_sums.get(id) {
                let mut hasher = crate::storage::ChunkHasher::default();
                hasher.update(content);
                if &hasher.finish() != sums {
                    report.problems.push(problem(
                        "the catalog's chunk checksums do not match the shard (its whole checksum does): run `larder push` from a good copy to rewrite them".into(),
                        None,
                    ));
                }
            }
            // The one header validator of the crate (with its hardened checks).
            let header = match crate::safetensors_header::Header::from_prefix(
                &path,
                content,
                actual_bytes,
            ) {
                Ok(h) => h,
                Err(e) => {
                    report
                        .problems
                        .push(problem(format!("not a valid safetensors file: {e}"), None));
                    continue;
                }
            };
            for e in by_shard.get(id).into_iter().flatten() {
                report.entries += 1;
                let Some(info) = header.get(&e.tensor) else {
                    report.problems.push(problem(
                        format!("tensor {} is not in the shard", e.tensor),
                        Some(e.key.clone()),
                    ));
                    continue;
                };
                let (begin, end) = (
                    header.data_start + info.range.start,
                    header.data_start + info.range.end,
                );
                if begin != e.offset || end - begin != e.length {
                    report.problems.push(problem(
                        format!(
                            "tensor {} lies at {}..{} in the shard, the catalog says {}+{}",
                            e.tensor, begin, end, e.offset, e.length
                        ),
                        Some(e.key.clone()),
                    ));
                }
            }
        }
        for e in &located {
            if !known.contains(&e.shard) {
                report.problems.push(Problem {
                    path: self.root.join(CATALOG_FILE),
                    entry: Some(e.key.clone()),
                    message: format!(
                        "refers to shard {}, which the catalog does not list",
                        e.shard
                    ),
                });
            }
        }
        let mut stmt = cat
            .conn
            .prepare("SELECT f.item, f.field, f.entry FROM item_fields f LEFT JOIN entries e ON e.id = f.entry_id AND e.key = f.entry WHERE e.id IS NULL")
            .map_err(|e| cat.err(e))?;
        for row in stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| cat.err(e))?
        {
            let (item, field, entry) = row.map_err(|e| cat.err(e))?;
            report.problems.push(Problem {
                path: self.root.join(CATALOG_FILE),
                entry: Some(entry),
                message: format!(
                    "item {item} field {field} refers to an entry that does not exist"
                ),
            });
        }
        // Text embeddings are referenced by caption, not by item field: each caption a text
        // encoder recorded needs every output the encoder records.
        for (field, outputs) in super::captions::text_encoder_outputs(&cat)? {
            for (output, _) in outputs {
                let mut stmt = cat
                    .conn
                    .prepare(
                        "SELECT c.key, c.text FROM captions c WHERE c.encoder = ?1 AND NOT EXISTS
                         (SELECT 1 FROM entries e WHERE e.key = c.key || '.' || ?2)",
                    )
                    .map_err(|e| cat.err(e))?;
                let missing = stmt
                    .query_map([&field, &output], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .map_err(|e| cat.err(e))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| cat.err(e))?;
                for (key, text) in missing {
                    report.problems.push(Problem {
                        path: self.root.join(CATALOG_FILE),
                        entry: Some(format!("{key}.{output}")),
                        message: format!(
                            "the {field} embedding {output} of caption {text:?} is not stored; run `larder prepare` again"
                        ),
                    });
                }
            }
        }
        report.items = cat
            .conn
            .query_row("SELECT COUNT(*) FROM items", [], |r| r.get::<_, i64>(0))
            .map_err(|e| cat.err(e))? as u64;
        report.strays = match self.remote() {
            None => strays(&self.root, &cat)?,
            Some(remote) => {
                let known: HashSet<String> = shards.iter().map(|s| s.1.clone()).collect();
                // Listing is not part of plain HTTP: strays are advice, so a store that cannot
                // be listed still verifies, with a warning.
                let listed = remote
                    .storage
                    .list(&format!("{SHARD_DIR}/"))
                    .unwrap_or_else(|e| {
                        tracing::warn!("cannot list the shards to look for strays: {e}");
                        Vec::new()
                    });
                listed
                    .into_iter()
                    .filter(|(key, _)| !known.contains(key.trim_start_matches("shards/")))
                    .map(|(key, _)| PathBuf::from(remote.storage.url(&key)))
                    .collect()
            }
        };
        Ok(report)
    }

    /// The path or URL of shard file `file`.
    fn shard_origin(&self, file: &str) -> PathBuf {
        match self.remote() {
            None => self.root.join(SHARD_DIR).join(file),
            Some(remote) => PathBuf::from(remote.storage.url(&super::remote::shard_key(file))),
        }
    }

    /// All of shard file `file`, mapped or downloaded; `None` when it is missing.
    fn whole_shard(&self, file: &str) -> Result<Option<WholeShard>> {
        match self.remote() {
            None => {
                let path = self.root.join(SHARD_DIR).join(file);
                if !path.is_file() {
                    return Ok(None);
                }
                Ok(Some(WholeShard::Mapped(MappedShard::open(&path)?)))
            }
            Some(remote) => {
                let key = super::remote::shard_key(file);
                let Some(size) = remote.storage.size(&key)? else {
                    return Ok(None);
                };
                let mut bytes = Vec::with_capacity(size as usize);
                crate::storage::read_in_pieces(remote.storage.as_ref(), &key, size, |piece| {
                    bytes.extend_from_slice(piece);
                    Ok(())
                })?;
                Ok(Some(WholeShard::Fetched(bytes)))
            }
        }
    }

    /// Refuses to change a store in object storage: repairs work on a local copy.
    fn local_only(&self, what: &str) -> Result<()> {
        if self.is_remote() {
            return Err(Error::InvalidArgument {
                name: "store",
                message: format!(
                    "{what} changes a store and works on local stores only: `larder pull {url} DIR`, {what} DIR, then `larder push DIR {url}`",
                    url = self.location()
                ),
            });
        }
        Ok(())
    }

    /// Verifies the store and forgets every broken shard: its catalog rows and entries go, and
    /// so does the file. The next `larder prepare` recomputes exactly the lost entries. Sound
    /// shards without chunk checksums (a store written before they existed) get them.
    pub fn repair(&mut self) -> Result<VerifyReport> {
        self.local_only("larder verify --repair")?;
        let report = self.verify()?;
        let broken: HashSet<&std::path::Path> = report
            .problems
            .iter()
            .filter(|p| p.entry.is_none())
            .map(|p| p.path.as_path())
            .collect();
        {
            let cat = self.catalog();
            let err = |e| cat.err(e);
            let tx = cat.conn.unchecked_transaction().map_err(err)?;
            for (id, file, _, _) in cat.shards()? {
                let path = self.root.join(SHARD_DIR).join(&file);
                if broken.contains(path.as_path()) {
                    tx.execute("DELETE FROM entries WHERE shard = ?1", [id])
                        .map_err(err)?;
                    tx.execute("DELETE FROM shards WHERE id = ?1", [id])
                        .map_err(err)?;
                }
            }
            // Entries whose shard row is gone cannot be read either.
            tx.execute(
                "DELETE FROM entries WHERE shard NOT IN (SELECT id FROM shards)",
                [],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            // A store written before chunk checksums existed gets them for its sound shards:
            // readers check what they read against them (and a push needs them).
            cat.ensure_schema()?;
            let sums = cat.shard_chunks()?;
            for (id, file, _, _) in cat.shards()? {
                let path = self.root.join(SHARD_DIR).join(&file);
                if sums.contains_key(&id) || broken.contains(path.as_path()) {
                    continue;
                }
                let chunks = crate::storage::chunk_sums_of_file(&path)
                    .map_err(|e| crate::Error::io(&path, e))?;
                cat.set_shard_chunks(id, &chunks)?;
            }
            for path in &broken {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(crate::Error::io(path, e)),
                }
            }
        }
        *self = Store::open(&self.root)?;
        Ok(report)
    }

    /// Removes entries no item references, shard files with no entries left, and stray files.
    /// Shards that still hold referenced entries are kept whole.
    pub fn gc(&mut self) -> Result<GcReport> {
        self.local_only("larder gc")?;
        let mut report = GcReport::default();
        {
            let cat = self.catalog();
            let err = |e| cat.err(e);
            let tx = cat.conn.unchecked_transaction().map_err(err)?;
            // Text embeddings are referenced by caption, not by item field.
            let keep_captions = if super::captions::caption_tables_exist(&cat)? {
                format!(" AND NOT {}", super::captions::IS_CAPTION_OUTPUT)
            } else {
                String::new()
            };
            report.entries_removed = tx
                .execute(
                    &format!(
                        "DELETE FROM entries WHERE key NOT IN (SELECT entry FROM item_fields){keep_captions}"
                    ),
                    [],
                )
                .map_err(err)? as u64;
            let mut empty = Vec::new();
            {
                let mut stmt = tx
                    .prepare("SELECT id, file, bytes FROM shards WHERE id NOT IN (SELECT DISTINCT shard FROM entries)")
                    .map_err(err)?;
                for row in stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .map_err(err)?
                {
                    empty.push(row.map_err(err)?);
                }
            }
            for (id, _, _) in &empty {
                tx.execute("DELETE FROM shards WHERE id = ?1", [id])
                    .map_err(err)?;
            }
            // The catalog forgets the shards first, then the files go: a crash in between
            // leaves stray files, which the next writer or gc removes, never dangling rows.
            tx.commit().map_err(err)?;
            for (_, file, bytes) in &empty {
                let path = self.root.join(SHARD_DIR).join(file);
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        report.shards_removed += 1;
                        report.bytes_freed += *bytes as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(crate::Error::io(&path, e)),
                }
            }
            for path in strays(&self.root, &cat)? {
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(|e| crate::Error::io(&path, e))?;
                report.bytes_freed += bytes;
            }
        }
        *self = Store::open(&self.root)?;
        Ok(report)
    }
}
