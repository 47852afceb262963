//! The loader: the public API over the reader threads, and the position it keeps.
//!
//! A [`Loader`] owns the epoch's plan and its position in it ([`LoaderState`]); the reader
//! threads and the reorder buffer ([`readers`](super::readers)) assemble the planned batches
//! ([`assemble`](super::assemble)) ahead of the training loop.

use std::sync::Arc;

use super::assemble::Catalogued;
use super::batch::{Batch, BufferPool};
use super::options::LoaderOptions;
use super::order::{Buckets, EpochPlan, SizeChange, epoch_plan};
use super::readers::{Pipeline, Readers};
use super::state::LoaderState;
use crate::metrics::LoaderMetrics;
use crate::store::Store;
use crate::{Error, Result};

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
        let recipes = store.caption_recipes()?;
        // Batches look recipes up by the item's dataset: one the catalog does not list would
        // fail every batch holding the item, so the store is refused here, once.
        if let Some((id, row)) = (columns.items.iter().enumerate())
            .find(|(_, row)| row.dataset as usize >= recipes.len())
        {
            return Err(Error::Store {
                path: store.root().to_path_buf(),
                message: format!(
                    "item {id} ({}) belongs to dataset {}, which the catalog does not list ({} datasets); run `larder prepare` again",
                    row.path,
                    row.dataset,
                    recipes.len()
                ),
            });
        }
        let mut texts = store.text_tables(columns.items.len())?;
        for table in &mut texts {
            table.find_dropouts(&recipes);
            // A dataset that drops captions needs its dropout caption's embedding: refused
            // here, once, rather than at the first dropped caption.
            let lacking = (columns.items.iter().enumerate()).find(|(id, row)| {
                let d = row.dataset as usize;
                recipes[d].caption_dropout_rate > 0.0
                    && table.dropped[d].is_none()
                    && table.offsets[*id] != table.offsets[id + 1]
            });
            if let Some((_, row)) = lacking {
                return Err(Error::Store {
                    path: store.root().to_path_buf(),
                    message: format!(
                        "dataset {} drops captions, but the store has no {:?} embedding of its dropout caption {:?} (the store was prepared by an earlier larder, or its embeddings imported from AI Toolkit's cache): run `larder prepare` again with the text encoder, which encodes only that caption",
                        row.dataset,
                        table.field,
                        recipes[row.dataset as usize].dropout_caption()
                    ),
                });
            }
        }
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
        // AI Toolkit batches each bucketed dataset (each resolution of it) on its own, at the
        // dataset's batch size where it sets one, and shuffles the batches of all datasets
        // together; datasets without buckets it batches together.
        let batching = store.dataset_batching()?;
        let together = u32::MAX;
        let buckets = Buckets::with_sizes(
            (columns.items.iter().enumerate()).map(|(id, i)| {
                let bucketed = batching.get(i.dataset as usize).is_none_or(|b| b.buckets);
                let dataset = if bucketed { i.dataset } else { together };
                (id as u32, (dataset, i.resolution, i.bucket, i.frames))
            }),
            |&(dataset, _, _, _)| batching.get(dataset as usize).and_then(|b| b.batch_size),
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
                self.options.prefetch,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of twelve 64×64 images.
    fn small_store(dir: &std::path::Path) -> Arc<Store> {
        let imgs = dir.join("imgs");
        std::fs::create_dir_all(&imgs).expect("mkdir");
        for i in 0..12 {
            larder_synth::write_image(&imgs.join(format!("{i}.png")), 64, 64, i).expect("image");
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
