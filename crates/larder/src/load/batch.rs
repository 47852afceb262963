//! Assembled batches, in buffers that are reused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A byte buffer that goes back to its pool when dropped, so that a steady training loop
/// allocates no batch memory after the first few steps.
#[derive(Debug)]
pub struct PooledBuffer {
    data: Vec<u8>,
    pool: Option<Arc<BufferPool>>,
}

impl PooledBuffer {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::take(&mut self.data));
        }
    }
}

/// Free buffers, reused by size.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept for reuse at most; more are freed (a prefetch queue never needs more).
const POOL_LIMIT: usize = 64;

impl BufferPool {
    /// A buffer of exactly `len` bytes (contents unspecified: every byte is overwritten by the
    /// caller).
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuffer {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            // Best fit: the smallest free buffer that holds `len`.
            let pick = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            pick.map(|i| free.swap_remove(i))
        };
        let mut data = reused.unwrap_or_default();
        data.resize(len, 0);
        PooledBuffer {
            data,
            pool: Some(self.clone()),
        }
    }

    fn put(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_LIMIT {
            buf.clear();
            free.push(buf);
        }
    }
}

/// One field of a batch: `shape[0]` items, stacked.
#[derive(Debug)]
pub struct Tensor {
    /// safetensors dtype name of the elements ("U8", "BF16", "F32", ...).
    pub dtype: &'static str,
    /// [batch, ...item shape].
    pub shape: Vec<usize>,
    /// Little-endian, row-major element bytes.
    pub data: PooledBuffer,
}

/// A batch: items of one bucket, their fields stacked, and what the training step needs to
/// know about each item.
#[derive(Debug)]
pub struct Batch {
    /// The epoch.
    pub epoch: u64,
    /// Index of this batch among the epoch's global batches (all ranks).
    pub index: u64,
    /// Item ids.
    pub items: Vec<u32>,
    /// Item keys: content addresses of each item's source and geometry (hex).
    pub keys: Vec<String>,
    /// Per item: mirrored left to right at load time (`LoaderOptions::random_flip`).
    pub flipped: Vec<bool>,
    /// The bucket: width and height of the items' images.
    pub bucket: (u32, u32),
    /// Fields by name ("pixels", "mask", "control.0", ...).
    pub fields: BTreeMap<String, Tensor>,
    /// Captions after this epoch's transforms.
    pub captions: Vec<String>,
    /// Per item: part of a regularization dataset.
    pub is_reg: Vec<bool>,
    /// Per item: the dataset's network weight.
    pub network_weight: Vec<f32>,
    /// Per item: the dataset's loss multiplier.
    pub loss_multiplier: Vec<f32>,
}

impl Batch {
    /// The number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Returns true if and only if the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
