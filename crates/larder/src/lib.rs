//! larder: the data engine for diffusion-model fine-tuning.
//!
//! larder reads the `datasets:` section that AI Toolkit users already write, scans the images
//! (sizes from headers, EXIF orientation applied, captions, masks and controls paired), and
//! plans buckets and crops exactly as AI Toolkit does by default.
//!
//! ```no_run
//! use larder::{Config, Plan, scan};
//!
//! let config = Config::load("examples/sample/config.yaml")?;
//! let scanned = scan(&config)?;
//! let plan = Plan::new(&config, &scanned)?;
//! for (bucket, count) in plan.bucket_counts() {
//!     println!("{bucket}: {count} items");
//! }
//! # Ok::<(), larder::Error>(())
//! ```
#![deny(missing_docs)]

mod caption;
mod config;
pub mod cuda;
pub mod diagnose;
pub mod doctor;
pub mod encode;
mod error;
pub mod fastload;
mod image;
pub mod load;
pub mod metrics;
mod os;
mod plan;
mod prepare;
mod progress;
mod report;
mod rng;
mod safetensors_header;
mod scan;
mod size;
pub mod storage;
pub mod store;
pub mod transfer;
pub mod tune;
mod video;

pub use caption::{CaptionContext, CaptionRecipe};
pub use config::{
    AudioRule, BucketStrategy, CacheOptions, Config, ConfigWarning, ControlSize,
    DEFAULT_DIVISIBILITY, DEFAULT_MAX_IMAGE_PIXELS, DataloaderKeys, DatasetConfig, FrameRule,
    Source, divisibility_for_arch,
};
pub use error::{Error, Result, SourceError};
pub use plan::{Bucket, Clip, Flip, Placement, Plan, PlannedItem, place};
pub use prepare::{
    AitkImportOptions, AitkImportReport, ImportCounts, ImportMismatch, Prepare, PrepareOptions,
    PrepareReport, config_digest,
};
pub use prepare::{MergeReport, PARTS_DIR, Part, merge_parts};
pub use report::{BucketRow, CaptionCoverage, DatasetRow, ItemRecord, Summary};
#[doc(hidden)]
pub use scan::probe_image_bytes;
pub use scan::{
    CaptionSource, Finding, FindingKind, ImageFormat, ScanOptions, ScanReport, ScannedDataset,
    ScannedImage, scan, scan_with,
};
pub use size::parse_size;
pub use storage::Location;
pub use store::{FieldData, Store, StoredItem};
pub use transfer::{merge, prepare};
pub use video::{AudioTrack, VideoInfo};
