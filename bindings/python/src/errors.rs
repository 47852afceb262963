//! The Python exception hierarchy, mapped from `larder::Error` in one place.
//!
//! Every exception larder raises is a `LarderError`. Where a built-in exception already says
//! what kind of failure it is, larder's class derives from it as well, so that code written
//! against the standard library's exceptions catches larder's too:
//!
//! | class                 | also a              | raised for                                      |
//! |-----------------------|---------------------|-------------------------------------------------|
//! | `ArgumentError`       | `ValueError`        | an argument out of its allowed range            |
//! | `FileError`           | `OSError`           | reading or writing a file or socket failed      |
//! | `MissingFileError`    | `FileNotFoundError` | the file or folder does not exist (a `FileError`)|
//! | `TunerExhaustedError` | `RuntimeError`      | the batch-size tuner cannot go any smaller      |
//!
//! PyO3's `create_exception!` takes a single base class, so these four are made with
//! `type(name, bases, namespace)` as a `class` statement would, once per interpreter.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

create_exception!(
    larder,
    LarderError,
    PyException,
    "Base class of every error larder raises."
);
create_exception!(
    larder,
    ConfigError,
    LarderError,
    "A config file or value is unusable."
);
create_exception!(
    larder,
    StoreError,
    LarderError,
    "A store is missing, damaged or incomplete."
);
create_exception!(
    larder,
    DecodeError,
    LarderError,
    "An image or stored tensor cannot be decoded."
);
create_exception!(
    larder,
    RemoteError,
    LarderError,
    "Object storage could not be reached or read."
);
create_exception!(
    larder,
    EncoderError,
    LarderError,
    "An encoder raised; the original exception is the `__cause__`."
);

/// One exception class with several bases, made the first time it is needed.
struct Class {
    name: &'static str,
    doc: &'static str,
    bases: fn(Python<'_>) -> PyResult<Vec<Bound<'_, PyType>>>,
    cell: PyOnceLock<Py<PyType>>,
}

impl Class {
    const fn new(
        name: &'static str,
        doc: &'static str,
        bases: fn(Python<'_>) -> PyResult<Vec<Bound<'_, PyType>>>,
    ) -> Self {
        Class {
            name,
            doc,
            bases,
            cell: PyOnceLock::new(),
        }
    }

    fn get<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyType>> {
        let ty = self.cell.get_or_try_init(py, || {
            let namespace = PyDict::new(py);
            namespace.set_item("__module__", "larder")?;
            namespace.set_item("__doc__", self.doc)?;
            // OSError's own __str__ rewrites the message as "[Errno N] strerror: 'filename'"
            // once those attributes are set; larder's message already names the path and the
            // OS error, so it is kept as it is, like every other LarderError's.
            namespace.set_item(
                "__str__",
                py.get_type::<pyo3::exceptions::PyBaseException>()
                    .getattr("__str__")?,
            )?;
            let bases = PyTuple::new(py, (self.bases)(py)?)?;
            let made = py
                .get_type::<PyType>()
                .call1((self.name, bases, namespace))?
                .cast_into::<PyType>()?;
            Ok::<_, PyErr>(made.unbind())
        })?;
        Ok(ty.bind(py).clone())
    }

    /// An instance carrying `message`, as a `PyErr` (or the error making the class raised).
    fn err(&self, message: String) -> PyErr {
        Python::attach(|py| match self.get(py) {
            Ok(ty) => PyErr::from_type(ty, message),
            Err(e) => e,
        })
    }
}

static ARGUMENT_ERROR: Class = Class::new(
    "ArgumentError",
    "An argument is out of its allowed range (also a ValueError).",
    |py| {
        Ok(vec![
            py.get_type::<LarderError>(),
            py.get_type::<PyValueError>(),
        ])
    },
);
// OSError comes first: its instances are laid out differently from other exceptions', and
// Python requires the base that decides the layout to be able to host the others.
static FILE_ERROR: Class = Class::new(
    "FileError",
    "Reading or writing a file or socket failed (also an OSError); `errno` and `filename` are set.",
    |py| {
        Ok(vec![
            py.get_type::<PyOSError>(),
            py.get_type::<LarderError>(),
        ])
    },
);
static MISSING_FILE_ERROR: Class = Class::new(
    "MissingFileError",
    "A file or folder larder needs does not exist (a FileError, also a FileNotFoundError).",
    |py| {
        Ok(vec![
            py.get_type::<PyFileNotFoundError>(),
            FILE_ERROR.get(py)?,
        ])
    },
);
static TUNER_EXHAUSTED_ERROR: Class = Class::new(
    "TunerExhaustedError",
    "The batch-size tuner ran out of memory and cannot go any smaller (also a RuntimeError); the last out-of-memory error is the `__cause__`.",
    |py| {
        Ok(vec![
            py.get_type::<LarderError>(),
            py.get_type::<PyRuntimeError>(),
        ])
    },
);

/// `larder.ArgumentError`: an argument is out of its allowed range; also a `ValueError`.
pub struct ArgumentError;

impl ArgumentError {
    /// An `ArgumentError` with `message`.
    pub fn new_err(message: impl Into<String>) -> PyErr {
        ARGUMENT_ERROR.err(message.into())
    }
}

/// Turns a larder error into the matching Python exception, keeping the whole message.
pub fn to_py(err: larder::Error) -> PyErr {
    let message = err.to_string();
    match err {
        larder::Error::Config { .. }
        | larder::Error::Yaml { .. }
        | larder::Error::Metadata { .. } => ConfigError::new_err(message),
        larder::Error::Store { .. }
        | larder::Error::Catalog { .. }
        | larder::Error::CorruptCatalog { .. }
        | larder::Error::CorruptShard { .. } => StoreError::new_err(message),
        larder::Error::Image { .. } | larder::Error::Codec { .. } => DecodeError::new_err(message),
        larder::Error::Safetensors { .. } => DecodeError::new_err(message),
        larder::Error::InvalidArgument { .. } => ArgumentError::new_err(message),
        larder::Error::Encoder { .. } => EncoderError::new_err(message),
        larder::Error::Remote { .. } | larder::Error::NotFound { .. } => {
            RemoteError::new_err(message)
        }
        larder::Error::OutOfMemory { .. } => TUNER_EXHAUSTED_ERROR.err(message),
        larder::Error::Io { path, source } => io_error(message, &path, &source),
        // A busy port is an OSError (EADDRINUSE), as Python's own socket.bind raises.
        larder::Error::Listen { addr, source } => {
            io_error(message, std::path::Path::new(&addr), &source)
        }
        _ => LarderError::new_err(message),
    }
}

/// A `FileError` (a `MissingFileError` when the file does not exist) with the OS error number
/// and the path set, as Python's own `OSError`s carry them.
fn io_error(message: String, path: &std::path::Path, source: &std::io::Error) -> PyErr {
    let class = if source.kind() == std::io::ErrorKind::NotFound {
        &MISSING_FILE_ERROR
    } else {
        &FILE_ERROR
    };
    Python::attach(|py| {
        let made = || -> PyResult<PyErr> {
            let value = class.get(py)?.call1((message.clone(),))?;
            let errno = match source.raw_os_error() {
                Some(n) => Some(n),
                None if source.kind() == std::io::ErrorKind::NotFound => {
                    Some(py.import("errno")?.getattr("ENOENT")?.extract::<i32>()?)
                }
                None => None,
            };
            value.setattr("errno", errno)?;
            value.setattr("strerror", source.to_string())?;
            value.setattr("filename", path.to_string_lossy().into_owned())?;
            Ok(PyErr::from_value(value))
        };
        made().unwrap_or_else(|e| e)
    })
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LarderError", py.get_type::<LarderError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("RemoteError", py.get_type::<RemoteError>())?;
    m.add("EncoderError", py.get_type::<EncoderError>())?;
    m.add("ArgumentError", ARGUMENT_ERROR.get(py)?)?;
    m.add("FileError", FILE_ERROR.get(py)?)?;
    m.add("MissingFileError", MISSING_FILE_ERROR.get(py)?)?;
    m.add("TunerExhaustedError", TUNER_EXHAUSTED_ERROR.get(py)?)?;
    Ok(())
}
