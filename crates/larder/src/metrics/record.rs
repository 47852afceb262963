//! One line of the metrics file: what a training step did and what it cost.

use serde::{Deserialize, Serialize};

/// The version of the [`Record`] schema, written in every record as `v`. Fields may be added
/// without changing it; a field removed or changed in meaning changes it.
pub const SCHEMA_VERSION: u32 = 1;

/// GPU memory as the training framework reports it (PyTorch's caching allocator), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuMemory {
    /// Bytes held by live tensors.
    pub allocated_bytes: u64,
    /// Bytes the allocator holds from the driver (allocated plus cached).
    pub reserved_bytes: u64,
    /// The most allocated since the peak was last reset.
    pub peak_bytes: u64,
    /// The device's capacity.
    pub total_bytes: Option<u64>,
}

/// What a record marks other than a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run closed its metrics (or the process let them go): no record follows. Its
    /// `step` and `samples` are the run's totals, its `samples_per_s` the whole run's average.
    End,
}

/// One record of the JSON-lines metrics file; `larder dashboard` plots these.
///
/// Optional fields are left out of the line when unknown (no loss given, no loader attached,
/// no GPU). Totals (`samples`, `loader_*` sums, `bytes_read`) are since the metrics started;
/// per-step values (`step_s`, `wait_s`) are for the step this record closes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// Wall-clock time of the step's end, seconds since the Unix epoch.
    pub time: f64,
    /// Steps recorded so far, this one included (1 for the first).
    pub step: u64,
    /// Steps the run will take, when told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// Seconds since the metrics started.
    pub elapsed_s: f64,
    /// The training loss of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// The learning rate of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Items in the step's batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Items trained on so far.
    pub samples: u64,
    /// Seconds since the previous step (since the start for the first).
    pub step_s: f64,
    /// Throughput over the last steps (a window of up to 32 steps).
    pub samples_per_s: f64,
    /// Seconds of this step spent waiting for the loader's next batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<f64>,
    /// Batches ready in the loader's queue when the training loop last asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Stored bytes the loader read so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    /// Reader-thread seconds spent assembling batches so far (summed over threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assemble_s: Option<f64>,
    /// Of `assemble_s`, the seconds spent decoding (decompressing, dequantizing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_s: Option<f64>,
    /// Batches the reader threads assembled so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches_assembled: Option<u64>,
    /// Remote-store reads served from the local cache so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hits: Option<u64>,
    /// Remote-store reads fetched so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_misses: Option<u64>,
    /// Resident set size of the training process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Proportional set size of the training process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pss_bytes: Option<u64>,
    /// GPU memory, when the training loop reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuMemory>,
    /// Set on a record that marks an event rather than a step (the last record of a run is
    /// [`Event::End`]); absent on step records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
}
