//! Planning: each scanned image, at each resolution, gets a bucket and a crop; repeats and
//! flips are expanded into items, in AI Toolkit's order.

mod bucket;
mod kohya;

use std::collections::BTreeMap;

pub use bucket::{Bucket, Placement};

use crate::config::{BucketStrategy, Config, DatasetConfig};
use crate::rng::{Purpose, Stream};
use crate::scan::{Finding, FindingKind, ScanReport, ScannedImage};
use crate::{Error, Result};

/// Which flip an item is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flip {
    /// As stored.
    None,
    /// Mirrored left to right.
    X,
    /// Mirrored top to bottom.
    Y,
    /// Both.
    XY,
}

impl Flip {
    /// The flip's name as the catalog and item keys spell it: `none`, `x`, `y` or `xy`.
    pub fn name(self) -> &'static str {
        match self {
            Flip::None => "none",
            Flip::X => "x",
            Flip::Y => "y",
            Flip::XY => "xy",
        }
    }

    /// The flip named `name` (see [`Flip::name`]); `None` for any other text.
    pub fn from_name(name: &str) -> Option<Flip> {
        [Flip::None, Flip::X, Flip::Y, Flip::XY]
            .into_iter()
            .find(|f| f.name() == name)
    }

    /// Returns true if and only if the item is mirrored left to right.
    pub fn x(self) -> bool {
        matches!(self, Flip::X | Flip::XY)
    }

    /// Returns true if and only if the item is mirrored top to bottom.
    pub fn y(self) -> bool {
        matches!(self, Flip::Y | Flip::XY)
    }
}

/// One training item: an image at a resolution, with its bucket, crop and flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PlannedItem {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// Index of the image in that dataset's scan.
    pub image: usize,
    /// The resolution this item is planned at.
    pub resolution: u32,
    /// Which repeat of the image this is (0-based).
    pub repeat: u32,
    /// The flip.
    pub flip: Flip,
    /// Bucket, resize and crop.
    #[serde(flatten)]
    pub placement: Placement,
    /// For a clip of a video dataset: how many frames it trains with, and from where.
    pub clip: Option<Clip>,
}

/// The frames of a video item: their count and the start drawn for it (see
/// [`FrameRule::select`](crate::FrameRule::select), which turns them into frame indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Clip {
    /// Frames the item trains with.
    pub frames: u32,
    /// The first frame, where the dataset takes frames at its `fps` from a drawn point.
    pub start: u64,
}

/// Every item of every dataset, in AI Toolkit's order: datasets in config order, each
/// resolution of a dataset as its own dataset, then within one: the image list repeated
/// `num_repeats` times, followed by its `flip_x` copies, then `flip_y` copies of all of those.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Plan {
    /// The items.
    pub items: Vec<PlannedItem>,
    /// Images that cannot be planned (too small after `scale`).
    pub findings: Vec<Finding>,
}

impl Plan {
    /// Plans every scanned image of `config`.
    pub fn new(config: &Config, scan: &ScanReport) -> Result<Plan> {
        if scan.datasets.len() != config.datasets.len() {
            return Err(Error::InvalidArgument {
                name: "scan",
                message: format!(
                    "the scan has {} datasets but the config {}: scan this config first",
                    scan.datasets.len(),
                    config.datasets.len()
                ),
            });
        }
        let mut plan = Plan::default();
        for (d, (cfg, scanned)) in config.datasets.iter().zip(&scan.datasets).enumerate() {
            for &resolution in &cfg.resolutions {
                plan_dataset(
                    &mut plan,
                    d,
                    cfg,
                    &scanned.images,
                    resolution,
                    config.divisibility,
                );
            }
        }
        Ok(plan)
    }

    /// The number of items in each bucket, largest first (ties by bucket size).
    pub fn bucket_counts(&self) -> Vec<(Bucket, usize)> {
        let mut counts: BTreeMap<Bucket, usize> = BTreeMap::new();
        for item in &self.items {
            *counts.entry(item.placement.bucket).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

fn plan_dataset(
    plan: &mut Plan,
    dataset: usize,
    cfg: &DatasetConfig,
    images: &[ScannedImage],
    resolution: u32,
    divisibility: u32,
) {
    let start = plan.items.len();
    for repeat in 0..cfg.num_repeats {
        for (i, img) in images.iter().enumerate() {
            match place_item(cfg, img, resolution, divisibility, repeat, Flip::None) {
                Some(placement) => plan.items.push(PlannedItem {
                    dataset,
                    image: i,
                    resolution,
                    repeat,
                    flip: Flip::None,
                    placement,
                    clip: clip(cfg, img, resolution, repeat, Flip::None),
                }),
                None if repeat == 0 => plan.findings.push(Finding::new(
                    dataset,
                    FindingKind::TooSmall,
                    &img.path,
                    format!(
                        "{}x{} at scale {} leaves no pixels",
                        img.width, img.height, cfg.scale
                    ),
                )),
                None => {}
            }
        }
    }
    // Flipped copies are appended after all originals, x before y, y over the x copies too.
    if cfg.flip_x {
        add_flipped(plan, start, cfg, images, resolution, divisibility, |_| {
            Flip::X
        });
    }
    if cfg.flip_y {
        add_flipped(plan, start, cfg, images, resolution, divisibility, |f| {
            if f == Flip::X { Flip::XY } else { Flip::Y }
        });
    }
}

/// Appends a flipped copy of every item from `start` on.
fn add_flipped(
    plan: &mut Plan,
    start: usize,
    cfg: &DatasetConfig,
    images: &[ScannedImage],
    resolution: u32,
    divisibility: u32,
    flipped: fn(Flip) -> Flip,
) {
    let end = plan.items.len();
    for k in start..end {
        let mut item = plan.items[k];
        item.flip = flipped(item.flip);
        // A random crop is drawn for every copy, as AI Toolkit does; a centered one is the same.
        if let Some(p) = place_item(
            cfg,
            &images[item.image],
            resolution,
            divisibility,
            item.repeat,
            item.flip,
        ) {
            item.placement = p;
        }
        item.clip = clip(cfg, &images[item.image], resolution, item.repeat, item.flip);
        plan.items.push(item);
    }
}

/// Places one image of a dataset, or `None` when `scale` leaves it without pixels.
fn place_item(
    cfg: &DatasetConfig,
    img: &ScannedImage,
    resolution: u32,
    divisibility: u32,
    repeat: u32,
    flip: Flip,
) -> Option<Placement> {
    let (w, h) = bucket::scaled_size(img.width, img.height, cfg.scale);
    if w == 0 || h == 0 {
        return None;
    }
    // The crop of an item depends on the seed and on the item's identity (see
    // `DatasetConfig::path_key`).
    let mut stream = cfg
        .random_crop
        .then(|| item_stream(Purpose::Crop, cfg, img, resolution, repeat, flip));
    Some(placement_for(
        cfg,
        w,
        h,
        resolution,
        divisibility,
        stream.as_mut(),
    ))
}

/// The stream of random choices of `purpose` for one item: seeded by the dataset's seed, the
/// image's path inside the dataset, and the item's resolution, repeat and flip.
fn item_stream(
    purpose: Purpose,
    cfg: &DatasetConfig,
    img: &ScannedImage,
    resolution: u32,
    repeat: u32,
    flip: Flip,
) -> Stream {
    Stream::new(
        purpose,
        &[
            cfg.seed,
            cfg.path_key(&img.path),
            u64::from(resolution),
            u64::from(repeat),
            flip as u64,
        ],
    )
}

/// The frames of a clip in a video dataset; `None` for images (single-frame items, as AI
/// Toolkit treats the images of a video dataset). Where the dataset takes frames at its `fps`
/// from a random point, the point is drawn once per item, from the seed.
fn clip(
    cfg: &DatasetConfig,
    img: &ScannedImage,
    resolution: u32,
    repeat: u32,
    flip: Flip,
) -> Option<Clip> {
    let video = img.video.as_ref().filter(|_| cfg.frames.is_video())?;
    let mut stream = item_stream(Purpose::Frames, cfg, img, resolution, repeat, flip);
    Some(Clip {
        frames: cfg.frames.frame_count(video.frames, video.fps),
        start: cfg.frames.draw_start(video.frames, video.fps, &mut stream),
    })
}

/// Where an image of `width`×`height` (already multiplied by `scale`) goes at `resolution`
/// under the dataset's bucket settings, with a centered crop.
///
/// ```
/// use larder::{Config, place};
///
/// let dataset = &Config::for_folder(".").datasets[0];
/// let p = place(dataset, 4000, 3000, 1024, 16);
/// assert_eq!(p.bucket.to_string(), "1168x896");
/// assert_eq!((p.scale_to_width, p.scale_to_height, p.crop_x, p.crop_y), (1195, 897, 13, 0));
/// ```
pub fn place(
    cfg: &DatasetConfig,
    width: u32,
    height: u32,
    resolution: u32,
    divisibility: u32,
) -> Placement {
    placement_for(cfg, width, height, resolution, divisibility, None)
}

fn placement_for(
    cfg: &DatasetConfig,
    w: u32,
    h: u32,
    resolution: u32,
    divisibility: u32,
    random: Option<&mut Stream>,
) -> Placement {
    if !cfg.buckets {
        return bucket::unbucketed_placement(w, h, resolution, random);
    }
    if cfg.square_crop {
        return bucket::square_placement(w, h, resolution);
    }
    match &cfg.bucket_strategy {
        BucketStrategy::AiToolkit => bucket::aitk_placement(w, h, resolution, divisibility, random),
        BucketStrategy::Kohya {
            min_reso,
            max_reso,
            reso_steps,
            no_upscale: false,
        } => {
            // kohya requires the largest side to be at least the resolution.
            let sizes = kohya::kohya_buckets(
                resolution,
                *min_reso,
                (*max_reso).max(resolution),
                *reso_steps,
            );
            kohya::closest_aspect_placement(w, h, &sizes, random)
        }
        BucketStrategy::Kohya {
            reso_steps,
            no_upscale: true,
            ..
        } => kohya::no_upscale_placement(w, h, resolution, *reso_steps, random),
        BucketStrategy::List { sizes } => kohya::closest_aspect_placement(w, h, sizes, random),
    }
}
