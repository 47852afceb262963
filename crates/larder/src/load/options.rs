//! The settings of a [`Loader`](super::Loader): batch size, order, ranks, threads, and what to
//! load.

use super::order::OrderOptions;
use super::text::Padding;
use crate::{Error, Result};

/// Settings of a [`Loader`](super::Loader).
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
    /// ordinary memory and a warning otherwise. [`Loader::pinned`](super::Loader::pinned) says which.
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

    /// Refuses settings no loader can serve.
    pub(super) fn validate(&self) -> Result<()> {
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
