//! `larder prepare`: turn a config into a store.
//!
//! The work is a pipeline: the scan and plan say what items exist; content hashes and keys say
//! which entries the store lacks; a pool of threads decodes, resizes and crops those, grouped by
//! bucket; one writer packs the results into shards and commits each shard with its entries in
//! one catalog transaction; the item list is committed last. Killing the process at any point
//! loses at most the shard being built: the next run finds every committed entry by its key and
//! does only the rest.

mod aitk;
mod encoded;
pub(crate) mod merge;
mod part;
mod sources;
mod texts;

pub use aitk::{AitkImportOptions, AitkImportReport, ImportCounts, ImportMismatch, import_aitk};
pub use merge::{MergeReport, merge_parts};
pub use part::{PARTS_DIR, Part};

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::Sender;
use rayon::prelude::*;
use rusqlite::params;

use crate::config::{Config, DatasetConfig};
use crate::encode::{ClipPreprocess, Encoders};
use crate::image::{self, Convert, PIPELINE};
use crate::plan::{Flip, Plan, PlannedItem};
use crate::scan::{Finding, FindingKind, ScanOptions, ScannedImage};
use crate::store::catalog::Catalog;
use crate::store::codec::{self, Codec, Values};
use crate::store::key::{entry_key, item_key};
use crate::store::shard::{PendingTensor, ShardBuilder};
use crate::store::{CATALOG_FILE, SHARD_DIR, TMP_DIR};
use crate::{Error, Result};

/// Settings of a prepare run.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Target size of a shard in bytes; a shard closes once its data reaches this size.
    pub shard_bytes: u64,
    /// Codec of the `pixels`, `mask`, `control.N` and `inpaint` fields (a u8 codec).
    pub image_codec: Codec,
    /// Show a progress bar on standard error when it is a terminal.
    pub progress: bool,
    /// Store the `pixels` field. Off when a trainer reads only latents: the images are still
    /// decoded for the encoders, and masks and controls are still stored.
    pub store_pixels: bool,
    /// Codec of image encoders' outputs (latents, CLIP embeddings): bf16 by default.
    pub latent_codec: Codec,
    /// Codec of text encoders' outputs: bf16 by default.
    pub text_codec: Codec,
    /// Images or captions per encoder call.
    pub encode_batch_size: usize,
    /// Caption variants precomputed per item when its dataset's caption transforms are random
    /// (shuffle_tokens, token_dropout_rate, random_triggers).
    pub caption_variants: usize,
    /// CLIP encoders' preprocessing.
    pub clip: ClipPreprocess,
    /// This run's part of a distributed prepare: its items only, written to
    /// `<out>/parts/<i>-of-<N>` for `larder merge` (see docs/distributed.md). `None` (or
    /// `0/1`) prepares everything into `out`.
    pub part: Option<Part>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            shard_bytes: 256 << 20,
            image_codec: Codec::RAW_U8,
            progress: false,
            store_pixels: true,
            latent_codec: Codec::BF16,
            text_codec: Codec::BF16,
            encode_batch_size: 8,
            caption_variants: 4,
            clip: ClipPreprocess::default(),
            part: None,
        }
    }
}

/// What a prepare run did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PrepareReport {
    /// Items in the store's item list.
    pub items: usize,
    /// Distinct entries the items reference.
    pub entries: usize,
    /// Entries computed in this run.
    pub entries_computed: usize,
    /// Entries found in the store already.
    pub entries_reused: usize,
    /// Distinct captions (with their variants and the empty caption) over all text encoders.
    pub captions: usize,
    /// Captions passed to a text encoder in this run (the others were stored already).
    pub captions_encoded: usize,
    /// Source files read and hashed in this run (the rest were known by size and mtime).
    pub sources_hashed: usize,
    /// Shards written in this run.
    pub shards_written: usize,
    /// Bytes of shard files written in this run.
    pub bytes_written: u64,
    /// Problems found: from the scan, the plan, and images that failed to decode.
    pub findings: Vec<Finding>,
    /// What the run could not do as the config asks (also logged as warnings): a dataset that
    /// asks for cached latents or text embeddings when no such encoder was given.
    pub warnings: Vec<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One field of an item: where its pixels come from and how they are converted.
#[derive(Debug, Clone)]
struct FieldSource {
    field: String,
    source: PathBuf,
    convert: Convert,
    /// Mask mapping: (invert, min_value).
    mask: Option<(bool, f64)>,
}

/// A field to store, with its entry key.
#[derive(Debug, Clone)]
struct FieldJob {
    what: FieldSource,
    key: String,
}

/// An item as it will be recorded, with its fields.
#[derive(Debug)]
struct ItemPlan<'a> {
    planned: PlannedItem,
    /// Index of the item in the whole plan (the merged store's order, for a part).
    plan_index: usize,
    image: &'a ScannedImage,
    content_hash: String,
    item_key: String,
    fields: Vec<FieldJob>,
    /// Fields filled by image and CLIP encoders: (field, entry key).
    encoded: Vec<(String, String)>,
}

/// The fields a dataset asks for, with their sources, for one image.
fn field_sources(cfg: &DatasetConfig, img: &ScannedImage) -> Vec<FieldSource> {
    let field = |field: String, source: &PathBuf, convert, mask| FieldSource {
        field,
        source: source.clone(),
        convert,
        mask,
    };
    let mut out = vec![field("pixels".into(), &img.path, Convert::Rgb, None)];
    let mask_map = Some((cfg.invert_mask, cfg.mask_min_value));
    // alpha_mask takes priority over mask_path, as in AI Toolkit.
    if cfg.alpha_mask {
        out.push(field("mask".into(), &img.path, Convert::Alpha, mask_map));
    } else if let Some(m) = &img.mask {
        out.push(field("mask".into(), m, Convert::Luma, mask_map));
    }
    for (n, c) in img.controls.iter().enumerate() {
        if let Some(c) = c {
            out.push(field(
                format!("control.{n}"),
                c,
                Convert::RgbOver(cfg.control_transparent_color),
                None,
            ));
        }
    }
    if let Some(p) = &img.inpaint {
        out.push(field("inpaint".into(), p, Convert::Rgba, None));
    }
    out
}

fn convert_params(convert: Convert, mask: Option<(bool, f64)>) -> String {
    let base = match convert {
        Convert::Rgb => "rgb".to_owned(),
        Convert::RgbOver(c) => format!("rgb-over:{},{},{}", c[0], c[1], c[2]),
        Convert::Rgba => "rgba".to_owned(),
        Convert::Luma => "luma601".to_owned(),
        Convert::Alpha => "alpha".to_owned(),
    };
    match mask {
        Some((invert, min)) => format!("{base};invert={invert};min={min}"),
        None => base,
    }
}

/// A computed entry on its way to the writer, or the reason it failed.
enum Produced {
    Entry {
        key: String,
        tensor: PendingTensor,
        meta: Option<String>,
        encoded: EncodedInfo,
    },
    Failed {
        key: String,
        finding: Finding,
    },
}

/// An entry in the shard being built, waiting for the shard's commit.
struct Pending {
    key: String,
    tensor: String,
    info: EncodedInfo,
}

/// What the catalog records of an entry besides its location.
struct EncodedInfo {
    dtype: &'static str,
    shape: Vec<usize>,
    codec: String,
    raw_len: usize,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

/// Prepares `config` into the store directory `out` (for a part of a distributed prepare,
/// `options.part`, into `out/parts/<i>-of-<N>`).
pub fn prepare(config: &Config, out: &Path, options: &PrepareOptions) -> Result<PrepareReport> {
    prepare_with(config, out, options, &mut Encoders::default())
}

/// Prepares `config` into the store directory `out`, running `encoders` over the items:
/// latents and CLIP embeddings per item, text embeddings per distinct caption (see
/// docs/encoders.md).
///
/// An encoder error ([`Error::Encoder`]) ends the run with the field and item named; every
/// entry computed before it is kept, so running again computes only the rest.
pub fn prepare_with(
    config: &Config,
    out: &Path,
    options: &PrepareOptions,
    encoders: &mut Encoders,
) -> Result<PrepareReport> {
    prepare_inner(config, out, options, encoders, None)
}

/// Says, once per kind, which datasets ask for a cache (`cache_latents(_to_disk)`,
/// `cache_text_embeddings`) that this run cannot fill because no encoder of that kind was
/// given: AI Toolkit computes those with its model, and a store without them serves pixels.
fn uncached_warnings(config: &Config, encoders: &Encoders) -> Vec<String> {
    let asking = |wants: fn(&crate::config::CacheOptions) -> bool| -> Vec<String> {
        config
            .datasets
            .iter()
            .filter(|d| wants(&d.cache))
            .map(|d| d.source.path().display().to_string())
            .collect()
    };
    let mut warnings = Vec::new();
    let latents = asking(|c| c.latents || c.latents_to_disk);
    if !latents.is_empty() && encoders.image.is_empty() {
        warnings.push(format!(
            "{} asks for cached latents (cache_latents / cache_latents_to_disk), but no image encoder was given: the store holds pixels only. Give larder.prepare your VAE as `image_encoders` (docs/encoders.md), or bring AI Toolkit's caches with `larder import-aitk`",
            latents.join(", ")
        ));
    }
    let texts = asking(|c| c.text_embeddings);
    if !texts.is_empty() && encoders.text.is_empty() {
        warnings.push(format!(
            "{} asks for cached text embeddings (cache_text_embeddings), but no text encoder was given: the store holds captions only. Give larder.prepare your text encoders as `text_encoders` (docs/encoders.md), or bring AI Toolkit's caches with `larder import-aitk`",
            texts.join(", ")
        ));
    }
    warnings
}

/// [`prepare_with`], sending the file name of every shard to `written` once it is committed
/// (for uploading while the run goes on).
pub(crate) fn prepare_inner(
    config: &Config,
    out: &Path,
    options: &PrepareOptions,
    encoders: &mut Encoders,
    written: Option<&Sender<String>>,
) -> Result<PrepareReport> {
    let started = Instant::now();
    encoders.validate()?;
    for (name, codec) in [
        ("latent_codec", options.latent_codec),
        ("text_codec", options.text_codec),
    ] {
        if codec.repr == codec::Repr::U8 {
            return Err(Error::InvalidArgument {
                name,
                message: format!(
                    "encoder outputs are floats; {} stores bytes (use bf16, f16, f32, fp8, int8, optionally +zstd)",
                    codec.name()
                ),
            });
        }
    }
    if options.encode_batch_size == 0 {
        return Err(Error::InvalidArgument {
            name: "encode_batch_size",
            message: "must be at least 1".into(),
        });
    }
    if options.image_codec.repr != codec::Repr::U8 {
        return Err(Error::InvalidArgument {
            name: "image_codec",
            message: format!(
                "image fields are u8; {} is not a u8 codec (use u8, u8+zstd or u8+lz4)",
                options.image_codec.name()
            ),
        });
    }
    let scan = crate::scan::scan_with(
        config,
        &ScanOptions {
            progress: options.progress,
        },
    )?;
    let plan = Plan::new(config, &scan)?;
    let mut report = PrepareReport {
        warnings: uncached_warnings(config, encoders),
        ..PrepareReport::default()
    };
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    report.findings.extend(scan.findings.iter().cloned());
    report.findings.extend(plan.findings.iter().cloned());

    // A part prepares its share of the plan into its own folder; the whole, everything here.
    let part = match options.part {
        Some(p) => Some(Part::new(p.index, p.count)?).filter(|p| !p.is_whole()),
        None => None,
    };
    let selected: Vec<usize> = match &part {
        Some(p) => p.select(&plan),
        None => (0..plan.items.len()).collect(),
    };
    let part_out = part.map(|p| p.dir(out));
    let out = part_out.as_deref().unwrap_or(out);
    let (_lock, catalog) = open_for_writing(out)?;

    // Content hashes of every source file the items need, and a dataset each belongs to (for
    // the finding if it cannot be read).
    let mut dataset_of: HashMap<PathBuf, usize> = HashMap::new();
    for item in selected.iter().map(|&k| &plan.items[k]) {
        let img = &scan.datasets[item.dataset].images[item.image];
        for f in field_sources(&config.datasets[item.dataset], img) {
            dataset_of.entry(f.source).or_insert(item.dataset);
        }
    }
    let mut all_sources: Vec<PathBuf> = dataset_of.keys().cloned().collect();
    all_sources.sort();
    let hashes = sources::hash_sources(&catalog, &all_sources)?;
    report.sources_hashed = hashes.hashed;
    let unreadable: HashSet<&Path> = hashes.failures.iter().map(|(p, _)| p.as_path()).collect();
    for (p, e) in &hashes.failures {
        report.findings.push(Finding::new(
            dataset_of.get(p).copied().unwrap_or(0),
            FindingKind::Unreadable,
            p,
            format!("cannot read while hashing: {e}"),
        ));
    }

    let codec_name = options.image_codec.name();
    let mut items: Vec<ItemPlan<'_>> = Vec::with_capacity(selected.len());
    for (plan_index, planned) in selected.iter().map(|&k| (k, &plan.items[k])) {
        let cfg = &config.datasets[planned.dataset];
        let img = &scan.datasets[planned.dataset].images[planned.image];
        let sources = field_sources(cfg, img);
        if sources
            .iter()
            .any(|f| unreadable.contains(f.source.as_path()))
        {
            continue;
        }
        let Some(content_hash) = hashes.hashes.get(&img.path).cloned() else {
            continue;
        };
        let ikey = item_key(&content_hash, &planned.placement, planned.flip);
        let encoded = encoded_fields(encoders, options, &ikey, &content_hash, planned.flip);
        let fields = sources
            .into_iter()
            .filter(|what| options.store_pixels || what.field != "pixels")
            .map(|what| {
                let params = convert_params(what.convert, what.mask);
                let src_hash = hashes
                    .hashes
                    .get(&what.source)
                    .map(String::as_str)
                    .unwrap_or_default();
                let key = entry_key(&ikey, &what.field, src_hash, &params, &codec_name, PIPELINE);
                FieldJob { what, key }
            })
            .collect();
        items.push(ItemPlan {
            planned: *planned,
            plan_index,
            image: img,
            content_hash,
            item_key: ikey,
            fields,
            encoded,
        });
    }

    // The entries to compute: referenced, not stored, each once; grouped by bucket so that a
    // batch reads from few shards.
    let stored = catalog.entry_keys()?;
    let mut seen: HashSet<&str> = HashSet::new();
    let mut todo: Vec<(&ItemPlan<'_>, &FieldJob)> = Vec::new();
    for item in &items {
        for f in &item.fields {
            if seen.insert(&f.key) && !stored.contains(&f.key) {
                todo.push((item, f));
            }
        }
    }
    todo.sort_by_key(|(item, f)| {
        (
            item.planned.placement.bucket,
            item.image.path.as_path(),
            f.what.field.as_str(),
        )
    });

    let (mut catalog, mut done) = run_pipeline(catalog, out, options, &todo, written)?;

    // Image and CLIP encoders, one after the other, each over the entries it lacks.
    let mut encoder_rows: Vec<EncoderRow> = Vec::new();
    let mut to_compute = todo.len();
    let image_count = encoders.image.len();
    for (e, (name, encoder)) in encoders
        .image
        .iter_mut()
        .chain(encoders.clip.iter_mut())
        .enumerate()
    {
        let identity = encoder.identity();
        let input = if e < image_count {
            encoded::Input::Bucket(encoder.pixel_format())
        } else {
            encoded::Input::Clip(options.clip)
        };
        let mut jobs: Vec<encoded::Job<'_, '_>> = Vec::new();
        for item in &items {
            let key = &item.encoded[e].1;
            if seen.insert(key) && !stored.contains(key) {
                jobs.push((item, key.clone()));
            }
        }
        to_compute += jobs.len();
        jobs.sort_by_key(|(item, _)| (item.planned.placement.bucket, item.image.path.as_path()));
        let bar = crate::progress::bar(
            options.progress,
            jobs.len(),
            1,
            &format!("{{bar:30}} {{pos}}/{{len}} {name} {{per_sec}} ETA {{eta}}"),
        );
        let (c, w) = with_writer(catalog, out, options, written, |tx| {
            encoded::encode_images(tx, encoder.as_mut(), name, input, &jobs, options, &bar)
        })?;
        bar.finish_and_clear();
        catalog = c;
        done.absorb(w);
        let params = match input {
            encoded::Input::Bucket(format) => {
                serde_json::json!({"kind": "image", "pixel_format": format})
            }
            encoded::Input::Clip(clip) => serde_json::json!({"kind": "clip", "clip": clip}),
        };
        encoder_rows.push(EncoderRow::new(
            name,
            &identity,
            options.latent_codec,
            params,
        ));
    }
    report.entries = seen.len();
    report.entries_reused = seen.len() - to_compute;

    // Items whose entries failed are left out, with the finding recorded.
    let failed_keys: HashSet<String> = done.failed.iter().map(|(k, _)| k.clone()).collect();
    report
        .findings
        .extend(done.failed.drain(..).map(|(_, finding)| finding));
    let kept: Vec<&ItemPlan<'_>> = items
        .iter()
        .filter(|item| {
            item.fields.iter().all(|f| !failed_keys.contains(&f.key))
                && item.encoded.iter().all(|(_, k)| !failed_keys.contains(k))
        })
        .collect();

    // Text encoders over the kept items' captions: each distinct string once.
    let mut text_plans: Vec<texts::EncoderTexts> = Vec::new();
    let text_codec = options.text_codec.name();
    for (name, encoder) in encoders.text.iter_mut() {
        let identity = encoder.identity();
        let texts = texts::plan_texts(config, &kept, name, &identity.key_text(), options);
        let meta_key = texts::outputs_meta_key(name, &identity.key_text(), &text_codec);
        let known: Option<texts::TextOutputs> = catalog
            .meta(&meta_key)?
            .and_then(|j| serde_json::from_str(&j).ok());
        let bar = crate::progress::bar(
            options.progress,
            texts.captions.len(),
            1,
            &format!("{{bar:30}} {{pos}}/{{len}} captions for {name} {{per_sec}} ETA {{eta}}"),
        );
        let mut outcome = (None, 0);
        let (c, w) = with_writer(catalog, out, options, written, |tx| {
            outcome =
                texts::encode_texts(tx, encoder.as_mut(), &texts, &stored, known, options, &bar)?;
            Ok(())
        })?;
        bar.finish_and_clear();
        catalog = c;
        done.absorb(w);
        let (outputs, encoded) = outcome;
        report.captions += texts.captions.len();
        report.captions_encoded += encoded;
        if let Some(o) = &outputs {
            catalog.set_meta(&meta_key, &serde_json::to_string(o).unwrap_or_default())?;
        }
        let params = serde_json::json!({"kind": "text", "outputs": outputs});
        encoder_rows.push(EncoderRow::new(name, &identity, options.text_codec, params));
        text_plans.push(texts);
    }

    report.entries_computed = done.entries;
    report.shards_written = done.shards;
    report.bytes_written = done.bytes;
    report.items = kept.len();
    commit_items(
        &catalog,
        config,
        &kept,
        &report.findings,
        options,
        &encoder_rows,
        &text_plans,
        part.map(|p| (p, plan.items.len())),
    )?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// An encoder as the catalog's `encoders` table records it.
struct EncoderRow {
    field: String,
    identity: String,
    params: serde_json::Value,
}

impl EncoderRow {
    fn new(
        field: &str,
        identity: &crate::encode::EncoderIdentity,
        codec: Codec,
        mut params: serde_json::Value,
    ) -> Self {
        params["model"] = identity.id.clone().into();
        params["scaling_factor"] = identity.scaling_factor.into();
        params["shift_factor"] = identity.shift_factor.into();
        params["codec"] = codec.name().into();
        EncoderRow {
            field: field.to_owned(),
            identity: identity.key_text(),
            params,
        }
    }
}

/// The key of an image encoder's entry for an item: the item (content and geometry), the
/// field, the encoder's identity and input format, and the codec.
fn image_encoder_key(
    item_key: &str,
    content_hash: &str,
    field: &str,
    identity: &crate::encode::EncoderIdentity,
    format: crate::encode::PixelFormat,
    codec: &str,
) -> String {
    let params = format!("{};input={}", identity.key_text(), format.name());
    entry_key(item_key, field, content_hash, &params, codec, PIPELINE)
}

/// The entry keys of an item's encoder fields: image encoders in order, then CLIP encoders.
fn encoded_fields(
    encoders: &Encoders,
    options: &PrepareOptions,
    item_key: &str,
    content_hash: &str,
    flip: Flip,
) -> Vec<(String, String)> {
    let codec = options.latent_codec.name();
    let image = encoders.image.iter().map(|(name, e)| {
        let key = image_encoder_key(
            item_key,
            content_hash,
            name,
            &e.identity(),
            e.pixel_format(),
            &codec,
        );
        (name.clone(), key)
    });
    let clip = encoders.clip.iter().map(|(name, e)| {
        let identity = e.identity().key_text();
        let key = encoded::clip_key(content_hash, flip, &options.clip, name, &identity, &codec);
        (name.clone(), key)
    });
    image.chain(clip).collect()
}

/// Creates the store layout, takes the store's lock, opens the catalog, and clears what an
/// interrupted run may have left: temporary files and shard files the catalog never recorded.
fn open_for_writing(out: &Path) -> Result<(File, Catalog)> {
    let lock = make_and_lock(out)?;
    let catalog = Catalog::open(&out.join(CATALOG_FILE), true)?;
    crate::store::remove_strays(out, &catalog)?;
    Ok((lock, catalog))
}

/// Creates the store layout (the folder, `shards/`, `tmp/`) and takes the store's lock, held
/// until the returned file is dropped: one writer (a prepare or a merge) per store at a time.
pub(crate) fn make_and_lock(out: &Path) -> Result<File> {
    if out.exists() && !out.is_dir() {
        return Err(Error::Store {
            path: out.to_path_buf(),
            message: "exists and is not a folder; choose another --out".into(),
        });
    }
    for dir in [out.to_path_buf(), out.join(SHARD_DIR), out.join(TMP_DIR)] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    crate::store::lock_store(out)
}

/// What the writer did.
#[derive(Default)]
struct Written {
    entries: usize,
    shards: usize,
    bytes: u64,
    /// Entries that failed to compute, with the finding that says why.
    failed: Vec<(String, Finding)>,
}

impl Written {
    /// Adds what another writer did.
    fn absorb(&mut self, other: Written) {
        self.entries += other.entries;
        self.shards += other.shards;
        self.bytes += other.bytes;
        self.failed.extend(other.failed);
    }
}

/// Packs computed entries into shards and commits each shard with its entries.
struct ShardWriter<'a> {
    catalog: Catalog,
    tmp: &'a Path,
    shard_dir: &'a Path,
    target_bytes: u64,
    builder: ShardBuilder,
    pending: Vec<Pending>,
    names: HashSet<String>,
    done: Written,
    /// Told the file name of each shard once it is committed.
    sink: Option<&'a Sender<String>>,
}

impl ShardWriter<'_> {
    /// Adds a group of entries; the shard may close after the group, never inside it.
    fn add_group(&mut self, group: Vec<Produced>) -> Result<()> {
        for produced in group {
            self.add(produced)?;
        }
        if self.builder.data_bytes() as u64 >= self.target_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn add(&mut self, produced: Produced) -> Result<()> {
        let (key, tensor, meta, info) = match produced {
            Produced::Failed { key, finding } => {
                self.done.failed.push((key, finding));
                return Ok(());
            }
            Produced::Entry {
                key,
                tensor,
                meta,
                encoded,
            } => (key, tensor, meta, encoded),
        };
        // Two datasets may cut one image alike with different field parameters; a shard
        // cannot hold two tensors of one name, so the second starts a new shard.
        if self.names.contains(&tensor.name) {
            self.flush()?;
        }
        self.names.insert(tensor.name.clone());
        self.pending.push(Pending {
            key,
            tensor: tensor.name.clone(),
            info,
        });
        self.builder.push(tensor, meta);
        Ok(())
    }

    /// Writes the shard being built and commits it with its entries in one transaction.
    fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let shard = std::mem::take(&mut self.builder).write(self.tmp, self.shard_dir)?;
        let catalog = &self.catalog;
        let err = |e| catalog.err(e);
        let tx = catalog.conn.unchecked_transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO shards(file, bytes, blake3) VALUES (?1, ?2, ?3) ON CONFLICT(file) DO NOTHING",
            params![shard.file, shard.bytes as i64, shard.blake3],
        )
        .map_err(err)?;
        let shard_id: i64 = tx
            .query_row(
                "SELECT id FROM shards WHERE file = ?1",
                [&shard.file],
                |r| r.get(0),
            )
            .map_err(err)?;
        tx.execute(
            "INSERT OR REPLACE INTO shard_chunks(shard, chunk_bytes, blake3) VALUES (?1, ?2, ?3)",
            params![
                shard_id,
                shard.chunks.chunk_bytes as i64,
                shard.chunks.digests.concat()
            ],
        )
        .map_err(err)?;
        let places: HashMap<&str, _> = shard.tensors.iter().map(|p| (p.name.as_str(), p)).collect();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO entries(key, shard, tensor, offset, length, dtype, shape, codec, raw_len, scale, bias)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(err)?;
            for Pending { key, tensor, info } in &self.pending {
                let place = places.get(tensor.as_str()).ok_or_else(|| Error::Store {
                    path: self.shard_dir.join(&shard.file),
                    message: format!("tensor {tensor} missing from the shard just written"),
                })?;
                insert
                    .execute(params![
                        key,
                        shard_id,
                        place.name,
                        place.offset as i64,
                        place.length as i64,
                        info.dtype,
                        serde_json::json!(info.shape).to_string(),
                        info.codec,
                        info.raw_len as i64,
                        serde_json::json!(info.scale).to_string(),
                        serde_json::json!(info.bias).to_string(),
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        if let Some(sink) = self.sink {
            // The receiver (an uploader) outlives the writer; if it has stopped, the shard is
            // uploaded with the rest at the end.
            let _ = sink.send(shard.file.clone());
        }
        self.done.entries += self.pending.len();
        self.done.shards += 1;
        self.done.bytes += shard.bytes;
        self.pending.clear();
        self.names.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(Catalog, Written)> {
        self.flush()?;
        Ok((self.catalog, self.done))
    }
}

/// Runs `produce` on this thread while one writer thread packs what it sends into shards.
///
/// `produce` sends groups of entries; a shard never closes inside a group, so a group (the
/// outputs of one caption) is committed whole or not at all. When `produce` fails (an encoder
/// raised), the writer still commits everything sent before the failure, then the error is
/// returned: nothing already computed is lost.
fn with_writer(
    catalog: Catalog,
    out: &Path,
    options: &PrepareOptions,
    sink: Option<&Sender<String>>,
    produce: impl FnOnce(&Sender<Vec<Vec<Produced>>>) -> Result<()>,
) -> Result<(Catalog, Written)> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<Produced>>>(2);
    let tmp = out.join(TMP_DIR);
    let shard_dir = out.join(SHARD_DIR);
    let mut writer = ShardWriter {
        catalog,
        tmp: &tmp,
        shard_dir: &shard_dir,
        target_bytes: options.shard_bytes,
        builder: ShardBuilder::default(),
        pending: Vec::new(),
        names: HashSet::new(),
        done: Written::default(),
        sink,
    };
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<(Catalog, Written)> {
            for groups in rx {
                for group in groups {
                    writer.add_group(group)?;
                }
            }
            writer.finish()
        });
        // When the writer fails it drops the receiver, sending fails, and its error is the
        // one returned.
        let produced = produce(&tx);
        drop(tx);
        let written = handle.join().unwrap_or_else(|_| {
            Err(Error::Store {
                path: out.to_path_buf(),
                message: "the shard writer thread panicked".into(),
            })
        });
        match (produced, written) {
            (Err(e), _) => Err(e),
            (Ok(()), written) => written,
        }
    })
}

/// Computes `todo` on all cores while one thread writes the results.
fn run_pipeline(
    catalog: Catalog,
    out: &Path,
    options: &PrepareOptions,
    todo: &[(&ItemPlan<'_>, &FieldJob)],
    sink: Option<&Sender<String>>,
) -> Result<(Catalog, Written)> {
    let bar = crate::progress::bar(
        options.progress,
        todo.len(),
        1,
        "{bar:30} {pos}/{len} entries {per_sec} ETA {eta} [{elapsed_precise}]",
    );
    let outcome = with_writer(catalog, out, options, sink, |tx| {
        // Chunks keep the output order deterministic while all cores work on each chunk.
        let chunk = rayon::current_num_threads().max(1) * 8;
        for part in todo.chunks(chunk) {
            let produced: Vec<Vec<Produced>> = part
                .par_iter()
                .map(|(item, job)| vec![produce(item, job, options.image_codec)])
                .collect();
            bar.inc(part.len() as u64);
            if tx.send(produced).is_err() {
                break;
            }
        }
        Ok(())
    });
    bar.finish_and_clear();
    outcome
}

/// Decodes `source`, converts it, and places it (flip, resize, crop) as C×H×W bytes.
fn decode_placed(
    source: &Path,
    convert: Convert,
    placement: &crate::plan::Placement,
    flip: Flip,
) -> Result<(usize, Vec<u8>)> {
    // Decoders are fed untrusted files; should one panic on a hostile file, that file becomes
    // a finding like any other undecodable image instead of ending the prepare.
    let decoded =
        std::panic::catch_unwind(|| image::decode(source, convert)).unwrap_or_else(|_| {
            Err(Error::Image {
                path: source.to_path_buf(),
                message: "the decoder crashed on this file".into(),
            })
        })?;
    let channels = decoded.channels.count();
    Ok((channels, image::place(decoded, placement, flip)?))
}

/// Decodes, places and encodes one field of one item.
fn produce(item: &ItemPlan<'_>, job: &FieldJob, image_codec: Codec) -> Produced {
    let fail = |e: Error| Produced::Failed {
        key: job.key.clone(),
        finding: Finding::new(
            item.planned.dataset,
            FindingKind::Corrupt,
            &job.what.source,
            format!("cannot decode for field {}: {e}", job.what.field),
        ),
    };
    let (channels, mut data) = match decode_placed(
        &job.what.source,
        job.what.convert,
        &item.planned.placement,
        item.planned.flip,
    ) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if let Some((invert, min)) = job.what.mask {
        image::map_mask(&mut data, invert, min);
    }
    let b = item.planned.placement.bucket;
    let shape = vec![channels, b.height as usize, b.width as usize];
    let name = format!("{}/{}", item.item_key, job.what.field);
    stored_entry(&job.key, name, image_codec, Values::U8(&data), shape).unwrap_or_else(fail)
}

/// Encodes `values` with `codec` into an entry for the writer, named `name` in its shard.
fn stored_entry(
    key: &str,
    name: String,
    codec: Codec,
    values: Values<'_>,
    shape: Vec<usize>,
) -> Result<Produced> {
    let encoded = codec::encode(codec, values, &shape)?;
    let (stored_dtype, stored_shape) = if codec.is_raw() {
        (codec.element_dtype(), shape.clone())
    } else {
        ("U8", vec![encoded.bytes.len()])
    };
    // Compressed and quantized tensors need more than safetensors' header to read; the header
    // metadata says how to decode them, so a shard is understandable without the catalog.
    let meta = (!codec.is_raw() || !encoded.scale.is_empty()).then(|| {
        serde_json::json!({"codec": codec.name(), "dtype": codec.element_dtype(), "shape": shape, "raw_len": encoded.raw_len, "scale": encoded.scale, "offset": encoded.offset}).to_string()
    });
    Ok(Produced::Entry {
        key: key.to_owned(),
        tensor: PendingTensor {
            name,
            dtype: stored_dtype,
            shape: stored_shape,
            bytes: encoded.bytes,
        },
        meta,
        encoded: EncodedInfo {
            dtype: codec.element_dtype(),
            shape,
            codec: codec.name(),
            raw_len: encoded.raw_len,
            scale: encoded.scale,
            bias: encoded.offset,
        },
    })
}

/// Replaces the item list, findings, datasets and encoders in one transaction: until it
/// commits, readers see the previous prepare's complete store. A part of a distributed
/// prepare, `(part, planned items in the whole plan)`, also records each item's plan index and
/// its `part` marker: a part is complete if and only if its marker is there.
#[allow(clippy::too_many_arguments)]
fn commit_items(
    catalog: &Catalog,
    config: &Config,
    items: &[&ItemPlan<'_>],
    findings: &[Finding],
    options: &PrepareOptions,
    encoders: &[EncoderRow],
    texts: &[texts::EncoderTexts],
    part: Option<(Part, usize)>,
) -> Result<()> {
    let err = |e| catalog.err(e);
    let tx = catalog.conn.unchecked_transaction().map_err(err)?;
    tx.execute_batch("DELETE FROM item_fields; DELETE FROM part_items; DELETE FROM items; DELETE FROM findings; DELETE FROM datasets; DELETE FROM encoders; DELETE FROM item_captions; DELETE FROM captions;")
        .map_err(err)?;
    {
        let mut ins_item = tx
            .prepare(
                "INSERT INTO items(id, dataset, path, bytes, content_hash, width, height, orientation, resolution,
                   bucket_w, bucket_h, scale_to_w, scale_to_h, crop_x, crop_y, flip, repeat, caption, caption_short,
                   is_reg, loss_multiplier, network_weight, item_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
            )
            .map_err(err)?;
        let mut ins_field = tx
            .prepare(
                "INSERT INTO item_fields(item, field, entry, entry_id)
                 VALUES (?1, ?2, ?3, (SELECT id FROM entries WHERE key = ?3))",
            )
            .map_err(err)?;
        for (id, item) in items.iter().enumerate() {
            let p = &item.planned;
            let cfg = &config.datasets[p.dataset];
            let img = item.image;
            ins_item
                .execute(params![
                    id as i64,
                    p.dataset as i64,
                    img.path.to_string_lossy(),
                    img.bytes as i64,
                    item.content_hash,
                    img.width,
                    img.height,
                    img.orientation,
                    p.resolution,
                    p.placement.bucket.width,
                    p.placement.bucket.height,
                    p.placement.scale_to_width,
                    p.placement.scale_to_height,
                    p.placement.crop_x,
                    p.placement.crop_y,
                    flip_name(p.flip),
                    p.repeat,
                    img.caption,
                    img.caption_short,
                    cfg.is_reg,
                    cfg.loss_multiplier,
                    cfg.network_weight,
                    item.item_key,
                ])
                .map_err(err)?;
            for f in &item.fields {
                ins_field
                    .execute(params![id as i64, f.what.field, f.key])
                    .map_err(err)?;
            }
            for (field, key) in &item.encoded {
                ins_field
                    .execute(params![id as i64, field, key])
                    .map_err(err)?;
            }
        }
        if part.is_some() {
            let mut ins_part = tx
                .prepare("INSERT INTO part_items(item, plan_index) VALUES (?1, ?2)")
                .map_err(err)?;
            for (id, item) in items.iter().enumerate() {
                ins_part
                    .execute(params![id as i64, item.plan_index as i64])
                    .map_err(err)?;
            }
        }
        let mut ins_finding = tx
            .prepare("INSERT INTO findings(dataset, kind, path, detail) VALUES (?1, ?2, ?3, ?4)")
            .map_err(err)?;
        for f in findings {
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            ins_finding
                .execute(params![
                    f.dataset as i64,
                    kind,
                    f.path.to_string_lossy(),
                    f.detail
                ])
                .map_err(err)?;
        }
        let mut ins_ds = tx
            .prepare("INSERT INTO datasets(id, source, config) VALUES (?1, ?2, ?3)")
            .map_err(err)?;
        for (i, d) in config.datasets.iter().enumerate() {
            let json = serde_json::to_string(d).unwrap_or_default();
            ins_ds
                .execute(params![i as i64, d.source.path().to_string_lossy(), json])
                .map_err(err)?;
        }
        let image_fields = serde_json::json!({"codec": options.image_codec.name(), "filter": "catmull-rom (Pillow BICUBIC)", "layout": "CHW"}).to_string();
        for field in ["pixels", "mask", "control", "inpaint"] {
            tx.execute(
                "INSERT INTO encoders(field, identity, params) VALUES (?1, ?2, ?3)",
                params![field, PIPELINE, image_fields],
            )
            .map_err(err)?;
        }
        for e in encoders {
            tx.execute(
                "INSERT INTO encoders(field, identity, params) VALUES (?1, ?2, ?3)",
                params![e.field, e.identity, e.params.to_string()],
            )
            .map_err(err)?;
        }
        let mut ins_caption = tx
            .prepare("INSERT INTO captions(id, encoder, key, text) VALUES (?1, ?2, ?3, ?4)")
            .map_err(err)?;
        let mut ins_variant = tx
            .prepare(
                "INSERT INTO item_captions(item, encoder, variant, caption) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(err)?;
        let mut next_id = 0i64;
        for t in texts {
            for (key, text) in &t.captions {
                ins_caption
                    .execute(params![next_id, t.field, key, text])
                    .map_err(err)?;
                next_id += 1;
            }
            let first = next_id - t.captions.len() as i64;
            for (item, variants) in t.variants.iter().enumerate() {
                for (v, &caption) in variants.iter().enumerate() {
                    ins_variant
                        .execute(params![
                            item as i64,
                            t.field,
                            v as i64,
                            first + i64::from(caption)
                        ])
                        .map_err(err)?;
                }
            }
        }
    }
    let digest = config_digest(config);
    for (k, v) in [
        ("config_digest", digest.as_str()),
        ("config_source", &config.source.to_string_lossy()),
        ("divisibility", &config.divisibility.to_string()),
        ("larder_version", env!("CARGO_PKG_VERSION")),
        ("resize_filter", "catmull-rom"),
    ] {
        tx.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![k, v],
        )
        .map_err(err)?;
    }
    match part {
        Some((part, planned)) => {
            for (k, v) in [
                (merge::META_PART, part.to_string()),
                (merge::META_PLAN_ITEMS, planned.to_string()),
            ] {
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![k, v],
                )
                .map_err(err)?;
            }
        }
        None => {
            tx.execute(
                "DELETE FROM meta WHERE key IN (?1, ?2)",
                params![merge::META_PART, merge::META_PLAN_ITEMS],
            )
            .map_err(err)?;
        }
    }
    tx.commit().map_err(err)
}

fn flip_name(f: Flip) -> &'static str {
    match f {
        Flip::None => "none",
        Flip::X => "x",
        Flip::Y => "y",
        Flip::XY => "xy",
    }
}

/// BLAKE3 of the config as larder understood it (datasets and divisibility), so a store says
/// which config made it.
pub fn config_digest(config: &Config) -> String {
    let json =
        serde_json::json!({"datasets": config.datasets, "divisibility": config.divisibility});
    blake3::hash(json.to_string().as_bytes()).to_hex()[..32].to_owned()
}
