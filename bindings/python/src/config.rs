//! `load_config` and `scan`.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::to_py;
use crate::fresh_pool;

/// A dataset config: an AI Toolkit job file, a `datasets:` YAML file, or a folder.
#[derive(Debug)]
#[pyclass(module = "larder._larder", frozen)]
pub struct Config {
    pub(crate) inner: larder::Config,
}

#[pymethods]
impl Config {
    /// Warnings about ignored keys, one string each (file:line: `key`: why).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The keys that ask for data larder does not serve yet (video, augmentations, per-dataset
    /// batch sizes, …), as (`key`, why) pairs; a subset of `warnings`.
    #[getter]
    fn not_served(&self) -> Vec<(String, String)> {
        self.inner
            .warnings
            .iter()
            .filter(|w| w.not_served)
            .map(|w| (w.key.clone(), w.message.clone()))
            .collect()
    }

    /// Bucket divisibility in effect.
    #[getter]
    fn divisibility(&self) -> u32 {
        self.inner.divisibility
    }

    /// The number of datasets.
    fn __len__(&self) -> usize {
        self.inner.datasets.len()
    }

    /// The config as larder understood it, as a JSON string.
    ///
    /// Returns:
    ///     str: datasets (every key with its value), divisibility, architecture, warnings.
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner)
            .map_err(|e| crate::errors::LarderError::new_err(e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Config({:?}, datasets={}, divisibility={})",
            self.inner.source.display().to_string(),
            self.inner.datasets.len(),
            self.inner.divisibility
        )
    }
}

/// Reads a config.
///
/// Args:
///     path: An AI Toolkit job file, a YAML file with a `datasets:` list, or a folder of images.
///
/// Returns:
///     Config: the parsed config; `config.warnings` lists ignored keys.
///
/// Raises:
///     ConfigError: the file, line and key of a wrong value, and what was expected.
#[pyfunction]
pub fn load_config(py: Python<'_>, path: PathBuf) -> PyResult<Config> {
    py.detach(|| larder::Config::load(&path))
        .map(|inner| Config { inner })
        .map_err(to_py)
}

/// Scans a config's datasets and plans their buckets, without decoding any image.
///
/// Args:
///     config: A `Config`, or a path for `load_config`.
///
/// Returns:
///     str: the `larder scan --json` document (use `larder.scan`, which parses it).
#[pyfunction]
pub fn scan_json(py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<String> {
    let config = crate::config_of(py, config)?;
    let summary = py
        .detach(|| {
            fresh_pool()?.install(|| {
                let report = larder::scan(&config)?;
                let plan = larder::Plan::new(&config, &report)?;
                Ok(larder::Summary::new(&config, &report, &plan))
            })
        })
        .map_err(to_py)?;
    serde_json::to_string(&summary).map_err(|e| crate::errors::LarderError::new_err(e.to_string()))
}
