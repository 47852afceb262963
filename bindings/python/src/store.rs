//! `prepare` and `Store`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors::{LarderError, to_py};
use crate::fresh_pool;

fn json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| LarderError::new_err(e.to_string()))
}

/// Prepares a config into a store (see `larder.prepare`, which parses the report).
///
/// Args:
///     config: A `Config`, or a path for `load_config`.
///     out: The store folder to create or update.
///     shard_bytes: Target shard size in bytes.
///     image_codec: Codec of image fields: "u8", "u8+zstd", "u8+lz4".
///     progress: Show a progress bar on a terminal.
///
/// Returns:
///     str: the report as JSON.
#[pyfunction]
#[pyo3(signature = (config, out, shard_bytes = 256 << 20, image_codec = "u8", progress = false))]
pub fn prepare_json(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    out: PathBuf,
    shard_bytes: u64,
    image_codec: &str,
    progress: bool,
) -> PyResult<String> {
    let config = crate::config_of(py, config)?;
    let options = larder::PrepareOptions {
        shard_bytes,
        image_codec: larder::store::codec::Codec::parse(image_codec).map_err(to_py)?,
        progress,
    };
    let report = py
        .detach(|| fresh_pool()?.install(|| larder::prepare(&config, &out, &options)))
        .map_err(to_py)?;
    json(&report)
}

/// A prepared store, opened for reading.
#[derive(Debug)]
#[pyclass(module = "larder._larder", frozen)]
pub struct Store {
    pub(crate) inner: Arc<larder::Store>,
    path: PathBuf,
}

#[pymethods]
impl Store {
    /// Opens the store in `path`.
    ///
    /// Args:
    ///     path: A folder written by `larder prepare`.
    ///
    /// Returns:
    ///     Store: the opened store.
    ///
    /// Raises:
    ///     StoreError: not a store, or a damaged catalog.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<Store> {
        let inner = py.detach(|| larder::Store::open(&path)).map_err(to_py)?;
        Ok(Store {
            inner: Arc::new(inner),
            path,
        })
    }

    /// The store's folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// What the store holds, as JSON (see `larder.Store.inspect`).
    fn inspect_json(&self, py: Python<'_>) -> PyResult<String> {
        let inspection = py.detach(|| self.inner.inspect()).map_err(to_py)?;
        json(&inspection)
    }

    /// Checks every shard and entry, as JSON (see `larder.Store.verify`).
    fn verify_json(&self, py: Python<'_>) -> PyResult<String> {
        let report = py.detach(|| self.inner.verify()).map_err(to_py)?;
        json(&report)
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.path.display().to_string())
    }
}
