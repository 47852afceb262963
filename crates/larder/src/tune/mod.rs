//! The batch-size tuner: the largest batch that fits, found while training.
//!
//! The tuner decides; the loader obeys. Each training step reports its outcome — it fit (with
//! the peak memory it used, when known) or it ran out of memory — and the tuner answers with
//! the batch size for what comes next:
//!
//! - **warm-up**: the size grows linearly from `initial` to `target` over `warmup_steps`;
//! - **back-off**: after an out-of-memory error the size shrinks by `backoff` (at least by one)
//!   and the step is retried with the smaller size; `max_consecutive_ooms` failures in a row are
//!   an error, since memory is not the problem then;
//! - **growth**: after `grow_after` good steps in a row whose peak memory stayed under
//!   `safety_margin` of capacity, the size grows by `grow` (at least by one) — never back to a
//!   size that has failed;
//! - **bounds**: always within `min..=max`.
//!
//! [`BatchSizeTuner::probe`] finds the largest size that fits by binary search before training.

use crate::{Error, Result};

/// Settings of a [`BatchSizeTuner`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TunerOptions {
    /// Batch size of the first step.
    pub initial: u32,
    /// Batch size at the end of the warm-up.
    pub target: u32,
    /// Steps of the linear warm-up from `initial` to `target` (0: start at `target`).
    pub warmup_steps: u64,
    /// The smallest size ever used.
    pub min: u32,
    /// The largest size ever used.
    pub max: u32,
    /// Factor applied to the size after an out-of-memory error (0 < backoff < 1).
    pub backoff: f64,
    /// Out-of-memory errors in a row after which the tuner gives up.
    pub max_consecutive_ooms: u32,
    /// Good steps in a row before growing; 0 never grows.
    pub grow_after: u32,
    /// Relative growth (0.25: by a quarter, at least one).
    pub grow: f64,
    /// Grow only when peak memory stayed below this fraction of capacity.
    pub safety_margin: f64,
}

impl Default for TunerOptions {
    fn default() -> Self {
        TunerOptions {
            initial: 1,
            target: 1,
            warmup_steps: 0,
            min: 1,
            max: 1024,
            backoff: 0.75,
            max_consecutive_ooms: 3,
            grow_after: 0,
            grow: 0.25,
            safety_margin: 0.85,
        }
    }
}

/// How one training step went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The step fit in memory; `peak` and `capacity` in bytes when the trainer knows them.
    Fit {
        /// Peak memory of the step.
        peak: Option<u64>,
        /// Memory available.
        capacity: Option<u64>,
    },
    /// The step ran out of memory.
    OutOfMemory,
}

/// Why the batch size changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The warm-up schedule.
    Warmup,
    /// An out-of-memory error.
    OutOfMemory,
    /// Stable steps with memory to spare.
    Growth,
    /// A probe's result.
    Probe,
}

/// What the tuner says after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The batch size for the next step.
    pub batch_size: u32,
    /// The step failed and should be run again (with `batch_size`).
    pub retry: bool,
    /// Why the size changed, when it did.
    pub changed: Option<Reason>,
}

/// One change of batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// The step at which it happened.
    pub step: u64,
    /// The size before.
    pub from: u32,
    /// The size after.
    pub to: u32,
    /// Why.
    pub reason: Reason,
}

/// Finds and keeps the largest batch size that fits (see the module docs).
#[derive(Debug, Clone)]
pub struct BatchSizeTuner {
    options: TunerOptions,
    size: u32,
    /// Good steps so far (the warm-up clock).
    step: u64,
    stable: u32,
    consecutive_ooms: u32,
    /// The smallest size that has run out of memory: growth stays below it.
    failed_at: Option<u32>,
    history: Vec<Change>,
}

impl BatchSizeTuner {
    /// A tuner; errors when the options contradict each other.
    pub fn new(options: TunerOptions) -> Result<Self> {
        let bad = |message: String| {
            Err(Error::InvalidArgument {
                name: "tuner",
                message,
            })
        };
        if options.min == 0 || options.min > options.max {
            return bad(format!(
                "min {} and max {} must satisfy 1 <= min <= max",
                options.min, options.max
            ));
        }
        if !(options.backoff > 0.0 && options.backoff < 1.0) {
            return bad(format!(
                "backoff {} must be between 0 and 1",
                options.backoff
            ));
        }
        if options.max_consecutive_ooms == 0 {
            return bad("max_consecutive_ooms must be at least 1".into());
        }
        if !(options.safety_margin > 0.0 && options.safety_margin <= 1.0) || options.grow < 0.0 {
            return bad("safety_margin must be in (0, 1] and grow non-negative".into());
        }
        // Without a warm-up the first step already uses the target size.
        let first = if options.warmup_steps == 0 {
            options.target
        } else {
            options.initial
        };
        let size = first.clamp(options.min, options.max);
        Ok(BatchSizeTuner {
            options,
            size,
            step: 0,
            stable: 0,
            consecutive_ooms: 0,
            failed_at: None,
            history: Vec::new(),
        })
    }

    /// The batch size for the next step.
    pub fn batch_size(&self) -> u32 {
        self.size
    }

    /// Every change so far.
    pub fn history(&self) -> &[Change] {
        &self.history
    }

    /// The largest size allowed now: `max`, and below the smallest size that failed.
    fn ceiling(&self) -> u32 {
        match self.failed_at {
            Some(f) => (f.saturating_sub(1)).clamp(self.options.min, self.options.max),
            None => self.options.max,
        }
    }

    fn set(&mut self, to: u32, reason: Reason) -> Option<Reason> {
        let to = to.clamp(self.options.min, self.ceiling().max(self.options.min));
        if to == self.size {
            return None;
        }
        self.history.push(Change {
            step: self.step,
            from: self.size,
            to,
            reason,
        });
        self.size = to;
        Some(reason)
    }

    /// Reports how the step with the current batch size went, and says what to do next.
    pub fn record(&mut self, outcome: Outcome) -> Result<Decision> {
        match outcome {
            Outcome::OutOfMemory => {
                self.consecutive_ooms += 1;
                self.stable = 0;
                let failed = self.size;
                self.failed_at = Some(self.failed_at.map_or(failed, |f| f.min(failed)));
                if self.consecutive_ooms > self.options.max_consecutive_ooms
                    || failed <= self.options.min
                {
                    return Err(Error::OutOfMemory {
                        attempts: self.consecutive_ooms,
                        batch_size: failed,
                        min: self.options.min,
                    });
                }
                let shrunk = ((f64::from(failed) * self.options.backoff) as u32).min(failed - 1);
                let changed = self.set(shrunk, Reason::OutOfMemory);
                Ok(Decision {
                    batch_size: self.size,
                    retry: true,
                    changed,
                })
            }
            Outcome::Fit { peak, capacity } => {
                self.consecutive_ooms = 0;
                self.step += 1;
                self.stable += 1;
                let o = self.options;
                let mut changed = None;
                if self.step <= o.warmup_steps && o.target != o.initial {
                    // Linear from initial (step 0) to target (step warmup_steps).
                    let t = self.step as f64 / o.warmup_steps as f64;
                    let scheduled = (f64::from(o.initial)
                        + (f64::from(o.target) - f64::from(o.initial)) * t)
                        .round() as u32;
                    changed = self.set(scheduled, Reason::Warmup);
                } else if o.grow_after > 0 && self.stable >= o.grow_after {
                    let roomy = match (peak, capacity) {
                        (Some(p), Some(c)) if c > 0 => (p as f64) < o.safety_margin * c as f64,
                        // Without a measurement, stable steps are the only evidence.
                        _ => true,
                    };
                    if roomy {
                        let grown = self
                            .size
                            .saturating_add(((f64::from(self.size) * o.grow) as u32).max(1));
                        changed = self.set(grown, Reason::Growth);
                    }
                    self.stable = 0;
                }
                Ok(Decision {
                    batch_size: self.size,
                    retry: false,
                    changed,
                })
            }
        }
    }

    /// Finds the largest size in `min..=max` for which `step` fits, by binary search, and makes
    /// it the current size. `step(size)` runs one training step at that size.
    pub fn probe(&mut self, mut step: impl FnMut(u32) -> Result<Outcome>) -> Result<u32> {
        let (mut lo, mut hi) = (self.options.min, self.options.max);
        let mut best = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match step(mid)? {
                Outcome::Fit { .. } => {
                    best = Some(mid);
                    lo = mid + 1;
                }
                Outcome::OutOfMemory => {
                    self.failed_at = Some(self.failed_at.map_or(mid, |f| f.min(mid)));
                    if mid == 0 {
                        break;
                    }
                    hi = mid - 1;
                }
            }
        }
        let best = best.ok_or(Error::OutOfMemory {
            attempts: 1,
            batch_size: self.options.min,
            min: self.options.min,
        })?;
        self.set(best, Reason::Probe);
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic memory model: a step fits when batch × per-item cost fits the budget.
    struct Gpu {
        budget: u64,
        per_item: u64,
        base: u64,
    }

    impl Gpu {
        fn run(&self, batch: u32) -> Outcome {
            let need = self.base + u64::from(batch) * self.per_item;
            if need > self.budget {
                Outcome::OutOfMemory
            } else {
                Outcome::Fit {
                    peak: Some(need),
                    capacity: Some(self.budget),
                }
            }
        }
    }

    fn train(tuner: &mut BatchSizeTuner, gpu: &Gpu, steps: usize) -> Result<Vec<u32>> {
        let mut sizes = Vec::new();
        for _ in 0..steps {
            loop {
                let size = tuner.batch_size();
                let d = tuner.record(gpu.run(size))?;
                if !d.retry {
                    sizes.push(size);
                    break;
                }
            }
        }
        Ok(sizes)
    }

    #[test]
    fn warm_up_is_linear_from_initial_to_target() {
        let mut t = BatchSizeTuner::new(TunerOptions {
            initial: 2,
            target: 10,
            warmup_steps: 4,
            max: 64,
            ..TunerOptions::default()
        })
        .expect("tuner");
        let gpu = Gpu {
            budget: 1 << 40,
            per_item: 1,
            base: 0,
        };
        assert_eq!(
            train(&mut t, &gpu, 6).expect("train"),
            vec![2, 4, 6, 8, 10, 10]
        );
        assert!(t.history().iter().all(|c| c.reason == Reason::Warmup));
    }

    #[test]
    fn out_of_memory_backs_off_retries_and_never_returns_to_a_failed_size() {
        // 10 GB budget, 1 GB per item, 2 GB base: at most 8 items fit.
        let gpu = Gpu {
            budget: 10,
            per_item: 1,
            base: 2,
        };
        let mut t = BatchSizeTuner::new(TunerOptions {
            initial: 16,
            target: 16,
            grow_after: 5,
            max: 64,
            ..TunerOptions::default()
        })
        .expect("tuner");
        let sizes = train(&mut t, &gpu, 40).expect("converges");
        // 16 fails, 12 fails, 9 fails, then 6 fits; growth climbs while peak memory stays under
        // 85% of capacity: 7 uses 9 of 10 GB, so it stops there.
        assert_eq!(sizes[0], 6);
        assert_eq!(*sizes.last().expect("steps"), 7);
        assert!(
            sizes.iter().all(|&s| s <= 8),
            "never a size that failed: {sizes:?}"
        );
        let reasons: Vec<Reason> = t.history().iter().map(|c| c.reason).collect();
        assert_eq!(&reasons[..3], &[Reason::OutOfMemory; 3]);
        assert!(reasons.contains(&Reason::Growth));
    }

    #[test]
    fn growth_waits_for_memory_to_spare() {
        // 8 items use 10 of 11: above the 0.85 margin, so no growth even though 9 would fit.
        let gpu = Gpu {
            budget: 11,
            per_item: 1,
            base: 2,
        };
        let mut t = BatchSizeTuner::new(TunerOptions {
            initial: 8,
            target: 8,
            grow_after: 3,
            ..TunerOptions::default()
        })
        .expect("tuner");
        assert!(
            train(&mut t, &gpu, 20)
                .expect("train")
                .iter()
                .all(|&s| s == 8)
        );
    }

    #[test]
    fn too_many_ooms_in_a_row_is_a_clear_error() {
        let gpu = Gpu {
            budget: 1,
            per_item: 10,
            base: 0,
        };
        let mut t = BatchSizeTuner::new(TunerOptions {
            initial: 64,
            target: 64,
            max_consecutive_ooms: 2,
            ..TunerOptions::default()
        })
        .expect("tuner");
        let err = train(&mut t, &gpu, 1).expect_err("cannot fit");
        assert!(
            matches!(err, Error::OutOfMemory { attempts: 3, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("out of memory") && err.to_string().contains("in a row"),
            "{err}"
        );
    }

    #[test]
    fn probe_finds_the_largest_size_that_fits() {
        for (budget, expected) in [(10u64, 8u32), (3, 1), (1000, 100)] {
            let gpu = Gpu {
                budget,
                per_item: 1,
                base: 2,
            };
            let mut t = BatchSizeTuner::new(TunerOptions {
                max: 100,
                ..TunerOptions::default()
            })
            .expect("tuner");
            let mut calls = 0;
            let found = t.probe(|s| {
                calls += 1;
                Ok(gpu.run(s))
            });
            assert_eq!(found.expect("probe"), expected);
            assert_eq!(t.batch_size(), expected);
            assert!(
                calls <= 8,
                "binary search over 1..=100 takes at most 7 or 8 steps, took {calls}"
            );
        }
        let gpu = Gpu {
            budget: 1,
            per_item: 5,
            base: 0,
        };
        let mut t = BatchSizeTuner::new(TunerOptions::default()).expect("tuner");
        // Its own error, not an invalid argument: the configuration does not fit at all.
        assert!(
            matches!(
                t.probe(|s| Ok(gpu.run(s))),
                Err(Error::OutOfMemory {
                    batch_size: 1,
                    min: 1,
                    ..
                })
            ),
            "even batch size 1 runs out of memory"
        );
    }

    #[test]
    fn bounds_hold_and_bad_options_are_refused() {
        assert!(
            BatchSizeTuner::new(TunerOptions {
                min: 0,
                ..TunerOptions::default()
            })
            .is_err()
        );
        assert!(
            BatchSizeTuner::new(TunerOptions {
                backoff: 1.0,
                ..TunerOptions::default()
            })
            .is_err()
        );
        let t = BatchSizeTuner::new(TunerOptions {
            target: 500,
            max: 32,
            ..TunerOptions::default()
        })
        .expect("tuner");
        assert_eq!(t.batch_size(), 32);
    }
}
