//! The recorder behind `larder.Metrics`.

use std::time::Duration;

use larder::metrics::{GpuMemory, MetricsOptions, StepInput};
use pyo3::prelude::*;

use crate::errors::{ArgumentError, LarderError, to_py};
use crate::loader::Loader;

/// Records training steps (see `larder.Metrics`).
#[derive(Debug)]
#[pyclass(module = "larder._larder")]
pub struct Metrics {
    inner: Option<larder::metrics::Metrics>,
    /// The process that made it: its HTTP thread and file buffer belong to that process.
    pid: u32,
}

impl Metrics {
    fn live(&mut self) -> PyResult<&mut larder::metrics::Metrics> {
        if std::process::id() != self.pid {
            return Err(LarderError::new_err(
                "this Metrics was created in another process (before a fork): create a new one in this process",
            ));
        }
        self.inner
            .as_mut()
            .ok_or_else(|| LarderError::new_err("the Metrics is closed"))
    }

    fn get(&self) -> PyResult<&larder::metrics::Metrics> {
        self.inner
            .as_ref()
            .ok_or_else(|| LarderError::new_err("the Metrics is closed"))
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        // In a forked child the HTTP thread is the parent's, and the file buffer holds lines
        // the parent writes: stopping one or flushing the other would hang or duplicate.
        if std::process::id() != self.pid {
            std::mem::forget(self.inner.take());
        }
    }
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
        Ok(Metrics {
            inner: Some(inner),
            pid: std::process::id(),
        })
    }

    /// Includes the loader's own counters in the records.
    fn attach_loader(&mut self, loader: PyRef<'_, Loader>) -> PyResult<()> {
        self.live()?.attach_loader(loader.metrics());
        Ok(())
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
        let inner = self.live()?;
        py.detach(move || inner.step(input).map(|_| ()))
            .map_err(to_py)
    }

    /// The last record as JSON.
    fn last_json(&self) -> PyResult<String> {
        serde_json::to_string(self.get()?.last()).map_err(|e| ArgumentError::new_err(e.to_string()))
    }

    /// The terminal dashboard for the last record.
    fn dashboard(&self) -> PyResult<String> {
        Ok(self.get()?.dashboard())
    }

    /// `host:port` of the HTTP endpoint, or None.
    #[getter]
    fn address(&self) -> PyResult<Option<String>> {
        Ok(self.get()?.local_addr().map(|a| a.to_string()))
    }

    /// Appends the end record, writes the buffered records and stops the HTTP endpoint; later
    /// calls raise.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        self.live()?;
        match self.inner.take() {
            // The end record tells `larder dashboard` that the run is over.
            Some(inner) => py.detach(move || inner.close()).map_err(to_py),
            None => Ok(()),
        }
    }

    /// Writes buffered records to the JSON-lines file.
    fn flush(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = self.live()?;
        py.detach(move || inner.flush()).map_err(to_py)
    }
}
