//! Diagnosing memory: what a dataset costs in RAM under a PyTorch DataLoader and under larder,
//! what larder's loader really holds, and what to change.
//!
//! ```no_run
//! use larder::diagnose::{EstimateOptions, Workload, advise, estimate, family};
//! use larder::{Config, Plan, scan};
//!
//! let config = Config::load("examples/sample/config.yaml")?;
//! let scanned = scan(&config)?;
//! let plan = Plan::new(&config, &scanned)?;
//! let options = EstimateOptions { family: family("flux"), batch_size: 4, ..Default::default() };
//! let breakdown = estimate(Workload::from_plan(&config, &scanned, &plan, &options), &options);
//! for advice in advise(&breakdown, Some(64_000_000_000)) {
//!     println!("{}: {}", advice.rule, advice.advice);
//! }
//! # Ok::<(), larder::Error>(())
//! ```

mod advice;
mod estimate;
mod families;
mod measure;

pub use advice::{Advice, Level, advise};
pub use estimate::{
    DataLoaderEstimate, Estimate, EstimateOptions, FILE_ITEM_BYTES, FieldEstimate, LarderEstimate,
    MEASURED_LATENT_BYTES, Origin, TORCH_WORKER_BYTES, Workload, estimate, latent_bytes_per_value,
};
pub use families::{
    Component, FAMILIES, Family, ModelFigures, TextEncoder, family, name_or_path_of, resolve,
};
pub use measure::{MeasureOptions, Measurement, measure, store_residency};

// The OS probes and the byte formatting live in their own layers (`crate::os`, `crate::size`),
// which diagnose, doctor, metrics and fastload all use; they are re-exported here, where they
// were public before those layers existed.
pub use crate::os::{ProcessMemory, Residency, SystemMemory, file_residency};
pub use crate::size::human;
