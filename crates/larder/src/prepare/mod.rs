//! `larder prepare`: turn a config into a store.
//!
//! The work is a pipeline: the scan and plan say what items exist (a caller may give its own,
//! see [`Prepare::plan`]); content hashes and keys say which entries the store lacks
//! (`items.rs`); a pool of threads decodes, resizes and crops those, grouped by bucket, and one
//! writer packs the results into shards and commits each shard with its entries in one catalog
//! transaction (`writer.rs`); encoders run over what they lack (`encoded.rs`, `texts.rs`); the
//! item list is committed last (`commit.rs`). Killing the process at any point loses at most
//! the shard being built: the next run finds every committed entry by its key and does only
//! the rest.
//!
//! This module writes a local folder. Where the store goes — a folder or a URL — is decided
//! once, by [`Prepare::run`] in [`transfer`](crate::transfer), the layer above this one.

mod aitk;
mod audio;
mod commit;
mod encoded;
mod items;
pub(crate) mod merge;
mod part;
mod sources;
mod texts;
mod writer;

pub use aitk::{AitkImportOptions, AitkImportReport, ImportCounts, ImportMismatch};
pub(crate) use items::entry_owner;
pub use merge::{MergeReport, merge_parts};
pub use part::{PARTS_DIR, Part};

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::time::Instant;

use crossbeam_channel::Sender;

use self::commit::{Commit, EncoderRow};
use self::items::ItemPlan;
// The import of AI Toolkit's caches writes entries as a prepare does.
use self::items::image_encoder_key;
use self::writer::{Produced, Written, decode_pixels, run_pipeline, stored_entry, with_writer};
use crate::config::Config;
use crate::encode::{ClipPreprocess, Encoders, PixelFormat};
use crate::plan::Plan;
use crate::scan::{Finding, ScanOptions, ScanReport};
use crate::storage::RemoteOptions;
use crate::store::catalog::Catalog;
use crate::store::codec::{self, Codec};
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
/// A prepare run: what to prepare (a config, and the scan and plan of it when the caller has
/// them), with which encoders and settings.
///
/// [`Prepare::run`] writes the store to a folder or a URL; [`prepare`](crate::prepare()) is
/// the short form for a run without encoders.
///
/// ```no_run
/// use larder::{Config, Plan, Prepare, PrepareOptions, scan};
///
/// let config = Config::load("examples/sample/config.yaml")?;
/// let scanned = scan(&config)?;
/// let mut plan = Plan::new(&config, &scanned)?;
/// // The caller may look at the plan and drop items before preparing it.
/// plan.items.retain(|item| item.resolution == 512);
/// let report = Prepare::new(&config)
///     .plan(&scanned, &plan)
///     .options(PrepareOptions::default())
///     .run("stores/sample")?;
/// println!("{} items", report.items);
/// # Ok::<(), larder::Error>(())
/// ```
pub struct Prepare<'a> {
    pub(crate) config: &'a Config,
    pub(crate) planned: Option<(&'a ScanReport, &'a Plan)>,
    pub(crate) encoders: Option<&'a mut Encoders>,
    pub(crate) options: PrepareOptions,
    pub(crate) remote: Option<RemoteOptions>,
}

// Encoders are user code without `Debug`; the run is described by what it prepares and how.
impl std::fmt::Debug for Prepare<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepare")
            .field("config", &self.config.source)
            .field(
                "planned_items",
                &self.planned.map(|(_, plan)| plan.items.len()),
            )
            .field("encoders", &self.encoders.is_some())
            .field("options", &self.options)
            .field("remote", &self.remote)
            .finish()
    }
}

impl<'a> Prepare<'a> {
    /// A run over `config` with default settings and no encoders; the config is scanned and
    /// planned when the run starts unless [`Prepare::plan`] gives the scan and plan.
    pub fn new(config: &'a Config) -> Self {
        Prepare {
            config,
            planned: None,
            encoders: None,
            options: PrepareOptions::default(),
            remote: None,
        }
    }

    /// Prepares `plan`, made from `scan` of this run's config, instead of scanning and
    /// planning again. The plan may be filtered (items removed); an item that names a dataset
    /// or image `scan` lacks makes the run fail with [`Error::InvalidArgument`].
    pub fn plan(mut self, scan: &'a ScanReport, plan: &'a Plan) -> Self {
        self.planned = Some((scan, plan));
        self
    }

    /// Runs `encoders` over the items: latents and CLIP embeddings per item, text embeddings
    /// per distinct caption (see docs/encoders.md).
    ///
    /// An encoder error ([`Error::Encoder`]) ends the run with the field and item named;
    /// every entry computed before it is kept, so running again computes only the rest.
    pub fn encoders(mut self, encoders: &'a mut Encoders) -> Self {
        self.encoders = Some(encoders);
        self
    }

    /// The run's settings (shard size, codecs, part of a distributed prepare, …).
    pub fn options(mut self, options: PrepareOptions) -> Self {
        self.options = options;
        self
    }

    /// How to reach object storage when the run writes to a URL; by default
    /// [`RemoteOptions::from_env`].
    pub fn remote(mut self, remote: RemoteOptions) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Prepares into the local store folder `out` (a part into `out/parts/<i>-of-<N>`),
    /// sending the file name of every shard to `sink` once it is committed (for uploading
    /// while the run goes on).
    pub(crate) fn run_in(self, out: &Path, sink: Option<&Sender<String>>) -> Result<PrepareReport> {
        let started = Instant::now();
        let mut no_encoders = Encoders::default();
        let encoders = match self.encoders {
            Some(e) => e,
            None => &mut no_encoders,
        };
        check_options(&self.options, encoders)?;
        let (scanned, planned);
        let (scan, plan) = match self.planned {
            Some(given) => given,
            None => {
                let options = ScanOptions {
                    progress: self.options.progress,
                };
                scanned = crate::scan::scan_with(self.config, &options)?;
                planned = Plan::new(self.config, &scanned)?;
                (&scanned, &planned)
            }
        };
        let mut report = execute(self.config, scan, plan, out, &self.options, encoders, sink)?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Refuses settings no run can honour, before anything is read or written.
fn check_options(options: &PrepareOptions, encoders: &Encoders) -> Result<()> {
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
    Ok(())
}

/// Says, once per kind, which datasets ask for a cache (`cache_latents(_to_disk)`,
/// `cache_text_embeddings`, `cache_clip_vision_to_disk`) that this run cannot fill because no
/// encoder of that kind was given: AI Toolkit computes those with its model, and a store without
/// them serves pixels (or the squared CLIP images).
fn uncached_warnings(config: &Config, encoders: &Encoders) -> Vec<String> {
    let asking = |wants: fn(&crate::DatasetConfig) -> bool| -> Vec<String> {
        config
            .datasets
            .iter()
            .filter(|d| wants(d))
            .map(|d| d.source.path().display().to_string())
            .collect()
    };
    let mut warnings = Vec::new();
    let latents = asking(|d| d.cache.latents || d.cache.latents_to_disk);
    if !latents.is_empty() && encoders.image.is_empty() {
        warnings.push(format!(
            "{} asks for cached latents (cache_latents / cache_latents_to_disk), but no image encoder was given: the store holds pixels only. Give larder.prepare your VAE as `image_encoders` (docs/encoders.md), or bring AI Toolkit's caches with `larder import-aitk`",
            latents.join(", ")
        ));
    }
    let texts = asking(|d| d.cache.text_embeddings);
    if !texts.is_empty() && encoders.text.is_empty() {
        warnings.push(format!(
            "{} asks for cached text embeddings (cache_text_embeddings), but no text encoder was given: the store holds captions only. Give larder.prepare your text encoders as `text_encoders` (docs/encoders.md), or bring AI Toolkit's caches with `larder import-aitk`",
            texts.join(", ")
        ));
    }
    let clips = asking(|d| d.cache.clip_vision_to_disk && d.clip_image_path.is_some());
    if !clips.is_empty() && encoders.clip.is_empty() {
        warnings.push(format!(
            "{} asks for cached CLIP vision embeddings (cache_clip_vision_to_disk), but no CLIP encoder was given: the store holds the squared CLIP images (clip_image). Give larder.prepare the adapter's vision model as `clip_encoders` (docs/encoders.md)",
            clips.join(", ")
        ));
    }
    warnings
}

/// Where a run writes and who hears of its shards.
struct Target<'r> {
    out: &'r Path,
    options: &'r PrepareOptions,
    sink: Option<&'r Sender<String>>,
}

/// Prepares the planned items of `plan` (this run's part of them) into `out`.
fn execute(
    config: &Config,
    scan: &ScanReport,
    plan: &Plan,
    out: &Path,
    options: &PrepareOptions,
    encoders: &mut Encoders,
    sink: Option<&Sender<String>>,
) -> Result<PrepareReport> {
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
        Some(p) => p.select(plan),
        None => (0..plan.items.len()).collect(),
    };
    let part_out = part.map(|p| p.dir(out));
    let target = Target {
        out: part_out.as_deref().unwrap_or(out),
        options,
        sink,
    };
    // A plan that does not fit the scan is refused before anything is written.
    let planned = items::planned_items(config, scan, plan, &selected)?;
    let (_lock, catalog) = open_for_writing(target.out)?;
    let hashes = items::source_hashes(&catalog, &planned, &mut report)?;
    let items = items::item_plans(planned, &hashes, encoders, options);

    let stored = catalog.entry_keys()?;
    let mut seen: HashSet<&str> = HashSet::new();
    let todo = items::field_todo(&items, &stored, &mut seen);
    let (catalog, mut done) = run_pipeline(catalog, target.out, options, &todo, sink)?;
    let (catalog, audio) =
        audio::run_audio(catalog, &target, &items, &stored, &mut seen, &mut done)?;
    let (catalog, mut encoder_rows, encoded) = run_image_encoders(
        catalog, &target, encoders, &items, &stored, &mut seen, &mut done,
    )?;
    report.entries = seen.len();
    report.entries_reused = seen.len() - todo.len() - audio - encoded;

    let kept = complete_items(&items, &mut done, &mut report);
    let (catalog, text_rows, text_plans) = run_text_encoders(
        catalog,
        &target,
        config,
        encoders,
        &kept,
        &stored,
        &mut done,
        &mut report,
    )?;
    encoder_rows.extend(text_rows);

    report.entries_computed = done.entries;
    report.shards_written = done.shards;
    report.bytes_written = done.bytes;
    report.items = kept.len();
    Commit {
        config,
        items: &kept,
        findings: &report.findings,
        options,
        encoders: &encoder_rows,
        texts: &text_plans,
        part: part.map(|p| (p, plan.items.len())),
    }
    .run(&catalog)?;
    Ok(report)
}

/// Image and CLIP encoders, one after the other, each over the entries it lacks; an image
/// encoder then encodes the first frames of `do_i2v` clips. Returns the catalog, the
/// encoders' rows, and how many entries they computed.
fn run_image_encoders<'p>(
    mut catalog: Catalog,
    target: &Target<'_>,
    encoders: &mut Encoders,
    items: &'p [ItemPlan<'_>],
    stored: &HashSet<String>,
    seen: &mut HashSet<&'p str>,
    done: &mut Written,
) -> Result<(Catalog, Vec<EncoderRow>, usize)> {
    let options = target.options;
    let mut rows: Vec<EncoderRow> = Vec::new();
    let mut computed = 0;
    let image_count = encoders.image.len();
    for (e, (name, encoder)) in encoders
        .image
        .iter_mut()
        .chain(encoders.clip.iter_mut())
        .enumerate()
    {
        let identity = encoder.identity();
        let passes = if e < image_count {
            let format = encoder.pixel_format();
            let all = encoded::Input::Bucket {
                format,
                first_frame: false,
            };
            let first = encoded::Input::Bucket {
                format,
                first_frame: true,
            };
            vec![all, first]
        } else {
            // An encoder that takes u8 pixels preprocesses them itself.
            let preprocess = (encoder.pixel_format() != PixelFormat::U8).then_some(options.clip);
            vec![encoded::Input::Clip(preprocess)]
        };
        for input in passes {
            let first_frame = matches!(
                input,
                encoded::Input::Bucket {
                    first_frame: true,
                    ..
                }
            );
            // The item's entry of this pass (field and key), if it has one.
            let entry = |item: &'p ItemPlan<'_>| -> Option<&'p (String, String)> {
                if first_frame {
                    item.first_frame.get(e)
                } else {
                    item.encoded.get(e)
                }
            };
            let field = if first_frame {
                // Only `do_i2v` clips have first-frame latents.
                if items.iter().all(|item| item.first_frame.is_empty()) {
                    continue;
                }
                items::first_frame_field(name)
            } else {
                name.clone()
            };
            let mut jobs: Vec<encoded::Job<'_, '_>> = Vec::new();
            for item in items {
                if let Some((_, key)) = entry(item)
                    && seen.insert(key)
                    && !stored.contains(key)
                {
                    jobs.push((item, key.clone()));
                }
            }
            computed += jobs.len();
            jobs.sort_by_key(|(item, _)| {
                (item.planned.placement.bucket, item.image.path.as_path())
            });
            let bar = crate::progress::bar(
                options.progress,
                jobs.len(),
                1,
                &format!("{{bar:30}} {{pos}}/{{len}} {field} {{per_sec}} ETA {{eta}}"),
            );
            let (c, w) = with_writer(catalog, target.out, options, target.sink, |tx| {
                encoded::encode_images(tx, encoder.as_mut(), &field, input, &jobs, options, &bar)
            })?;
            bar.finish_and_clear();
            catalog = c;
            done.absorb(w);
            let params = match input {
                encoded::Input::Bucket {
                    format,
                    first_frame: false,
                } => serde_json::json!({"kind": "image", "pixel_format": format}),
                encoded::Input::Bucket { format, .. } => {
                    serde_json::json!({"kind": "first_frame", "pixel_format": format})
                }
                encoded::Input::Clip(Some(clip)) => {
                    serde_json::json!({"kind": "clip", "clip": clip})
                }
                encoded::Input::Clip(None) => {
                    serde_json::json!({"kind": "clip", "pixel_format": PixelFormat::U8})
                }
            };
            rows.push(EncoderRow::new(
                &field,
                &identity,
                options.latent_codec,
                params,
            ));
        }
    }
    Ok((catalog, rows, computed))
}

/// The items all of whose entries were computed (or stored already); the others are left out,
/// with the finding of what failed moved into `report`.
fn complete_items<'p, 'a>(
    items: &'p [ItemPlan<'a>],
    done: &mut Written,
    report: &mut PrepareReport,
) -> Vec<&'p ItemPlan<'a>> {
    let failed_keys: HashSet<String> = done.failed.iter().map(|(k, _)| k.clone()).collect();
    report
        .findings
        .extend(done.failed.drain(..).map(|(_, finding)| finding));
    items
        .iter()
        .filter(|item| {
            item.fields.iter().all(|f| !failed_keys.contains(&f.key))
                && (item.encoded.iter().chain(&item.first_frame))
                    .chain(item.audio.iter().flatten())
                    .all(|(_, k)| !failed_keys.contains(k))
        })
        .collect()
}

/// Text encoders over the kept items' captions: each distinct string once.
#[allow(clippy::too_many_arguments)]
fn run_text_encoders(
    mut catalog: Catalog,
    target: &Target<'_>,
    config: &Config,
    encoders: &mut Encoders,
    kept: &[&ItemPlan<'_>],
    stored: &HashSet<String>,
    done: &mut Written,
    report: &mut PrepareReport,
) -> Result<(Catalog, Vec<EncoderRow>, Vec<texts::EncoderTexts>)> {
    let options = target.options;
    let mut rows: Vec<EncoderRow> = Vec::new();
    let mut text_plans: Vec<texts::EncoderTexts> = Vec::new();
    let text_codec = options.text_codec.name();
    for (name, encoder) in encoders.text.iter_mut() {
        let identity = encoder.identity();
        let controls = encoder.takes_controls();
        let texts = texts::plan_texts(config, kept, name, &identity.key_text(), controls, options);
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
        let (c, w) = with_writer(catalog, target.out, options, target.sink, |tx| {
            outcome =
                texts::encode_texts(tx, encoder.as_mut(), &texts, stored, known, options, &bar)?;
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
        rows.push(EncoderRow::new(name, &identity, options.text_codec, params));
        text_plans.push(texts);
    }
    Ok((catalog, rows, text_plans))
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

/// BLAKE3 of the config as larder understood it (datasets and divisibility), so a store says
/// which config made it.
pub fn config_digest(config: &Config) -> String {
    let json =
        serde_json::json!({"datasets": config.datasets, "divisibility": config.divisibility});
    blake3::hash(json.to_string().as_bytes()).to_hex()[..32].to_owned()
}
