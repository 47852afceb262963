//! The batch-size tuner behind `larder.BatchSizeTuner`.

use larder::tune::{BatchSizeTuner, Outcome, Reason, TunerOptions};
use pyo3::prelude::*;

use crate::errors::to_py;

/// Decides batch sizes from step outcomes (see `larder.BatchSizeTuner`).
#[derive(Debug)]
#[pyclass(module = "larder._larder")]
pub struct Tuner {
    inner: BatchSizeTuner,
}

fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Warmup => "warmup",
        Reason::OutOfMemory => "out_of_memory",
        Reason::Growth => "growth",
        Reason::Probe => "probe",
    }
}

#[pymethods]
impl Tuner {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (initial = 1, target = 1, warmup_steps = 0, min = 1, max = 1024, backoff = 0.75, max_consecutive_ooms = 3, grow_after = 0, grow = 0.25, safety_margin = 0.85))]
    fn new(
        initial: u32,
        target: u32,
        warmup_steps: u64,
        min: u32,
        max: u32,
        backoff: f64,
        max_consecutive_ooms: u32,
        grow_after: u32,
        grow: f64,
        safety_margin: f64,
    ) -> PyResult<Tuner> {
        let options = TunerOptions {
            initial,
            target,
            warmup_steps,
            min,
            max,
            backoff,
            max_consecutive_ooms,
            grow_after,
            grow,
            safety_margin,
        };
        Ok(Tuner {
            inner: BatchSizeTuner::new(options).map_err(to_py)?,
        })
    }

    /// The batch size for the next step.
    #[getter]
    fn batch_size(&self) -> u32 {
        self.inner.batch_size()
    }

    /// Records a step that fit. Returns (batch size, retry, reason or None).
    #[pyo3(signature = (peak = None, capacity = None))]
    fn record_fit(
        &mut self,
        peak: Option<u64>,
        capacity: Option<u64>,
    ) -> PyResult<(u32, bool, Option<&'static str>)> {
        let d = self
            .inner
            .record(Outcome::Fit { peak, capacity })
            .map_err(to_py)?;
        Ok((d.batch_size, d.retry, d.changed.map(reason_name)))
    }

    /// Records a step that ran out of memory. Returns (batch size, retry, reason or None);
    /// raises TunerExhaustedError after too many in a row, or at the smallest size.
    fn record_oom(&mut self) -> PyResult<(u32, bool, Option<&'static str>)> {
        let d = self.inner.record(Outcome::OutOfMemory).map_err(to_py)?;
        Ok((d.batch_size, d.retry, d.changed.map(reason_name)))
    }

    /// Binary search for the largest size that fits; `fits(size)` runs a step and returns
    /// True when it fit.
    fn probe(&mut self, fits: &Bound<'_, PyAny>) -> PyResult<u32> {
        let mut callback_error = None;
        let result =
            self.inner.probe(
                |size| match fits.call1((size,)).and_then(|r| r.extract::<bool>()) {
                    Ok(true) => Ok(Outcome::Fit {
                        peak: None,
                        capacity: None,
                    }),
                    Ok(false) => Ok(Outcome::OutOfMemory),
                    Err(e) => {
                        callback_error = Some(e);
                        Err(larder::Error::InvalidArgument {
                            name: "probe",
                            message: "the step function raised".into(),
                        })
                    }
                },
            );
        if let Some(e) = callback_error {
            return Err(e);
        }
        // With the step function's own errors handled above, the only error left is that
        // even the smallest size ran out of memory.
        result.map_err(to_py)
    }

    /// Every change so far: (step, from, to, reason).
    fn history(&self) -> Vec<(u64, u32, u32, &'static str)> {
        self.inner
            .history()
            .iter()
            .map(|c| (c.step, c.from, c.to, reason_name(c.reason)))
            .collect()
    }
}
