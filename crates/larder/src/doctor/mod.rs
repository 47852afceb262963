//! `larder doctor`: checks of the machine a training run depends on — memory, /dev/shm, open
//! files, disk space and speed, the page cache, the NVIDIA driver and GPUDirect Storage.
//!
//! Every check is a [`Check`] row with a status and, when something is wrong, what to do. The
//! checks only read: files under /proc and /dev, file-system statistics, and the store (when
//! given) with reads that leave the page cache as they found it, or add to it.
//!
//! ```no_run
//! for check in larder::doctor::run(&larder::doctor::DoctorOptions::default()) {
//!     println!("[{}] {}: {}", check.status, check.name, check.detail);
//! }
//! ```

mod disk;
mod fast_paths;
mod gpu;
mod system;

use std::fmt;
use std::path::PathBuf;

pub use disk::{read_speed, store_checks};
pub use fast_paths::fast_path_checks;
pub use gpu::gpu_checks;
pub use system::system_checks;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// For information: neither good nor bad (e.g. no GPU on a machine that prepares data).
    Info,
    /// Works, but likely to cost speed or memory.
    Warn,
    /// Will break a training run.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    /// What was checked, e.g. `"/dev/shm"`.
    pub name: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it, when anything.
    pub advice: Option<String>,
}

impl Check {
    /// A row.
    pub fn new(name: &str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_owned(),
            status,
            detail: detail.into(),
            advice: None,
        }
    }

    /// The row with advice.
    pub fn advise(mut self, advice: impl Into<String>) -> Check {
        self.advice = Some(advice.into());
        self
    }
}

/// What [`run`] checks.
#[derive(Debug, Clone, Default)]
pub struct DoctorOptions {
    /// A store whose disk and page-cache behaviour to test; without one, the disk checks
    /// look at the current directory's file system only.
    pub store: Option<PathBuf>,
}

/// Runs every check.
pub fn run(options: &DoctorOptions) -> Vec<Check> {
    let mut checks = system_checks(options.store.as_deref());
    if let Some(store) = &options.store {
        checks.extend(store_checks(store));
    }
    checks.extend(gpu_checks());
    checks.extend(fast_path_checks(&crate::cuda::probe()));
    checks
}
