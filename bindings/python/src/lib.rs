//! `larder._larder`: the native module behind the `larder` Python package.
//!
//! Every call that does work releases the GIL (`Python::detach`). Work that uses a thread pool
//! (scan, prepare) runs in a pool built for the call rather than rayon's global one: a process
//! forked from one that had used the global pool — PyTorch DataLoader workers, multiprocessing —
//! inherits the pool's state but none of its threads, and would wait forever on it.

mod config;
mod encoders;
mod errors;
mod fastload;
mod loader;
mod logging;
mod metrics;
mod store;
mod tune;

use pyo3::prelude::*;

/// A thread pool for one call, sized to the machine.
pub(crate) fn fresh_pool() -> larder::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .build()
        .map_err(|e| larder::Error::InvalidArgument {
            name: "threads",
            message: format!("cannot start a thread pool: {e}"),
        })
}

/// The store location behind `obj`: a URL or path string, or an `os.PathLike`.
pub(crate) fn location_of(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(text) = obj.extract::<String>() {
        return Ok(text);
    }
    let path: std::path::PathBuf = obj.extract()?;
    Ok(path.to_string_lossy().into_owned())
}

/// Opens the store at `location` (a folder or a URL), with the remote settings of the
/// environment (`LARDER_CACHE_DIR`, `LARDER_CACHE_LIMIT`, …).
pub(crate) fn open_store(location: &str) -> larder::Result<larder::Store> {
    let remote = larder::storage::RemoteOptions::from_env()?;
    larder::Store::open_location(location, &remote)
}

/// The config behind `obj`: a `Config`, or a path to load.
pub(crate) fn config_of(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<larder::Config> {
    if let Ok(c) = obj.cast::<config::Config>() {
        return Ok(c.get().inner.clone());
    }
    let path: std::path::PathBuf = obj.extract()?;
    py.detach(|| larder::Config::load(&path))
        .map_err(errors::to_py)
}

#[pymodule]
fn _larder(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    logging::install();
    errors::register(m)?;
    m.add_class::<config::Config>()?;
    m.add_class::<store::Store>()?;
    m.add_class::<loader::Loader>()?;
    m.add_class::<loader::Buffer>()?;
    m.add_class::<tune::Tuner>()?;
    m.add_class::<metrics::Metrics>()?;
    m.add_class::<fastload::Checkpoint>()?;
    m.add_class::<fastload::HostBytes>()?;
    m.add_function(wrap_pyfunction!(fastload::cuda_probe_json, m)?)?;
    m.add_function(wrap_pyfunction!(config::load_config, m)?)?;
    m.add_function(wrap_pyfunction!(config::scan_json, m)?)?;
    m.add_function(wrap_pyfunction!(store::prepare_json, m)?)?;
    m.add_function(wrap_pyfunction!(store::push_json, m)?)?;
    m.add_function(wrap_pyfunction!(store::pull_json, m)?)?;
    m.add_function(wrap_pyfunction!(store::import_aitk_json, m)?)?;
    m.add_function(wrap_pyfunction!(store::merge_json, m)?)?;
    Ok(())
}
