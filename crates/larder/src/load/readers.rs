//! The reader threads and the reorder buffer.
//!
//! Readers are threads over one memory-mapped store, not processes: one copy of the data,
//! shared by all of them and, through the page cache, by every process on the machine. A pool
//! of `threads` readers assembles batches ahead of the training loop, at most `prefetch` at a
//! time; a reorder buffer hands them out in plan order whatever order they finish in.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::assemble::{Catalogued, assemble, batch_entries};
use super::batch::{Batch, BufferPool};
use super::order::EpochPlan;
use crate::store::Store;
use crate::{Error, Result};

/// One batch for the readers to assemble, sent by the pipeline of the epoch it belongs to.
pub(super) struct Job {
    /// The batch's position among its pipeline's jobs (the reorder key).
    position: usize,
    /// The batch's index among the epoch's global batches.
    global: usize,
    epoch: u64,
    seed: u64,
    plan: Arc<EpochPlan>,
    shared: Arc<Catalogued>,
    results: Sender<(usize, Result<Batch>)>,
    /// Set when the pipeline that sent the job is dropped: the job is skipped.
    cancelled: Arc<AtomicBool>,
    /// The pipeline's jobs sent and not yet finished or skipped.
    outstanding: Arc<AtomicUsize>,
}

/// The reader threads of a loader. They live as long as the loader: each epoch, and each
/// re-plan after a batch-size change, sends them the new plan's jobs instead of starting
/// threads of its own.
#[derive(Debug)]
pub(super) struct Readers {
    pub(super) jobs: Sender<Job>,
    pub(super) threads: Vec<JoinHandle<()>>,
    /// The process that started the threads: a forked child has none of them.
    pub(super) pid: u32,
}

impl Readers {
    pub(super) fn start(store: Arc<Store>, pool: Arc<BufferPool>, count: usize) -> Readers {
        let (jobs, inbox) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..count)
            .map(|_| {
                let (store, pool, inbox) = (store.clone(), pool.clone(), inbox.clone());
                std::thread::spawn(move || {
                    // The loader's drop closes the job channel, which ends every reader once it
                    // has finished the batch in hand.
                    while let Ok(job) = inbox.recv() {
                        let outstanding = job.outstanding.clone();
                        if job.cancelled.load(Ordering::Acquire) {
                            drop(job);
                        } else {
                            run(&store, &pool, job);
                        }
                        // Only now, with the job and all it held dropped.
                        outstanding.fetch_sub(1, Ordering::Release);
                    }
                })
            })
            .collect();
        Readers {
            jobs,
            threads,
            pid: std::process::id(),
        }
    }
}

/// Assembles the batch of `job` and sends it to its pipeline. Everything the job holds (the
/// shared item table among it) is dropped before the reader counts it done.
fn run(store: &Store, pool: &Arc<BufferPool>, job: Job) {
    let Job {
        position,
        global,
        epoch,
        seed,
        plan,
        shared,
        results,
        ..
    } = job;
    // A panic while assembling (a bug, never expected) becomes this batch's error: the consumer
    // waits for every job it hands out, so a job without a result would hang the training loop.
    let started = Instant::now();
    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assemble(
            store,
            &shared,
            pool,
            &plan.batches[global],
            epoch,
            global as u64,
            seed,
        )
    }))
    .unwrap_or_else(|_| {
        Err(Error::Panicked {
            what: format!("assembling batch {global} of epoch {epoch}"),
        })
    });
    shared.metrics.record_assembly(started.elapsed());
    // The pipeline is gone when the epoch was re-planned meanwhile: the batch is not needed.
    let _ = results.send((position, batch));
}

impl Drop for Readers {
    fn drop(&mut self) {
        // Closing the job channel ends the readers.
        drop(std::mem::replace(
            &mut self.jobs,
            crossbeam_channel::unbounded().0,
        ));
        if std::process::id() != self.pid {
            // In a forked child the threads are the parent's: there is nothing to wait for or
            // join, and their handles are abandoned.
            std::mem::forget(std::mem::take(&mut self.threads));
            return;
        }
        // Readers finish the batch in hand and stop. One waiting on object storage that has
        // gone away could take a request's whole retry budget, so after a short wait the rest
        // are left to end on their own (they own what they use).
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// One epoch's jobs for this rank (from the current position), handed to the readers at most
/// `prefetch` ahead of the consumer and served in plan order.
#[derive(Debug)]
pub(super) struct Pipeline {
    results: Receiver<(usize, Result<Batch>)>,
    /// Sends the jobs; the sender of each job's result is cloned from `result_tx`.
    jobs: Sender<Job>,
    result_tx: Sender<(usize, Result<Batch>)>,
    /// Global batch indices of the jobs.
    globals: Vec<usize>,
    /// Jobs sent to the readers so far.
    sent: usize,
    reorder: HashMap<usize, Result<Batch>>,
    shared: Arc<Catalogued>,
    plan: Arc<EpochPlan>,
    epoch: u64,
    seed: u64,
    next: usize,
    cancelled: Arc<AtomicBool>,
    outstanding: Arc<AtomicUsize>,
    /// For a remote store: fetches the chunks of the batches ahead.
    prefetch: Option<crate::storage::Prefetch>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("epoch", &self.epoch)
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts serving the jobs `globals` (global batch indices) of `plan`, handing the first
    /// `ahead` of them to the readers.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        store: &Arc<Store>,
        jobs: Sender<Job>,
        shared: Arc<Catalogued>,
        plan: Arc<EpochPlan>,
        globals: Vec<usize>,
        epoch: u64,
        seed: u64,
        ahead: usize,
    ) -> Pipeline {
        let (result_tx, results) = crossbeam_channel::unbounded();
        let globals = Arc::new(globals);
        let prefetch = {
            let (shared, plan, globals) = (shared.clone(), plan.clone(), globals.clone());
            store.prefetch(globals.len(), move |n| {
                globals.get(n).map_or_else(Vec::new, |&global| {
                    batch_entries(&shared, &plan.batches[global], epoch, seed)
                })
            })
        };
        let globals = Arc::unwrap_or_clone(globals);
        let mut pipeline = Pipeline {
            results,
            jobs,
            result_tx,
            globals,
            sent: 0,
            reorder: HashMap::new(),
            shared,
            plan,
            epoch,
            seed,
            next: 0,
            cancelled: Arc::new(AtomicBool::new(false)),
            outstanding: Arc::new(AtomicUsize::new(0)),
            prefetch,
        };
        for _ in 0..ahead {
            pipeline.send_next();
        }
        pipeline
    }

    /// Hands the readers the next job, if any is left.
    fn send_next(&mut self) {
        let Some(&global) = self.globals.get(self.sent) else {
            return;
        };
        let job = Job {
            position: self.sent,
            global,
            epoch: self.epoch,
            seed: self.seed,
            plan: self.plan.clone(),
            shared: self.shared.clone(),
            results: self.result_tx.clone(),
            cancelled: self.cancelled.clone(),
            outstanding: self.outstanding.clone(),
        };
        self.sent += 1;
        self.outstanding.fetch_add(1, Ordering::Release);
        if let Err(crossbeam_channel::SendError(job)) = self.jobs.send(job) {
            // No readers (they stopped, which only a bug can make them do): the job's
            // error takes its place, so the consumer is told instead of waiting forever.
            self.outstanding.fetch_sub(1, Ordering::Release);
            let _ = self.result_tx.send((
                job.position,
                Err(Error::InvalidArgument {
                    name: "loader",
                    message: "the reader threads stopped unexpectedly".into(),
                }),
            ));
        }
    }

    pub(super) fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.globals.len() {
            return None;
        }
        // Batches ready now, in order or not: how far ahead the readers are.
        let ready = self.reorder.len() + self.results.len();
        let asked = Instant::now();
        let result = loop {
            if let Some(r) = self.reorder.remove(&self.next) {
                break r;
            }
            // The pipeline holds a sender of results itself, so this waits for the readers
            // rather than ending; every job sent gets exactly one result.
            match self.results.recv() {
                Ok((j, r)) => {
                    self.reorder.insert(j, r);
                }
                Err(_) => {
                    break Err(Error::InvalidArgument {
                        name: "loader",
                        message: "the reader threads stopped unexpectedly".into(),
                    });
                }
            }
        };
        self.shared.metrics.record_delivery(asked.elapsed(), ready);
        if let Some(p) = &self.prefetch {
            p.consumed(self.next);
        }
        self.next += 1;
        self.send_next();
        Some(result)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Jobs not yet started are skipped; the batches in hand are finished (their results go
        // nowhere). Waiting for all of them keeps what they hold (the shared item table) from
        // outliving the pipeline, with the same one-second bound as the readers' drop. At an
        // epoch's end every job is done and this returns at once.
        self.cancelled.store(true, Ordering::Release);
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while self.outstanding.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
