//! The loader: reader threads that assemble the planned batches from a store.
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

use super::batch::{Batch, BufferPool, Tensor};
use super::plan::{Buckets, EpochPlan, OrderOptions, SizeChange, epoch_plan};
use super::state::LoaderState;
use super::text::{self, Padding};
use crate::caption::{CaptionContext, CaptionRecipe};
use crate::metrics::LoaderMetrics;
use crate::rng::{Purpose, Stream};
use crate::store::{DANGLING, ItemColumns, ItemRow, NO_ENTRY, Store, TextTable};
use crate::{Error, Result};

/// Settings of a [`Loader`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Items per batch.
    pub batch_size: u32,
    /// Seed, shuffling and tail handling.
    pub order: OrderOptions,
    /// This process's rank.
    pub rank: usize,
    /// The number of ranks.
    pub world_size: usize,
    /// Reader threads.
    pub threads: usize,
    /// Batches assembled ahead of the consumer.
    pub prefetch: usize,
    /// Fields to load; `None` loads every field.
    pub fields: Option<Vec<String>>,
    /// Mirror each item's image fields left to right with probability ½, drawn per (seed,
    /// epoch, item): flip augmentation without AI Toolkit's doubling of the item list. Applies
    /// to u8 image fields (pixels, masks, controls, inpaint), not to encoded latents.
    pub random_flip: bool,
    /// Which side text embeddings are padded on (to the batch's longest caption).
    pub text_padding: Padding,
    /// Page-locked batch buffers (fast, asynchronous copies to a GPU) when CUDA is usable;
    /// ordinary memory and a warning otherwise. [`Loader::pinned`] says which.
    pub pin_memory: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 1,
            order: OrderOptions::default(),
            rank: 0,
            world_size: 1,
            threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
            prefetch: 4,
            fields: None,
            random_flip: false,
            text_padding: Padding::Right,
            pin_memory: false,
        }
    }
}

impl LoaderOptions {
    /// Takes `rank` and `world_size` from `RANK` and `WORLD_SIZE`, as torchrun sets them;
    /// leaves them unchanged when unset.
    pub fn with_env_ranks(self) -> Result<Self> {
        self.with_ranks_from(|name| std::env::var(name).ok())
    }

    /// [`with_env_ranks`](Self::with_env_ranks) with the variables read through `lookup`, so
    /// that callers (and tests) need not change the process environment.
    pub fn with_ranks_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let read = |name: &'static str| -> Result<Option<usize>> {
            match lookup(name) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::InvalidArgument {
                        name,
                        message: format!("the environment variable {name}={v:?} is not a number"),
                    }),
                None => Ok(None),
            }
        };
        if let Some(r) = read("RANK")? {
            self.rank = r;
        }
        if let Some(w) = read("WORLD_SIZE")? {
            self.world_size = w;
        }
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let bad = |name, message: String| Err(Error::InvalidArgument { name, message });
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            return bad(
                "rank",
                format!(
                    "rank {} is not below world size {}",
                    self.rank, self.world_size
                ),
            );
        }
        if self.threads == 0 || self.prefetch == 0 {
            return bad("threads", "threads and prefetch must be at least 1".into());
        }
        Ok(())
    }
}

/// What the readers need to know of each item, shared by all of them.
#[derive(Debug)]
struct Catalogued {
    columns: ItemColumns,
    recipes: Vec<CaptionRecipe>,
    /// The fields to load, as indices into `columns.fields`, in name order.
    fields: Vec<usize>,
    random_flip: bool,
    /// Wait, queue depth, bytes read and assembly time, recorded as batches are made and served.
    metrics: Arc<LoaderMetrics>,
    /// Text encoders' captions and variants (see the `text` module).
    texts: Vec<TextTable>,
    text_padding: Padding,
}

/// Serves a store's items as batches, deterministically, on any number of ranks.
#[derive(Debug)]
pub struct Loader {
    store: Arc<Store>,
    shared: Arc<Catalogued>,
    buckets: Buckets,
    options: LoaderOptions,
    state: LoaderState,
    /// Shared with the reader threads of the epoch's pipeline.
    plan: Arc<EpochPlan>,
    /// This rank's steps taken in the epoch since the pipeline (re)started at `start`.
    step: usize,
    start: u64,
    pipeline: Option<Pipeline>,
    /// Started with the first epoch and kept until the loader is dropped (after the
    /// pipeline, which is declared first).
    readers: Option<Readers>,
    pool: Arc<BufferPool>,
}

impl Loader {
    /// A loader at the start of epoch 0.
    pub fn new(store: Arc<Store>, options: LoaderOptions) -> Result<Loader> {
        let state = LoaderState::new(options.order, options.batch_size);
        Loader::with_state(store, options, state)
    }

    /// A loader that continues from `state`, on this loader's ranks (which may differ from the
    /// run that saved it). Nothing before the saved position is read.
    pub fn with_state(
        store: Arc<Store>,
        mut options: LoaderOptions,
        state: LoaderState,
    ) -> Result<Loader> {
        options.validate()?;
        options.order = state.order;
        let columns = store.item_columns()?;
        let settings = store.dataset_settings()?;
        let recipes = settings.iter().map(recipe_from_settings).collect();
        let mut texts = store.text_tables(columns.items.len())?;
        // A text encoder's name selects all its outputs and its mask.
        if let Some(wanted) = &options.fields {
            texts.retain(|t| wanted.contains(&t.field));
        }
        let mut fields: Vec<usize> = match &options.fields {
            Some(wanted) => wanted
                .iter()
                .filter(|name| !texts.iter().any(|t| &t.field == *name))
                .map(|name| {
                    columns
                        .fields
                        .iter()
                        .position(|f| f == name)
                        .ok_or_else(|| Error::InvalidArgument {
                            name: "fields",
                            message: format!(
                                "the store has no field {name:?} (it has {:?})",
                                columns.fields
                            ),
                        })
                })
                .collect::<Result<_>>()?,
            None => (0..columns.fields.len()).collect(),
        };
        fields.sort_by(|a, b| columns.fields[*a].cmp(&columns.fields[*b]));
        let buckets = Buckets::new(
            columns
                .items
                .iter()
                .enumerate()
                .map(|(id, i)| (id as u32, i.bucket)),
        );
        let plan = Arc::new(epoch_plan(
            &buckets,
            &state.order,
            state.epoch,
            state.epoch_start_size(),
            &state.history,
        ));
        let start = state.consumed;
        let pool = Arc::new(BufferPool::new(options.pin_memory));
        Ok(Loader {
            store,
            shared: Arc::new(Catalogued {
                columns,
                recipes,
                fields,
                random_flip: options.random_flip,
                metrics: Arc::default(),
                texts,
                text_padding: options.text_padding,
            }),
            buckets,
            options,
            state,
            plan,
            step: 0,
            start,
            pipeline: None,
            readers: None,
            pool,
        })
    }

    /// Returns true if and only if batch buffers are page-locked (`pin_memory` with CUDA).
    pub fn pinned(&self) -> bool {
        self.pool.is_pinned()
    }

    /// The loader's position; save it with a checkpoint.
    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    /// The loader's own counters (wait time, queue depth, bytes read, assembly and decode
    /// time), for [`Metrics::attach_loader`](crate::metrics::Metrics::attach_loader).
    pub fn metrics(&self) -> Arc<LoaderMetrics> {
        self.shared.metrics.clone()
    }

    /// Records into `metrics` instead of counters of its own: a loader rebuilt from a saved
    /// state goes on counting where the one it replaces left off.
    pub fn with_metrics(mut self, metrics: Arc<LoaderMetrics>) -> Loader {
        if self.pipeline.is_some() {
            // The pipeline's jobs hold the shared part; dropping the pipeline (re-planning from
            // the current position) waits for them to let go of it.
            self.replan();
        }
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.metrics = metrics;
        }
        self
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// The number of batches this rank serves in the current epoch (from its start).
    pub fn len(&self) -> usize {
        self.plan
            .per_rank(self.options.world_size, self.state.order.rank_tail)
    }

    /// Returns true if and only if this rank serves no batch this epoch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts `epoch` from its beginning (as `DistributedSampler.set_epoch` does).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.state.epoch = epoch;
        self.state.consumed = 0;
        self.replan();
    }

    /// Changes the batch size from the next batch on; the rest of the epoch is re-planned
    /// deterministically and the change is recorded in the state.
    pub fn set_batch_size(&mut self, batch_size: u32) -> Result<()> {
        if batch_size == self.state.current_batch_size() {
            return Ok(());
        }
        self.resize(0, batch_size)
    }

    /// The last step failed (out of memory, say): its batches are served again, re-planned with
    /// `batch_size` together with the rest of the epoch, from the start of that step. The
    /// position is global, so every rank calls this together. The change is in the state.
    pub fn retry_step_with(&mut self, batch_size: u32) -> Result<()> {
        self.resize(self.options.world_size as u64, batch_size)
    }

    /// Steps back `rewind` global batches, records a batch-size change there, and re-plans the
    /// rest of the epoch from it.
    fn resize(&mut self, rewind: u64, batch_size: u32) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument {
                name: "batch_size",
                message: "must be at least 1".into(),
            });
        }
        self.state.consumed = self.state.consumed.saturating_sub(rewind);
        self.state.history.push(SizeChange {
            epoch: self.state.epoch,
            at: self.state.consumed,
            batch_size,
        });
        self.replan();
        Ok(())
    }

    fn replan(&mut self) {
        self.pipeline = None;
        self.plan = Arc::new(epoch_plan(
            &self.buckets,
            &self.state.order,
            self.state.epoch,
            self.state.epoch_start_size(),
            &self.state.history,
        ));
        self.start = self.state.consumed;
        self.step = 0;
    }

    /// The global batch indices this rank serves from the current position to the epoch's end.
    fn remaining_jobs(&self) -> Vec<usize> {
        let (rank, world) = (self.options.rank, self.options.world_size);
        (0..)
            .map_while(|s| {
                self.plan.global_index(
                    self.start as usize,
                    rank,
                    world,
                    s,
                    self.state.order.rank_tail,
                )
            })
            .collect()
    }

    /// The next batch of the epoch, or `None` at its end (the loader then moves to the next
    /// epoch). An error belongs to the batch it is returned for; the loader moves past it.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.pipeline.is_none() {
            let jobs = self.remaining_jobs();
            if jobs.is_empty() {
                self.state.epoch += 1;
                self.state.consumed = 0;
                self.replan();
                return None;
            }
            // A forked child has none of its parent's threads: it starts its own.
            if self
                .readers
                .as_ref()
                .is_none_or(|r| r.pid != std::process::id())
            {
                self.readers = Some(Readers::start(
                    self.store.clone(),
                    self.pool.clone(),
                    self.options.threads,
                ));
            }
            let readers = self.readers.as_ref()?;
            self.pipeline = Some(Pipeline::start(
                &self.store,
                readers.jobs.clone(),
                self.shared.clone(),
                self.plan.clone(),
                jobs,
                self.state.epoch,
                self.state.order.seed,
                &self.options,
            ));
        }
        let pipeline = self.pipeline.as_mut()?;
        match pipeline.next() {
            Some(result) => {
                self.step += 1;
                self.state.consumed = self.start + (self.step * self.options.world_size) as u64;
                Some(result)
            }
            None => {
                self.state.epoch += 1;
                self.state.consumed = 0;
                self.replan();
                None
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    /// Yields the current epoch's batches, then `None` once; iterating again serves the next
    /// epoch, as a PyTorch DataLoader does.
    fn next(&mut self) -> Option<Result<Batch>> {
        self.next_batch()
    }
}

/// The caption settings of a dataset as the store recorded them.
fn recipe_from_settings(v: &serde_json::Value) -> CaptionRecipe {
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
    CaptionRecipe {
        caption_dropout_rate: f("caption_dropout_rate"),
        token_dropout_rate: f("token_dropout_rate"),
        keep_tokens: u("keep_tokens"),
        shuffle_tokens: v
            .get("shuffle_tokens")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        trigger_word: v
            .get("trigger_word")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
        is_reg: v
            .get("is_reg")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        random_triggers: v
            .get("random_triggers")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        random_triggers_max: v
            .get("random_triggers_max")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1) as usize,
    }
}

/// One batch for the readers to assemble, sent by the pipeline of the epoch it belongs to.
struct Job {
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
struct Readers {
    jobs: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
    /// The process that started the threads: a forked child has none of them.
    pid: u32,
}

impl Readers {
    fn start(store: Arc<Store>, pool: Arc<BufferPool>, count: usize) -> Readers {
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
        Err(Error::InvalidArgument {
            name: "batch",
            message: format!(
                "assembling batch {global} of epoch {epoch} panicked; please report this"
            ),
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
struct Pipeline {
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
    #[allow(clippy::too_many_arguments)]
    fn start(
        store: &Arc<Store>,
        jobs: Sender<Job>,
        shared: Arc<Catalogued>,
        plan: Arc<EpochPlan>,
        globals: Vec<usize>,
        epoch: u64,
        seed: u64,
        options: &LoaderOptions,
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
        for _ in 0..options.prefetch {
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

    fn next(&mut self) -> Option<Result<Batch>> {
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

/// Assembles one batch: every requested field of every item, stacked into one buffer.
fn assemble(
    store: &Store,
    shared: &Catalogued,
    pool: &Arc<BufferPool>,
    ids: &[u32],
    epoch: u64,
    index: u64,
    seed: u64,
) -> Result<Batch> {
    let columns = &shared.columns;
    let rows: Vec<&ItemRow> = ids.iter().map(|&id| &columns.items[id as usize]).collect();
    let first = rows.first().ok_or_else(|| Error::InvalidArgument {
        name: "batch",
        message: "empty batch".into(),
    })?;
    let flipped: Vec<bool> = ids
        .iter()
        .map(|&id| {
            shared.random_flip
                && Stream::new(Purpose::Flip, &[seed, epoch, u64::from(id)]).unit() < 0.5
        })
        .collect();
    let mut fields = std::collections::BTreeMap::new();
    for &f in &shared.fields {
        let positions: Vec<u32> = ids
            .iter()
            .map(|&id| columns.entries[f][id as usize])
            .collect();
        let name = &columns.fields[f];
        // A field no item of the batch has is not in the batch. One that only some lack is
        // what AI Toolkit's batch does: a missing mask, control or inpaint image is zeros
        // like the others' (`torch.zeros_like`), and anything else (an encoder's output)
        // fails the batch, naming the item.
        let lacking = positions.iter().filter(|&&p| p == NO_ENTRY).count();
        if lacking == positions.len() {
            continue;
        }
        if lacking > 0 && !zero_when_missing(name) {
            let k = positions.iter().position(|&p| p == NO_ENTRY).unwrap_or(0);
            return Err(Error::Store {
                path: store.root().to_path_buf(),
                message: format!(
                    "item {} ({}) has no {name} while other items of its batch do (as AI Toolkit, only a missing mask, control or inpaint image is filled with zeros); run `larder prepare` again so that every item gets one, or load without the field",
                    ids[k], rows[k].path
                ),
            });
        }
        let mut tensor = stack(store, pool, ids, &rows, &positions, name, &shared.metrics)?;
        if flipped.contains(&true) && tensor.dtype == "U8" && tensor.shape.len() == 4 {
            mirror_rows(&mut tensor, &flipped);
        }
        fields.insert(name.clone(), tensor);
    }
    let text = text::assemble(
        store,
        &shared.texts,
        &shared.recipes,
        pool,
        ids,
        &rows.iter().map(|r| r.dataset).collect::<Vec<_>>(),
        seed,
        epoch,
        shared.text_padding,
        &shared.metrics,
    )?;
    fields.extend(text.fields);
    let captions = text.captions.unwrap_or_else(|| {
        ids.iter()
            .zip(&rows)
            .map(|(&id, row)| {
                let recipe = &shared.recipes[row.dataset as usize];
                recipe.apply(
                    &row.caption,
                    CaptionContext {
                        seed,
                        epoch,
                        item: u64::from(id),
                    },
                )
            })
            .collect()
    });
    Ok(Batch {
        epoch,
        index,
        items: ids.to_vec(),
        keys: rows
            .iter()
            .map(|r| r.key.iter().map(|b| format!("{b:02x}")).collect())
            .collect(),
        flipped,
        bucket: first.bucket,
        fields,
        captions,
        is_reg: rows.iter().map(|r| r.is_reg).collect(),
        network_weight: rows.iter().map(|r| r.network_weight).collect(),
        loss_multiplier: rows.iter().map(|r| r.loss_multiplier).collect(),
    })
}

/// Returns true if and only if an item that lacks `field` gets zeros in its place in the batch
/// (AI Toolkit's `zeros_like` for masks, controls and inpaint images) rather than failing it.
fn zero_when_missing(field: &str) -> bool {
    matches!(
        field.split('.').next().unwrap_or(field),
        "mask" | "control" | "inpaint"
    )
}

/// Mirrors the rows of the flipped items of a [B, C, H, W] u8 tensor.
fn mirror_rows(tensor: &mut Tensor, flipped: &[bool]) {
    let width = tensor.shape[3];
    let item_bytes = tensor.shape[1..].iter().product::<usize>();
    for (k, _) in flipped.iter().enumerate().filter(|(_, f)| **f) {
        let item = &mut tensor.data.as_mut_slice()[k * item_bytes..(k + 1) * item_bytes];
        for row in item.chunks_exact_mut(width) {
            row.reverse();
        }
    }
}

/// The entries (by position) that assembling the batch of items `ids` reads: what a remote
/// store prefetches.
fn batch_entries(shared: &Catalogued, ids: &[u32], epoch: u64, seed: u64) -> Vec<u32> {
    let columns = &shared.columns;
    let mut out: Vec<u32> = shared
        .fields
        .iter()
        .flat_map(|&f| ids.iter().map(move |&id| columns.entries[f][id as usize]))
        .filter(|&pos| pos != NO_ENTRY && pos != DANGLING)
        .collect();
    let datasets: Vec<u32> = ids
        .iter()
        .map(|&id| columns.items[id as usize].dataset)
        .collect();
    out.extend(text::entry_positions(
        &shared.texts,
        &shared.recipes,
        ids,
        &datasets,
        seed,
        epoch,
    ));
    out
}

/// Stacks one field of the items into a pooled buffer: raw entries are copied straight from the
/// memory map (of the shard, or of a remote store's cache); compressed ones are decompressed
/// into place; quantized ones decoded to f32.
fn stack(
    store: &Store,
    pool: &Arc<BufferPool>,
    ids: &[u32],
    rows: &[&ItemRow],
    positions: &[u32],
    field: &str,
    metrics: &LoaderMetrics,
) -> Result<Tensor> {
    let mut out: Option<Tensor> = None;
    for (k, (&pos, row)) in positions.iter().zip(rows).enumerate() {
        let in_item =
            |message: String| format!("item {} ({}) field {field}: {message}", ids[k], row.path);
        let with_item = |e: Error| match e {
            Error::Store { path, message } => Error::Store {
                path,
                message: in_item(message),
            },
            Error::Remote { url, message } => Error::Remote {
                url,
                message: in_item(message),
            },
            e @ Error::CorruptShard { item: None, .. } => {
                e.in_item(format!("item {} ({}) field {field}", ids[k], row.path))
            }
            other => other,
        };
        if pos == NO_ENTRY {
            // Zeros, written once the first present item has given the slot its size.
            continue;
        }
        if pos == DANGLING {
            return Err(Error::Store {
                path: store.root().to_path_buf(),
                message: in_item(
                    "its entry is not in the catalog; run `larder prepare` again".into(),
                ),
            });
        }
        let entry = store.entry_at(pos)?;
        if let Some(dtype) = entry.codec.plain_dtype() {
            // Stored as the elements are: copied from the shard (or the remote cache) straight
            // into the batch.
            let started = Instant::now();
            let dst = slot(
                &mut out,
                pool,
                positions.len(),
                k,
                dtype,
                &entry.shape,
                entry.length,
            )
            .map_err(with_item)?;
            let hit = store.read_plain_into(entry, dst).map_err(with_item)?;
            metrics.record_read(entry.length, started.elapsed());
            if let Some(hit) = hit {
                metrics.record_cache(hit);
            }
            continue;
        }
        let (stored, entry) = store.stored_bytes_at(pos).map_err(with_item)?;
        let context = |e: Error| Error::Store {
            path: stored.origin().to_path_buf(),
            message: in_item(e.to_string()),
        };
        let decoding = Instant::now();
        let (dtype, bytes) = text::element_bytes(entry, &stored).map_err(context)?;
        metrics.record_read(stored.len() as u64, decoding.elapsed());
        if let Some(hit) = stored.cache_hit() {
            metrics.record_cache(hit);
        }
        slot(
            &mut out,
            pool,
            positions.len(),
            k,
            dtype,
            &entry.shape,
            bytes.len() as u64,
        )
        .map_err(context)?
        .copy_from_slice(&bytes);
    }
    let mut out = out.ok_or_else(|| Error::InvalidArgument {
        name: "batch",
        message: "empty batch".into(),
    })?;
    // Pooled buffers hold old bytes: the slots of items without the field are zeroed here.
    let item_bytes = out.data.as_slice().len() / positions.len().max(1);
    for (k, _) in positions
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == NO_ENTRY)
    {
        out.data.as_mut_slice()[k * item_bytes..(k + 1) * item_bytes].fill(0);
    }
    Ok(out)
}

/// Item `k`'s part of the stacked tensor of `count` items, allocated from the pool by the first
/// item; an item whose dtype, shape or size differs from the first's is an error.
fn slot<'t>(
    out: &'t mut Option<Tensor>,
    pool: &Arc<BufferPool>,
    count: usize,
    k: usize,
    dtype: &'static str,
    shape: &[usize],
    bytes: u64,
) -> Result<&'t mut [u8]> {
    let item_bytes = bytes as usize;
    let tensor = out.get_or_insert_with(|| {
        let mut full = vec![count];
        full.extend_from_slice(shape);
        Tensor {
            dtype,
            shape: full,
            data: pool.take(item_bytes * count),
        }
    });
    if tensor.data.as_slice().len() != item_bytes * count
        || tensor.dtype != dtype
        || tensor.shape[1..] != shape[..]
    {
        return Err(Error::InvalidArgument {
            name: "field",
            message: format!(
                "shape {shape:?} {dtype} differs from the batch's {:?} {}",
                &tensor.shape[1..],
                tensor.dtype
            ),
        });
    }
    Ok(&mut tensor.data.as_mut_slice()[k * item_bytes..(k + 1) * item_bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of twelve 64×64 images.
    fn small_store(dir: &std::path::Path) -> Arc<Store> {
        let imgs = dir.join("imgs");
        std::fs::create_dir_all(&imgs).expect("mkdir");
        for i in 0..12 {
            crate::synth::write_image(&imgs.join(format!("{i}.png")), 64, 64, i).expect("image");
        }
        let config = dir.join("c.yaml");
        std::fs::write(
            &config,
            "datasets:\n  - folder_path: imgs\n    resolution: 64\n",
        )
        .expect("config");
        let out = dir.join("store");
        crate::prepare(
            &crate::Config::load(&config).expect("config"),
            &out,
            &crate::PrepareOptions::default(),
        )
        .expect("prepare");
        Arc::new(Store::open(&out).expect("open"))
    }

    fn reader_ids(loader: &Loader) -> Vec<std::thread::ThreadId> {
        loader.readers.as_ref().map_or_else(Vec::new, |r| {
            r.threads.iter().map(|t| t.thread().id()).collect()
        })
    }

    #[test]
    fn reader_threads_live_across_epochs_and_batch_size_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LoaderOptions {
            batch_size: 2,
            threads: 3,
            prefetch: 2,
            ..LoaderOptions::default()
        };
        let mut loader = Loader::new(small_store(dir.path()), options).expect("loader");
        loader.next().expect("batch").expect("ok");
        let first = reader_ids(&loader);
        assert_eq!(first.len(), 3);
        // The rest of epoch 0, and the start of epoch 1.
        assert_eq!(loader.by_ref().filter(|b| b.is_ok()).count(), 5);
        loader.next().expect("batch").expect("ok");
        assert_eq!(reader_ids(&loader), first, "a new epoch");
        loader.set_batch_size(3).expect("resize");
        let b = loader.next().expect("batch").expect("ok");
        assert_eq!(b.len(), 3);
        assert_eq!(reader_ids(&loader), first, "a batch-size change");
        loader.set_epoch(5);
        loader.next().expect("batch").expect("ok");
        assert_eq!(reader_ids(&loader), first, "set_epoch");
        let readers = loader.readers.as_ref().expect("readers");
        assert!(readers.threads.iter().all(|t| !t.is_finished()));
    }
}
