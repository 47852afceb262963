//! Scanning datasets: list images, read their sizes from headers, pair captions, masks and
//! controls, and record every problem as a finding instead of failing.

pub(crate) mod header;
mod metadata;
mod walk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use header::ImageFormat;

use crate::config::{Config, DatasetConfig, Source};
use crate::{Error, Result};
use header::HeaderProblem;
use metadata::MetaRecord;
use walk::IMAGE_EXTENSIONS;

/// Extensions AI Toolkit tries, in order, for inpaint images (they need an alpha channel).
const INPAINT_EXTENSIONS: [&str; 2] = ["png", "webp"];

impl ImageFormat {
    /// The format a file name's extension announces, if it is one larder reads.
    pub fn from_path(path: &Path) -> Option<ImageFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
            "png" => Some(ImageFormat::Png),
            "webp" => Some(ImageFormat::Webp),
            _ => None,
        }
    }
}

/// What kind of problem a finding reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// A file or folder could not be read (permissions, I/O error).
    Unreadable,
    /// A zero-byte file.
    Empty,
    /// The file ends before its format says it should.
    Truncated,
    /// The header is damaged or gives an impossible size.
    Corrupt,
    /// A format larder does not read (GIF, BMP, TIFF, ...), or a misnamed file.
    Unsupported,
    /// Several images share a stem, and so share a caption file, mask and controls.
    DuplicateStem,
    /// A metadata file lists an image that does not exist.
    MissingImage,
    /// No caption file and no `default_caption`: the item trains with an empty caption.
    MissingCaption,
    /// The caption file exists but cannot be read, or is not UTF-8; the image is kept.
    CaptionUnreadable,
    /// `mask_path` is set but this image has no mask.
    MissingMask,
    /// A `control_path` folder has no control image for this image.
    MissingControl,
    /// `inpaint_path` is set but this image has no inpaint image.
    MissingInpaint,
    /// `clip_image_path` is set but this image has no CLIP image.
    MissingClipImage,
    /// `scale` shrinks the image to nothing; it is left out of the plan.
    TooSmall,
    /// The header gives more pixels than `max_image_pixels` (Pillow's decompression-bomb
    /// limit by default); the image is left out without being decoded.
    TooLarge,
    /// A symbolic link whose target does not exist.
    DanglingSymlink,
}

impl FindingKind {
    /// Returns true if and only if images with this finding are left out of the dataset.
    pub fn excludes_image(self) -> bool {
        matches!(
            self,
            FindingKind::Unreadable
                | FindingKind::Empty
                | FindingKind::Truncated
                | FindingKind::Corrupt
                | FindingKind::Unsupported
                | FindingKind::MissingImage
                | FindingKind::TooSmall
                | FindingKind::TooLarge
                | FindingKind::DanglingSymlink
        )
    }
}

/// One problem with one file, found by the scan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// What kind of problem.
    pub kind: FindingKind,
    /// The file concerned.
    pub path: PathBuf,
    /// A sentence for humans.
    pub detail: String,
}

impl Finding {
    pub(crate) fn new(dataset: usize, kind: FindingKind, path: &Path, detail: String) -> Self {
        Finding {
            dataset,
            kind,
            path: path.to_path_buf(),
            detail,
        }
    }
}

/// Where an image's caption came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionSource {
    /// Its caption file.
    File,
    /// The metadata file that listed it.
    Metadata,
    /// `default_caption` (the caption file was missing or blank).
    Default,
    /// Nothing: the caption is empty.
    None,
}

/// One usable image, as the scan found it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScannedImage {
    /// The image file.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// The format (from the header; from the extension when a metadata file gave the size).
    pub format: ImageFormat,
    /// Width as displayed (after EXIF orientation).
    pub width: u32,
    /// Height as displayed (after EXIF orientation).
    pub height: u32,
    /// EXIF orientation (1 = upright, 6 = rotated 90° clockwise, ...).
    pub orientation: u8,
    /// The caption as loaded: trimmed, with `replacements` applied; empty when there is none.
    pub caption: String,
    /// The short caption of a JSON dataset file, if any.
    pub caption_short: Option<String>,
    /// Where the caption came from.
    pub caption_source: CaptionSource,
    /// The paired mask, when `mask_path` is set and one exists.
    pub mask: Option<PathBuf>,
    /// The paired control image of each `control_path` folder, in config order.
    pub controls: Vec<Option<PathBuf>>,
    /// The paired CLIP image, when `clip_image_path` is set and one exists.
    pub clip_image: Option<PathBuf>,
    /// The paired inpaint image, when `inpaint_path` is set and one exists.
    pub inpaint: Option<PathBuf>,
    /// What the container says of a video clip; `None` for images.
    pub video: Option<crate::video::VideoInfo>,
}

/// The usable images of one configured dataset.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScannedDataset {
    /// Images in path order (or metadata-file order).
    pub images: Vec<ScannedImage>,
}

/// The result of scanning every dataset of a config.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScanReport {
    /// One entry per configured dataset, in config order.
    pub datasets: Vec<ScannedDataset>,
    /// Every problem found, grouped by dataset and sorted by kind and path.
    pub findings: Vec<Finding>,
}

/// Knobs of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Show a progress bar on standard error when it is a terminal.
    pub progress: bool,
}

/// Scans every dataset of `config` with default options.
pub fn scan(config: &Config) -> Result<ScanReport> {
    scan_with(config, &ScanOptions::default())
}

/// Scans every dataset of `config`.
///
/// Problems with individual files become [`Finding`]s; an `Err` means a dataset as a whole
/// could not be listed (its folder is gone, its metadata file is malformed).
pub fn scan_with(config: &Config, options: &ScanOptions) -> Result<ScanReport> {
    let mut report = ScanReport::default();
    for (index, dataset) in config.datasets.iter().enumerate() {
        let (scanned, mut findings) = scan_dataset(index, dataset, options)?;
        findings.sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
        report.datasets.push(scanned);
        report.findings.extend(findings);
    }
    Ok(report)
}

/// Reads the header of an image held in memory exactly as the scan reads a file: its format,
/// its size as displayed (after EXIF orientation) and its EXIF orientation; `None` where the
/// scan would report a finding instead.
///
/// Not part of the API: it exists so that the fuzz target (`fuzz/fuzz_targets/image_header.rs`,
/// a crate of its own) can feed arbitrary bytes to the real probe, which otherwise only takes
/// a path. It is the probe's own code, reading from a slice instead of a file, so a crash found
/// through it is a crash of the scan.
#[doc(hidden)]
pub fn probe_image_bytes(bytes: &[u8]) -> Option<(ImageFormat, u32, u32, u8)> {
    header::probe_source(bytes, bytes.len() as u64)
        .ok()
        .map(|h| (h.format, h.width, h.height, h.orientation))
}

/// Reads a clip's container for the scan: its facts (a header-like record) and, in `video`,
/// what the frame choice needs; or the finding that leaves it out.
fn probe_video(
    path: &Path,
    cfg: &DatasetConfig,
    video: &mut Option<crate::video::VideoInfo>,
) -> std::result::Result<(u64, header::Header), (FindingKind, String)> {
    use crate::video::VideoProblem;
    if !cfg.frames.is_video() {
        return Err((
            FindingKind::Unsupported,
            "videos are read in video datasets only (`num_frames` above 1 or `auto_frame_count`), as in AI Toolkit; the file is left out".into(),
        ));
    }
    let (info, bytes) = crate::video::probe(path).map_err(|p| match p {
        VideoProblem::Empty => (FindingKind::Empty, "zero-byte file".into()),
        VideoProblem::Truncated(m) => (
            FindingKind::Truncated,
            format!("video ends early (cut off while copying or downloading?): {m}"),
        ),
        VideoProblem::Corrupt(m) => (FindingKind::Corrupt, m),
        VideoProblem::Unreadable(m) => dangling(path).unwrap_or((FindingKind::Unreadable, m)),
    })?;
    *video = Some(info);
    Ok((
        bytes,
        header::Header {
            format: ImageFormat::Video,
            width: info.width,
            height: info.height,
            orientation: 1,
        },
    ))
}

/// The images (AI Toolkit's image extensions, not hidden) directly inside each folder that
/// holds one of `candidates`, sorted: the pools of `control_from_same_folder`. A folder that
/// cannot be listed has an empty pool.
fn folder_images(candidates: &[Candidate]) -> HashMap<PathBuf, Vec<PathBuf>> {
    let mut pools: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    for c in candidates {
        let Some(dir) = c.path.parent() else { continue };
        if pools.contains_key(dir) {
            continue;
        }
        let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                !name.starts_with('.')
                    && IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
                    && p.is_file()
            })
            .collect();
        images.sort();
        pools.insert(dir.to_path_buf(), images);
    }
    pools
}

/// `n` other images of `path`'s folder as its controls, as AI Toolkit's
/// `control_from_same_folder` draws them (the image itself only when it is alone there, fewer
/// when the folder has fewer), drawn once from the dataset's seed and the image's path where AI
/// Toolkit draws anew at every load.
fn same_folder_controls(
    cfg: &DatasetConfig,
    pools: &HashMap<PathBuf, Vec<PathBuf>>,
    path: &Path,
    n: u32,
) -> Vec<Option<PathBuf>> {
    let mut pool: Vec<&PathBuf> = path
        .parent()
        .and_then(|dir| pools.get(dir))
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    if pool.len() > 1 {
        pool.retain(|p| p.as_path() != path);
    }
    let k = (n as usize).min(pool.len());
    let mut rng = crate::rng::Stream::new(
        crate::rng::Purpose::Controls,
        &[cfg.seed, cfg.path_key(path)],
    );
    // A partial Fisher–Yates shuffle: the first k of a uniform permutation.
    for i in 0..k {
        let j = rng.between(i as u64, pool.len() as u64 - 1) as usize;
        pool.swap(i, j);
    }
    pool.into_iter().take(k).map(|p| Some(p.clone())).collect()
}

/// One image to look at: its path and what a metadata file said of it.
struct Candidate {
    path: PathBuf,
    meta: Option<MetaRecord>,
}

fn scan_dataset(
    index: usize,
    cfg: &DatasetConfig,
    options: &ScanOptions,
) -> Result<(ScannedDataset, Vec<Finding>)> {
    let mut findings = Vec::new();
    let candidates: Vec<Candidate> = match &cfg.source {
        Source::Folder(root) => {
            if !root.is_dir() {
                return Err(Error::io(
                    root,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "dataset folder does not exist",
                    ),
                ));
            }
            let mut exclude: Vec<PathBuf> = cfg.control_paths.clone();
            exclude.extend(cfg.mask_path.iter().cloned());
            exclude.extend(cfg.inpaint_path.iter().cloned());
            exclude.extend(cfg.clip_image_path.iter().cloned());
            let listing = walk::list_images(root, &exclude, index, cfg.frames.is_video());
            findings.extend(listing.findings);
            listing
                .images
                .into_iter()
                .map(|path| Candidate { path, meta: None })
                .collect()
        }
        Source::AitkJson(p) => wrap(metadata::read_aitk_json(p)?),
        Source::Jsonl(p) => wrap(metadata::read_jsonl(p)?),
        Source::Csv(p) => wrap(metadata::read_csv(p)?),
    };

    let mut pairing = Pairing::new(index, cfg, &mut findings);
    if cfg.controls_from_same_folder.is_some() {
        pairing.same_folder = folder_images(&candidates);
    }
    // Small folders scan faster than a bar can draw.
    let bar = crate::progress::bar(
        options.progress,
        candidates.len(),
        2_000,
        "{spinner} scanning {pos}/{len} images [{elapsed_precise}] {per_sec}",
    );
    let results: Vec<(Option<ScannedImage>, Vec<Finding>)> = candidates
        .into_par_iter()
        .map(|c| {
            let r = scan_one(index, cfg, &pairing, c);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();

    let mut images = Vec::with_capacity(results.len());
    for (image, mut f) in results {
        images.extend(image);
        findings.append(&mut f);
    }
    findings.extend(duplicate_stems(index, cfg, &images));
    Ok((ScannedDataset { images }, findings))
}

fn wrap(records: Vec<MetaRecord>) -> Vec<Candidate> {
    records
        .into_iter()
        .map(|m| Candidate {
            path: m.path.clone(),
            meta: Some(m),
        })
        .collect()
}

/// The mask, control and inpaint folders of a dataset, each indexed by stem once; with
/// `control_from_same_folder`, the images of each folder the dataset's images are in.
struct Pairing {
    masks: Option<HashMap<String, PathBuf>>,
    controls: Vec<Option<HashMap<String, PathBuf>>>,
    inpaint: Option<HashMap<String, PathBuf>>,
    clip_images: Option<HashMap<String, PathBuf>>,
    same_folder: HashMap<PathBuf, Vec<PathBuf>>,
}

impl Pairing {
    fn new(dataset: usize, cfg: &DatasetConfig, findings: &mut Vec<Finding>) -> Self {
        let mut index = |dir: &Path, exts: &[&str]| match walk::stem_index(dir, exts) {
            Ok(map) => Some(map),
            Err(e) => {
                findings.push(Finding::new(
                    dataset,
                    FindingKind::Unreadable,
                    dir,
                    format!("cannot list folder: {e}"),
                ));
                None
            }
        };
        Pairing {
            masks: cfg
                .mask_path
                .as_deref()
                .and_then(|d| index(d, &IMAGE_EXTENSIONS)),
            // Same-folder controls replace control_path's, whose folders are then not read.
            controls: match cfg.controls_from_same_folder {
                Some(_) => Vec::new(),
                None => (cfg.control_paths.iter())
                    .map(|d| index(d, &IMAGE_EXTENSIONS))
                    .collect(),
            },
            inpaint: cfg
                .inpaint_path
                .as_deref()
                .and_then(|d| index(d, &INPAINT_EXTENSIONS)),
            clip_images: cfg
                .clip_image_path
                .as_deref()
                .and_then(|d| index(d, &IMAGE_EXTENSIONS)),
            same_folder: HashMap::new(),
        }
    }
}

fn stem(path: &Path) -> &str {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
}

fn scan_one(
    dataset: usize,
    cfg: &DatasetConfig,
    pairing: &Pairing,
    c: Candidate,
) -> (Option<ScannedImage>, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut finding = |kind, path: &Path, detail: String| {
        findings.push(Finding::new(dataset, kind, path, detail))
    };
    let path = c.path;

    let is_video = walk::is_video(&path);
    let mut video = None;
    // Sizes from a metadata file are trusted and spare opening the image; a clip's container
    // is always read, for its frame count and rate.
    let facts = match c.meta.as_ref().and_then(|m| m.size) {
        _ if is_video => probe_video(&path, cfg, &mut video),
        Some((width, height)) => match (std::fs::metadata(&path), ImageFormat::from_path(&path)) {
            (Ok(md), Some(format)) => Ok((
                md.len(),
                header::Header {
                    format,
                    width,
                    height,
                    orientation: 1,
                },
            )),
            (Err(e), _) => Err(dangling(&path).unwrap_or_else(|| {
                (
                    FindingKind::MissingImage,
                    format!("listed in the metadata file but not readable: {e}"),
                )
            })),
            (Ok(_), None) => Err((
                FindingKind::Unsupported,
                "extension is not jpg, jpeg, png or webp".into(),
            )),
        },
        None => header::probe(&path).map_err(|p| match p {
            // Opening follows links, so a link to nothing reads as a missing file; say which.
            HeaderProblem::NotFound if let Some(found) = dangling(&path) => found,
            HeaderProblem::NotFound if c.meta.is_some() => (
                FindingKind::MissingImage,
                "listed in the metadata file but does not exist".into(),
            ),
            HeaderProblem::NotFound => (FindingKind::Unreadable, "vanished during the scan".into()),
            HeaderProblem::Empty => (FindingKind::Empty, "zero-byte file".into()),
            HeaderProblem::Unsupported(m) => (FindingKind::Unsupported, m),
            HeaderProblem::Corrupt(m) => (FindingKind::Corrupt, format!("damaged header: {m}")),
            HeaderProblem::Truncated => (
                FindingKind::Truncated,
                "file ends early (cut off while copying or downloading?)".into(),
            ),
            HeaderProblem::Unreadable(m) => (FindingKind::Unreadable, m),
        }),
    };
    let (bytes, head) = match facts {
        Ok(f) => f,
        Err((kind, detail)) => {
            finding(kind, &path, detail);
            return (None, findings);
        }
    };
    if let Some(limit) = cfg.max_image_pixels
        && u64::from(head.width) * u64::from(head.height) > limit
    {
        finding(
            FindingKind::TooLarge,
            &path,
            format!(
                "{}; left out without decoding. {RAISE_LIMIT}",
                over_limit(head.width, head.height, limit)
            ),
        );
        return (None, findings);
    }

    let stem = stem(&path);
    // An item's file of the same stem in a partner folder (mask, control, inpaint, CLIP image),
    // when the dataset names that folder; an item without one is a finding of `kind`.
    let mut partner = |index: &Option<HashMap<String, PathBuf>>, kind, detail: &str| {
        let hit = index.as_ref()?.get(stem).cloned();
        if hit.is_none() {
            finding(kind, &path, detail.to_owned());
        }
        hit
    };
    let mask = partner(
        &pairing.masks,
        FindingKind::MissingMask,
        "no mask with this stem in mask_path",
    );
    let controls: Vec<Option<PathBuf>> = match cfg.controls_from_same_folder {
        Some(n) => same_folder_controls(cfg, &pairing.same_folder, &path, n),
        None => pairing
            .controls
            .iter()
            .zip(&cfg.control_paths)
            .map(|(index, dir)| {
                let detail = format!("no control image with this stem in {}", dir.display());
                partner(index, FindingKind::MissingControl, &detail)
            })
            .collect(),
    };
    let inpaint = partner(
        &pairing.inpaint,
        FindingKind::MissingInpaint,
        "no .png or .webp with this stem in inpaint_path",
    );
    let clip_image = partner(
        &pairing.clip_images,
        FindingKind::MissingClipImage,
        "no image with this stem in clip_image_path",
    );
    // `prepare` decodes the paired files with the image, so a decompression bomb among them is
    // as dangerous as one in the dataset folder. Their headers are read here (a page each) and
    // an item with an oversized partner is left out whole: AI Toolkit's Pillow refuses such a
    // file, and an item without its mask or control would train on something else.
    if let Some(limit) = cfg.max_image_pixels {
        let paired = mask
            .iter()
            .map(|p| ("mask", p))
            .chain(controls.iter().flatten().map(|p| ("control image", p)))
            .chain(inpaint.iter().map(|p| ("inpaint image", p)))
            .chain(clip_image.iter().map(|p| ("CLIP image", p)));
        let mut oversized = false;
        for (what, paired_path) in paired {
            // Other problems with a paired file are `prepare`'s to report, as before.
            let Ok((_, h)) = header::probe(paired_path) else {
                continue;
            };
            if u64::from(h.width) * u64::from(h.height) > limit {
                oversized = true;
                finding(
                    FindingKind::TooLarge,
                    paired_path,
                    format!(
                        "{}: this {what} of {} is not decoded, and the image is left out with it. {RAISE_LIMIT}",
                        over_limit(h.width, h.height, limit),
                        path.display()
                    ),
                );
            }
        }
        if oversized {
            return (None, findings);
        }
    }

    let (caption, caption_source) = load_caption(cfg, &path, c.meta.as_ref(), &mut finding);
    let caption_short = c
        .meta
        .and_then(|m| m.caption_short)
        .map(|s| apply_replacements(cfg, s.trim()));
    let image = ScannedImage {
        path,
        bytes,
        format: head.format,
        width: head.width,
        height: head.height,
        orientation: head.orientation,
        caption,
        caption_short,
        caption_source,
        mask,
        controls,
        clip_image,
        inpaint,
        video,
    };
    (Some(image), findings)
}

/// How a too-large finding tells the user to keep the file.
const RAISE_LIMIT: &str =
    "Raise `max_image_pixels` in the `larder:` section (0 for no limit) to keep it";

/// The first words of a too-large finding.
///
/// Pillow, which AI Toolkit decodes with, warns above its limit and refuses twice it; the bytes
/// a decoder would allocate are what matters, so larder stops at the limit.
fn over_limit(width: u32, height: u32, limit: u64) -> String {
    let pixels = u64::from(width) * u64::from(height);
    format!(
        "{width}x{height} is {pixels} pixels, above the limit of {limit} (a decompression bomb, or a scan too large to train on)"
    )
}

/// The finding for `path` when it is a symbolic link whose target does not exist.
fn dangling(path: &Path) -> Option<(FindingKind, String)> {
    let md = std::fs::symlink_metadata(path).ok()?;
    if !md.file_type().is_symlink() {
        return None;
    }
    let target = std::fs::read_link(path).ok()?;
    Some((
        FindingKind::DanglingSymlink,
        format!(
            "dangling symbolic link: its target {} does not exist",
            target.display()
        ),
    ))
}

/// Loads an image's caption as AI Toolkit does: from the metadata file when it has one, else
/// from `<stem><caption_ext>` beside the image, else `default_caption` (also for a blank file).
fn load_caption(
    cfg: &DatasetConfig,
    image: &Path,
    meta: Option<&MetaRecord>,
    finding: &mut impl FnMut(FindingKind, &Path, String),
) -> (String, CaptionSource) {
    if let Some(m) = meta {
        let text = if cfg.use_short_captions {
            m.caption_short.as_ref().or(m.caption.as_ref())
        } else {
            m.caption.as_ref()
        };
        if let Some(text) = text {
            return (
                apply_replacements(cfg, text.trim()),
                CaptionSource::Metadata,
            );
        }
    }
    let caption_path = {
        let mut s = image.with_extension("").into_os_string();
        s.push(&cfg.caption_ext);
        PathBuf::from(s)
    };
    let from_file = match read_caption_bytes(&caption_path) {
        Ok(bytes) => {
            let text = match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    finding(
                        FindingKind::CaptionUnreadable,
                        &caption_path,
                        "caption is not valid UTF-8; invalid bytes replaced".into(),
                    );
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                }
            };
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            finding(
                FindingKind::CaptionUnreadable,
                &caption_path,
                format!("cannot read caption: {e}"),
            );
            None
        }
    };
    match (from_file, &cfg.default_caption) {
        (Some(text), _) => (apply_replacements(cfg, &text), CaptionSource::File),
        (None, Some(default)) => (
            apply_replacements(cfg, default.trim()),
            CaptionSource::Default,
        ),
        (None, None) => {
            finding(
                FindingKind::MissingCaption,
                image,
                format!("no {} caption file and no default_caption", cfg.caption_ext),
            );
            (String::new(), CaptionSource::None)
        }
    }
}

/// Reads a caption file. Unlike `std::fs::read`, this asks for no file size first: caption files
/// are small, and one system call fewer per image matters when a scan reads millions of them.
fn read_caption_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = vec![0u8; 1024];
    let mut filled = 0;
    // A plain read loop: `File::read_to_end` would first ask for the size and the position.
    loop {
        if filled == bytes.len() {
            bytes.resize(bytes.len() * 2, 0);
        }
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Applies the `replacements` ("from|to") of a dataset in config order.
fn apply_replacements(cfg: &DatasetConfig, text: &str) -> String {
    cfg.replacements
        .iter()
        .fold(text.to_owned(), |acc, (from, to)| {
            acc.replace(from.as_str(), to)
        })
}

/// Findings for images that share a stem: in one folder they share a caption file; when mask
/// or control folders are configured, anywhere in the dataset they share a mask and controls.
fn duplicate_stems(dataset: usize, cfg: &DatasetConfig, images: &[ScannedImage]) -> Vec<Finding> {
    let paired =
        cfg.mask_path.is_some() || !cfg.control_paths.is_empty() || cfg.inpaint_path.is_some();
    let mut first: HashMap<(Option<&Path>, &str), &Path> = HashMap::new();
    let mut out = Vec::new();
    for img in images {
        let dir = if paired { None } else { img.path.parent() };
        let key = (dir, stem(&img.path));
        match first.get(&key) {
            Some(earlier) => out.push(Finding::new(
                dataset,
                FindingKind::DuplicateStem,
                &img.path,
                format!(
                    "same stem as {}: both use the same {}",
                    earlier.display(),
                    if paired {
                        "caption, mask and controls"
                    } else {
                        "caption file"
                    }
                ),
            )),
            None => {
                first.insert(key, &img.path);
            }
        }
    }
    out
}
