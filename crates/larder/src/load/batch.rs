//! Assembled batches, in buffers that are reused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::cuda::PinnedBuffer;

/// A byte buffer that goes back to its pool when dropped, so that a steady training loop
/// allocates no batch memory after the first few steps.
#[derive(Debug)]
pub struct PooledBuffer {
    memory: Memory,
    len: usize,
    pool: Option<Arc<BufferPool>>,
}

/// Where a pooled buffer's bytes live.
#[derive(Debug)]
enum Memory {
    /// Ordinary memory, at least as long as the buffer. A reused vector keeps its length and
    /// its old bytes: the caller overwrites every byte, and zeroing them first cost an eighth
    /// of a warm epoch (a `memset` of every batch).
    Heap(Vec<u8>),
    /// Page-locked memory (`pin_memory`), at least as long as the buffer.
    Pinned(PinnedBuffer),
}

impl Memory {
    fn capacity(&self) -> usize {
        match self {
            Memory::Heap(v) => v.capacity(),
            Memory::Pinned(p) => p.as_slice().len(),
        }
    }
}

impl PooledBuffer {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.memory {
            Memory::Heap(v) => &v[..self.len],
            Memory::Pinned(p) => &p.as_slice()[..self.len],
        }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.memory {
            Memory::Heap(v) => &mut v[..self.len],
            Memory::Pinned(p) => &mut p.as_mut_slice()[..self.len],
        }
    }

    /// Returns true if and only if the bytes are page-locked.
    pub fn is_pinned(&self) -> bool {
        matches!(self.memory, Memory::Pinned(_))
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.put(std::mem::replace(
                &mut self.memory,
                Memory::Heap(Vec::new()),
            ));
        }
    }
}

/// Logs a pin_memory warning the first time only: a loader rebuilt by `load_state_dict`, or
/// every batch of a pool whose page-locking starts failing, would otherwise repeat it.
fn warn_once(message: std::fmt::Arguments<'_>) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("{message}");
    }
}

/// Free buffers, reused by size; page-locked when the pool is pinned.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Memory>>,
    pinned: bool,
}

/// Buffers kept for reuse at most; more are freed (a prefetch queue never needs more).
const POOL_LIMIT: usize = 64;

/// Page-locked buffers are allocated in multiples of this, so that batches of nearby sizes
/// (other buckets) reuse them: page-locking is far slower than an ordinary allocation.
const PINNED_GRANULE: usize = 2 << 20;

impl BufferPool {
    /// A pool of ordinary buffers, or of page-locked ones when `pin` and CUDA is usable. When
    /// CUDA is not, the pool is ordinary and says so once (a warning with the reason).
    pub fn new(pin: bool) -> BufferPool {
        let pinned = pin
            && match crate::cuda::available() {
                Ok(()) => true,
                Err(why) => {
                    warn_once(format_args!(
                        "pin_memory: page-locked batch buffers need CUDA, which is unavailable ({why}); batches are in ordinary memory"
                    ));
                    false
                }
            };
        BufferPool {
            free: Mutex::default(),
            pinned,
        }
    }

    /// Returns true if and only if the pool hands out page-locked buffers.
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

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
        let memory = match reused {
            Some(Memory::Heap(mut v)) => {
                if v.len() < len {
                    v.resize(len, 0);
                }
                Memory::Heap(v)
            }
            Some(pinned @ Memory::Pinned(_)) => pinned,
            None if self.pinned => match PinnedBuffer::new(len.next_multiple_of(PINNED_GRANULE)) {
                Ok(p) => Memory::Pinned(p),
                Err(e) => {
                    warn_once(format_args!(
                        "pin_memory: {e}; batches that cannot be page-locked are in ordinary memory"
                    ));
                    Memory::Heap(vec![0; len])
                }
            },
            None => Memory::Heap(vec![0; len]),
        };
        PooledBuffer {
            memory,
            len,
            pool: Some(self.clone()),
        }
    }

    fn put(&self, memory: Memory) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_LIMIT {
            free.push(memory);
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
    /// Fields whose items have sizes of their own, one tensor per item without a batch
    /// dimension: controls at their own size ("control_raw.0", ...; AI Toolkit's
    /// `control_tensor_list`) and clips' audio ("audio", [2, L] at each track's rate).
    pub per_item_fields: BTreeMap<String, Vec<Tensor>>,
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

    /// The bytes of all its tensors, stacked and per item.
    pub fn tensor_bytes(&self) -> usize {
        let stacked = self.fields.values();
        let per_item = self.per_item_fields.values().flatten();
        stacked
            .chain(per_item)
            .map(|t| t.data.as_slice().len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_pool_pins_exactly_when_cuda_is_usable_and_reuses_buffers() {
        let pool = Arc::new(BufferPool::new(true));
        assert_eq!(pool.is_pinned(), crate::cuda::available().is_ok());
        let mut b = pool.take(1000);
        assert_eq!(b.is_pinned(), pool.is_pinned());
        b.as_mut_slice().fill(7);
        assert_eq!(b.as_slice(), &[7u8; 1000][..]);
        drop(b);
        let again = pool.take(500);
        assert_eq!(again.as_slice().len(), 500);
        assert_eq!(
            pool.free.lock().map(|f| f.len()).unwrap_or(9),
            0,
            "the free buffer was reused"
        );
        assert!(!BufferPool::new(false).is_pinned());
    }
}
