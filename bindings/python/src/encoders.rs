//! Python callables behind larder's encoder traits.
//!
//! Prepare runs with the GIL released; an encoder takes the GIL only for its call: it builds
//! the NumPy input, calls the callable, and copies the result (a NumPy array or a torch tensor
//! on any device) to host f32. Meanwhile larder's threads decode the next batch.
//!
//! An encoder's identity comes from attributes of the callable, which `larder.Encoder` sets:
//! `larder_identity` (required), `larder_scaling_factor`, `larder_shift_factor`,
//! `larder_pixels` ("float32" or "uint8") and, for text encoders, `larder_controls` (the
//! callable takes each caption's control image files too).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use larder::encode::{
    EncodedTensor, EncoderError, EncoderIdentity, ImageEncoder, PixelBatch, PixelFormat,
    PixelValues, TextEncoder,
};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::ArgumentError;

/// The exception a callable raised, kept so that the error raised from `prepare` can name it
/// as its cause.
pub type Raised = Arc<Mutex<Option<PyErr>>>;

/// A Python callable with its identity.
struct Callable {
    func: Py<PyAny>,
    identity: EncoderIdentity,
    pixels: PixelFormat,
    /// A text encoder called with the captions' control images as well.
    controls: bool,
    raised: Raised,
}

impl Callable {
    fn new(name: &str, func: &Bound<'_, PyAny>, raised: &Raised) -> PyResult<Callable> {
        if !func.is_callable() {
            return Err(ArgumentError::new_err(format!(
                "encoder {name:?} is not callable"
            )));
        }
        let attr = |key: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
            match func.getattr(key) {
                Ok(v) if !v.is_none() => Ok(Some(v)),
                _ => Ok(None),
            }
        };
        let id: String = match attr("larder_identity")? {
            Some(v) => v.extract()?,
            None => {
                return Err(ArgumentError::new_err(format!(
                    "encoder {name:?} has no identity: wrap it as larder.Encoder(fn, identity=\"model-id dtype\") \
                     (or set fn.larder_identity); the identity is part of the cache key, so a changed model is never served stale tensors"
                )));
            }
        };
        let factor = |key: &str| -> PyResult<Option<f64>> {
            attr(key)?.map(|v| v.extract::<f64>()).transpose()
        };
        let pixels = match attr("larder_pixels")?
            .map(|v| v.extract::<String>())
            .transpose()?
            .as_deref()
        {
            None | Some("float32") => PixelFormat::SignedUnit,
            Some("uint8") => PixelFormat::U8,
            Some(other) => {
                return Err(ArgumentError::new_err(format!(
                    "encoder {name:?}: pixels must be \"float32\" or \"uint8\", not {other:?}"
                )));
            }
        };
        Ok(Callable {
            func: func.clone().unbind(),
            identity: EncoderIdentity {
                id,
                scaling_factor: factor("larder_scaling_factor")?,
                shift_factor: factor("larder_shift_factor")?,
            },
            pixels,
            controls: match attr("larder_controls")? {
                Some(v) => v.is_truthy()?,
                None => false,
            },
            raised: raised.clone(),
        })
    }

    /// Keeps the exception and turns it into the encoder's error.
    fn fail(&self, err: PyErr) -> EncoderError {
        let text = err.to_string();
        *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        text.into()
    }
}

/// Copies an array-like (a NumPy array, a torch tensor on any device, anything
/// `numpy.asarray` takes) to host f32.
fn to_host(value: &Bound<'_, PyAny>) -> PyResult<EncodedTensor> {
    let py = value.py();
    let mut value = value.clone();
    // torch: detach from autograd, widen (NumPy has no bfloat16), move to the CPU.
    if value.hasattr("detach")? && value.hasattr("cpu")? {
        value = value
            .call_method0("detach")?
            .call_method0("float")?
            .call_method0("cpu")?
            .call_method0("numpy")?;
    }
    let np = py.import("numpy")?;
    let array = np.call_method1("ascontiguousarray", (value, np.getattr("float32")?))?;
    let array: PyReadonlyArrayDyn<'_, f32> = array.extract()?;
    let shape = array.shape().to_vec();
    let values = match array.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => array.as_array().iter().copied().collect(),
    };
    Ok(EncodedTensor { shape, values })
}

/// A Python image encoder (VAE, CLIP vision model).
pub struct PyImageEncoder(Callable);

impl PyImageEncoder {
    pub fn new(name: &str, func: &Bound<'_, PyAny>, raised: &Raised) -> PyResult<Self> {
        Callable::new(name, func, raised).map(PyImageEncoder)
    }
}

impl ImageEncoder for PyImageEncoder {
    fn identity(&self) -> EncoderIdentity {
        self.0.identity.clone()
    }

    fn pixel_format(&self) -> PixelFormat {
        self.0.pixels
    }

    fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError> {
        Python::attach(|py| {
            let call = || -> PyResult<EncodedTensor> {
                // The buffer moves into NumPy without a copy.
                let input = match batch.values {
                    PixelValues::F32(v) => {
                        PyArray1::from_vec(py, v).reshape(batch.shape)?.into_any()
                    }
                    PixelValues::U8(v) => {
                        PyArray1::from_vec(py, v).reshape(batch.shape)?.into_any()
                    }
                };
                let out = self.0.func.bind(py).call1((input,))?;
                to_host(&out)
            };
            call().map_err(|e| self.0.fail(e))
        })
    }
}

/// A Python text encoder: captions (a list of str) in; a dict of arrays out (or one array,
/// taken as `"embeds"`).
pub struct PyTextEncoder(Callable);

impl PyTextEncoder {
    pub fn new(name: &str, func: &Bound<'_, PyAny>, raised: &Raised) -> PyResult<Self> {
        Callable::new(name, func, raised).map(PyTextEncoder)
    }
}

impl TextEncoder for PyTextEncoder {
    fn identity(&self) -> EncoderIdentity {
        self.0.identity.clone()
    }

    fn encode(&mut self, captions: &[&str]) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        self.call(captions, None)
    }

    fn takes_controls(&self) -> bool {
        self.0.controls
    }

    fn encode_with_controls(
        &mut self,
        captions: &[&str],
        controls: &[&[PathBuf]],
    ) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        self.call(captions, Some(controls))
    }
}

impl PyTextEncoder {
    /// Calls the callable with the captions, and with their control image files (a list of
    /// lists of paths, one list per caption, empty for captions encoded alone) when it takes
    /// them.
    fn call(
        &mut self,
        captions: &[&str],
        controls: Option<&[&[PathBuf]]>,
    ) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        Python::attach(|py| {
            let call = || -> PyResult<Vec<(String, EncodedTensor)>> {
                let list = PyList::new(py, captions)?;
                let func = self.0.func.bind(py);
                let out = if self.0.controls {
                    let files = (0..captions.len())
                        .map(|k| {
                            let own = controls.map_or(&[][..], |c| c[k]);
                            PyList::new(py, own.iter().map(|p| p.to_string_lossy()))
                        })
                        .collect::<PyResult<Vec<_>>>()?;
                    func.call1((list, PyList::new(py, files)?))?
                } else {
                    func.call1((list,))?
                };
                match out.cast::<PyDict>() {
                    Ok(dict) => dict
                        .iter()
                        .map(|(k, v)| Ok((k.extract::<String>()?, to_host(&v)?)))
                        .collect(),
                    Err(_) => Ok(vec![("embeds".to_owned(), to_host(&out)?)]),
                }
            };
            call().map_err(|e| self.0.fail(e))
        })
    }
}
