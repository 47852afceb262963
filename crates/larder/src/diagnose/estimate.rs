//! The memory estimate: what a dataset costs in RAM, served by a PyTorch DataLoader the way AI
//! Toolkit runs it and by larder's loader.
//!
//! The inputs are a [`Workload`] — the distinct training images by bucket, the distinct
//! captions and the fields to serve — taken from a plan (what a config would produce) or from a
//! prepared store (what it holds, byte for byte). [`estimate`] turns a workload into the
//! breakdown; every figure is a product of counts and sizes that docs/diagnose.md spells out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::families::Family;
use crate::config::CLIP_IMAGE;
use crate::plan::{Bucket, Plan};
use crate::prepare::entry_owner;
use crate::scan::{ScanReport, header};
use crate::store::catalog::EntryRow;
use crate::store::codec::Codec;
use crate::store::key::{entry_key, item_key};
use crate::store::shard::hash_file;
use crate::store::{ItemRow, Store};
use crate::{Config, ControlSize, Result};

/// Stored bytes of one Flux latent (16×128×128 = 262,144 values) in each codec, as
/// `larder bench-prepare` measured them on latent-like values (docs/benchmarks.md). A
/// compressed codec's size depends on the data; these are the measured sizes.
pub const MEASURED_LATENT_BYTES: &[(&str, u64)] = &[
    ("f32", 1_048_576),
    ("f16", 524_288),
    ("bf16", 524_288),
    ("fp8_e4m3", 262_148),
    ("fp8_e5m2", 262_148),
    ("int8", 262_272),
    ("int8+zstd:3", 139_091),
    ("bf16+zstd:3", 288_470),
    ("fp8_e4m3+lz4", 155_516),
];
/// Values of the latent [`MEASURED_LATENT_BYTES`] was measured on.
const MEASURED_LATENT_VALUES: u64 = 16 * 128 * 128;

/// Private memory of a DataLoader worker process before it holds any data: a Python
/// interpreter that has imported torch (CPU build). Measured here with torch 2.15: 290 MB of
/// anonymous memory per worker (docs/benchmarks.md, `larder bench-load`).
pub const TORCH_WORKER_BYTES: u64 = 290_000_000;

/// Memory of one AI Toolkit `FileItemDTO` in a worker, without its path and caption: the
/// object and the `__dict__` of the 101 attributes its `__init__` and those of its 12 mixins
/// set (toolkit/data_transfer_object/data_loader.py, toolkit/dataloader_mixins.py), with its
/// eight geometry ints and two empty lists. Measured with CPython 3.11 and tracemalloc over
/// 10,000 unpickled copies of such an object: 3,760 bytes each.
pub const FILE_ITEM_BYTES: u64 = 3_760;

/// CPython's header of a compact ASCII `str` (`sys.getsizeof("")`); the path and the caption
/// of a file item each carry one on top of their bytes.
const PY_STR_BYTES: u64 = 49;

/// glibc's bookkeeping per heap allocation, counted for each string of the item table.
const MALLOC_OVERHEAD: u64 = 16;
/// Bytes of a shard's safetensors header per entry: the JSON of one tensor (its 32-hex-digit
/// item key and field name, dtype, shape and data offsets). The sample store's header holds
/// 88 entries in 9,784 bytes, 111 each; a plan's estimate counts them on top of the entries'
/// bytes, since every read now checks (and so maps) whole shard chunks, the header's among them.
const SHARD_HEADER_BYTES_PER_ENTRY: u64 = 112;

/// SQLite's default page cache per connection (`cache_size = -2000`, in KiB).
const SQLITE_CACHE_BYTES: u64 = 2_000 * 1024;

/// Bytes per value of `codec` for latent-like data: the measured size for compressed codecs,
/// the element size for the others.
pub fn latent_bytes_per_value(codec: Codec) -> f64 {
    let name = codec.name();
    match MEASURED_LATENT_BYTES.iter().find(|(n, _)| *n == name) {
        Some((_, bytes)) => *bytes as f64 / MEASURED_LATENT_VALUES as f64,
        None => codec.repr.element_size() as f64,
    }
}

/// Where a field's figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Read from a prepared store: exact.
    Store,
    /// Computed from the plan and the model family.
    Plan,
}

/// One field of the training data (pixels, latents, text embeddings, masks, controls).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldEstimate {
    /// The field, e.g. `"latent"` or `"control"`.
    pub name: String,
    /// Where the figures come from.
    pub origin: Origin,
    /// Distinct entries (a repeat shares its image's entry; a flip has its own).
    pub entries: u64,
    /// Bytes at rest: in the shards, and so in the page cache when the store is hot.
    pub stored_bytes: u64,
    /// Bytes once decoded into a batch.
    pub decoded_bytes: u64,
    /// Decoded bytes per pixel of an item's bucket, averaged over all items (a field some
    /// items lack, such as a mask, counts in proportion to the items that have it; 0 for
    /// per-caption fields).
    pub bytes_per_pixel: f64,
    /// Decoded bytes per caption, for text embeddings (0 for image fields).
    pub bytes_per_caption: f64,
    /// AI Toolkit keeps this field in the dataset object (`cache_latents` without
    /// `cache_latents_to_disk`), so each DataLoader worker holds its own copy.
    pub in_memory: bool,
}

/// What the estimate needs to know of a dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Workload {
    /// Items served per epoch (repeats and flips included).
    pub items: u64,
    /// Items per bucket.
    pub buckets: Vec<(Bucket, u64)>,
    /// Distinct captions.
    pub distinct_captions: u64,
    /// Bytes of the paths and captions the loader's item table holds, all items together.
    pub item_text_bytes: u64,
    /// Fields per item, as the loader's item table indexes them.
    pub field_columns: u64,
    /// Bytes of the store's catalog file, when there is a store.
    pub catalog_bytes: Option<u64>,
    /// Bytes of the store's shard files, headers included, when there is a store.
    pub shard_bytes: Option<u64>,
    /// The largest single image decode of a DataLoader worker: the source image as RGB (3
    /// bytes a pixel) and its bucket as a float32 tensor (12 bytes a pixel); 0 when every
    /// dataset caches latents, so workers read latents rather than decode images. From a
    /// store, whose catalog keeps buckets, the source is counted at its bucket's size (a
    /// lower bound).
    pub largest_decode_bytes: u64,
    /// The fields.
    pub fields: Vec<FieldEstimate>,
}

/// Settings of an estimate.
#[derive(Debug, Clone, Copy)]
pub struct EstimateOptions {
    /// The model family, when known.
    pub family: Option<&'static Family>,
    /// Items per batch.
    pub batch_size: u32,
    /// DataLoader worker processes, and larder reader threads.
    pub workers: u32,
    /// Batches each DataLoader worker prepares ahead (`prefetch_factor`, default 2).
    pub prefetch_factor: u32,
    /// Batches larder assembles ahead (its loader's `prefetch`).
    pub prefetch: u32,
    /// Codec of cached latents.
    pub latent_codec: Codec,
    /// Codec of cached text embeddings.
    pub embedding_codec: Codec,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        EstimateOptions {
            family: None,
            batch_size: 1,
            workers: 2,
            prefetch_factor: 2,
            prefetch: 4,
            latent_codec: Codec::BF16,
            embedding_codec: Codec::BF16,
        }
    }
}

/// A per-image field of the plan, accumulated over distinct entries.
#[derive(Default)]
struct Acc {
    /// Items that have the field.
    items: u64,
    entries: u64,
    stored: f64,
    decoded: u64,
    pixels: u64,
    in_memory: bool,
}

/// One field of a planned item, as [`Workload::from_plan`] counts it.
struct Planned {
    /// The estimate it adds to (`"control"` for every control field).
    name: &'static str,
    /// The field as prepare names it.
    field: String,
    /// What of the item its entry key names ([`entry_owner`]).
    owner: String,
    /// The source it is made from (its content id).
    source: String,
    /// Bytes stored.
    stored: f64,
    /// Bytes decoded into a batch.
    decoded: u64,
    /// Held in memory by AI Toolkit's loader (`cache_latents`).
    in_memory: bool,
}

impl Workload {
    /// The workload a config would produce: latents (for datasets that cache them, when the
    /// family is known) or pixels, masks, controls, inpaint and CLIP images as larder prepares them,
    /// and text embeddings for datasets with `cache_text_embeddings`.
    ///
    /// Entries are counted as prepare stores them: once per content-addressed key
    /// (`store::key::item_key` of the source file's BLAKE3 hash, the placement and the flip),
    /// so repeats, a second resolution that lands on the same crop, and identical images
    /// under other names or in other datasets all share one entry. Only files whose size
    /// another source file shares are read to hash them; a file of a unique size cannot
    /// have another's content.
    pub fn from_plan(
        config: &Config,
        scan: &ScanReport,
        plan: &Plan,
        options: &EstimateOptions,
    ) -> Workload {
        let ids = content_ids(scan, plan);
        let id = |p: &Path| -> String {
            ids.get(p)
                .cloned()
                .unwrap_or_else(|| p.to_string_lossy().into_owned())
        };
        let mut acc: BTreeMap<&'static str, Acc> = BTreeMap::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut captions: HashSet<&str> = HashSet::new();
        let mut text_captions: HashSet<&str> = HashSet::new();
        let mut buckets: BTreeMap<Bucket, u64> = BTreeMap::new();
        let mut item_text_bytes = 0u64;
        let mut max_fields = 1u64;
        let mut largest_decode = 0u64;
        for item in &plan.items {
            let cfg = &config.datasets[item.dataset];
            let img = &scan.datasets[item.dataset].images[item.image];
            *buckets.entry(item.placement.bucket).or_default() += 1;
            let caption = if img.caption.is_empty() {
                cfg.default_caption.as_deref().unwrap_or("")
            } else {
                img.caption.as_str()
            };
            captions.insert(caption);
            item_text_bytes += (img.path.as_os_str().len() + caption.len()) as u64;
            if cfg.cache.text_embeddings {
                text_captions.insert(caption);
                if cfg.caption_dropout_rate > 0.0 {
                    text_captions.insert("");
                }
            }
            let p = item.placement;
            let content = id(&img.path);
            let ikey = item_key(&content, &p, item.flip);
            let (w, h) = (p.bucket.width, p.bucket.height);
            let area = u64::from(w) * u64::from(h);
            // Without cached latents, an AI Toolkit worker opens the source image, converts it
            // to RGB (3 bytes a pixel at its own size) and turns the resized crop into a
            // float32 tensor (12 bytes a pixel of the bucket).
            if !(cfg.cache.latents || cfg.cache.latents_to_disk) {
                let source = u64::from(img.width) * u64::from(img.height);
                largest_decode = largest_decode.max(3 * source + 12 * area);
            }
            // The item's fields. Most follow the item's geometry (its key names all of it).
            let at_item = |name, field: &str, source: String, bytes: u64| Planned {
                name,
                field: field.to_owned(),
                owner: ikey.clone(),
                source,
                stored: bytes as f64,
                decoded: bytes,
                in_memory: false,
            };
            let mut fields: Vec<Planned> = Vec::new();
            match options
                .family
                .filter(|_| cfg.cache.latents || cfg.cache.latents_to_disk)
            {
                Some(family) => {
                    let values = family.latent_elements(w, h);
                    let bytes = values * options.latent_codec.repr.element_size() as u64;
                    fields.push(Planned {
                        stored: values as f64 * latent_bytes_per_value(options.latent_codec),
                        in_memory: cfg.cache.latents && !cfg.cache.latents_to_disk,
                        ..at_item("latent", "latent", content.clone(), bytes)
                    });
                }
                None => fields.push(at_item("pixels", "pixels", content.clone(), 3 * area)),
            }
            // alpha_mask takes priority over a mask file, as in prepare.
            let mask = if cfg.alpha_mask {
                Some(content.clone())
            } else {
                img.mask.as_deref().map(&id)
            };
            if let Some(source) = mask {
                fields.push(at_item("mask", "mask", source, area));
            }
            // Controls are numbered fields in the store (control.0, control.1, ...), at the
            // item's bucket, at 512x512, or at their own size (control_raw.N), which the
            // scan does not read: an edit pair's images are taken to be the same size.
            let control_area = match cfg.control_size {
                ControlSize::Item => area,
                ControlSize::Square512 => 512 * 512,
                ControlSize::Native => u64::from(img.width) * u64::from(img.height),
            };
            for (n, control) in img.controls.iter().enumerate() {
                if let Some(control) = control {
                    let field = cfg.control_size.field(n);
                    fields.push(Planned {
                        owner: entry_owner(&ikey, cfg.control_size, false, item.flip),
                        ..at_item("control", &field, id(control), 3 * control_area)
                    });
                }
            }
            if let Some(inpaint) = &img.inpaint {
                fields.push(at_item("inpaint", "inpaint", id(inpaint), 4 * area));
            }
            // The CLIP image squared to its shorter side, which prepare stores unless CLIP
            // embeddings replace it (`cache_clip_vision_to_disk`: their size is the encoder's,
            // unknown here). One whose header cannot be read is left out, as prepare leaves it.
            if let Some(clip) = img.clip_image.as_deref()
                && !cfg.cache.clip_vision_to_disk
                && let Ok((_, header)) = header::probe(clip)
            {
                let side = u64::from(header.width.min(header.height));
                fields.push(Planned {
                    owner: entry_owner(&ikey, ControlSize::Native, true, item.flip),
                    ..at_item(CLIP_IMAGE, CLIP_IMAGE, id(clip), 3 * side * side)
                });
            }
            for f in &fields {
                // prepare's entry key: what of the item the field depends on, the field and
                // the field's own source.
                let fresh = seen.insert(entry_key(&f.owner, &f.field, &f.source, "", "", ""));
                let a = acc.entry(f.name).or_default();
                a.items += 1;
                if fresh {
                    a.entries += 1;
                    a.stored += f.stored;
                    a.decoded += f.decoded;
                    a.pixels += area;
                    a.in_memory |= f.in_memory;
                }
            }
            max_fields = max_fields.max(fields.len() as u64);
        }
        let mut fields: Vec<FieldEstimate> = acc
            .into_iter()
            .map(|(name, a)| FieldEstimate {
                name: name.to_owned(),
                origin: Origin::Plan,
                entries: a.entries,
                stored_bytes: a.stored.round() as u64,
                decoded_bytes: a.decoded,
                bytes_per_pixel: a.decoded as f64 / a.pixels.max(1) as f64 * a.items as f64
                    / plan.items.len().max(1) as f64,
                bytes_per_caption: 0.0,
                in_memory: a.in_memory,
            })
            .collect();
        if let Some(family) = options.family
            && !text_captions.is_empty()
        {
            fields.push(text_field(family, &text_captions, options.embedding_codec));
            max_fields += 1;
        }
        Workload {
            items: plan.items.len() as u64,
            buckets: buckets.into_iter().collect(),
            distinct_captions: captions.len() as u64,
            item_text_bytes,
            field_columns: max_fields,
            catalog_bytes: None,
            shard_bytes: None,
            largest_decode_bytes: largest_decode,
            fields,
        }
    }

    /// The workload a prepared store serves: its items, buckets and every field's real sizes.
    pub fn from_store(store: &Store) -> Result<Workload> {
        let inspection = store.inspect()?;
        let items = store.items()?;
        // Bucket pixels of each field's distinct entries, to turn its decoded bytes into bytes
        // per pixel (a batch's size follows its bucket), and the items that have the field.
        let mut pixels: BTreeMap<String, (HashSet<&str>, u64, u64)> = BTreeMap::new();
        let mut buckets: BTreeMap<Bucket, u64> = BTreeMap::new();
        let mut captions = HashSet::new();
        let mut item_text_bytes = 0u64;
        let mut field_columns = 0u64;
        let mut largest_decode = 0u64;
        for item in &items {
            let bucket = Bucket {
                width: item.bucket_w,
                height: item.bucket_h,
            };
            *buckets.entry(bucket).or_default() += 1;
            if item.fields.contains_key("pixels") {
                // A clip's frames are all decoded before they are stored.
                let frames = item.frames.as_ref().map_or(1, Vec::len) as u64;
                let area = u64::from(item.bucket_w) * u64::from(item.bucket_h);
                largest_decode = largest_decode.max(15 * area * frames);
            }
            captions.insert(item.caption.as_str());
            item_text_bytes += (item.path.len() + item.caption.len()) as u64;
            field_columns = field_columns.max(item.fields.len() as u64);
            for (field, key) in &item.fields {
                let family = field.split('.').next().unwrap_or(field).to_owned();
                let (keys, sum, with) = pixels.entry(family).or_default();
                *with += 1;
                if keys.insert(key.as_str()) {
                    *sum += u64::from(item.bucket_w) * u64::from(item.bucket_h);
                }
            }
        }
        let fields = inspection
            .fields
            .iter()
            .map(|(name, stats)| {
                let (area, with) = pixels.get(name).map_or((0, 0), |p| (p.1, p.2));
                let coverage = with as f64 / items.len().max(1) as f64;
                FieldEstimate {
                    name: name.clone(),
                    origin: Origin::Store,
                    entries: stats.entries,
                    stored_bytes: stats.stored_bytes,
                    decoded_bytes: stats.raw_bytes,
                    bytes_per_pixel: stats.raw_bytes as f64 / area.max(1) as f64 * coverage,
                    bytes_per_caption: 0.0,
                    in_memory: false,
                }
            })
            .collect();
        let catalog_bytes = std::fs::metadata(store.root().join(crate::store::CATALOG_FILE))
            .map(|m| m.len())
            .ok();
        Ok(Workload {
            items: inspection.items,
            buckets: buckets.into_iter().collect(),
            distinct_captions: captions.len() as u64,
            item_text_bytes,
            field_columns,
            catalog_bytes,
            shard_bytes: Some(inspection.shard_bytes),
            largest_decode_bytes: largest_decode,
            fields,
        })
    }

    /// Bytes of the largest batch of `batch_size` items, decoded, over every bucket.
    pub fn largest_batch_bytes(&self, batch_size: u32) -> u64 {
        self.largest_batches_bytes(batch_size, 1)
    }

    /// Bytes of the `count` largest batches of an epoch together, decoded. A bucket's last
    /// batch is filled up to the batch size (the loader's default), so every batch has
    /// `batch_size` items, and a bucket of n items makes ⌈n / batch_size⌉ batches.
    pub fn largest_batches_bytes(&self, batch_size: u32, count: u64) -> u64 {
        let per_pixel: f64 = self.fields.iter().map(|f| f.bytes_per_pixel).sum();
        let per_caption: f64 = self.fields.iter().map(|f| f.bytes_per_caption).sum();
        let mut batches: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .map(|(b, n)| {
                let area = f64::from(b.width) * f64::from(b.height);
                let bytes = (f64::from(batch_size) * (area * per_pixel + per_caption)).round();
                (bytes as u64, n.div_ceil(u64::from(batch_size.max(1))))
            })
            .collect();
        batches.sort_unstable_by(|a, b| b.cmp(a));
        let (mut left, mut total) = (count, 0u64);
        for (bytes, n) in batches {
            let take = n.min(left);
            total += take * bytes;
            left -= take;
            if left == 0 {
                break;
            }
        }
        total
    }
}

/// The identity each source file of the plan is keyed by: its BLAKE3 content hash (the one
/// prepare keys entries by) where another source file has the same size, else its path. A
/// file of a unique size cannot share its content, so only files of a shared size are read;
/// one that cannot be read keeps its path, and is counted as its own entry.
fn content_ids(scan: &ScanReport, plan: &Plan) -> HashMap<PathBuf, String> {
    let mut sources: HashSet<&Path> = HashSet::new();
    for item in &plan.items {
        let img = &scan.datasets[item.dataset].images[item.image];
        sources.insert(&img.path);
        sources.extend(img.mask.as_deref());
        sources.extend(img.controls.iter().flatten().map(PathBuf::as_path));
        sources.extend(img.inpaint.as_deref());
        sources.extend(img.clip_image.as_deref());
    }
    let mut by_size: HashMap<u64, Vec<&Path>> = HashMap::new();
    for path in sources {
        if let Ok(meta) = std::fs::metadata(path) {
            by_size.entry(meta.len()).or_default().push(path);
        }
    }
    let shared: Vec<&Path> = by_size
        .into_values()
        .filter(|paths| paths.len() > 1)
        .flatten()
        .collect();
    shared
        .par_iter()
        .filter_map(|p| hash_file(p).ok().map(|(_, hash)| (p.to_path_buf(), hash)))
        .collect()
}

/// Text embeddings of `captions` for `family`. Tokens of a variable-length encoder are
/// estimated as one per four bytes of caption (BPE tokenizers average about four characters
/// of English per token).
fn text_field(family: &Family, captions: &HashSet<&str>, codec: Codec) -> FieldEstimate {
    let per_value = codec.repr.element_size() as u64;
    let decoded: u64 = captions
        .iter()
        .map(|c| family.text_elements(c.len().div_ceil(4) as u32) * per_value)
        .sum();
    FieldEstimate {
        name: "text_embedding".into(),
        origin: Origin::Plan,
        entries: captions.len() as u64,
        // No compression ratio is measured for embeddings: they count at their decoded size.
        stored_bytes: decoded,
        decoded_bytes: decoded,
        bytes_per_pixel: 0.0,
        bytes_per_caption: decoded as f64 / captions.len().max(1) as f64,
        in_memory: false,
    }
}

/// What a PyTorch DataLoader with worker processes holds, the way AI Toolkit uses it.
///
/// A worker does not hold the model: AI Toolkit's dataset drops it when it is pickled for a
/// spawned worker (`AiToolkitDataset.__getstate__` sets `sd` to `None`; the model is only
/// needed for caching, which runs in the main process first), and a forked worker shares the
/// parent's pages until they are written. What each worker does hold is its own interpreter,
/// its own copy of the dataset object, and the buffers of the images it decodes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DataLoaderEstimate {
    /// Worker processes.
    pub workers: u32,
    /// Python and torch in each worker ([`TORCH_WORKER_BYTES`]).
    pub runtime_per_worker: u64,
    /// The dataset object each worker holds: one `FileItemDTO` per item of the file list
    /// (repeats, flips and resolutions each have their own, as AI Toolkit builds the list),
    /// [`FILE_ITEM_BYTES`] each with its path and caption strings. A spawned worker unpickles
    /// its own copy; a forked one writes the objects' reference counts as it reads them, which
    /// copies the pages they lie on (pytorch issue 13246).
    pub dataset_state_per_worker: u64,
    /// The largest image decode of a worker ([`Workload::largest_decode_bytes`]).
    pub decode_per_worker: u64,
    /// In-memory caches (`cache_latents` without `cache_latents_to_disk`), copied into every
    /// worker: reference counting touches every cached object (pytorch issue 13246).
    pub caches_per_worker: u64,
    /// `prefetch_factor` batches, decoded, per worker.
    pub batches_per_worker: u64,
    /// Everything a worker holds.
    pub per_worker: u64,
    /// The main process's copy of the in-memory caches.
    pub main_caches: u64,
    /// All workers and the main process's caches; the page cache of disk caches comes on top.
    pub total: u64,
}

/// What larder's loader holds: one process, reader threads, one mapped store.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LarderEstimate {
    /// Reader threads.
    pub threads: u32,
    /// The item table (one row per item with its path, caption and field entries) and the
    /// entry table (where each entry lies).
    pub item_table: u64,
    /// Batch buffers: the prefetched batches (reader threads assemble only batches that have
    /// a prefetch slot) and the one in use; buffers are reused, so an epoch leaves the pool
    /// holding about the `prefetch + 1` largest batches.
    pub batch_buffers: u64,
    /// SQLite's page cache of the two catalog connections.
    pub catalog_cache: u64,
    /// Private memory: the three above.
    pub private: u64,
    /// The store's shards, mapped: page cache, counted in the process's RSS once read, and
    /// shared by every process on the machine. Every read checks the 1 MiB chunks it touches
    /// against the catalog's BLAKE3 checksums the first time, hashing each chunk whole, and a
    /// shard's header chunk when the shard is first mapped; so a whole epoch leaves every
    /// page of every shard file resident, headers included: the shard files' size (from a
    /// plan: the entries' bytes and their header JSON).
    pub mapped_store: u64,
    /// Private plus mapped: the RSS the loader adds after serving a whole epoch.
    pub total: u64,
}

/// The memory breakdown.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// The family the figures assume.
    pub family: Option<String>,
    /// The batch size.
    pub batch_size: u32,
    /// The workload.
    pub workload: Workload,
    /// Bytes of the model's weights (bf16/fp16), 0 without a family.
    pub model_bytes: u64,
    /// Bytes at rest of every field: what the page cache must hold to keep the store hot.
    pub store_bytes: u64,
    /// The largest batch, decoded.
    pub largest_batch_bytes: u64,
    /// A PyTorch DataLoader with `workers` processes.
    pub dataloader: DataLoaderEstimate,
    /// larder's loader with `workers` threads.
    pub larder: LarderEstimate,
}

/// The breakdown of `workload` under `options`.
pub fn estimate(workload: Workload, options: &EstimateOptions) -> Estimate {
    let model_bytes = options.family.map_or(0, Family::model_bytes);
    let store_bytes = workload.fields.iter().map(|f| f.stored_bytes).sum();
    let batch = workload.largest_batch_bytes(options.batch_size);
    let in_memory: u64 = workload
        .fields
        .iter()
        .filter(|f| f.in_memory)
        .map(|f| f.decoded_bytes)
        .sum();
    let workers = options.workers;
    let per_worker_batches = u64::from(options.prefetch_factor) * batch;
    let dataset_state =
        workload.items * (FILE_ITEM_BYTES + 2 * PY_STR_BYTES) + workload.item_text_bytes;
    let decode = workload.largest_decode_bytes;
    let per_worker = if workers == 0 {
        0
    } else {
        TORCH_WORKER_BYTES + dataset_state + decode + in_memory + per_worker_batches
    };
    let dataloader = DataLoaderEstimate {
        workers,
        runtime_per_worker: TORCH_WORKER_BYTES,
        dataset_state_per_worker: dataset_state,
        decode_per_worker: decode,
        caches_per_worker: in_memory,
        batches_per_worker: per_worker_batches,
        per_worker,
        main_caches: in_memory,
        total: u64::from(workers) * per_worker + in_memory,
    };
    let threads = workers.max(1);
    let row = std::mem::size_of::<ItemRow>() as u64 + 2 * MALLOC_OVERHEAD;
    // Per item: the row and its two strings, one u32 entry position per field column, its id
    // in the bucket lists and in the epoch's batch lists.
    let entries: u64 = workload.fields.iter().map(|f| f.entries).sum();
    // Per entry: its row (shard, offset, codec, shape) and its slot in the id → position map.
    let entry_row = std::mem::size_of::<EntryRow>() as u64 + 4;
    let item_table = workload.items * (row + 4 * workload.field_columns + 4 + 4)
        + workload.item_text_bytes
        + entries * entry_row;
    let batch_buffers =
        workload.largest_batches_bytes(options.batch_size, u64::from(options.prefetch) + 1);
    // Two connections read the catalog while the loader opens: the store's, and one that reads
    // the item table in parallel.
    let catalog_cache = 2 * workload
        .catalog_bytes
        .map_or(0, |b| b.min(SQLITE_CACHE_BYTES));
    let private = item_table + batch_buffers + catalog_cache;
    let mapped_store = workload
        .shard_bytes
        .unwrap_or(store_bytes + entries * SHARD_HEADER_BYTES_PER_ENTRY);
    let larder = LarderEstimate {
        threads,
        item_table,
        batch_buffers,
        catalog_cache,
        private,
        mapped_store,
        total: private + mapped_store,
    };
    Estimate {
        family: options.family.map(|f| f.name.to_owned()),
        batch_size: options.batch_size,
        workload,
        model_bytes,
        store_bytes,
        largest_batch_bytes: batch,
        dataloader,
        larder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PrepareOptions, scan};

    /// Prepares `config` into `root` and checks that the store holds `field` as estimated.
    fn assert_prepare_stores(config: &Config, root: &Path, field: &FieldEstimate) {
        crate::prepare(config, root, &PrepareOptions::default()).expect("prepare");
        let inspection = Store::open(root).expect("open").inspect().expect("inspect");
        let stored = &inspection.fields[&field.name];
        assert_eq!(stored.entries, field.entries, "{}", field.name);
        assert_eq!(stored.raw_bytes, field.decoded_bytes, "{}", field.name);
    }

    #[test]
    fn store_estimate_counted_identical_images_twice() {
        // Regression: diagnose keyed entries by path, so the same picture under two names (or
        // in two datasets) counted twice, while prepare stores it once by its content key.
        let tmp = tempfile::tempdir().expect("tmp");
        let imgs = tmp.path().join("imgs");
        std::fs::create_dir_all(&imgs).expect("mkdir");
        larder_synth::write_image(&imgs.join("a.png"), 64, 64, 1).expect("a");
        std::fs::copy(imgs.join("a.png"), imgs.join("a_copy.png")).expect("copy");
        larder_synth::write_image(&imgs.join("c.png"), 64, 64, 2).expect("c");
        // Two datasets over the same folder: 6 items, 2 distinct pictures.
        let yaml = format!(
            "datasets:\n  - folder_path: {0}\n    resolution: 64\n  - folder_path: {0}\n    resolution: 64\n",
            imgs.display()
        );
        let config = Config::from_yaml(&yaml, &tmp.path().join("c.yaml")).expect("config");
        let scanned = scan(&config).expect("scan");
        let plan = Plan::new(&config, &scanned).expect("plan");
        let options = EstimateOptions::default();
        let w = Workload::from_plan(&config, &scanned, &plan, &options);
        assert_eq!(w.items, 6);
        let pixels = &w.fields[0];
        assert_eq!(pixels.name, "pixels");
        assert_eq!(pixels.entries, 2);
        assert_eq!(pixels.stored_bytes, 2 * 3 * 64 * 64);
        // The batch still reads one 64x64 RGB image per item.
        assert_eq!(pixels.bytes_per_pixel, 3.0);
        // prepare agrees: two pixel entries, the same bytes.
        assert_prepare_stores(&config, &tmp.path().join("store"), pixels);
        // Without the copy, the sizes differ and nothing is read to hash: still 2 entries.
        std::fs::remove_file(imgs.join("a_copy.png")).expect("rm");
        let scanned = scan(&config).expect("scan");
        let plan = Plan::new(&config, &scanned).expect("plan");
        let w = Workload::from_plan(&config, &scanned, &plan, &options);
        assert_eq!((w.items, w.fields[0].entries), (4, 2));
    }

    #[test]
    fn clip_images_are_counted_squared_to_their_shorter_side_as_prepare_stores_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (imgs, refs) = (tmp.path().join("imgs"), tmp.path().join("refs"));
        std::fs::create_dir_all(&imgs).expect("mkdir");
        std::fs::create_dir_all(&refs).expect("mkdir");
        for (i, (w, h)) in [(90, 40), (30, 70), (50, 50)].into_iter().enumerate() {
            larder_synth::write_image(&imgs.join(format!("{i}.png")), 64, 64, i as u64)
                .expect("image");
            larder_synth::write_image(&refs.join(format!("{i}.png")), w, h, 9 + i as u64)
                .expect("clip image");
        }
        // The third image has no CLIP image: nothing is counted for it. Each image is an item
        // at two resolutions, whose CLIP image is one entry.
        std::fs::remove_file(refs.join("2.png")).expect("rm");
        let workload = |extra: &str| {
            let yaml = format!(
                "datasets:\n  - folder_path: {}\n    resolution: [64, 32]\n    clip_image_path: {}\n{extra}",
                imgs.display(),
                refs.display()
            );
            let config = Config::from_yaml(&yaml, &tmp.path().join("c.yaml")).expect("config");
            let scanned = scan(&config).expect("scan");
            let plan = Plan::new(&config, &scanned).expect("plan");
            let w = Workload::from_plan(&config, &scanned, &plan, &EstimateOptions::default());
            (config, w)
        };
        let (config, w) = workload("");
        let clip = w
            .fields
            .iter()
            .find(|f| f.name == CLIP_IMAGE)
            .expect("clip_image");
        assert_eq!(clip.entries, 2);
        assert_eq!(clip.stored_bytes, 3 * (40 * 40 + 30 * 30));
        assert_prepare_stores(&config, &tmp.path().join("store"), clip);
        // With cached CLIP embeddings the store holds those instead.
        let (_, w) = workload("    cache_clip_vision_to_disk: true\n");
        assert!(w.fields.iter().all(|f| f.name != CLIP_IMAGE));
    }

    #[test]
    fn only_files_of_a_shared_size_are_hashed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let imgs = tmp.path().join("imgs");
        std::fs::create_dir_all(&imgs).expect("mkdir");
        larder_synth::write_image(&imgs.join("a.png"), 64, 64, 1).expect("a");
        std::fs::copy(imgs.join("a.png"), imgs.join("b.png")).expect("copy");
        larder_synth::write_image(&imgs.join("big.png"), 96, 96, 3).expect("big");
        let config = Config::for_folder(&imgs);
        let scanned = scan(&config).expect("scan");
        let plan = Plan::new(&config, &scanned).expect("plan");
        let ids = content_ids(&scanned, &plan);
        let (_, hash) = hash_file(&imgs.join("a.png")).expect("hash");
        assert_eq!(ids.get(&imgs.join("a.png")), Some(&hash));
        assert_eq!(ids.get(&imgs.join("b.png")), Some(&hash));
        assert_eq!(ids.get(&imgs.join("big.png")), None);
    }
}
