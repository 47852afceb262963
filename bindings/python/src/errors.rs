//! The Python exception hierarchy, mapped from `larder::Error` in one place.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

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
create_exception!(
    larder,
    ArgumentError,
    LarderError,
    "An argument is out of its allowed range."
);

/// Turns a larder error into the matching Python exception, keeping the whole message.
pub fn to_py(err: larder::Error) -> PyErr {
    let message = err.to_string();
    match err {
        larder::Error::Config { .. }
        | larder::Error::Yaml { .. }
        | larder::Error::Metadata { .. } => ConfigError::new_err(message),
        larder::Error::Store { .. } | larder::Error::Catalog { .. } => StoreError::new_err(message),
        larder::Error::Image { .. } | larder::Error::Codec { .. } => DecodeError::new_err(message),
        larder::Error::Safetensors { .. } => DecodeError::new_err(message),
        larder::Error::InvalidArgument { .. } => ArgumentError::new_err(message),
        larder::Error::Encoder { .. } => EncoderError::new_err(message),
        larder::Error::Remote { .. } => RemoteError::new_err(message),
        _ => LarderError::new_err(message),
    }
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LarderError", py.get_type::<LarderError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("RemoteError", py.get_type::<RemoteError>())?;
    m.add("ArgumentError", py.get_type::<ArgumentError>())?;
    m.add("EncoderError", py.get_type::<EncoderError>())?;
    Ok(())
}
