//! The larder store: sharded safetensors files and a SQLite catalog in one folder.
//!
//! ```text
//! store/
//!   catalog.sqlite        items, entries, shards, findings, config digest (docs/store-format.md)
//!   shards/<hash>.safetensors
//!   tmp/                  shards being written; emptied by the next writer
//! ```
//!
//! [`Store`] reads a store; [`prepare`](crate::prepare()) writes one.

pub(crate) mod captions;
pub(crate) mod catalog;
mod checked;
pub mod codec;
pub(crate) mod key;
pub(crate) mod remote;
pub(crate) mod shard;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub(crate) use captions::TextTable;
use catalog::Catalog;
pub(crate) use catalog::EntryRow;
use checked::CheckedShard;
use shard::MappedShard;

pub use crate::storage::CHUNK_BYTES;
pub use catalog::DatasetBatching;
pub use shard::{SafetensorsFile, TensorRef};
pub use verify::{FieldStats, GcReport, Inspection, Problem, VerifyReport};

use crate::storage::try_lock;
use crate::{Error, Result};

/// File name of the catalog inside a store.
pub const CATALOG_FILE: &str = "catalog.sqlite";
/// Folder of the shard files inside a store.
pub const SHARD_DIR: &str = "shards";
/// Folder of shards being written.
pub const TMP_DIR: &str = "tmp";

/// An item as the store records it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredItem {
    /// Item id (its position in the store's item list).
    pub id: u64,
    /// Index of the dataset in the config.
    pub dataset: u32,
    /// Source image.
    pub path: String,
    /// The source image's width as displayed (after its EXIF orientation).
    pub width: u32,
    /// The source image's height as displayed.
    pub height: u32,
    /// Bucket width.
    pub bucket_w: u32,
    /// Bucket height.
    pub bucket_h: u32,
    /// Width the source was resized to before the crop.
    pub scale_to_w: u32,
    /// Height the source was resized to before the crop.
    pub scale_to_h: u32,
    /// Left edge of the crop in the resized image.
    pub crop_x: u32,
    /// Top edge of the crop in the resized image.
    pub crop_y: u32,
    /// The flip the item was stored with.
    pub flip: crate::plan::Flip,
    /// The caption as loaded (before the per-epoch transforms).
    pub caption: String,
    /// Part of a regularization dataset.
    pub is_reg: bool,
    /// The dataset's network weight.
    pub network_weight: f32,
    /// The dataset's loss multiplier.
    pub loss_multiplier: f32,
    /// For a video clip: the indices of the frames it trains with, in order; `None` for an
    /// image.
    pub frames: Option<Vec<u64>>,
    /// The item's fields and the keys of their entries.
    pub fields: BTreeMap<String, String>,
}

/// No entry: the item does not have this field.
pub(crate) const NO_ENTRY: u32 = u32::MAX;
/// The item names an entry the catalog does not hold (a repaired store, not yet prepared).
pub(crate) const DANGLING: u32 = u32::MAX - 1;

/// The item table in id order, read through its own read-only connection.
fn item_rows(catalog: &Path) -> Result<Vec<ItemRow>> {
    let err = |e| catalog::catalog_error(catalog, e);
    let conn = rusqlite::Connection::open_with_flags(
        catalog,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    // Catalogs from before video support have no frame counts: every item is one image.
    let has_frames: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('items') WHERE name = 'frames'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    let frames = if has_frames { "frames" } else { "1" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, dataset, path, bucket_w, bucket_h, caption, is_reg, network_weight, loss_multiplier, item_key, resolution, {frames}
             FROM items ORDER BY id"
        ))
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut items = Vec::new();
    while let Some(r) = rows.next().map_err(err)? {
        let id: i64 = r.get(0).map_err(err)?;
        let malformed = |what: &str| Error::Store {
            path: catalog.to_path_buf(),
            message: format!("item {id}: {what}; prepare the store again"),
        };
        if id != items.len() as i64 {
            return Err(malformed("item ids are not 0..n"));
        }
        let hex = r
            .get_ref(9)
            .and_then(|v| v.as_str().map_err(Into::into))
            .map_err(err)?;
        items.push(ItemRow {
            key: parse_key(hex).ok_or_else(|| malformed("malformed item key"))?,
            dataset: r.get::<_, i64>(1).map_err(err)? as u32,
            path: r.get(2).map_err(err)?,
            bucket: (r.get(3).map_err(err)?, r.get(4).map_err(err)?),
            caption: r.get(5).map_err(err)?,
            is_reg: r.get(6).map_err(err)?,
            network_weight: r.get::<_, f64>(7).map_err(err)? as f32,
            loss_multiplier: r.get::<_, f64>(8).map_err(err)? as f32,
            resolution: r.get(10).map_err(err)?,
            frames: r.get(11).map_err(err)?,
        });
    }
    Ok(items)
}

/// Reads a 32-hex-digit key.
fn parse_key(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One item of [`ItemColumns`].
#[derive(Debug, Clone)]
pub(crate) struct ItemRow {
    /// The item key (the content address of its geometry), as 16 bytes.
    pub key: [u8; 16],
    pub dataset: u32,
    pub path: String,
    /// The resolution of the dataset's list that placed the item (AI Toolkit makes one
    /// dataset of each, so its batches never mix them).
    pub resolution: u32,
    pub bucket: (u32, u32),
    /// 1 for an image, the frame count of a clip: items of different counts never share a
    /// batch (AI Toolkit's `x{num_frames}f` bucket keys).
    pub frames: u32,
    pub caption: String,
    pub is_reg: bool,
    pub network_weight: f32,
    pub loss_multiplier: f32,
}

/// The item table with each field's entries as a column of entry positions.
#[derive(Debug, Clone)]
pub(crate) struct ItemColumns {
    pub items: Vec<ItemRow>,
    pub fields: Vec<String>,
    /// `entries[f][item]`: position of the entry of field `fields[f]`, or [`NO_ENTRY`] /
    /// [`DANGLING`].
    pub entries: Vec<Vec<u32>>,
}

/// The stored bytes of one field, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldData {
    /// u8 values (images, masks).
    U8 {
        /// C×H×W values.
        values: Vec<u8>,
        /// The shape.
        shape: Vec<usize>,
    },
    /// Float values (latents, embeddings), decoded from their codec.
    F32 {
        /// The values.
        values: Vec<f32>,
        /// The shape.
        shape: Vec<usize>,
    },
}

/// The catalog's entries in memory.
#[derive(Debug)]
struct EntryTable {
    entries: Vec<EntryRow>,
    /// Entry id → position in `entries` ([`NO_ENTRY`] for ids not in use).
    positions: Vec<u32>,
}

impl EntryTable {
    fn read(catalog: &Catalog) -> Result<EntryTable> {
        let rows = catalog.entries()?;
        let max_id = rows.last().map_or(0, |(id, _)| (*id).max(0) as usize);
        let mut positions = vec![NO_ENTRY; max_id + 1];
        let entries = rows
            .into_iter()
            .enumerate()
            .map(|(pos, (id, row))| {
                if let Some(slot) = positions.get_mut(id.max(0) as usize) {
                    *slot = pos as u32;
                }
                row
            })
            .collect();
        Ok(EntryTable { entries, positions })
    }

    /// The position of entry `id`, if the table holds it.
    fn position(&self, id: i64) -> Option<u32> {
        self.positions
            .get(usize::try_from(id).ok()?)
            .copied()
            .filter(|&p| p != NO_ENTRY)
    }
}

/// The stored bytes of one entry: a view of a mapped local shard, or bytes read from a remote
/// one (through its cache).
#[derive(Debug)]
pub(crate) struct EntryBytes {
    data: EntryData,
    /// The shard's path or URL, for messages.
    origin: PathBuf,
}

#[derive(Debug)]
enum EntryData {
    Mapped {
        map: Arc<MappedShard>,
        range: std::ops::Range<usize>,
    },
    Fetched {
        bytes: Vec<u8>,
        cached: bool,
    },
}

impl EntryBytes {
    /// The shard file (or its URL) the bytes come from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// For a remote store: whether the bytes came from the local cache.
    pub fn cache_hit(&self) -> Option<bool> {
        match &self.data {
            EntryData::Mapped { .. } => None,
            EntryData::Fetched { cached, .. } => Some(*cached),
        }
    }
}

impl std::ops::Deref for EntryBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.data {
            EntryData::Mapped { map, range } => &map.bytes()[range.clone()],
            EntryData::Fetched { bytes, .. } => bytes,
        }
    }
}

/// A store opened for reading.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// The path or URL the store was opened from.
    location: String,
    /// The shard reader of a store in object storage; `None` for a local store.
    remote: Option<Arc<crate::storage::RemoteShards>>,
    catalog: Mutex<Catalog>,
    /// Every entry, read on first use: inspect, verify and gc never need them, and at a
    /// million entries they are most of what opening a store costs.
    table: std::sync::OnceLock<EntryTable>,
    /// Entry key → position, built on first use: the loader never needs it.
    by_key: std::sync::OnceLock<HashMap<String, u32>>,
    shard_files: HashMap<i64, String>,
    /// Local shards mapped so far, with the chunks of each that reads have checked.
    maps: Mutex<HashMap<i64, Arc<CheckedShard>>>,
    /// Set once the store has warned that a shard has no chunk checksums to check reads by.
    warned_unchecked: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Opens the store in the local folder `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        Store::open_catalog(root.clone(), root.display().to_string(), None)
    }

    /// Opens the store at `location`: a URL (`s3://`, `gs://`, `az://`, `http(s)://`; see
    /// [`storage`](crate::storage)) or a local folder, as [`Location::parse`] tells them apart.
    ///
    /// [`Location::parse`]: crate::Location::parse
    pub fn open_location(location: &str, options: &crate::storage::RemoteOptions) -> Result<Store> {
        match crate::storage::Location::parse(location) {
            crate::storage::Location::Url(url) => {
                Store::open_storage(crate::storage::storage_for(&url, options)?, options)
            }
            crate::storage::Location::Local(path) => Store::open(path),
        }
    }

    /// Opens the store held by `storage`, reading its shards in ranges through a local cache
    /// as for a store in object storage, whatever the backend.
    pub fn open_storage(
        storage: Arc<dyn crate::storage::Storage>,
        options: &crate::storage::RemoteOptions,
    ) -> Result<Store> {
        let location = storage.url("").trim_end_matches('/').to_owned();
        let (catalog, shards) = remote::open_store(storage, options)?;
        let root = catalog.parent().unwrap_or(Path::new(".")).to_path_buf();
        Store::open_catalog(root, location, Some(shards))
    }

    fn open_catalog(
        root: PathBuf,
        location: String,
        remote: Option<Arc<crate::storage::RemoteShards>>,
    ) -> Result<Store> {
        let catalog = Catalog::open(&root.join(CATALOG_FILE), false)?;
        let shard_files = catalog
            .shards()?
            .into_iter()
            .map(|(id, file, _, _)| (id, file))
            .collect();
        Ok(Store {
            root,
            location,
            remote,
            catalog: Mutex::new(catalog),
            table: std::sync::OnceLock::new(),
            by_key: std::sync::OnceLock::new(),
            shard_files,
            maps: Mutex::new(HashMap::new()),
            warned_unchecked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The store's folder; for a store in object storage, the local cache folder that holds
    /// its catalog.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path or URL the store was opened from.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Returns true if and only if the store is read from object storage.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The remote shard reader, for stores in object storage.
    pub(crate) fn remote(&self) -> Option<&Arc<crate::storage::RemoteShards>> {
        self.remote.as_ref()
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every item, in id order.
    pub fn items(&self) -> Result<Vec<StoredItem>> {
        let cat = self.catalog();
        let err = |e| cat.err(e);
        let mut fields: HashMap<u64, BTreeMap<String, String>> = HashMap::new();
        let mut stmt = cat
            .conn
            .prepare("SELECT item, field, entry FROM item_fields")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(err)?;
        for row in rows {
            let (item, field, entry) = row.map_err(err)?;
            fields.entry(item as u64).or_default().insert(field, entry);
        }
        let frame_indices = if cat.has_column("items", "frame_indices")? {
            "frame_indices"
        } else {
            "NULL"
        };
        let mut stmt = cat
            .conn
            .prepare(
                &format!("SELECT id, dataset, path, bucket_w, bucket_h, caption, is_reg, network_weight, loss_multiplier,
                        scale_to_w, scale_to_h, crop_x, crop_y, flip, width, height, {frame_indices}
                 FROM items ORDER BY id"),
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredItem {
                    id: r.get::<_, i64>(0)? as u64,
                    dataset: r.get::<_, i64>(1)? as u32,
                    path: r.get(2)?,
                    bucket_w: r.get(3)?,
                    bucket_h: r.get(4)?,
                    caption: r.get(5)?,
                    is_reg: r.get(6)?,
                    network_weight: r.get::<_, f64>(7)? as f32,
                    loss_multiplier: r.get::<_, f64>(8)? as f32,
                    scale_to_w: r.get(9)?,
                    scale_to_h: r.get(10)?,
                    crop_x: r.get(11)?,
                    crop_y: r.get(12)?,
                    flip: r.get(13)?,
                    width: r.get(14)?,
                    height: r.get(15)?,
                    frames: r
                        .get::<_, Option<String>>(16)?
                        .and_then(|j| serde_json::from_str(&j).ok()),
                    fields: BTreeMap::new(),
                })
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for row in rows {
            let mut item = row.map_err(err)?;
            item.fields = fields.remove(&item.id).unwrap_or_default();
            out.push(item);
        }
        Ok(out)
    }

    /// Each dataset's caption recipe, by dataset index, as the prepare that made the store
    /// recorded it (read from the dataset's settings for a store made before recipes were).
    pub fn caption_recipes(&self) -> Result<Vec<crate::CaptionRecipe>> {
        self.catalog().caption_recipes()
    }

    /// How each dataset is batched (its `batch_size` and `buckets` keys), by dataset index.
    pub fn dataset_batching(&self) -> Result<Vec<DatasetBatching>> {
        self.catalog().dataset_batching()
    }

    /// Local shard `id`, mapped (and its header chunk checked) on first use.
    fn shard(&self, id: i64) -> Result<Arc<CheckedShard>> {
        if let Some(m) = self.maps.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(m.clone());
        }
        let file = self.shard_files.get(&id).ok_or_else(|| Error::Store {
            path: self.root.join(CATALOG_FILE),
            message: format!(
                "entry refers to shard {id}, which the catalog does not list; run `larder verify`"
            ),
        })?;
        let path = self.root.join(SHARD_DIR).join(file);
        if !path.is_file() {
            return Err(Error::Store {
                path,
                message: "shard is missing; run `larder verify --repair`, then `larder prepare` again to rebuild it".into(),
            });
        }
        // Mapped and checked without holding the map lock: other readers go on meanwhile, and
        // two that map the same shard at once keep the first map.
        let sums = self.catalog().shard_chunks_of(id)?;
        if sums.is_none()
            && !self
                .warned_unchecked
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "{}: the catalog has no chunk checksums for shard {file} (a store written before they existed), so reads from it are not checked; run `larder verify` to check the whole store, and `larder verify --repair` to record them",
                self.location
            );
        }
        let checked = Arc::new(CheckedShard::new(MappedShard::open(&path)?, sums)?);
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        Ok(maps.entry(id).or_insert(checked).clone())
    }

    /// The stored bytes of entry `key` as they lie in the shard (compressed when the codec
    /// compresses), with the entry's description.
    pub(crate) fn stored_bytes(&self, key: &str) -> Result<(EntryBytes, &EntryRow)> {
        let pos = self
            .key_index()?
            .get(key)
            .copied()
            .ok_or_else(|| Error::Store {
                path: self.root.join(CATALOG_FILE),
                message: format!("no entry {key}; run `larder verify`"),
            })?;
        self.stored_bytes_at(pos)
    }

    /// The entries, read from the catalog on first use.
    fn table(&self) -> Result<&EntryTable> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let table = EntryTable::read(&self.catalog())?;
        Ok(self.table.get_or_init(|| table))
    }

    /// Entry key → position in the entry table.
    fn key_index(&self) -> Result<&HashMap<String, u32>> {
        if let Some(index) = self.by_key.get() {
            return Ok(index);
        }
        let table = self.table()?;
        let rows = self.catalog().rows("SELECT key, id FROM entries", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let index = rows
            .into_iter()
            .filter_map(|(key, id)| Some((key, table.position(id)?)))
            .collect();
        Ok(self.by_key.get_or_init(|| index))
    }

    /// The entry at position `pos` of the store's entry list.
    pub(crate) fn entry_at(&self, pos: u32) -> Result<&EntryRow> {
        self.table()?
            .entries
            .get(pos as usize)
            .ok_or_else(|| Error::InvalidArgument {
                name: "entry",
                message: format!("no entry at position {pos}"),
            })
    }

    /// [`stored_bytes`](Self::stored_bytes) by the entry's position in the store's entry list.
    pub(crate) fn stored_bytes_at(&self, pos: u32) -> Result<(EntryBytes, &EntryRow)> {
        let entry = self.entry_at(pos)?;
        let Some(remote) = &self.remote else {
            let shard = self.shard(entry.shard)?;
            // Checked against the mapped file's size, so the view can never fault.
            shard.map.slice(entry.offset, entry.length)?;
            shard.check(entry.offset, entry.length)?;
            let start = entry.offset as usize;
            let bytes = EntryBytes {
                origin: shard.map.path.clone(),
                data: EntryData::Mapped {
                    range: start..start + entry.length as usize,
                    map: shard.map.clone(),
                },
            };
            return Ok((bytes, entry));
        };
        let read = remote.read(entry.shard, entry.offset, entry.length)?;
        let bytes = EntryBytes {
            origin: PathBuf::from(remote.url_of(entry.shard)),
            data: EntryData::Fetched {
                bytes: read.bytes,
                cached: read.cached,
            },
        };
        Ok((bytes, entry))
    }

    /// Copies the stored bytes of `entry`, which its codec stores as plain elements, into `out`
    /// (as long as the entry). For a remote store, says whether every byte came from the cache.
    pub(crate) fn read_plain_into(&self, entry: &EntryRow, out: &mut [u8]) -> Result<Option<bool>> {
        match &self.remote {
            Some(remote) => remote.read_into(entry.shard, entry.offset, out).map(Some),
            None => {
                let shard = self.shard(entry.shard)?;
                let bytes = shard.map.slice(entry.offset, entry.length)?;
                shard.check(entry.offset, entry.length)?;
                out.copy_from_slice(bytes);
                Ok(None)
            }
        }
    }

    /// Starts prefetching `count` batches whose entries (by position) `entries` lists, when the
    /// store is remote; a local store needs none.
    pub(crate) fn prefetch(
        self: &Arc<Self>,
        count: usize,
        entries: impl Fn(usize) -> Vec<u32> + Send + 'static,
    ) -> Option<crate::storage::Prefetch> {
        let remote = self.remote.clone()?;
        let store = self.clone();
        let ranges: crate::storage::BatchEntries = Box::new(move |n| {
            entries(n)
                .into_iter()
                .filter_map(|pos| store.entry_at(pos).ok())
                .map(|e| (e.shard, e.offset, e.length))
                .collect()
        });
        Some(crate::storage::Prefetch::start(remote, count, ranges))
    }

    /// The item table in columns, for the loader: compact at millions of items, where a map of
    /// field names per item would cost more than the items themselves.
    pub(crate) fn item_columns(&self) -> Result<ItemColumns> {
        // The item rows are independent of the entries and the field references: they come
        // through a second connection on another thread while this one reads the rest.
        let path = self.root.join(CATALOG_FILE);
        let (items, columns) = std::thread::scope(|s| {
            let rows = s.spawn(|| item_rows(&path));
            let columns = self
                .table()
                .and_then(|table| self.field_columns(&self.catalog(), table));
            let items = rows.join().unwrap_or_else(|_| {
                Err(Error::Store {
                    path: path.clone(),
                    message: "reading the item table panicked".into(),
                })
            });
            (items, columns)
        });
        let items = items?;
        let (fields, mut entries) = columns?;
        for column in &mut entries {
            column.resize(items.len(), NO_ENTRY);
        }
        Ok(ItemColumns {
            items,
            fields,
            entries,
        })
    }

    /// Every item's field references as columns of entry positions.
    fn field_columns(
        &self,
        cat: &Catalog,
        table: &EntryTable,
    ) -> Result<(Vec<String>, Vec<Vec<u32>>)> {
        let err = |e| cat.err(e);
        let mut fields: Vec<String> = Vec::new();
        let mut entries: Vec<Vec<u32>> = Vec::new();
        let mut stmt = cat
            .conn
            .prepare("SELECT item, field, entry_id FROM item_fields")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            let item = r.get::<_, i64>(0).map_err(err)? as usize;
            let field = r
                .get_ref(1)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(err)?;
            let entry_id: i64 = r.get(2).map_err(err)?;
            let f = match fields.iter().position(|x| x == field) {
                Some(f) => f,
                None => {
                    fields.push(field.to_owned());
                    entries.push(Vec::new());
                    fields.len() - 1
                }
            };
            let column = &mut entries[f];
            if column.len() <= item {
                column.resize(item + 1, NO_ENTRY);
            }
            // A dangling reference (after `verify --repair`) reads as missing: the batch that
            // needs it reports the error.
            column[item] = table.position(entry_id).unwrap_or(DANGLING);
        }
        Ok((fields, entries))
    }

    /// Reads and decodes entry `key`.
    pub fn read_entry(&self, key: &str) -> Result<FieldData> {
        let (stored, entry) = self
            .stored_bytes(key)
            .map_err(|e| e.in_item(format!("entry {key}")))?;
        let codec = entry.codec;
        let elements = codec::decompress(codec, &stored, entry.raw_len as usize).map_err(|e| {
            Error::Store {
                path: stored.origin().to_path_buf(),
                message: format!("entry {key}: {e}"),
            }
        })?;
        if codec.repr == codec::Repr::U8 {
            return Ok(FieldData::U8 {
                values: elements.into_owned(),
                shape: entry.shape.to_vec(),
            });
        }
        let values = codec::decode_f32(codec, &elements, &entry.shape, &entry.scale, &entry.bias)?;
        Ok(FieldData::F32 {
            values,
            shape: entry.shape.to_vec(),
        })
    }

    /// Reads `field` of `item`.
    pub fn read_field(&self, item: &StoredItem, field: &str) -> Result<FieldData> {
        let key = item
            .fields
            .get(field)
            .ok_or_else(|| Error::InvalidArgument {
                name: "field",
                message: format!(
                    "item {} has no field {field:?} (it has {:?})",
                    item.id,
                    item.fields.keys().collect::<Vec<_>>()
                ),
            })?;
        self.read_entry(key)
    }
}

/// Takes the write lock of the store in `dir` (the folder must exist): one writer at a time,
/// whether it prepares, merges, pushes or pulls. Held until the returned file is dropped.
pub(crate) fn lock_store(dir: &Path) -> Result<std::fs::File> {
    try_lock(&dir.join(".lock"))?.ok_or_else(|| Error::Store {
        path: dir.to_path_buf(),
        message: "another larder process (prepare, merge, push or pull) is writing this store; wait for it to finish".into(),
    })
}

/// Removes what an interrupted writer left: temporary files, and shard files that no catalog
/// row records (renamed into place, but killed before the commit). Shards the catalog records
/// but which are gone or of the wrong size are forgotten, so their entries are computed again;
/// finding a corrupted byte needs a full read, which is `larder verify`'s job.
pub(crate) fn remove_strays(root: &Path, catalog: &Catalog) -> Result<Vec<PathBuf>> {
    for (id, file, bytes, _) in catalog.shards()? {
        let len = std::fs::metadata(root.join(SHARD_DIR).join(&file))
            .map(|m| m.len())
            .ok();
        if len != Some(bytes) {
            tracing::warn!(
                "shard {file} is missing or resized; its entries will be prepared again"
            );
            let err = |e| catalog.err(e);
            let tx = catalog.conn.unchecked_transaction().map_err(err)?;
            tx.execute("DELETE FROM entries WHERE shard = ?1", [id])
                .map_err(err)?;
            tx.execute("DELETE FROM shards WHERE id = ?1", [id])
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
    }
    let found = strays(root, catalog)?;
    for path in &found {
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(found)
}

/// Files in `shards/` the catalog does not list, and anything in `tmp/`.
pub(crate) fn strays(root: &Path, catalog: &Catalog) -> Result<Vec<PathBuf>> {
    let known: std::collections::HashSet<String> =
        catalog.shards()?.into_iter().map(|s| s.1).collect();
    let mut out = Vec::new();
    for (dir, only_unknown) in [(root.join(SHARD_DIR), true), (root.join(TMP_DIR), false)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !only_unknown || !known.contains(&name) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
