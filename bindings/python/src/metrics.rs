//! The recorder behind `larder.Metrics`.

use std::time::Duration;

use larder::metrics::{GpuMemory, MetricsOptions, StepInput};
use pyo3::prelude::*;

use crate::errors::{ArgumentError, to_py};
use crate::loader::Loader;

/// Records training steps (see `larder.Metrics`).
#[derive(Debug)]
#[pyclass(module = "larder._larder")]
pub struct Metrics {
    inner: larder::metrics::Metrics,
}

fn seconds(name: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|s| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            ArgumentError::new_err(format!("{name} must be a number of seconds >= 0, not {s}"))
        })
    })
    .transpose()
}

#[pymethods]
impl Metrics {
    #[new]
    #[pyo3(signature = (jsonl = None, listen = None, print_every = Some(10.0), memory_every = 1.0, total_steps = None, history = 20_000))]
    fn new(
        py: Python<'_>,
        jsonl: Option<std::path::PathBuf>,
        listen: Option<String>,
        print_every: Option<f64>,
        memory_every: f64,
        total_steps: Option<u64>,
        history: usize,
    ) -> PyResult<Metrics> {
        let options = MetricsOptions {
            jsonl,
            listen,
            print_every: seconds("print_every", print_every.filter(|s| *s != 0.0))?,
            memory_every: seconds("memory_every", Some(memory_every))?.unwrap_or_default(),
            total_steps,
            history,
        };
        let inner = py
            .detach(move || larder::metrics::Metrics::new(options))
            .map_err(to_py)?;
        Ok(Metrics { inner })
    }

    /// Includes the loader's own counters in the records.
    fn attach_loader(&mut self, loader: PyRef<'_, Loader>) {
        self.inner.attach_loader(loader.metrics());
    }

    /// Records one step; `gpu` is (allocated, reserved, peak, total or None) in bytes.
    #[pyo3(signature = (loss = None, lr = None, batch_size = None, gpu = None))]
    fn step(
        &mut self,
        py: Python<'_>,
        loss: Option<f64>,
        lr: Option<f64>,
        batch_size: Option<u32>,
        gpu: Option<(u64, u64, u64, Option<u64>)>,
    ) -> PyResult<()> {
        let input = StepInput {
            loss,
            lr,
            batch_size,
            gpu: gpu.map(
                |(allocated_bytes, reserved_bytes, peak_bytes, total_bytes)| GpuMemory {
                    allocated_bytes,
                    reserved_bytes,
                    peak_bytes,
                    total_bytes,
                },
            ),
        };
        let inner = &mut self.inner;
        py.detach(move || inner.step(input).map(|_| ()))
            .map_err(to_py)
    }

    /// The last record as JSON.
    fn last_json(&self) -> PyResult<String> {
        serde_json::to_string(self.inner.last()).map_err(|e| ArgumentError::new_err(e.to_string()))
    }

    /// The terminal dashboard for the last record.
    fn dashboard(&self) -> String {
        self.inner.dashboard()
    }

    /// `host:port` of the HTTP endpoint, or None.
    #[getter]
    fn address(&self) -> Option<String> {
        self.inner.local_addr().map(|a| a.to_string())
    }

    /// Writes buffered records to the JSON-lines file.
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(move || inner.flush()).map_err(to_py)
    }
}
