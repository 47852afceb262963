//! The dataset summary `larder scan` prints: counts, buckets, crop quality, caption coverage,
//! findings, and one record per planned item.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{Config, ConfigWarning};
use crate::plan::{Flip, Plan};
use crate::scan::{CaptionSource, Finding, FindingKind, ScanReport};

/// Everything `larder scan` reports, as plain data (serializes to the `--json` document).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The config file or folder.
    pub source: PathBuf,
    /// Bucket divisibility in effect.
    pub divisibility: u32,
    /// The model architecture named by the config, if any.
    pub arch: Option<String>,
    /// Ignored config keys.
    pub warnings: Vec<ConfigWarning>,
    /// One row per dataset and resolution.
    pub datasets: Vec<DatasetRow>,
    /// Items per bucket, largest first.
    pub buckets: Vec<BucketRow>,
    /// Total planned items.
    pub items_total: usize,
    /// Mean relative aspect-ratio error of the crops, in percent: how much each bucket's shape
    /// differs from its image's.
    pub mean_aspect_error_pct: f64,
    /// Mean share of the resized image cut away by the crop, in percent.
    pub mean_cropped_pct: f64,
    /// How many images got their caption from where.
    pub captions: CaptionCoverage,
    /// Findings grouped by kind.
    pub findings: BTreeMap<FindingKind, Vec<Finding>>,
    /// One record per planned item.
    pub items: Vec<ItemRecord>,
}

/// Counts for one dataset at one resolution.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatasetRow {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// The folder or file it reads.
    pub source: PathBuf,
    /// The resolution.
    pub resolution: u32,
    /// Usable images.
    pub images: usize,
    /// Items after repeats and flips.
    pub items: usize,
}

/// One bucket's share.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BucketRow {
    /// "WxH", or "WxHxNf" for clips of N frames.
    pub bucket: String,
    /// Items in it.
    pub count: usize,
    /// Fraction of all items, 0..1.
    pub share: f64,
}

/// Where captions came from, counted over usable images.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CaptionCoverage {
    /// From a caption file.
    pub file: usize,
    /// From a metadata file.
    pub metadata: usize,
    /// From `default_caption`.
    pub default: usize,
    /// None: trained with an empty caption.
    pub none: usize,
}

/// One planned item, flattened for tools.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemRecord {
    /// The image file.
    pub path: PathBuf,
    /// Width as displayed.
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// Planned resolution.
    pub resolution: u32,
    /// Bucket width.
    pub bucket_w: u32,
    /// Bucket height.
    pub bucket_h: u32,
    /// Resize width before the crop.
    pub scale_to_w: u32,
    /// Resize height before the crop.
    pub scale_to_h: u32,
    /// Crop left edge.
    pub crop_x: u32,
    /// Crop top edge.
    pub crop_y: u32,
    /// The flip.
    pub flip: Flip,
    /// Which repeat.
    pub repeat: u32,
    /// The caption as loaded (before the per-epoch transforms).
    pub caption: String,
}

impl Summary {
    /// Summarizes a scan and its plan.
    pub fn new(config: &Config, scan: &ScanReport, plan: &Plan) -> Summary {
        let mut datasets = Vec::new();
        for (d, cfg) in config.datasets.iter().enumerate() {
            for &resolution in &cfg.resolutions {
                datasets.push(DatasetRow {
                    dataset: d,
                    source: cfg.source.path().to_path_buf(),
                    resolution,
                    images: scan.datasets.get(d).map_or(0, |s| s.images.len()),
                    items: plan
                        .items
                        .iter()
                        .filter(|i| i.dataset == d && i.resolution == resolution)
                        .count(),
                });
            }
        }
        let total = plan.items.len();
        // Clips are bucketed by frame count too, labelled as AI Toolkit keys them (`WxHxNf`).
        let mut counts: std::collections::BTreeMap<(crate::Bucket, Option<u32>), usize> =
            std::collections::BTreeMap::new();
        for item in &plan.items {
            let key = (item.placement.bucket, item.clip.map(|c| c.frames));
            *counts.entry(key).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let buckets = counts
            .into_iter()
            .map(|((b, frames), count)| BucketRow {
                bucket: match frames {
                    Some(f) => format!("{b}x{f}f"),
                    None => b.to_string(),
                },
                count,
                share: count as f64 / total.max(1) as f64,
            })
            .collect();

        let mut aspect_err = 0.0;
        let mut cropped = 0.0;
        let mut items = Vec::with_capacity(total);
        for item in &plan.items {
            let img = &scan.datasets[item.dataset].images[item.image];
            let p = &item.placement;
            let image_ar = f64::from(img.width) / f64::from(img.height);
            let bucket_ar = f64::from(p.bucket.width) / f64::from(p.bucket.height);
            aspect_err += (bucket_ar - image_ar).abs() / image_ar;
            let kept = f64::from(p.bucket.width) * f64::from(p.bucket.height);
            cropped += 1.0 - kept / (f64::from(p.scale_to_width) * f64::from(p.scale_to_height));
            items.push(ItemRecord {
                path: img.path.clone(),
                width: img.width,
                height: img.height,
                resolution: item.resolution,
                bucket_w: p.bucket.width,
                bucket_h: p.bucket.height,
                scale_to_w: p.scale_to_width,
                scale_to_h: p.scale_to_height,
                crop_x: p.crop_x,
                crop_y: p.crop_y,
                flip: item.flip,
                repeat: item.repeat,
                caption: img.caption.clone(),
            });
        }

        let mut captions = CaptionCoverage::default();
        for img in scan.datasets.iter().flat_map(|d| &d.images) {
            match img.caption_source {
                CaptionSource::File => captions.file += 1,
                CaptionSource::Metadata => captions.metadata += 1,
                CaptionSource::Default => captions.default += 1,
                CaptionSource::None => captions.none += 1,
            }
        }
        let mut findings: BTreeMap<FindingKind, Vec<Finding>> = BTreeMap::new();
        for f in scan.findings.iter().chain(&plan.findings) {
            findings.entry(f.kind).or_default().push(f.clone());
        }
        let n = total.max(1) as f64;
        Summary {
            source: config.source.clone(),
            divisibility: config.divisibility,
            arch: config.arch.clone(),
            warnings: config.warnings.clone(),
            datasets,
            buckets,
            items_total: total,
            mean_aspect_error_pct: 100.0 * aspect_err / n,
            mean_cropped_pct: 100.0 * cropped / n,
            captions,
            findings,
            items,
        }
    }
}
