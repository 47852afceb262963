//! One entry of the `datasets:` list: every AI Toolkit `DatasetConfig` key, plus larder's own.

use std::path::{Path, PathBuf};

use super::extract::{At, is_unset};
use super::keys;
use super::yaml::Node;
use super::{ConfigWarning, resolve_path};
use crate::{Error, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS`: AI Toolkit's decoder warns above this many pixels and
/// refuses twice as many, as a defence against decompression bombs. larder leaves such images
/// out at scan time, from the header, so that `prepare` never decodes them.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// How images are assigned to buckets.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "strategy")]
pub enum BucketStrategy {
    /// AI Toolkit's area-based buckets (the default): the largest size of at most R² pixels,
    /// sides divisible by the model's divisibility, closest in area to the image.
    AiToolkit,
    /// kohya sd-scripts' predefined bucket list: the bucket with the closest aspect ratio.
    Kohya {
        /// Smallest bucket side.
        min_reso: u32,
        /// Largest bucket side.
        max_reso: u32,
        /// Bucket sides are multiples of this.
        reso_steps: u32,
        /// Never scale an image up: buckets are cut from the image's own size.
        no_upscale: bool,
    },
    /// A fixed list of bucket sizes from the user: the bucket with the closest aspect ratio.
    List {
        /// The allowed (width, height) sizes.
        sizes: Vec<(u32, u32)>,
    },
}

/// Where a dataset's images are listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Source {
    /// A folder, walked recursively.
    Folder(PathBuf),
    /// AI Toolkit's JSON dataset file: `{"<image path>": {"caption": ..., "caption_short": ...}}`.
    AitkJson(PathBuf),
    /// A JSON-lines file of records `{"path", "caption", "width", "height"}`.
    Jsonl(PathBuf),
    /// A CSV file with a header row naming the columns `path`, `caption`, `width`, `height`.
    Csv(PathBuf),
}

impl Source {
    /// The folder or file the dataset comes from.
    pub fn path(&self) -> &Path {
        match self {
            Source::Folder(p) | Source::AitkJson(p) | Source::Jsonl(p) | Source::Csv(p) => p,
        }
    }
}

/// Caching switches; they take effect in `larder prepare`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CacheOptions {
    /// `cache_latents`: keep VAE latents (larder always keeps them in its store when set).
    pub latents: bool,
    /// `cache_latents_to_disk`.
    pub latents_to_disk: bool,
    /// `cache_text_embeddings`.
    pub text_embeddings: bool,
    /// `cache_clip_vision_to_disk`.
    pub clip_vision_to_disk: bool,
}

/// The keys AI Toolkit passes to its PyTorch `DataLoader`, as written in the dataset entry.
///
/// larder's loader does not read them: it is configured where it is built (`num_threads` and
/// `prefetch` of `larder.DataLoader`, [`crate::load::LoaderOptions`] in Rust), so each of these
/// keys warns once when set. They are kept because `larder diagnose` models AI Toolkit's own
/// DataLoader from them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DataloaderKeys {
    /// `num_workers` (AI Toolkit default 2): AI Toolkit's worker processes.
    pub num_workers: u32,
    /// `persistent_workers` (default false): whether AI Toolkit keeps its workers between epochs.
    pub persistent_workers: bool,
    /// `prefetch_factor` (default 2): batches each AI Toolkit worker prepares ahead.
    pub prefetch_factor: u32,
    /// `gpu_prefetch_batches` (default 0): batches AI Toolkit copies to the GPU ahead of use.
    pub gpu_prefetch_batches: u32,
}

impl Default for DataloaderKeys {
    fn default() -> Self {
        DataloaderKeys {
            num_workers: 2,
            persistent_workers: false,
            prefetch_factor: 2,
            gpu_prefetch_batches: 0,
        }
    }
}

/// What larder does in place of each of AI Toolkit's DataLoader keys, for its warning.
fn dataloader_key_instead(key: &str) -> &'static str {
    match key {
        "num_workers" => {
            "larder's loader runs reader threads in the training process instead of worker processes: set them with `num_threads` of `larder.DataLoader` (Rust: `LoaderOptions::threads`)"
        }
        "persistent_workers" => {
            "larder's reader threads always live as long as the loader, across epochs"
        }
        "prefetch_factor" => {
            "larder's loader assembles batches ahead with `prefetch` of `larder.DataLoader` (default 4; Rust: `LoaderOptions::prefetch`)"
        }
        _ => {
            "copy batches to the GPU ahead of use with `larder.torch.CudaPrefetcher(loader, depth=N)`"
        }
    }
}

/// One dataset as configured. A `resolution` list stays one entry here, with several
/// resolutions; the plan expands it into one dataset per resolution, as AI Toolkit does.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatasetConfig {
    /// Where the images are listed (`folder_path` or `dataset_path`).
    pub source: Source,
    /// Caption file extension including the dot (`caption_ext`, default `.txt`).
    pub caption_ext: String,
    /// Caption for images whose caption file is missing or blank.
    pub default_caption: Option<String>,
    /// Replaces `[trigger]`/`[name]` and is prepended to captions that lack it.
    pub trigger_word: Option<String>,
    /// Words of which some are appended to each caption.
    pub random_triggers: Vec<String>,
    /// How many random triggers to append (a random count up to this when above 1).
    pub random_triggers_max: u32,
    /// `(from, to)` substring replacements applied to every loaded caption.
    pub replacements: Vec<(String, String)>,
    /// Probability of training an item with an empty caption.
    pub caption_dropout_rate: f64,
    /// Probability of dropping each comma-separated token (after the first `keep_tokens`).
    pub token_dropout_rate: f64,
    /// Number of leading tokens never dropped.
    pub keep_tokens: u32,
    /// Shuffle the comma-separated tokens.
    pub shuffle_tokens: bool,
    /// Use the `caption_short` of a JSON dataset file.
    pub use_short_captions: bool,
    /// Target resolutions (side of the square of equal area); one planned dataset each.
    pub resolutions: Vec<u32>,
    /// `bucket_tolerance` as written (AI Toolkit overrides it with the model's divisibility).
    pub bucket_tolerance: Option<u32>,
    /// Bucket images (default true); when false every image is center-cropped to R×R.
    pub buckets: bool,
    /// Factor applied to each image's size before bucketing.
    pub scale: f64,
    /// Random rather than centered crop, drawn once per item from the seed.
    pub random_crop: bool,
    /// Resize the short side to R and crop an R×R square.
    pub square_crop: bool,
    /// Add a horizontally flipped copy of every item.
    pub flip_x: bool,
    /// Add a vertically flipped copy of every item (after `flip_x` copies).
    pub flip_y: bool,
    /// How many times the item list is repeated.
    pub num_repeats: u32,
    /// Folders of control images paired by file stem.
    pub control_paths: Vec<PathBuf>,
    /// Background color for transparent control images.
    pub control_transparent_color: [u8; 3],
    /// `control_from_same_folder` with `num_controls_from_same_folder`: each image's controls
    /// are this many other images of its own folder (drawn from the seed), in place of
    /// `control_path`'s.
    pub controls_from_same_folder: Option<u32>,
    /// Which frames of each video the dataset trains on; a video dataset when
    /// [`FrameRule::is_video`].
    pub frames: FrameRule,
    /// `do_i2v`: each clip's first chosen frame is also encoded on its own by every image
    /// encoder (the `<field>.first_frame` latents image-to-video models start from). Clips
    /// only: AI Toolkit ignores the key for images.
    pub encode_first_frame: bool,
    /// `do_audio` (with `audio_normalize`): each clip's audio under the frames it trains with,
    /// stored as `audio` beside its frames. Clips only.
    pub audio: Option<AudioRule>,
    /// The size control images are stored at (see [`ControlSize`]): from
    /// `full_size_control_images` and the model.
    pub control_size: ControlSize,
    /// Folder of masks paired by file stem.
    pub mask_path: Option<PathBuf>,
    /// Use the image's alpha channel as the mask.
    pub alpha_mask: bool,
    /// Invert masks.
    pub invert_mask: bool,
    /// Masks are mapped from [0, 1] to [mask_min_value, 1].
    pub mask_min_value: f64,
    /// Folder of RGBA inpainting images paired by stem.
    pub inpaint_path: Option<PathBuf>,
    /// Folder of the images CLIP encoders see in place of each item's own, paired by stem
    /// (`clip_image_path`: the reference images of IP-Adapter-style training).
    pub clip_image_path: Option<PathBuf>,
    /// A regularization dataset (the trigger word is not forced into captions).
    pub is_reg: bool,
    /// Weight of the network for this dataset.
    pub network_weight: f64,
    /// Loss multiplier for this dataset's items.
    pub loss_multiplier: f64,
    /// Caching switches.
    pub cache: CacheOptions,
    /// AI Toolkit's DataLoader keys, as written; larder's loader does not read them.
    pub loader: DataloaderKeys,
    /// larder: the seed of every random choice for this dataset (crops, captions, order).
    pub seed: u64,
    /// larder: the bucket strategy.
    pub bucket_strategy: BucketStrategy,
    /// larder: images with more pixels than this are left out with a finding; `None` for no
    /// limit. Default [`DEFAULT_MAX_IMAGE_PIXELS`].
    pub max_image_pixels: Option<u64>,
    /// `batch_size`: this dataset's batch size, overriding the loader's (the trainer's).
    pub batch_size: Option<u32>,
    /// `prior_reg`: the dataset is a prior-preservation set (read, not yet used).
    pub prior_reg: bool,
    /// `diff_output_preservation`: build DOP captions, with the trigger word replaced by
    /// `diff_output_preservation_class` (read, not yet used).
    pub diff_output_preservation: bool,
    /// `diff_output_preservation_class`: the class word of DOP captions (read, not yet used).
    pub diff_output_preservation_class: Option<String>,
}

/// Reads one dataset entry. `defaults` holds larder keys from the top-level `larder:` section.
pub(crate) fn parse_dataset(
    at: &At<'_>,
    node: &Node,
    larder: &LarderDefaults,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<DatasetConfig> {
    let entries = at.map(node)?;
    let mut cfg = DatasetConfig::defaults(Source::Folder(PathBuf::new()), larder);
    let mut source: Option<(String, &Node, At<'_>)> = None;
    let mut caption_type: Option<String> = None;
    let mut numbered_controls: Vec<(u8, PathBuf)> = Vec::new();
    let mut random_triggers_max_node: Option<&Node> = None;
    let mut kohya: Option<&Node> = None;
    let mut bucket_list: Option<&Node> = None;
    let mut strategy_node: Option<&Node> = None;
    let mut batch_size_node: Option<&Node> = None;
    let (mut same_folder, mut same_folder_count) = (false, 1);
    let (mut do_audio, mut audio_normalize) = (false, false);

    for (key_node, v) in entries {
        let key = key_node.as_key().unwrap_or_default();
        let a = at.child(key);
        match key {
            "folder_path" | "dataset_path" => {
                // AI Toolkit prefers dataset_path when both are given.
                if key == "dataset_path" || source.is_none() {
                    let text = a.string(v)?;
                    source = Some((text, v, a));
                }
            }
            "caption_ext" => {
                if let Some(ext) = a.opt_string(v)? {
                    cfg.caption_ext = if ext.starts_with('.') {
                        ext
                    } else {
                        format!(".{ext}")
                    };
                }
            }
            "caption_type" => caption_type = a.opt_string(v)?,
            "default_caption" => cfg.default_caption = a.opt_string(v)?,
            "trigger_word" => cfg.trigger_word = a.opt_string(v)?,
            "random_triggers" => cfg.random_triggers = random_triggers(&a, v)?,
            "random_triggers_max" => {
                cfg.random_triggers_max = a.uint(v, 0, 1_000)?;
                random_triggers_max_node = Some(v);
            }
            "replacements" => {
                cfg.replacements = a
                    .strings(v)?
                    .into_iter()
                    .map(|r| match r.split_once('|') {
                        Some((from, to)) if !from.is_empty() && !to.contains('|') => {
                            Ok((from.to_owned(), to.to_owned()))
                        }
                        _ => Err(a.error(v, format!("expected \"from|to\" strings, found {r:?}"))),
                    })
                    .collect::<Result<_>>()?;
            }
            "caption_dropout_rate" => cfg.caption_dropout_rate = a.float(v, 0.0, 1.0)?,
            "token_dropout_rate" => cfg.token_dropout_rate = a.float(v, 0.0, 1.0)?,
            "keep_tokens" => cfg.keep_tokens = a.uint(v, 0, 10_000)?,
            "shuffle_tokens" => cfg.shuffle_tokens = a.bool(v)?,
            "use_short_captions" => cfg.use_short_captions = a.bool(v)?,
            "resolution" => cfg.resolutions = resolutions(&a, v)?,
            "bucket_tolerance" => cfg.bucket_tolerance = Some(a.uint(v, 1, 1024)?),
            "buckets" => cfg.buckets = a.bool(v)?,
            "scale" => cfg.scale = a.float(v, f64::MIN_POSITIVE, 64.0)?,
            "random_crop" => cfg.random_crop = a.bool(v)?,
            "square_crop" => cfg.square_crop = a.bool(v)?,
            "flip_x" => cfg.flip_x = a.bool(v)?,
            "flip_y" => cfg.flip_y = a.bool(v)?,
            "num_repeats" => cfg.num_repeats = a.uint(v, 1, 1_000_000)?,
            "control_path" => {
                cfg.control_paths = a
                    .strings(v)?
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| resolve_path(at.file, &p))
                    .collect();
            }
            "control_path_1" | "control_path_2" | "control_path_3" => {
                if let Some(p) = a.opt_string(v)? {
                    let n = key.as_bytes()[key.len() - 1];
                    numbered_controls.push((n, resolve_path(at.file, &p)));
                }
            }
            "control_transparent_color" => cfg.control_transparent_color = color(&a, v)?,
            "control_from_same_folder" => same_folder = a.bool(v)?,
            "num_controls_from_same_folder" => same_folder_count = a.uint(v, 1, 64)?,
            "num_frames" => cfg.frames.num_frames = a.uint(v, 1, 100_000)?,
            "shrink_video_to_frames" => cfg.frames.shrink_video_to_frames = a.bool(v)?,
            "fps" => cfg.frames.fps = a.float(v, 0.001, 10_000.0)?,
            "auto_frame_count" => {
                cfg.frames.auto_frame_count = a.bool(v)?;
                if let (true, Some(arch)) = (cfg.frames.auto_frame_count, &larder.own_frame_grid) {
                    return Err(a.error(
                        v,
                        format!("{arch} counts frames on a grid of its own, which larder does not know; set `num_frames` instead"),
                    ));
                }
            }
            "trim_auto_frame_count_tail" => cfg.frames.trim_auto_frame_count_tail = a.bool(v)?,
            "do_i2v" => cfg.encode_first_frame = a.bool(v)?,
            "do_audio" => do_audio = a.bool(v)?,
            "audio_normalize" => audio_normalize = a.bool(v)?,
            // AI Toolkit's default is true; false scales every control to 512x512.
            "full_size_control_images" => {
                if !a.bool(v)? {
                    cfg.control_size = ControlSize::Square512;
                }
            }
            "mask_path" => cfg.mask_path = a.opt_string(v)?.map(|p| resolve_path(at.file, &p)),
            "clip_image_path" => {
                cfg.clip_image_path = a.opt_string(v)?.map(|p| resolve_path(at.file, &p))
            }
            "alpha_mask" => cfg.alpha_mask = a.bool(v)?,
            "invert_mask" => cfg.invert_mask = a.bool(v)?,
            "mask_min_value" => cfg.mask_min_value = a.float(v, 0.0, 1.0)?,
            "inpaint_path" => {
                cfg.inpaint_path = a.opt_string(v)?.map(|p| resolve_path(at.file, &p))
            }
            "is_reg" => cfg.is_reg = a.bool(v)?,
            "network_weight" => cfg.network_weight = a.float(v, -1e6, 1e6)?,
            "loss_multiplier" => cfg.loss_multiplier = a.float(v, 0.0, 1e6)?,
            "cache_latents" => cfg.cache.latents = a.bool(v)?,
            "cache_latents_to_disk" => cfg.cache.latents_to_disk = a.bool(v)?,
            "cache_text_embeddings" => cfg.cache.text_embeddings = a.bool(v)?,
            "cache_clip_vision_to_disk" => cfg.cache.clip_vision_to_disk = a.bool(v)?,
            "num_workers" | "persistent_workers" | "prefetch_factor" | "gpu_prefetch_batches" => {
                // Null is unset; 0 and false are values (`num_workers: 0` is AI Toolkit's
                // load-in-the-main-process setting, which `larder diagnose` models).
                if let super::yaml::Value::Null = v.value {
                    continue;
                }
                match key {
                    "num_workers" => cfg.loader.num_workers = a.uint(v, 0, 1024)?,
                    "persistent_workers" => cfg.loader.persistent_workers = a.bool(v)?,
                    "prefetch_factor" => cfg.loader.prefetch_factor = a.uint(v, 1, 1024)?,
                    _ => cfg.loader.gpu_prefetch_batches = a.uint(v, 0, 1024)?,
                }
                // Once per config, not once per dataset: job files repeat these keys in every
                // dataset entry, and the answer is the same for each.
                let message = format!(
                    "not read by larder's loader; {}; ignored",
                    dataloader_key_instead(key)
                );
                if !warnings.iter().any(|w| w.message == message) {
                    warnings.push(ConfigWarning::new(&a, key_node.line, message));
                }
            }
            // The loader batches this dataset at this size (recorded in the store).
            "batch_size" => {
                cfg.batch_size = match &v.value {
                    super::yaml::Value::Null => None,
                    _ => Some(a.uint(v, 1, 1_000_000)?),
                };
                batch_size_node = Some(v);
            }
            // AI Toolkit keys added in 2026-08: typed and kept, not acted on yet.
            "prior_reg" => {
                cfg.prior_reg = a.bool(v)?;
                if cfg.prior_reg {
                    warnings.push(not_acted_on(&a, key_node, "prior-preservation datasets"));
                }
            }
            "diff_output_preservation" => {
                cfg.diff_output_preservation = a.bool(v)?;
                if cfg.diff_output_preservation {
                    warnings.push(not_acted_on(
                        &a,
                        key_node,
                        "differential output preservation captions",
                    ));
                }
            }
            "diff_output_preservation_class" => {
                cfg.diff_output_preservation_class = a.opt_string(v)?;
                if cfg.diff_output_preservation_class.is_some() {
                    warnings.push(not_acted_on(
                        &a,
                        key_node,
                        "differential output preservation captions",
                    ));
                }
            }
            "cache_tensors_to_disk" => {
                if a.bool(v)? {
                    warnings.push(not_acted_on(
                        &a,
                        key_node,
                        "caching video and audio tensors",
                    ));
                }
            }
            "cache_latents_num_workers" => {
                if let super::yaml::Value::Null = v.value {
                } else {
                    a.uint(v, 0, 1024)?;
                    warnings.push(ConfigWarning::new(
                        &a,
                        key_node.line,
                        "not acted on by larder: `larder prepare` sizes its own decode threads; ignored".into(),
                    ));
                }
            }
            // larder's own keys.
            "seed" => cfg.seed = a.int(v, 0, i64::MAX)? as u64,
            "bucket_strategy" => strategy_node = Some(v),
            "kohya_buckets" => kohya = Some(v),
            "bucket_list" => bucket_list = Some(v),
            "max_image_pixels" => cfg.max_image_pixels = max_image_pixels(&a, v)?,
            // Recognised with nothing to do: larder always reads sizes from headers, fast.
            "fast_image_size" => {
                a.bool(v)?;
            }
            "type" => {
                let t = a.string(v)?;
                if t != "image" {
                    return Err(
                        a.error(v, format!("only `type: image` datasets exist, found {t:?}"))
                    );
                }
            }
            _ => {
                if let Some(reason) = not_implemented(key) {
                    if !is_unset(&v.value) && !is_default(key, v) {
                        warnings.push(ConfigWarning::not_served(
                            &a,
                            key_node.line,
                            format!("not implemented by larder yet ({reason}); ignored"),
                        ));
                    }
                } else {
                    warnings.push(keys::unknown_in(&a, key_node, keys::DATASET));
                }
            }
        }
    }

    // AI Toolkit's legacy `caption_type` replaces caption_ext verbatim, without adding a dot.
    if let Some(t) = caption_type {
        cfg.caption_ext = t;
    }
    // `control_path_1..3` replace `control_path` when any of them is set.
    if !numbered_controls.is_empty() {
        numbered_controls.sort_by_key(|(n, _)| *n);
        cfg.control_paths = numbered_controls.into_iter().map(|(_, p)| p).collect();
    }
    // AI Toolkit draws same-folder controls in place of `control_path`'s when both are set.
    if same_folder {
        cfg.controls_from_same_folder = Some(same_folder_count);
    }
    if do_audio {
        cfg.audio = Some(AudioRule {
            normalize: audio_normalize,
        });
    }
    if let Some(node) = random_triggers_max_node
        && cfg.random_triggers_max as usize > cfg.random_triggers.len()
        && !cfg.random_triggers.is_empty()
    {
        return Err(at.child("random_triggers_max").error(
            node,
            format!(
                "asks for up to {} random triggers but `random_triggers` has only {}",
                cfg.random_triggers_max,
                cfg.random_triggers.len()
            ),
        ));
    }
    // Without buckets AI Toolkit batches all datasets together, so one cannot have its own size.
    if let Some(node) = batch_size_node
        && cfg.batch_size.is_some()
        && !cfg.buckets
    {
        return Err(at.child("batch_size").error(
            node,
            "a dataset's own batch size needs buckets (`buckets: false` batches every dataset together, at the trainer's batch size)",
        ));
    }
    if let Some(strategy) = parse_bucket_strategy(at, strategy_node, kohya, bucket_list)? {
        cfg.bucket_strategy = strategy;
    }
    let Some((text, node, a)) = source else {
        return Err(at.error(
            node,
            "needs `folder_path` (or `dataset_path`): the folder of images",
        ));
    };
    cfg.source = source_of(&a, node, &text)?;
    Ok(cfg)
}

impl DatasetConfig {
    /// A number that names `path` within this dataset, for seeding the random choices made
    /// for it (crops, frames, same-folder controls): from its path inside the dataset, not its
    /// position in the folder nor where the dataset lives, so that adding an image changes no
    /// other image's choices and a moved dataset keeps them.
    pub(crate) fn path_key(&self, path: &Path) -> u64 {
        let root = match &self.source {
            Source::Folder(dir) => dir.as_path(),
            other => other.path().parent().unwrap_or(other.path()),
        };
        let relative = path.strip_prefix(root).unwrap_or(path);
        let hash = blake3::hash(relative.to_string_lossy().as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// A dataset reading `source` with every setting at its default.
    pub fn new(source: Source) -> Self {
        Self::defaults(source, &LarderDefaults::default())
    }

    fn defaults(source: Source, larder: &LarderDefaults) -> Self {
        DatasetConfig {
            source,
            caption_ext: ".txt".to_owned(),
            default_caption: None,
            trigger_word: None,
            random_triggers: Vec::new(),
            random_triggers_max: 1,
            replacements: Vec::new(),
            caption_dropout_rate: 0.0,
            token_dropout_rate: 0.0,
            keep_tokens: 0,
            shuffle_tokens: false,
            use_short_captions: false,
            resolutions: vec![512],
            bucket_tolerance: None,
            buckets: true,
            scale: 1.0,
            random_crop: false,
            square_crop: false,
            flip_x: false,
            flip_y: false,
            num_repeats: 1,
            control_paths: Vec::new(),
            control_transparent_color: [0, 0, 0],
            controls_from_same_folder: None,
            frames: FrameRule {
                temporal_compression: larder.temporal_compression.unwrap_or(8),
                ..FrameRule::default()
            },
            encode_first_frame: false,
            audio: None,
            control_size: if larder.raw_control_images {
                ControlSize::Native
            } else {
                ControlSize::Item
            },
            mask_path: None,
            clip_image_path: None,
            alpha_mask: false,
            invert_mask: false,
            mask_min_value: 0.0,
            inpaint_path: None,
            is_reg: false,
            network_weight: 1.0,
            loss_multiplier: 1.0,
            cache: CacheOptions::default(),
            loader: DataloaderKeys::default(),
            seed: larder.seed,
            bucket_strategy: larder.bucket_strategy.clone(),
            max_image_pixels: larder.max_image_pixels,
            batch_size: None,
            prior_reg: false,
            diff_output_preservation: false,
            diff_output_preservation_class: None,
        }
    }
}

/// larder keys that the top-level `larder:` section sets for every dataset.
#[derive(Debug, Clone)]
pub(crate) struct LarderDefaults {
    pub seed: u64,
    pub bucket_strategy: BucketStrategy,
    pub max_image_pixels: Option<u64>,
    /// The model takes its control images at their own size (AI Toolkit's
    /// `use_raw_control_images`).
    pub raw_control_images: bool,
    /// Frames per latent frame of the model's VAE (`larder.temporal_compression`, else the
    /// model's; `None`: AI Toolkit's default, 8).
    pub temporal_compression: Option<u32>,
    /// The architecture, when its AI Toolkit class counts frames on a grid of its own
    /// (`get_frame_count_snapper`), which `auto_frame_count` would need.
    pub own_frame_grid: Option<String>,
}

impl Default for LarderDefaults {
    fn default() -> Self {
        LarderDefaults {
            seed: 0,
            bucket_strategy: BucketStrategy::AiToolkit,
            max_image_pixels: Some(DEFAULT_MAX_IMAGE_PIXELS),
            raw_control_images: false,
            temporal_compression: None,
            own_frame_grid: None,
        }
    }
}

/// A video dataset's frame settings (`num_frames`, `shrink_video_to_frames`, `fps`,
/// `auto_frame_count`, `trim_auto_frame_count_tail`) and the model's temporal compression.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FrameRule {
    /// Frames per clip (ignored by `auto_frame_count`).
    pub num_frames: u32,
    /// Spread the frames over the whole clip (true), or take them at `fps` from a drawn start.
    pub shrink_video_to_frames: bool,
    /// The frame rate the model trains at.
    pub fps: f64,
    /// As many frames as the clip lasts at `fps`, snapped to the model's frame rule.
    pub auto_frame_count: bool,
    /// With `auto_frame_count`: take frames at `fps` from the start and drop the tail that does
    /// not fit, instead of spreading them over the clip.
    pub trim_auto_frame_count_tail: bool,
    /// Frames per latent frame of the model's VAE (AI Toolkit's `temporal_compression`, 8
    /// unless the model says otherwise; Wan's VAE has 4).
    pub temporal_compression: u32,
}

/// How a clip's audio is taken (`do_audio`): see `video::audio` for what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioRule {
    /// `audio_normalize`: the whole track scaled to a peak of 0.999 before it is cut.
    pub normalize: bool,
}

impl Default for FrameRule {
    /// AI Toolkit's defaults.
    fn default() -> Self {
        FrameRule {
            num_frames: 1,
            shrink_video_to_frames: true,
            fps: 24.0,
            auto_frame_count: false,
            trim_auto_frame_count_tail: true,
            temporal_compression: 8,
        }
    }
}

impl FrameRule {
    /// Returns true if and only if the dataset is a video dataset: AI Toolkit reads videos only
    /// when `num_frames` is above 1 or `auto_frame_count` is set.
    pub fn is_video(&self) -> bool {
        self.num_frames > 1 || self.auto_frame_count
    }
}

/// The size a dataset's control images are stored at, as AI Toolkit's `load_control_image`
/// gives them to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlSize {
    /// Through the item's own geometry (flip, resize, crop), pixel for pixel with its image:
    /// AI Toolkit's default.
    Item,
    /// Scaled to 512x512 with a bicubic filter, neither flipped nor cropped
    /// (`full_size_control_images: false`).
    Square512,
    /// As decoded, at the control image's own size: models that set `use_raw_control_images`
    /// (Qwen-Image-Edit-Plus, FLUX.2, ...). Stored as `control_raw.N`, served per item.
    Native,
}

/// The field of an item's CLIP image (`clip_image_path`) where its CLIP embeddings are not
/// cached: flipped as the item, squared as AI Toolkit squares it, at its own size, one tensor
/// per item in a batch (AI Toolkit's `clip_image_tensor` before the adapter's processor).
pub const CLIP_IMAGE: &str = "clip_image";

/// The field prefix of control images kept at their own size (`control_raw.0`, ...): a batch
/// carries them one array per item rather than stacked, since their sizes differ.
pub const RAW_CONTROL: &str = "control_raw";

impl ControlSize {
    /// The store field of an item's `n`th control image: `control.N`, stacked across a batch
    /// like the item's image, or `control_raw.N` for controls at their own size, which a batch
    /// carries one per item (AI Toolkit's `control_tensor_list`).
    pub fn field(self, n: usize) -> String {
        match self {
            ControlSize::Native => format!("{RAW_CONTROL}.{n}"),
            ControlSize::Item | ControlSize::Square512 => format!("control.{n}"),
        }
    }
}

/// Reads `max_image_pixels`: a pixel count, or 0 or null for no limit.
pub(crate) fn max_image_pixels(at: &At<'_>, node: &Node) -> Result<Option<u64>> {
    match &node.value {
        super::yaml::Value::Null => Ok(None),
        _ => {
            let n = at
                .int(node, 0, i64::MAX)
                .map_err(|_| at.expected(node, "a pixel count (0 or null for no limit)"))?;
            Ok((n > 0).then_some(n as u64))
        }
    }
}

/// The warning for an AI Toolkit key that larder reads and checks but does not act on yet.
fn not_acted_on(at: &At<'_>, key: &Node, what: &str) -> ConfigWarning {
    ConfigWarning::not_served(
        at,
        key.line,
        format!("not acted on by larder yet ({what}); ignored"),
    )
}

fn source_of(at: &At<'_>, node: &Node, text: &str) -> Result<Source> {
    let path = resolve_path(at.file, text);
    if path.is_dir() {
        return Ok(Source::Folder(path));
    }
    if !path.exists() {
        return Err(at.error(
            node,
            format!("{} does not exist (relative paths are looked up beside the config file, then in the current directory)", path.display()),
        ));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => Ok(Source::AitkJson(path)),
        Some("jsonl") => Ok(Source::Jsonl(path)),
        Some("csv") => Ok(Source::Csv(path)),
        _ => Err(at.error(
            node,
            format!(
                "{} is neither a folder nor a .json, .jsonl or .csv list of images",
                path.display()
            ),
        )),
    }
}

fn resolutions(at: &At<'_>, node: &Node) -> Result<Vec<u32>> {
    let one = |n: &Node| at.uint(n, 8, 16_384);
    let list: Vec<u32> = match &node.value {
        super::yaml::Value::Seq(items) => items.iter().map(one).collect::<Result<_>>()?,
        _ => vec![
            one(node)
                .map_err(|_| at.expected(node, "a resolution from 8 to 16384 or a list of them"))?,
        ],
    };
    if list.is_empty() {
        return Err(at.expected(node, "at least one resolution"));
    }
    Ok(list)
}

/// `random_triggers` is a list of words, or the path of a text file with one trigger per line
/// (blank lines skipped), as AI Toolkit reads it.
fn random_triggers(at: &At<'_>, node: &Node) -> Result<Vec<String>> {
    if let super::yaml::Value::Str(s) = &node.value {
        let path = resolve_path(at.file, s);
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            return Ok(text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect());
        }
    }
    at.strings(node)
}

fn color(at: &At<'_>, node: &Node) -> Result<[u8; 3]> {
    let items = at
        .seq(node)
        .map_err(|_| at.expected(node, "a list of three 0-255 values [r, g, b]"))?;
    if items.len() != 3 {
        return Err(at.expected(node, "a list of three 0-255 values [r, g, b]"));
    }
    let mut rgb = [0u8; 3];
    for (c, n) in rgb.iter_mut().zip(items) {
        *c = at.uint(n, 0, 255)? as u8;
    }
    Ok(rgb)
}

/// Reads the larder keys `bucket_strategy`, `kohya_buckets` and `bucket_list` of the mapping at
/// `parent`; options for a strategy imply that strategy. `None` when none of them is set.
pub(crate) fn parse_bucket_strategy(
    parent: &At<'_>,
    strategy: Option<&Node>,
    kohya: Option<&Node>,
    list: Option<&Node>,
) -> Result<Option<BucketStrategy>> {
    let kohya_at = parent.child("kohya_buckets");
    let list_at = parent.child("bucket_list");
    let Some(node) = strategy else {
        return match (kohya, list) {
            (Some(k), _) => kohya_strategy(&kohya_at, Some(k)).map(Some),
            (None, Some(l)) => list_strategy(&list_at, l).map(Some),
            (None, None) => Ok(None),
        };
    };
    let at = parent.child("bucket_strategy");
    match at.string(node)?.as_str() {
        "aitk" | "ai_toolkit" | "ai-toolkit" => Ok(Some(BucketStrategy::AiToolkit)),
        "kohya" => kohya_strategy(&kohya_at, kohya).map(Some),
        "list" => match list {
            Some(l) => list_strategy(&list_at, l).map(Some),
            None => Err(at.error(
                node,
                "`bucket_strategy: list` needs a `bucket_list` of sizes",
            )),
        },
        other => Err(at.error(
            node,
            format!("expected one of aitk, kohya, list, found {other:?}"),
        )),
    }
}

fn kohya_strategy(at: &At<'_>, node: Option<&Node>) -> Result<BucketStrategy> {
    let (mut min_reso, mut max_reso, mut reso_steps, mut no_upscale) = (256, 1024, 64, false);
    if let Some(node) = node {
        for (k, v) in at.map(node)? {
            let key = k.as_key().unwrap_or_default();
            let a = at.child(key);
            match key {
                "min_reso" | "min_bucket_reso" => min_reso = a.uint(v, 8, 16_384)?,
                "max_reso" | "max_bucket_reso" => max_reso = a.uint(v, 8, 16_384)?,
                "reso_steps" | "bucket_reso_steps" => reso_steps = a.uint(v, 1, 1024)?,
                "no_upscale" | "bucket_no_upscale" => no_upscale = a.bool(v)?,
                _ => {
                    return Err(a.error(
                        k,
                        "expected one of min_reso, max_reso, reso_steps, no_upscale",
                    ));
                }
            }
        }
        if min_reso > max_reso {
            return Err(at.error(
                node,
                format!("min_reso {min_reso} is above max_reso {max_reso}"),
            ));
        }
    }
    Ok(BucketStrategy::Kohya {
        min_reso,
        max_reso,
        reso_steps,
        no_upscale,
    })
}

fn list_strategy(at: &At<'_>, node: &Node) -> Result<BucketStrategy> {
    let what = "a list of sizes, each \"WxH\" or [w, h]";
    let mut sizes = Vec::new();
    for (i, item) in at.seq(node)?.iter().enumerate() {
        let a = at.index(i);
        let size = match &item.value {
            super::yaml::Value::Str(s) => s
                .split_once('x')
                .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?))),
            super::yaml::Value::Seq(wh) if wh.len() == 2 => {
                Some((a.uint(&wh[0], 1, 16_384)?, a.uint(&wh[1], 1, 16_384)?))
            }
            _ => None,
        };
        match size {
            Some((w, h)) if w > 0 && h > 0 => sizes.push((w, h)),
            _ => return Err(a.expected(item, what)),
        }
    }
    if sizes.is_empty() {
        return Err(at.expected(node, what));
    }
    Ok(BucketStrategy::List { sizes })
}

/// AI Toolkit keys larder reads but does not act on yet, with what they belong to.
fn not_implemented(key: &str) -> Option<&'static str> {
    Some(match key {
        "audio_preserve_pitch" => "pitch-preserving audio stretch",
        "augments" | "augmentations" | "shuffle_augmentations" => "image augmentations",
        "clip_image_from_same_folder"
        | "clip_image_augmentations"
        | "clip_image_shuffle_augmentations" => "CLIP image inputs",
        "unconditional_path" => "unconditional images",
        "controls" => "generated controls",
        "random_scale" => "random scaling",
        "standardize_images" => "image standardization",
        "extra_values" => "per-item extra values",
        "guidance_type" => "guidance types",
        "poi" => "point-of-interest crops (deprecated in AI Toolkit)",
        "replay_transforms" => "transform replay",
        "load_image_when_caching_latents" => "image loading while caching latents",
        "resize_method" => "resize methods other than larder's",
        "debug" => "dataset debugging",
        _ => return None,
    })
}

/// Returns true if and only if `node` holds AI Toolkit's default for `key`, so that leaving it
/// in a config changes nothing and deserves no warning.
fn is_default(key: &str, node: &Node) -> bool {
    use super::yaml::Value::{Bool, Str};
    matches!(
        (key, &node.value),
        ("replay_transforms", Bool(true)) | ("guidance_type", Str(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, file: &Path) -> (Result<DatasetConfig>, Vec<ConfigWarning>) {
        let node = super::super::yaml::parse(text).expect("valid yaml");
        let mut warnings = Vec::new();
        let at = At::root(file, "datasets").index(0);
        let r = parse_dataset(&at, &node, &LarderDefaults::default(), &mut warnings);
        (r, warnings)
    }

    #[test]
    fn every_listed_dataset_key_has_a_branch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.yaml");
        for key in keys::DATASET.iter().filter(|k| **k != "folder_path") {
            // A null value is an error for some keys and a no-op for others; either way the
            // key must not fall through to "unknown key".
            let text = format!("folder_path: {:?}\n{key}: null\n", dir.path());
            let (_, warnings) = parse(&text, &file);
            assert!(
                warnings.iter().all(|w| !w.message.contains("unknown key")),
                "{key}: {warnings:?}"
            );
        }
    }

    #[test]
    fn new_ai_toolkit_keys_are_typed_stored_and_warn_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.yaml");
        let text = format!(
            "folder_path: {:?}\nbatch_size: 4\nprior_reg: true\ndiff_output_preservation: yes\ndiff_output_preservation_class: person\ncache_tensors_to_disk: true\ncache_latents_num_workers: 3\ntrim_auto_frame_count_tail: false\n",
            dir.path()
        );
        let (cfg, warnings) = parse(&text, &file);
        let cfg = cfg.expect("valid");
        assert_eq!(cfg.batch_size, Some(4));
        assert!(cfg.prior_reg && cfg.diff_output_preservation);
        assert_eq!(
            cfg.diff_output_preservation_class.as_deref(),
            Some("person")
        );
        let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                // batch_size is served (the loader's batches of this dataset), so no warning.
                "datasets[0].prior_reg",
                "datasets[0].diff_output_preservation",
                "datasets[0].diff_output_preservation_class",
                "datasets[0].cache_tensors_to_disk",
                "datasets[0].cache_latents_num_workers",
            ]
        );
        // A video setting larder acts on: no warning.
        assert!(!cfg.frames.trim_auto_frame_count_tail);
        assert!(
            warnings.iter().all(|w| w.message.contains("larder")),
            "{warnings:?}"
        );

        // Their defaults say nothing.
        let text = format!(
            "folder_path: {:?}\nbatch_size: null\nprior_reg: false\ndiff_output_preservation: false\ndiff_output_preservation_class: ''\ncache_tensors_to_disk: false\ntrim_auto_frame_count_tail: true\n",
            dir.path()
        );
        let (cfg, warnings) = parse(&text, &file);
        assert_eq!(cfg.expect("valid").batch_size, None);
        assert!(warnings.is_empty(), "{warnings:?}");

        // As in AI Toolkit, a dataset's own batch size needs buckets.
        let text = format!(
            "folder_path: {:?}\nbuckets: false\nbatch_size: 2\n",
            dir.path()
        );
        let err = parse(&text, &file).0.expect_err("refused");
        assert!(err.to_string().contains("needs buckets"), "{err}");
    }

    #[test]
    fn new_ai_toolkit_keys_reject_wrong_types_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.yaml");
        for (line, key) in [
            ("batch_size: many", "datasets[0].batch_size"),
            ("batch_size: 0", "datasets[0].batch_size"),
            ("prior_reg: 3", "datasets[0].prior_reg"),
            (
                "diff_output_preservation: person",
                "datasets[0].diff_output_preservation",
            ),
            (
                "diff_output_preservation_class: [a]",
                "datasets[0].diff_output_preservation_class",
            ),
            (
                "cache_tensors_to_disk: sometimes",
                "datasets[0].cache_tensors_to_disk",
            ),
            (
                "cache_latents_num_workers: -1",
                "datasets[0].cache_latents_num_workers",
            ),
            (
                "trim_auto_frame_count_tail: 2",
                "datasets[0].trim_auto_frame_count_tail",
            ),
            ("max_image_pixels: lots", "datasets[0].max_image_pixels"),
        ] {
            let text = format!("folder_path: {:?}\n{line}\n", dir.path());
            match parse(&text, &file).0 {
                Err(Error::Config {
                    key: k, line: 2, ..
                }) => assert_eq!(k, key),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn max_image_pixels_defaults_to_pillows_limit_and_zero_lifts_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.yaml");
        let get = |extra: &str| {
            let text = format!("folder_path: {:?}\n{extra}", dir.path());
            parse(&text, &file).0.expect("valid").max_image_pixels
        };
        assert_eq!(get(""), Some(DEFAULT_MAX_IMAGE_PIXELS));
        assert_eq!(get("max_image_pixels: 1000\n"), Some(1000));
        assert_eq!(get("max_image_pixels: 0\n"), None);
        assert_eq!(get("max_image_pixels: null\n"), None);
    }
}
