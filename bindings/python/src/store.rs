//! `prepare` and `Store`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use pyo3::types::PyDict;

use crate::encoders::{PyImageEncoder, PyTextEncoder, Raised};
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
///     image_encoders: {field: callable} run on each item's bucket crop.
///     text_encoders: {field: callable} run on each distinct caption.
///     clip_encoders: {field: callable} run on each CLIP-preprocessed image (uint8 at its own
///         size for an encoder with `larder_pixels = "uint8"`).
///     encode_batch_size: Images or captions per call.
///     latent_codec: Codec of image and CLIP encoder outputs.
///     text_codec: Codec of text encoder outputs.
///     caption_variants: Variants per item when caption transforms are random.
///     clip_size: CLIP's square input side.
///     store_pixels: Store the pixels field too.
///     shard: (i, n): prepare only part i of n into `out/parts/i-of-n` (see `larder.merge`).
///
/// Returns:
///     str: the report as JSON.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (config, out, shard_bytes = 256 << 20, image_codec = "u8", progress = false, image_encoders = None, text_encoders = None, clip_encoders = None, encode_batch_size = 8, latent_codec = "bf16", text_codec = "bf16", caption_variants = 4, clip_size = 224, store_pixels = true, shard = None))]
pub fn prepare_json(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    shard_bytes: u64,
    image_codec: &str,
    progress: bool,
    image_encoders: Option<&Bound<'_, PyDict>>,
    text_encoders: Option<&Bound<'_, PyDict>>,
    clip_encoders: Option<&Bound<'_, PyDict>>,
    encode_batch_size: usize,
    latent_codec: &str,
    text_codec: &str,
    caption_variants: usize,
    clip_size: u32,
    store_pixels: bool,
    shard: Option<(u32, u32)>,
) -> PyResult<String> {
    let config = crate::config_of(py, config)?;
    let part = shard
        .map(|(i, n)| larder::Part::new(i, n))
        .transpose()
        .map_err(to_py)?;
    let parse = |text: &str| larder::store::codec::Codec::parse(text).map_err(to_py);
    let options = larder::PrepareOptions {
        shard_bytes,
        image_codec: parse(image_codec)?,
        progress,
        store_pixels,
        latent_codec: parse(latent_codec)?,
        text_codec: parse(text_codec)?,
        encode_batch_size,
        caption_variants,
        clip: larder::encode::ClipPreprocess { size: clip_size },
        part,
    };
    let raised: Raised = Default::default();
    let mut encoders = larder::encode::Encoders::default();
    for (name, f) in entries(image_encoders)? {
        let e = PyImageEncoder::new(&name, &f, &raised)?;
        encoders.image.push((name, Box::new(e)));
    }
    for (name, f) in entries(clip_encoders)? {
        let e = PyImageEncoder::new(&name, &f, &raised)?;
        encoders.clip.push((name, Box::new(e)));
    }
    for (name, f) in entries(text_encoders)? {
        let e = PyTextEncoder::new(&name, &f, &raised)?;
        encoders.text.push((name, Box::new(e)));
    }
    let out = crate::location_of(out)?;
    let result = py.detach(|| {
        fresh_pool()?.install(|| {
            larder::Prepare::new(&config)
                .options(options)
                .encoders(&mut encoders)
                .run(out.as_str())
        })
    });
    // Dropping the encoders releases their Python references; the GIL is held here.
    drop(encoders);
    let report = result.map_err(|e| {
        let err = to_py(e);
        if let Some(cause) = raised.lock().unwrap_or_else(|p| p.into_inner()).take() {
            err.set_cause(py, Some(cause));
        }
        err
    })?;
    json(&report)
}

/// Prepares a config and imports AI Toolkit's caches (see `larder.import_aitk`).
///
/// Returns:
///     str: the report as JSON.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (config, out, arch = None, latent_identity = None, scaling_factor = None, shift_factor = None, text_identity = None, clip_identity = None, latent_codec = "bf16", text_codec = "bf16"))]
pub fn import_aitk_json(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    out: PathBuf,
    arch: Option<String>,
    latent_identity: Option<String>,
    scaling_factor: Option<f64>,
    shift_factor: Option<f64>,
    text_identity: Option<String>,
    clip_identity: Option<String>,
    latent_codec: &str,
    text_codec: &str,
) -> PyResult<String> {
    let config = crate::config_of(py, config)?;
    let parse = |text: &str| larder::store::codec::Codec::parse(text).map_err(to_py);
    let identity = |id: Option<String>, scaling_factor, shift_factor| {
        id.map(|id| larder::encode::EncoderIdentity {
            id,
            scaling_factor,
            shift_factor,
        })
    };
    let prepare = larder::PrepareOptions {
        latent_codec: parse(latent_codec)?,
        text_codec: parse(text_codec)?,
        ..larder::PrepareOptions::default()
    };
    let options = larder::AitkImportOptions {
        arch,
        latent: (
            "latent".into(),
            identity(latent_identity, scaling_factor, shift_factor),
        ),
        text: ("text".into(), identity(text_identity, None, None)),
        clip: ("clip".into(), identity(clip_identity, None, None)),
    };
    let report = py
        .detach(|| {
            fresh_pool()?.install(|| {
                larder::Prepare::new(&config)
                    .options(prepare)
                    .import_aitk(&out, &options)
            })
        })
        .map_err(to_py)?;
    json(&report)
}

/// Merges the parts of a distributed prepare into one store (see `larder.merge`).
///
/// Args:
///     out: The store folder.
///     parts: Part folders; empty, the folders `out/parts/i-of-n` are merged.
///
/// Returns:
///     str: the report as JSON.
#[pyfunction]
#[pyo3(signature = (out, parts = Vec::new()))]
pub fn merge_json(py: Python<'_>, out: &Bound<'_, PyAny>, parts: Vec<PathBuf>) -> PyResult<String> {
    let out = crate::location_of(out)?;
    let report = py
        .detach(|| larder::merge(out.as_str(), &parts, None))
        .map_err(to_py)?;
    json(&report)
}

/// The (name, callable) pairs of an encoder dict.
fn entries<'py>(d: Option<&Bound<'py, PyDict>>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    d.map_or(Ok(Vec::new()), |d| {
        d.iter()
            .map(|(k, v)| Ok((k.extract::<String>()?, v)))
            .collect()
    })
}

/// A prepared store, opened for reading.
#[derive(Debug)]
#[pyclass(module = "larder._larder", frozen)]
pub struct Store {
    pub(crate) inner: Arc<larder::Store>,
    location: String,
}

#[pymethods]
impl Store {
    /// Opens the store at `location`.
    ///
    /// Args:
    ///     location: A folder written by `larder prepare`, or a URL (s3://, gs://, az://,
    ///         http(s)://) of one in object storage.
    ///
    /// Returns:
    ///     Store: the opened store.
    ///
    /// Raises:
    ///     StoreError: not a store, or a damaged catalog.
    ///     RemoteError: the object storage could not be reached or read.
    #[staticmethod]
    fn open(py: Python<'_>, location: &Bound<'_, PyAny>) -> PyResult<Store> {
        let location = crate::location_of(location)?;
        let inner = py.detach(|| crate::open_store(&location)).map_err(to_py)?;
        Ok(Store {
            inner: Arc::new(inner),
            location,
        })
    }

    /// The store's folder or URL.
    #[getter]
    fn path(&self) -> String {
        self.location.clone()
    }

    /// What the store holds, as JSON (see `larder.Store.inspect`).
    fn inspect_json(&self, py: Python<'_>) -> PyResult<String> {
        let inspection = py.detach(|| self.inner.inspect()).map_err(to_py)?;
        json(&inspection)
    }

    /// Every item with its source, bucket, crop, flip, caption and fields, as JSON (see
    /// `larder.Store.items`).
    fn items_json(&self, py: Python<'_>) -> PyResult<String> {
        let items = py.detach(|| self.inner.items()).map_err(to_py)?;
        json(&items)
    }

    /// Checks every shard and entry, as JSON (see `larder.Store.verify`).
    fn verify_json(&self, py: Python<'_>) -> PyResult<String> {
        let report = py.detach(|| self.inner.verify()).map_err(to_py)?;
        json(&report)
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.location)
    }
}

/// Uploads a local store to object storage (see `larder.push`).
///
/// Returns:
///     str: the report as JSON.
#[pyfunction]
pub fn push_json(py: Python<'_>, store: PathBuf, url: String) -> PyResult<String> {
    let report = py
        .detach(|| {
            let remote = larder::storage::RemoteOptions::from_env()?;
            larder::transfer::push(&store, &url, &remote)
        })
        .map_err(to_py)?;
    json(&report)
}

/// Downloads a store from object storage (see `larder.pull`).
///
/// Returns:
///     str: the report as JSON.
#[pyfunction]
pub fn pull_json(py: Python<'_>, url: String, dir: PathBuf) -> PyResult<String> {
    let report = py
        .detach(|| {
            let remote = larder::storage::RemoteOptions::from_env()?;
            larder::transfer::pull(&url, &dir, &remote)
        })
        .map_err(to_py)?;
    json(&report)
}
