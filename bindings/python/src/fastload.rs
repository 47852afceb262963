//! The native side of `larder.load_file` and `larder.safe_open`: a checkpoint opened by its
//! headers, whose tensors are handed to Python without a copy — as DLPack capsules (which
//! `torch.from_dlpack` takes, on the CPU or the GPU) or as NumPy arrays over larder's buffers.
//!
//! Arrays and capsules come out typed by their storage (`uint8`, `uint16`, ... for dtypes that
//! NumPy or DLPack lack: bf16 for NumPy, fp8 for both); `larder/fastload.py` views them as the
//! right dtype, which costs no copy.

use std::sync::Arc;

use dlpark::ffi::{DLDataType, DLDataTypeCode, DLDevice, DLDeviceType, DLManagedTensor};
use dlpark::metadata::Dynamic;
use larder::fastload::{Checkpoint as Ckpt, Dtype, HostBuffer, LoadOptions, LoadPath, TensorInfo};
use numpy::ndarray::{ArrayViewD, IxDyn};
use numpy::{Element, PyArray, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{ArgumentError, to_py};

/// The bytes behind NumPy arrays of a loaded file; the arrays keep it alive as their base.
#[derive(Debug)]
#[pyclass(module = "larder._larder", frozen)]
pub struct HostBytes {
    buffer: Arc<HostBuffer>,
}

#[pymethods]
impl HostBytes {
    /// Returns True if and only if the memory is page-locked.
    #[getter]
    fn pinned(&self) -> bool {
        self.buffer.is_pinned()
    }
}

/// A safetensors checkpoint (a file or a sharded index) opened by its headers.
#[derive(Debug)]
#[pyclass(module = "larder._larder", frozen)]
pub struct Checkpoint {
    inner: Arc<Ckpt>,
}

fn options(
    threads: usize,
    chunk_mib: usize,
    direct: Option<bool>,
    pinned: bool,
    only: Option<&str>,
) -> PyResult<LoadOptions> {
    if threads == 0 || chunk_mib == 0 {
        return Err(ArgumentError::new_err(
            "threads and chunk_mib must be at least 1",
        ));
    }
    Ok(LoadOptions {
        threads,
        chunk_bytes: chunk_mib << 20,
        direct,
        pinned,
        only: only
            .map(str::parse::<LoadPath>)
            .transpose()
            .map_err(to_py)?,
    })
}

#[pymethods]
impl Checkpoint {
    /// Opens `path` (a .safetensors file or an index .json), reading only the headers.
    #[staticmethod]
    fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Checkpoint> {
        let inner = py.detach(|| Ckpt::open(&path)).map_err(to_py)?;
        Ok(Checkpoint {
            inner: Arc::new(inner),
        })
    }

    /// Tensor names, sorted.
    fn keys(&self) -> Vec<String> {
        self.inner.names().map(str::to_owned).collect()
    }

    /// The string metadata.
    fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        self.inner.metadata().clone()
    }

    /// (dtype, shape) of tensor `name`.
    fn info(&self, name: &str) -> PyResult<(String, Vec<usize>)> {
        let info = self.info_of(name)?;
        Ok((format!("{:?}", info.dtype), info.shape.clone()))
    }

    /// Reads one tensor: a DLPack capsule (`as_dlpack`) or a NumPy array of its storage type.
    fn read<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        as_dlpack: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let t = py.detach(|| inner.read(name)).map_err(to_py)?;
        host_tensor(py, &t.info, &t.buffer, 0, as_dlpack)
    }

    /// Reads every tensor into host memory; returns ({name: capsule or array}, report JSON).
    #[pyo3(signature = (as_dlpack, threads = 8, chunk_mib = 16, direct = None, pinned = false))]
    fn load<'py>(
        &self,
        py: Python<'py>,
        as_dlpack: bool,
        threads: usize,
        chunk_mib: usize,
        direct: Option<bool>,
        pinned: bool,
    ) -> PyResult<(Bound<'py, PyDict>, String)> {
        let opts = options(threads, chunk_mib, direct, pinned, None)?;
        let inner = self.inner.clone();
        let host = py.detach(|| inner.load(&opts)).map_err(to_py)?;
        let out = PyDict::new(py);
        for name in self.inner.names() {
            let view = host.get(&self.inner, name).expect("every name has a view");
            out.set_item(
                name,
                host_tensor(py, view.info, view.buffer, view.offset, as_dlpack)?,
            )?;
        }
        Ok((out, report_json(host.report())?))
    }

    /// Reads every tensor into the memory of GPU `ordinal`; returns ({name: capsule}, report
    /// JSON). `only` names the one path to use ("cufile", "pinned", "plain").
    #[pyo3(signature = (ordinal, threads = 8, chunk_mib = 16, direct = None, only = None))]
    fn load_to<'py>(
        &self,
        py: Python<'py>,
        ordinal: usize,
        threads: usize,
        chunk_mib: usize,
        direct: Option<bool>,
        only: Option<&str>,
    ) -> PyResult<(Bound<'py, PyDict>, String)> {
        let opts = options(threads, chunk_mib, direct, false, only)?;
        let inner = self.inner.clone();
        let loaded = py.detach(|| inner.load_to(ordinal, &opts)).map_err(to_py)?;
        let out = PyDict::new(py);
        for name in self.inner.names() {
            let view = loaded
                .get(&self.inner, name)
                .expect("every name has a view");
            let device = DLDevice {
                device_type: DLDeviceType::CUDA,
                device_id: ordinal as i32,
            };
            let ptr = (view.buffer.ptr() + view.offset as u64) as *mut std::ffi::c_void;
            out.set_item(
                name,
                capsule(py, view.info, ptr, device, Box::new(view.buffer.clone()))?,
            )?;
        }
        Ok((out, report_json(loaded.report())?))
    }
}

impl Checkpoint {
    fn info_of(&self, name: &str) -> PyResult<&TensorInfo> {
        self.inner.info(name).ok_or_else(|| {
            pyo3::exceptions::PyKeyError::new_err(format!(
                "{}: no tensor named {name:?}",
                self.inner.path().display()
            ))
        })
    }
}

fn report_json(report: &larder::fastload::LoadReport) -> PyResult<String> {
    serde_json::to_string(report).map_err(|e| ArgumentError::new_err(e.to_string()))
}

/// The CUDA and GPUDirect Storage report (see `larder.cuda_probe`), as JSON; with `path`,
/// also whether GDS can read that file's file system.
#[pyfunction]
#[pyo3(signature = (path = None))]
pub fn cuda_probe_json(py: Python<'_>, path: Option<std::path::PathBuf>) -> PyResult<String> {
    let probe = py.detach(|| match &path {
        Some(p) => larder::cuda::probe_for(p),
        None => larder::cuda::probe(),
    });
    serde_json::to_string(&probe).map_err(|e| ArgumentError::new_err(e.to_string()))
}

/// The storage type a dtype travels as: DLPack's own type where torch knows it, else an
/// unsigned integer of the same width (viewed back in Python).
fn dlpack_type(dtype: Dtype) -> Option<DLDataType> {
    let t = |code: DLDataTypeCode, bits: u8| {
        Some(DLDataType {
            code,
            bits,
            lanes: 1,
        })
    };
    match dtype {
        Dtype::BOOL => t(DLDataTypeCode::BOOL, 8),
        Dtype::U8 => t(DLDataTypeCode::UINT, 8),
        Dtype::I8 => t(DLDataTypeCode::INT, 8),
        Dtype::I16 => t(DLDataTypeCode::INT, 16),
        Dtype::U16 => t(DLDataTypeCode::UINT, 16),
        Dtype::F16 => t(DLDataTypeCode::FLOAT, 16),
        Dtype::BF16 => t(DLDataTypeCode::BFLOAT, 16),
        Dtype::I32 => t(DLDataTypeCode::INT, 32),
        Dtype::U32 => t(DLDataTypeCode::UINT, 32),
        Dtype::F32 => t(DLDataTypeCode::FLOAT, 32),
        Dtype::F64 => t(DLDataTypeCode::FLOAT, 64),
        Dtype::I64 => t(DLDataTypeCode::INT, 64),
        Dtype::U64 => t(DLDataTypeCode::UINT, 64),
        Dtype::C64 => t(DLDataTypeCode::COMPLEX, 64),
        // Every fp8 travels as bytes and is viewed as torch.float8_* in Python: older torch
        // versions refuse DLPack's fp8 codes.
        Dtype::F8_E5M2
        | Dtype::F8_E4M3
        | Dtype::F8_E8M0
        | Dtype::F8_E4M3FNUZ
        | Dtype::F8_E5M2FNUZ => t(DLDataTypeCode::UINT, 8),
        _ => None,
    }
}

/// A DLPack capsule over `len` bytes at `ptr`, owned by `owner` until the consumer frees it.
fn capsule<'py, C: Send + 'static>(
    py: Python<'py>,
    info: &TensorInfo,
    ptr: *mut std::ffi::c_void,
    device: DLDevice,
    owner: Box<C>,
) -> PyResult<Bound<'py, PyAny>> {
    let dtype = dlpack_type(info.dtype).ok_or_else(|| {
        ArgumentError::new_err(format!(
            "tensor {:?}: dtype {:?} has no DLPack or torch equivalent; read it with format=\"numpy\" (raw bytes)",
            info.name, info.dtype
        ))
    })?;
    let mut init = Dynamic::compact(info.shape.clone())
        .initialize_as::<DLManagedTensor>(owner)
        .map_err(|e| ArgumentError::new_err(e.to_string()))?;
    init.set_data(ptr).set_device(device).set_dtype(dtype);
    // SAFETY: `ptr` points at the tensor's `nbytes` bytes inside memory that `owner` (the
    // managed tensor's context, dropped only by the consumer's deleter) keeps alive and
    // unmoved; the shape and compact strides describe exactly those bytes.
    let managed = unsafe { init.finish() };
    managed.into_pyobject(py)
}

/// One host tensor at `offset` in `buffer`: a DLPack capsule, or a NumPy array of the storage
/// type whose base keeps the buffer alive.
fn host_tensor<'py>(
    py: Python<'py>,
    info: &TensorInfo,
    buffer: &Arc<HostBuffer>,
    offset: usize,
    as_dlpack: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let bytes = &buffer.as_slice()[offset..offset + info.nbytes() as usize];
    if as_dlpack {
        let cpu = DLDevice {
            device_type: DLDeviceType::CPU,
            device_id: 0,
        };
        let ptr = bytes.as_ptr() as *mut std::ffi::c_void;
        return capsule(py, info, ptr, cpu, Box::new(buffer.clone()));
    }
    let base = Bound::new(
        py,
        HostBytes {
            buffer: buffer.clone(),
        },
    )?;
    let width = info.dtype.bitsize() / 8;
    // Sub-byte dtypes (F4, F6) are served as their packed bytes.
    let shape = if !info.dtype.bitsize().is_multiple_of(8) {
        vec![bytes.len()]
    } else {
        info.shape.clone()
    };
    match width {
        2 => array::<u16>(py, &base, bytes, &shape),
        4 => array::<u32>(py, &base, bytes, &shape),
        8 => array::<u64>(py, &base, bytes, &shape),
        _ => array::<u8>(py, &base, bytes, &shape),
    }
}

/// A NumPy array of `T` over `bytes`, or over a copy when they are not aligned for `T` (a file
/// whose header length is not a multiple of 8, which larder's and the reference writer never
/// produce).
fn array<'py, T: Element + Copy>(
    py: Python<'py>,
    base: &Bound<'py, HostBytes>,
    bytes: &[u8],
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let count = bytes.len() / std::mem::size_of::<T>();
    if !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        let copy: Vec<T> = bytes
            .chunks_exact(std::mem::size_of::<T>())
            // SAFETY: each chunk holds size_of::<T>() bytes; T is a plain integer.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
            .collect();
        return Ok(PyArray::from_vec(py, copy).reshape(shape)?.into_any());
    }
    // SAFETY: the pointer is aligned for T (checked above) and covers `count` elements whose
    // product is the shape's; the bytes belong to `base`'s buffer, which never mutates or
    // moves them, and `borrow_from_array` makes `base` the array's base object, so they live
    // as long as any array that views them.
    let view = unsafe { ArrayViewD::<T>::from_shape_ptr(IxDyn(shape), bytes.as_ptr().cast::<T>()) };
    debug_assert_eq!(view.len(), count);
    let array = unsafe { PyArrayDyn::<T>::borrow_from_array(&view, base.clone().into_any()) };
    Ok(array.into_any())
}
