//! The loader behind `larder.DataLoader`: batches as dicts of NumPy arrays that view
//! Rust-owned buffers.

use std::sync::Arc;

use larder::load::order::{BucketTail, OrderOptions, RankTail};
use larder::load::{Batch, LoaderOptions, LoaderState, PooledBuffer, Tensor};
use larder::metrics::LoaderMetrics;
use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::{Element, PyArray, PyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{ArgumentError, LarderError, to_py};
use crate::store::Store;

/// The memory behind the arrays of one batch field; NumPy arrays keep it alive as their base.
#[derive(Debug)]
#[pyclass(module = "larder._larder", frozen)]
pub struct Buffer {
    data: PooledBuffer,
}

#[pymethods]
impl Buffer {
    /// Size in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.data.as_slice().len()
    }
}

/// Serves a store's batches (see `larder.DataLoader`).
#[derive(Debug)]
#[pyclass(module = "larder._larder")]
pub struct Loader {
    inner: Option<larder::load::Loader>,
    store: Arc<larder::Store>,
    options: LoaderOptions,
    /// The loader's counters, kept across `load_state_json` (which rebuilds the loader).
    metrics: Arc<LoaderMetrics>,
    /// The process that made the loader: its reader threads exist only there.
    pid: u32,
}

impl Loader {
    /// The loader's counters, for `larder.Metrics`.
    pub(crate) fn metrics(&self) -> Arc<LoaderMetrics> {
        self.metrics.clone()
    }

    fn live(&mut self) -> PyResult<&mut larder::load::Loader> {
        if std::process::id() != self.pid {
            return Err(LarderError::new_err(
                "this DataLoader was created in another process (before a fork); its reader threads do not exist here: create a new DataLoader in this process",
            ));
        }
        self.inner
            .as_mut()
            .ok_or_else(|| LarderError::new_err("the DataLoader is closed"))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // In a forked child the reader threads are the parent's: joining them would wait
        // forever. The child's copy of the loader is abandoned instead.
        if std::process::id() != self.pid {
            std::mem::forget(self.inner.take());
        }
    }
}

#[pymethods]
impl Loader {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (store, batch_size = 1, shuffle = true, seed = 0, drop_last = false, num_threads = None, prefetch = 4, rank = None, world_size = None, fields = None, random_flip = false, text_padding = "right", pin_memory = false))]
    fn new(
        py: Python<'_>,
        store: &Bound<'_, PyAny>,
        batch_size: u32,
        shuffle: bool,
        seed: u64,
        drop_last: bool,
        num_threads: Option<usize>,
        prefetch: usize,
        rank: Option<usize>,
        world_size: Option<usize>,
        fields: Option<Vec<String>>,
        random_flip: bool,
        text_padding: &str,
        pin_memory: bool,
    ) -> PyResult<Loader> {
        let text_padding = match text_padding {
            "right" => larder::load::Padding::Right,
            "left" => larder::load::Padding::Left,
            other => {
                return Err(ArgumentError::new_err(format!(
                    "text_padding must be \"right\" or \"left\", not {other:?}"
                )));
            }
        };
        let store = match store.cast::<Store>() {
            Ok(s) => s.get().inner.clone(),
            Err(_) => {
                let location = crate::location_of(store)?;
                Arc::new(py.detach(|| crate::open_store(&location)).map_err(to_py)?)
            }
        };
        let mut options = LoaderOptions {
            batch_size,
            order: OrderOptions {
                seed,
                shuffle,
                bucket_tail: if drop_last {
                    BucketTail::Drop
                } else {
                    BucketTail::Fill
                },
                rank_tail: if drop_last {
                    RankTail::Drop
                } else {
                    RankTail::Pad
                },
            },
            prefetch,
            fields,
            random_flip,
            text_padding,
            pin_memory,
            ..LoaderOptions::default()
        };
        if let Some(n) = num_threads {
            options.threads = n;
        }
        options = match (rank, world_size) {
            (None, None) => options.with_env_ranks().map_err(to_py)?,
            (r, w) => LoaderOptions {
                rank: r.unwrap_or(0),
                world_size: w.unwrap_or(1),
                ..options
            },
        };
        let inner = {
            let (store, options) = (store.clone(), options.clone());
            py.detach(move || larder::load::Loader::new(store, options))
                .map_err(to_py)?
        };
        Ok(Loader {
            metrics: inner.metrics(),
            inner: Some(inner),
            store,
            options,
            pid: std::process::id(),
        })
    }

    /// Batches this rank serves in the current epoch.
    fn __len__(&mut self) -> PyResult<usize> {
        Ok(self.live()?.len())
    }

    /// Returns True if and only if batch buffers are page-locked.
    #[getter]
    fn pinned(&mut self) -> PyResult<bool> {
        Ok(self.live()?.pinned())
    }

    /// The current epoch.
    #[getter]
    fn epoch(&mut self) -> PyResult<u64> {
        Ok(self.live()?.epoch())
    }

    /// The next batch as a dict, or None at the end of the epoch (the loader then moves on).
    fn next_batch<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let inner = self.live()?;
        match py.detach(|| inner.next_batch()) {
            None => Ok(None),
            Some(Err(e)) => Err(to_py(e)),
            Some(Ok(batch)) => batch_dict(py, batch).map(Some),
        }
    }

    /// The loader's position as JSON.
    fn state_json(&mut self) -> PyResult<String> {
        Ok(self.live()?.state().to_json())
    }

    /// Continues from a state saved by `state_json`, on this loader's ranks. A state that
    /// cannot be used raises and leaves the loader where it was.
    fn load_state_json(&mut self, py: Python<'_>, text: &str) -> PyResult<()> {
        self.live()?;
        let state = LoaderState::from_json(text).map_err(to_py)?;
        let (store, options) = (self.store.clone(), self.options.clone());
        let world = options.world_size;
        // The new loader is built before the old one is let go: building starts no thread and
        // fills no buffer (that waits for the first batch), and a failure must leave the
        // training loop a working loader, not a closed one.
        let inner = py
            .detach(move || larder::load::Loader::with_state(store, options, state))
            .map_err(to_py)?;
        // A position past the end of its epoch was saved for another store (or other options):
        // serving from it would silently skip to the next epoch.
        let (consumed, batches) = (inner.state().consumed, (inner.len() * world) as u64);
        if consumed > batches {
            return Err(ArgumentError::new_err(format!(
                "this loader state is {consumed} batches into epoch {}, which has {batches} batches on this store with these options: it was saved for another store, batch size or world size; the loader is unchanged",
                inner.epoch()
            )));
        }
        self.inner = Some(inner.with_metrics(self.metrics.clone()));
        Ok(())
    }

    /// Changes the batch size from the next batch on.
    fn set_batch_size(&mut self, batch_size: u32) -> PyResult<()> {
        self.live()?.set_batch_size(batch_size).map_err(to_py)
    }

    /// Serves the last step's batches again, re-planned with `batch_size` (after an
    /// out-of-memory error); every rank calls this together.
    fn retry_step_with(&mut self, batch_size: u32) -> PyResult<()> {
        self.live()?.retry_step_with(batch_size).map_err(to_py)
    }

    /// Starts `epoch` from its beginning.
    fn set_epoch(&mut self, epoch: u64) -> PyResult<()> {
        self.live()?.set_epoch(epoch);
        Ok(())
    }
}

/// Builds the Python dict of a batch: fields as NumPy arrays over the batch's own buffers.
fn batch_dict<'py>(py: Python<'py>, batch: Batch) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let dtypes = PyDict::new(py);
    for (name, tensor) in batch.fields {
        dtypes.set_item(&name, tensor.dtype)?;
        dict.set_item(&name, array_of(py, tensor)?)?;
    }
    // Fields whose items differ in size: a list with one array per item.
    for (name, tensors) in batch.per_item_fields {
        if let Some(first) = tensors.first() {
            dtypes.set_item(&name, first.dtype)?;
        }
        let arrays = tensors
            .into_iter()
            .map(|t| array_of(py, t))
            .collect::<PyResult<Vec<_>>>()?;
        dict.set_item(&name, PyList::new(py, arrays)?)?;
    }
    dict.set_item("dtypes", dtypes)?;
    dict.set_item("captions", PyList::new(py, &batch.captions)?)?;
    dict.set_item("keys", PyList::new(py, &batch.keys)?)?;
    dict.set_item("items", PyArray::from_vec(py, batch.items))?;
    dict.set_item("bucket", batch.bucket)?;
    dict.set_item("is_reg", PyArray::from_vec(py, batch.is_reg))?;
    dict.set_item("flipped", PyArray::from_vec(py, batch.flipped))?;
    dict.set_item(
        "network_weight",
        PyArray::from_vec(py, batch.network_weight),
    )?;
    dict.set_item(
        "loss_multiplier",
        PyArray::from_vec(py, batch.loss_multiplier),
    )?;
    dict.set_item("epoch", batch.epoch)?;
    dict.set_item("index", batch.index)?;
    Ok(dict)
}

/// A NumPy array viewing `tensor`'s buffer, which becomes the array's base object.
fn array_of<'py>(py: Python<'py>, tensor: Tensor) -> PyResult<Bound<'py, PyAny>> {
    let Tensor { dtype, shape, data } = tensor;
    let buffer = Bound::new(py, Buffer { data })?;
    match dtype {
        "U8" | "BOOL" => view::<u8>(&buffer, &shape),
        "I8" => view::<i8>(&buffer, &shape),
        "F32" => view::<f32>(&buffer, &shape),
        // float16 is NumPy's own: the uint16 view is re-viewed as float16, without a copy.
        "F16" => view::<u16>(&buffer, &shape)?.call_method1("view", ("float16",)),
        // NumPy has no bfloat16: the bits are served as uint16 (`dtypes` says BF16), and
        // `larder.torch.as_tensors` views them as torch.bfloat16 without a copy.
        "BF16" => view::<u16>(&buffer, &shape),
        other => Err(ArgumentError::new_err(format!(
            "cannot serve dtype {other} to NumPy"
        ))),
    }
}

fn view<'py, T: Element>(
    buffer: &Bound<'py, Buffer>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let bytes = buffer.get().data.as_slice();
    let size = std::mem::size_of::<T>();
    let count: usize = shape.iter().product();
    if bytes.len() != count * size
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return Err(LarderError::new_err(format!(
            "batch buffer of {} bytes does not hold {count} aligned elements of {size} bytes",
            bytes.len()
        )));
    }
    // SAFETY: the pointer is aligned for T and covers `count` elements (checked above). The
    // bytes belong to `buffer`, a frozen Python object that never mutates or moves them, and
    // `borrow_from_array` makes it the array's base, so they live as long as any array (or
    // view of it) that points at them.
    let view = unsafe { ArrayViewD::<T>::from_shape_ptr(IxDyn(shape), bytes.as_ptr().cast::<T>()) };
    let array = unsafe { PyArrayDyn::<T>::borrow_from_array(&view, buffer.clone().into_any()) };
    Ok(array.into_any())
}
