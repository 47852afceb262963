//! Training metrics: what the loader records about itself ([`LoaderMetrics`]), what the
//! training loop reports each step, and this process's memory, turned into one [`Record`] per
//! step by [`Metrics`] and sent to a JSON-lines file, a Prometheus `/metrics` endpoint, the
//! live web dashboard's `/api/records` endpoint and a terminal dashboard.
//!
//! The loader's counters are atomics that reader threads and `next_batch` update without a
//! lock; a step's record costs a few microseconds (`larder bench-metrics` measures it).

mod history;
mod http;
mod loader;
mod memory;
mod prometheus;
mod record;
mod recorder;
mod terminal;

pub use history::History;
pub use http::{DashboardServer, serve_dashboard};
pub use loader::{LoaderMetrics, LoaderSnapshot};
pub use memory::MemoryUsage;
pub use record::{Event, GpuMemory, Record, SCHEMA_VERSION};
pub use recorder::{Metrics, MetricsOptions, StepInput};
