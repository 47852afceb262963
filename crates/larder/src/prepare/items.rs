//! What a prepare works on: each planned item with its scanned image, its dataset's settings
//! and its fields' sources (built in one place, [`planned_items`], from the scan and the plan),
//! then with content hashes and entry keys ([`item_plans`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::encoded;
use super::sources::hash_sources;
use super::{PrepareOptions, PrepareReport};
use crate::config::{CLIP_IMAGE, Config, ControlSize, DatasetConfig};
use crate::encode::{Encoders, PixelFormat, Squaring};
use crate::image::{Convert, PIPELINE};
use crate::plan::{Flip, Plan, PlannedItem};
use crate::scan::{Finding, FindingKind, ScanReport, ScannedImage};
use crate::store::catalog::Catalog;
use crate::store::key::{entry_key, item_key};
use crate::{Error, Result};

/// One field of an item: where its pixels come from and how they are converted.
#[derive(Debug, Clone)]
pub(super) struct FieldSource {
    pub(super) field: String,
    pub(super) source: PathBuf,
    pub(super) convert: Convert,
    /// Whether it follows the item's geometry ([`ControlSize::Item`], every field but some
    /// controls) or has a size of its own.
    pub(super) size: ControlSize,
    /// Mask mapping: (invert, min_value).
    pub(super) mask: Option<(bool, f64)>,
    /// A CLIP image ([`CLIP_IMAGE`]): flipped as the item and squared so, at its own size.
    pub(super) squaring: Option<Squaring>,
}

/// A field to store, with its entry key.
#[derive(Debug, Clone)]
pub(super) struct FieldJob {
    pub(super) what: FieldSource,
    pub(super) key: String,
}

/// A planned item with everything prepare reads for it.
#[derive(Debug)]
pub(super) struct Planned<'a> {
    pub(super) planned: PlannedItem,
    /// Index of the item in the whole plan (the merged store's order, for a part).
    pub(super) plan_index: usize,
    pub(super) image: &'a ScannedImage,
    pub(super) dataset: &'a DatasetConfig,
    /// The fields the dataset asks for, with their sources.
    pub(super) sources: Vec<FieldSource>,
}

/// An item as it will be recorded, with its fields.
#[derive(Debug)]
pub(super) struct ItemPlan<'a> {
    pub(super) planned: PlannedItem,
    /// Index of the item in the whole plan (the merged store's order, for a part).
    pub(super) plan_index: usize,
    pub(super) image: &'a ScannedImage,
    pub(super) dataset: &'a DatasetConfig,
    pub(super) content_hash: String,
    pub(super) item_key: String,
    pub(super) fields: Vec<FieldJob>,
    /// Fields filled by image and CLIP encoders: (field, entry key).
    pub(super) encoded: Vec<(String, String)>,
    /// A clip of a `do_i2v` dataset: per image encoder, in order, its first-frame field
    /// (`<field>.first_frame`) and entry key; empty otherwise.
    pub(super) first_frame: Vec<(String, String)>,
    /// A clip with audio in a `do_audio` dataset: its audio fields and their entry keys.
    pub(super) audio: Option<Vec<(String, String)>>,
    /// The item's control images in control order, with their content hashes: what a text
    /// encoder that takes controls is given with the caption, and keys its entries by.
    pub(super) controls: Vec<(PathBuf, String)>,
    /// In a dataset with `clip_image_path`: the image CLIP encoders see in place of the item's
    /// own, with its content hash; `None` where the folder has none (or it cannot be read),
    /// and CLIP encoders then fail on the item.
    pub(super) clip_image: Option<(PathBuf, String)>,
    /// For a clip: the indices of the frames it trains with, in order.
    pub(super) frames: Option<Vec<u64>>,
}

/// The items of `plan` at the indices `selected`, each with its scanned image and dataset.
///
/// This is the one place prepare looks items up in the config and the scan; a plan that does
/// not come from this config and scan (an item naming a dataset or image they lack) is an
/// error rather than a panic, since a caller may build or filter a plan by hand.
pub(super) fn planned_items<'a>(
    config: &'a Config,
    scan: &'a ScanReport,
    plan: &Plan,
    selected: &[usize],
) -> Result<Vec<Planned<'a>>> {
    let mismatch = |message: String| Error::InvalidArgument {
        name: "plan",
        message,
    };
    if scan.datasets.len() != config.datasets.len() {
        return Err(mismatch(format!(
            "the scan has {} datasets but the config {}: scan and plan this config",
            scan.datasets.len(),
            config.datasets.len()
        )));
    }
    selected
        .iter()
        .map(|&plan_index| {
            let planned = plan.items[plan_index];
            let (dataset, image) = config
                .datasets
                .get(planned.dataset)
                .zip(
                    scan.datasets
                        .get(planned.dataset)
                        .and_then(|d| d.images.get(planned.image)),
                )
                .ok_or_else(|| {
                    mismatch(format!(
                        "item {plan_index} names image {} of dataset {}, which the scan does not have: plan the scan of this config",
                        planned.image, planned.dataset
                    ))
                })?;
            Ok(Planned {
                planned,
                plan_index,
                image,
                dataset,
                sources: field_sources(dataset, image),
            })
        })
        .collect()
}

/// The fields a dataset asks for, with their sources, for one image.
fn field_sources(cfg: &DatasetConfig, img: &ScannedImage) -> Vec<FieldSource> {
    let field = |field: String, source: &PathBuf, convert, mask| FieldSource {
        field,
        source: source.clone(),
        convert,
        size: ControlSize::Item,
        mask,
        squaring: None,
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
            let convert = Convert::RgbOver(cfg.control_transparent_color);
            out.push(FieldSource {
                size: cfg.control_size,
                ..field(cfg.control_size.field(n), c, convert, None)
            });
        }
    }
    if let Some(p) = &img.inpaint {
        out.push(field("inpaint".into(), p, Convert::Rgba, None));
    }
    // Left out by `item_plans` where CLIP encoders' embeddings stand for it.
    if let Some(p) = &img.clip_image {
        out.push(FieldSource {
            size: ControlSize::Native,
            squaring: Some(Squaring::of(cfg)),
            ..field(CLIP_IMAGE.into(), p, Convert::Rgb, None)
        });
    }
    out
}

fn convert_params(what: &FieldSource) -> String {
    let (convert, size, mask) = (what.convert, what.size, what.mask);
    let mut base = match convert {
        Convert::Rgb => "rgb".to_owned(),
        Convert::RgbOver(c) => format!("rgb-over:{},{},{}", c[0], c[1], c[2]),
        Convert::Rgba => "rgba".to_owned(),
        Convert::Luma => "luma601".to_owned(),
        Convert::Alpha => "alpha".to_owned(),
    };
    // The item's geometry is in the item key already; an own size is said here.
    match size {
        ControlSize::Item => {}
        ControlSize::Square512 => base.push_str(";size=512x512"),
        ControlSize::Native => base.push_str(";size=native"),
    }
    if let Some(squaring) = what.squaring {
        base.push(';');
        base.push_str(squaring.key_text());
    }
    match mask {
        Some((invert, min)) => format!("{base};invert={invert};min={min}"),
        None => base,
    }
}

/// Content hashes of the source files the items need; a file that cannot be read becomes an
/// `Unreadable` finding (under the first dataset that needs it) in `report`.
pub(super) fn source_hashes(
    catalog: &Catalog,
    items: &[Planned<'_>],
    report: &mut PrepareReport,
) -> Result<HashMap<PathBuf, String>> {
    let mut dataset_of: HashMap<&Path, usize> = HashMap::new();
    for item in items {
        let sources = item.sources.iter().map(|f| f.source.as_path());
        for path in sources.chain(item.image.clip_image.as_deref()) {
            dataset_of.entry(path).or_insert(item.planned.dataset);
        }
    }
    let mut all_sources: Vec<PathBuf> = dataset_of.keys().map(|p| p.to_path_buf()).collect();
    all_sources.sort();
    let hashes = hash_sources(catalog, &all_sources)?;
    report.sources_hashed = hashes.hashed;
    for (p, e) in &hashes.failures {
        report.findings.push(Finding::new(
            dataset_of.get(p.as_path()).copied().unwrap_or(0),
            FindingKind::Unreadable,
            p,
            format!("cannot read while hashing: {e}"),
        ));
    }
    Ok(hashes.hashes)
}

/// The items with their keys: an item any of whose sources could not be hashed is left out
/// (its finding is recorded already).
pub(super) fn item_plans<'a>(
    items: Vec<Planned<'a>>,
    hashes: &HashMap<PathBuf, String>,
    encoders: &Encoders,
    options: &PrepareOptions,
) -> Vec<ItemPlan<'a>> {
    let codec_name = options.image_codec.name();
    items
        .into_iter()
        .filter(|item| item.sources.iter().all(|f| hashes.contains_key(&f.source)))
        .filter_map(|item| {
            let planned = item.planned;
            let frames = clip_frames(&item);
            let file_hash = hashes.get(&item.image.path)?;
            // A clip's content is the frames it trains with: its hash, and so every key of the
            // item, names them.
            let content_hash = match &frames {
                Some(f) => clip_hash(file_hash, f),
                None => file_hash.clone(),
            };
            let ikey = item_key(&content_hash, &planned.placement, planned.flip);
            let clip_image = (item.image.clip_image.as_ref())
                .and_then(|p| Some((p.clone(), hashes.get(p)?.clone())));
            // CLIP sees the dataset's CLIP image where it has them; its key follows that image.
            let clip_source = match (&item.dataset.clip_image_path, &clip_image) {
                (None, _) => ClipSource::Item(&content_hash),
                (Some(_), Some((_, hash))) => {
                    ClipSource::Reference(hash, Squaring::of(item.dataset))
                }
                (Some(_), None) => ClipSource::Missing,
            };
            let encoded = encoded_fields(
                encoders,
                options,
                &ikey,
                &content_hash,
                clip_source,
                planned.flip,
            );
            let first_frame = match frames {
                Some(_) if item.dataset.encode_first_frame => {
                    first_frame_fields(encoders, options, &ikey, &content_hash)
                }
                _ => Vec::new(),
            };
            let audio = match (item.dataset.audio, &frames, item.image.video) {
                (Some(rule), Some(_), Some(video)) if video.audio.is_some() => {
                    let f = &item.dataset.frames;
                    let params = format!(
                        "normalize={};fps={};auto={};trim={}",
                        rule.normalize, f.fps, f.auto_frame_count, f.trim_auto_frame_count_tail
                    );
                    Some(super::audio::audio_keys(&content_hash, &params))
                }
                _ => None,
            };
            let controls = (item.sources.iter())
                .filter(|f| f.field.starts_with("control"))
                .filter_map(|f| Some((f.source.clone(), hashes.get(&f.source)?.clone())))
                .collect();
            // With its embeddings cached, AI Toolkit's loader gives the item its CLIP
            // embeddings instead of the image; without a CLIP encoder to compute them, the
            // image is kept (and prepare warns).
            let clip_embedded = item.dataset.cache.clip_vision_to_disk && !encoders.clip.is_empty();
            let fields = item
                .sources
                .into_iter()
                .filter(|what| options.store_pixels || what.field != "pixels")
                .filter(|what| what.field != CLIP_IMAGE || !clip_embedded)
                .map(|what| {
                    let params = convert_params(&what);
                    let src_hash = hashes
                        .get(&what.source)
                        .map(String::as_str)
                        .unwrap_or_default();
                    let owner =
                        entry_owner(&ikey, what.size, what.squaring.is_some(), planned.flip);
                    let key = entry_key(
                        &owner,
                        &what.field,
                        src_hash,
                        &params,
                        &codec_name,
                        PIPELINE,
                    );
                    FieldJob { what, key }
                })
                .collect();
            Some(ItemPlan {
                planned,
                plan_index: item.plan_index,
                image: item.image,
                dataset: item.dataset,
                content_hash,
                item_key: ikey,
                fields,
                encoded,
                first_frame,
                audio,
                controls,
                clip_image,
                frames,
            })
        })
        .collect()
}

/// The frame indices of a planned clip, as its dataset chooses them.
fn clip_frames(item: &Planned<'_>) -> Option<Vec<u64>> {
    let (clip, video) = item.planned.clip.zip(item.image.video)?;
    Some(
        item.dataset
            .frames
            .select(video.frames, video.fps, clip.start),
    )
}

/// The content hash of the frames `frames` of the video whose file hashes to `file_hash`.
fn clip_hash(file_hash: &str, frames: &[u64]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(file_hash.as_bytes());
    h.update(crate::video::PIPELINE.as_bytes());
    for f in frames {
        h.update(&f.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The entries to compute for the image fields: referenced, not in `stored`, each once (`seen`
/// collects every key referenced); grouped by bucket so that a batch reads from few shards.
pub(super) fn field_todo<'p, 'a>(
    items: &'p [ItemPlan<'a>],
    stored: &HashSet<String>,
    seen: &mut HashSet<&'p str>,
) -> Vec<(&'p ItemPlan<'a>, &'p FieldJob)> {
    let mut todo = Vec::new();
    for item in items {
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
    todo
}

/// The key of an image encoder's entry for an item: the item (content and geometry), the
/// field, the encoder's identity and input format, and the codec.
pub(super) fn image_encoder_key(
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

/// The field an image encoder's first-frame latents are stored as.
pub(super) fn first_frame_field(field: &str) -> String {
    format!("{field}.first_frame")
}

/// The entry keys of a clip's first-frame fields, one per image encoder in order: the
/// encoder's key with the field named for the first frame.
fn first_frame_fields(
    encoders: &Encoders,
    options: &PrepareOptions,
    item_key: &str,
    content_hash: &str,
) -> Vec<(String, String)> {
    let codec = options.latent_codec.name();
    (encoders.image.iter())
        .map(|(name, e)| {
            let field = first_frame_field(name);
            let key = image_encoder_key(
                item_key,
                content_hash,
                &field,
                &e.identity(),
                e.pixel_format(),
                &codec,
            );
            (field, key)
        })
        .collect()
}

/// What of its item a field's entry key names (`item_key`: the item's). A field that follows
/// the item's geometry depends on all of it; a control of its own size on none of it, so the
/// item's flipped copies and other resolutions share one entry; a CLIP image (`squared`) on the
/// item's flip alone. `larder diagnose` counts entries by the same rule.
pub(crate) fn entry_owner(item_key: &str, size: ControlSize, squared: bool, flip: Flip) -> String {
    match (squared, size) {
        (true, _) => format!("own size, flip {}", flip.name()),
        (false, ControlSize::Item) => item_key.to_owned(),
        (false, ControlSize::Square512 | ControlSize::Native) => "own size".into(),
    }
}

/// What a CLIP entry's key names as its source.
#[derive(Clone, Copy)]
enum ClipSource<'h> {
    /// The item's own image, by content hash.
    Item(&'h str),
    /// The dataset's CLIP image for the item, by content hash, and its squaring.
    Reference(&'h str, Squaring),
    /// The dataset has CLIP images but none for this item: its CLIP entries fail.
    Missing,
}

/// The entry keys of an item's encoder fields: image encoders in order, then CLIP encoders.
fn encoded_fields(
    encoders: &Encoders,
    options: &PrepareOptions,
    item_key: &str,
    content_hash: &str,
    clip_source: ClipSource<'_>,
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
        let source = match clip_source {
            ClipSource::Item(hash) => hash.to_owned(),
            ClipSource::Reference(hash, squaring) => format!("{hash};{}", squaring.key_text()),
            ClipSource::Missing => format!("{content_hash};no-clip-image"),
        };
        // An encoder that takes u8 pixels preprocesses them itself (`Input::Clip(None)`).
        let preprocess = match e.pixel_format() {
            PixelFormat::U8 => "own-size-u8".to_owned(),
            PixelFormat::SignedUnit => options.clip.key_text(),
        };
        let key = encoded::clip_key(&source, flip, &preprocess, name, &identity, &codec);
        (name.clone(), key)
    });
    image.chain(clip).collect()
}
