//! The CUDA driver API (`libcuda.so.1`), loaded when first needed.
//!
//! Why `libloading` and a handful of symbols rather than cudarc: larder needs about twenty driver
//! entry points (device queries, page-locked host memory, device memory, one stream, events,
//! asynchronous copies). cudarc brings bindings for every CUDA library and a build-time choice of
//! CUDA version, and its dynamic loading panics when a library is missing; here a missing or
//! broken driver is an ordinary value — the reason a faster path is not taken — and the build
//! needs no CUDA toolkit at all. The library is loaded once per process and never unloaded,
//! because device and page-locked allocations made through it may live until the process ends.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::{Arc, OnceLock};

use libloading::Library;

use crate::{Error, Result};

pub(crate) type CuResult = c_int;
pub(crate) type CuDevice = c_int;
pub(crate) type CuContext = *mut c_void;
pub(crate) type CuStream = *mut c_void;
pub(crate) type CuEvent = *mut c_void;
/// A device address.
pub type DevicePtr = u64;

const CUDA_SUCCESS: CuResult = 0;
/// `CU_MEMHOSTALLOC_PORTABLE`: the page-locked memory is usable from every context.
const MEMHOSTALLOC_PORTABLE: c_uint = 0x01;
/// `CU_EVENT_DISABLE_TIMING`: events used only to wait on are cheaper without timing.
const EVENT_DISABLE_TIMING: c_uint = 0x02;
/// `CU_STREAM_NON_BLOCKING`: the copy stream does not wait on the legacy default stream.
const STREAM_NON_BLOCKING: c_uint = 0x01;
pub(crate) const ATTR_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub(crate) const ATTR_COMPUTE_CAPABILITY_MINOR: c_int = 76;
pub(crate) const ATTR_GPU_DIRECT_RDMA_SUPPORTED: c_int = 116;

/// The driver entry points larder uses, resolved once.
#[allow(non_snake_case)]
pub(crate) struct Api {
    /// Keeps the library mapped for as long as the function pointers below are used (forever).
    _lib: Library,
    pub(crate) cuInit: unsafe extern "C" fn(c_uint) -> CuResult,
    pub(crate) cuDriverGetVersion: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub(crate) cuDeviceGetCount: unsafe extern "C" fn(*mut c_int) -> CuResult,
    pub(crate) cuDeviceGet: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    pub(crate) cuDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    pub(crate) cuDeviceTotalMem_v2: unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult,
    pub(crate) cuDeviceGetAttribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    pub(crate) cuDevicePrimaryCtxRetain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    pub(crate) cuDevicePrimaryCtxRelease_v2: unsafe extern "C" fn(CuDevice) -> CuResult,
    pub(crate) cuCtxPushCurrent_v2: unsafe extern "C" fn(CuContext) -> CuResult,
    pub(crate) cuCtxPopCurrent_v2: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    pub(crate) cuMemHostAlloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    pub(crate) cuMemFreeHost: unsafe extern "C" fn(*mut c_void) -> CuResult,
    pub(crate) cuMemAlloc_v2: unsafe extern "C" fn(*mut DevicePtr, usize) -> CuResult,
    pub(crate) cuMemFree_v2: unsafe extern "C" fn(DevicePtr) -> CuResult,
    pub(crate) cuMemcpyHtoD_v2: unsafe extern "C" fn(DevicePtr, *const c_void, usize) -> CuResult,
    pub(crate) cuMemcpyHtoDAsync_v2:
        unsafe extern "C" fn(DevicePtr, *const c_void, usize, CuStream) -> CuResult,
    pub(crate) cuStreamCreate: unsafe extern "C" fn(*mut CuStream, c_uint) -> CuResult,
    pub(crate) cuStreamSynchronize: unsafe extern "C" fn(CuStream) -> CuResult,
    pub(crate) cuStreamDestroy_v2: unsafe extern "C" fn(CuStream) -> CuResult,
    pub(crate) cuEventCreate: unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult,
    pub(crate) cuEventRecord: unsafe extern "C" fn(CuEvent, CuStream) -> CuResult,
    pub(crate) cuEventSynchronize: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub(crate) cuEventDestroy_v2: unsafe extern "C" fn(CuEvent) -> CuResult,
    pub(crate) cuGetErrorName: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cuda::Api")
    }
}

/// Library names tried in order: the versioned name the driver package installs, then the
/// development symlink.
const LIBRARY_NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// The loaded driver, or why it could not be loaded (kept, so that the reason is reported
/// every time without trying again).
pub(crate) fn api() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<Api, String> {
    if std::env::var_os("LARDER_NO_CUDA").is_some_and(|v| !v.is_empty()) {
        return Err("LARDER_NO_CUDA is set: the CUDA driver is not loaded".into());
    }
    let mut errors = Vec::new();
    for name in LIBRARY_NAMES {
        // SAFETY: loading the NVIDIA driver library runs its initializers, which have no
        // preconditions on our side.
        match unsafe { Library::new(name) } {
            Ok(lib) => return resolve(lib).map_err(|e| format!("{name}: {e}")),
            Err(e) => errors.push(load_error(&e)),
        }
    }
    Err(format!(
        "the CUDA driver library is not installed or not on the loader path (no NVIDIA driver on this machine?): {}",
        errors.join("; ")
    ))
}

/// A libloading error with its cause (the `dlerror` text, which says what was not found).
pub(crate) fn load_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn resolve(lib: Library) -> std::result::Result<Api, String> {
    macro_rules! sym {
        ($name:ident) => {{
            // SAFETY: the symbol is the driver API function of that name, whose C signature
            // the field's type reproduces; the pointer is used only while `lib` (kept in the
            // same struct, in a static that is never dropped) stays loaded.
            let s = unsafe { lib.get(concat!(stringify!($name), "\0").as_bytes()) }
                .map_err(|e| format!("missing {}: {}", stringify!($name), load_error(&e)))?;
            *s
        }};
    }
    let api = Api {
        cuInit: sym!(cuInit),
        cuDriverGetVersion: sym!(cuDriverGetVersion),
        cuDeviceGetCount: sym!(cuDeviceGetCount),
        cuDeviceGet: sym!(cuDeviceGet),
        cuDeviceGetName: sym!(cuDeviceGetName),
        cuDeviceTotalMem_v2: sym!(cuDeviceTotalMem_v2),
        cuDeviceGetAttribute: sym!(cuDeviceGetAttribute),
        cuDevicePrimaryCtxRetain: sym!(cuDevicePrimaryCtxRetain),
        cuDevicePrimaryCtxRelease_v2: sym!(cuDevicePrimaryCtxRelease_v2),
        cuCtxPushCurrent_v2: sym!(cuCtxPushCurrent_v2),
        cuCtxPopCurrent_v2: sym!(cuCtxPopCurrent_v2),
        cuMemHostAlloc: sym!(cuMemHostAlloc),
        cuMemFreeHost: sym!(cuMemFreeHost),
        cuMemAlloc_v2: sym!(cuMemAlloc_v2),
        cuMemFree_v2: sym!(cuMemFree_v2),
        cuMemcpyHtoD_v2: sym!(cuMemcpyHtoD_v2),
        cuMemcpyHtoDAsync_v2: sym!(cuMemcpyHtoDAsync_v2),
        cuStreamCreate: sym!(cuStreamCreate),
        cuStreamSynchronize: sym!(cuStreamSynchronize),
        cuStreamDestroy_v2: sym!(cuStreamDestroy_v2),
        cuEventCreate: sym!(cuEventCreate),
        cuEventRecord: sym!(cuEventRecord),
        cuEventSynchronize: sym!(cuEventSynchronize),
        cuEventDestroy_v2: sym!(cuEventDestroy_v2),
        cuGetErrorName: sym!(cuGetErrorName),
        _lib: lib,
    };
    // SAFETY: cuInit takes flags that must be 0.
    let r = unsafe { (api.cuInit)(0) };
    if r != CUDA_SUCCESS {
        return Err(format!(
            "cuInit failed with {} (driver present but no usable GPU, or a driver/kernel module mismatch)",
            name_of(&api, r)
        ));
    }
    Ok(api)
}

fn name_of(api: &Api, r: CuResult) -> String {
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorName writes a pointer to a static string, or fails for unknown codes.
    if unsafe { (api.cuGetErrorName)(r, &mut p) } == CUDA_SUCCESS && !p.is_null() {
        // SAFETY: a non-null result is a NUL-terminated static string owned by the driver.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    } else {
        format!("CUDA error {r}")
    }
}

/// Turns a driver result into a larder error naming the call.
pub(crate) fn check(api: &Api, r: CuResult, call: &str) -> Result<()> {
    if r == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda {
            message: format!("{call} failed: {}", name_of(api, r)),
        })
    }
}

/// The driver, or an [`Error::Cuda`] saying why it cannot be used.
pub(crate) fn driver() -> Result<&'static Api> {
    api().map_err(|message| Error::Cuda { message })
}

/// The driver's CUDA version, e.g. 12040 for 12.4.
pub(crate) fn driver_version(api: &Api) -> Result<i32> {
    let mut v = 0;
    // SAFETY: writes one int.
    check(
        api,
        unsafe { (api.cuDriverGetVersion)(&mut v) },
        "cuDriverGetVersion",
    )?;
    Ok(v)
}

/// A GPU with its primary context retained (the context PyTorch uses too, so memory made here
/// is usable there).
#[derive(Debug)]
pub struct Device {
    ordinal: usize,
    device: CuDevice,
    context: CuContext,
}

// SAFETY: a CUDA context handle may be made current on any thread; the driver is thread-safe.
unsafe impl Send for Device {}
// SAFETY: as above; no method mutates the handle.
unsafe impl Sync for Device {}

impl Device {
    /// Opens GPU `ordinal` (retains its primary context).
    pub fn open(ordinal: usize) -> Result<Arc<Device>> {
        let api = driver()?;
        let mut count = 0;
        // SAFETY: writes one int.
        check(
            api,
            unsafe { (api.cuDeviceGetCount)(&mut count) },
            "cuDeviceGetCount",
        )?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda {
                message: format!("there is no cuda:{ordinal}: the driver sees {count} device(s)"),
            });
        }
        let mut device = 0;
        // SAFETY: the ordinal is below the device count.
        check(
            api,
            unsafe { (api.cuDeviceGet)(&mut device, ordinal as c_int) },
            "cuDeviceGet",
        )?;
        let mut context = std::ptr::null_mut();
        // SAFETY: `device` is a valid device handle; the context is released in Drop.
        check(
            api,
            unsafe { (api.cuDevicePrimaryCtxRetain)(&mut context, device) },
            "cuDevicePrimaryCtxRetain",
        )?;
        Ok(Arc::new(Device {
            ordinal,
            device,
            context,
        }))
    }

    /// The device's index (`cuda:N`).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Makes this device's context current on the calling thread until the returned guard
    /// is dropped, when the thread's previous context (PyTorch's, say) is current again. A
    /// context left current would move the caller's work to this device behind its back.
    pub(crate) fn bind(&self) -> Result<Current> {
        let api = driver()?;
        // SAFETY: the context is retained for as long as `self` lives, and outlives the guard,
        // which borrows nothing but pops on the same thread (it is not Send).
        check(
            api,
            unsafe { (api.cuCtxPushCurrent_v2)(self.context) },
            "cuCtxPushCurrent",
        )?;
        Ok(Current {
            api,
            _thread: std::marker::PhantomData,
        })
    }

    /// Device memory of `len` bytes.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DeviceBuffer> {
        let current = self.bind()?;
        let api = current.api;
        let mut ptr = 0;
        // cuMemAlloc refuses zero bytes; an empty buffer keeps a one-byte allocation.
        // SAFETY: writes one device pointer.
        check(
            api,
            unsafe { (api.cuMemAlloc_v2)(&mut ptr, len.max(1)) },
            "cuMemAlloc",
        )
        .map_err(|e| Error::Cuda {
            message: format!("{e} (allocating {len} bytes on cuda:{})", self.ordinal),
        })?;
        Ok(DeviceBuffer {
            ptr,
            len,
            device: self.clone(),
        })
    }

    /// An attribute of the device (`CU_DEVICE_ATTRIBUTE_*`).
    pub(crate) fn attribute(&self, attribute: c_int) -> Result<i32> {
        let api = driver()?;
        let mut v = 0;
        // SAFETY: writes one int for a valid device handle.
        check(
            api,
            unsafe { (api.cuDeviceGetAttribute)(&mut v, attribute, self.device) },
            "cuDeviceGetAttribute",
        )?;
        Ok(v)
    }

    /// The device's name and total memory in bytes.
    pub(crate) fn name_and_memory(&self) -> Result<(String, u64)> {
        let api = driver()?;
        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer holds 256 chars and the driver writes a NUL-terminated name.
        check(
            api,
            unsafe { (api.cuDeviceGetName)(name.as_mut_ptr(), 256, self.device) },
            "cuDeviceGetName",
        )?;
        let mut mem = 0usize;
        // SAFETY: writes one size.
        check(
            api,
            unsafe { (api.cuDeviceTotalMem_v2)(&mut mem, self.device) },
            "cuDeviceTotalMem",
        )?;
        // SAFETY: the driver wrote a NUL-terminated string into `name`.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok((name, mem as u64))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Ok(api) = driver() {
            // SAFETY: balances the retain in `open`.
            unsafe { (api.cuDevicePrimaryCtxRelease_v2)(self.device) };
        }
    }
}

/// Device memory, freed when dropped.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: DevicePtr,
    len: usize,
    device: Arc<Device>,
}

impl DeviceBuffer {
    /// The device address of the first byte.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true if and only if the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device that holds the memory.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Copies `src` to `offset` synchronously (the plain path: pageable host memory).
    pub(crate) fn copy_from_host(&self, offset: usize, src: &[u8]) -> Result<()> {
        assert!(
            offset + src.len() <= self.len,
            "copy past the device buffer"
        );
        let current = self.device.bind()?;
        let api = current.api;
        // SAFETY: the destination range lies inside this allocation (asserted above); the
        // source is a live slice; the call returns when the copy is done.
        check(
            api,
            unsafe {
                (api.cuMemcpyHtoD_v2)(self.ptr + offset as u64, src.as_ptr().cast(), src.len())
            },
            "cuMemcpyHtoD",
        )
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let Ok(current) = self.device.bind() {
            let api = current.api;
            // SAFETY: `ptr` came from cuMemAlloc and is freed once.
            unsafe { (api.cuMemFree_v2)(self.ptr) };
        }
    }
}

// SAFETY: a device address is plain data; the driver serializes access to the allocation.
unsafe impl Send for DeviceBuffer {}
// SAFETY: as above.
unsafe impl Sync for DeviceBuffer {}

/// A device's context pushed on this thread by [`Device::bind`]; popped on drop.
pub(crate) struct Current {
    pub(crate) api: &'static Api,
    /// Push and pop must happen on the same thread.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Current {
    fn drop(&mut self) {
        let mut popped = std::ptr::null_mut();
        // SAFETY: pops the context this guard pushed on this thread, writing one handle.
        unsafe { (self.api.cuCtxPopCurrent_v2)(&mut popped) };
    }
}

/// The GPU whose context page-locked allocations use: `LARDER_CUDA_DEVICE`, else torchrun's
/// `LOCAL_RANK`, else 0.
fn local_device() -> usize {
    ["LARDER_CUDA_DEVICE", "LOCAL_RANK"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Page-locked host memory (`cuMemHostAlloc`, portable to every context): the GPU's copy
/// engines read it directly, so host→device copies run at full bus speed and asynchronously.
#[derive(Debug)]
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
    /// Page-locked memory belongs to a context: keeping the device keeps its primary context
    /// (and so the memory) alive even when nothing else in the process holds it.
    device: Arc<Device>,
}

// SAFETY: the buffer is plain memory owned by this value; access goes through &/&mut.
unsafe impl Send for PinnedBuffer {}
// SAFETY: as above.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// `len` bytes of page-locked memory, zeroed.
    pub fn new(len: usize) -> Result<PinnedBuffer> {
        let api = driver()?;
        // Page-locked allocation needs a context; the memory is portable, so any device's
        // serves. This rank's own GPU (LOCAL_RANK under torchrun) keeps the other ranks' GPUs
        // free of a context per rank.
        let device = Device::open(local_device())?;
        let _current = device.bind()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: writes one host pointer to `len.max(1)` bytes.
        check(
            api,
            unsafe { (api.cuMemHostAlloc)(&mut ptr, len.max(1), MEMHOSTALLOC_PORTABLE) },
            "cuMemHostAlloc",
        )
        .map_err(|e| Error::Cuda {
            message: format!("{e} (page-locking {len} bytes)"),
        })?;
        let ptr = ptr.cast::<u8>();
        // SAFETY: the allocation holds at least `len` bytes.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedBuffer { ptr, len, device })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialized bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if let Ok(current) = self.device.bind() {
            let api = current.api;
            // SAFETY: `ptr` came from cuMemHostAlloc and is freed once.
            unsafe { (api.cuMemFreeHost)(self.ptr.cast()) };
        }
    }
}

/// A CUDA stream with a ring of events, for copies that overlap with reading.
#[derive(Debug)]
pub(crate) struct Stream {
    stream: CuStream,
    device: Arc<Device>,
}

impl Stream {
    pub(crate) fn new(device: &Arc<Device>) -> Result<Stream> {
        let current = device.bind()?;
        let api = current.api;
        let mut stream = std::ptr::null_mut();
        // SAFETY: writes one stream handle, destroyed in Drop.
        check(
            api,
            unsafe { (api.cuStreamCreate)(&mut stream, STREAM_NON_BLOCKING) },
            "cuStreamCreate",
        )?;
        Ok(Stream {
            stream,
            device: device.clone(),
        })
    }

    /// Queues a copy of `src` to `dst + offset`.
    ///
    /// # Safety
    /// `src` must stay valid and unchanged until the copy is done (wait on an event recorded
    /// after it), and the destination range must lie inside `dst`.
    pub(crate) unsafe fn copy_async(
        &self,
        dst: &DeviceBuffer,
        offset: usize,
        src: &[u8],
    ) -> Result<()> {
        let current = self.device.bind()?;
        let api = current.api;
        // SAFETY: the caller keeps `src` alive and the range inside `dst`.
        check(
            api,
            unsafe {
                (api.cuMemcpyHtoDAsync_v2)(
                    dst.ptr + offset as u64,
                    src.as_ptr().cast(),
                    src.len(),
                    self.stream,
                )
            },
            "cuMemcpyHtoDAsync",
        )
    }

    /// An event marking everything queued so far.
    pub(crate) fn record(&self) -> Result<Event> {
        let current = self.device.bind()?;
        let api = current.api;
        let mut event = std::ptr::null_mut();
        // SAFETY: writes one event handle, destroyed in Event's Drop.
        check(
            api,
            unsafe { (api.cuEventCreate)(&mut event, EVENT_DISABLE_TIMING) },
            "cuEventCreate",
        )?;
        let event = Event { event };
        // SAFETY: both handles are live.
        check(
            api,
            unsafe { (api.cuEventRecord)(event.event, self.stream) },
            "cuEventRecord",
        )?;
        Ok(event)
    }

    /// Waits for everything queued.
    pub(crate) fn synchronize(&self) -> Result<()> {
        let current = self.device.bind()?;
        let api = current.api;
        // SAFETY: the stream is live.
        check(
            api,
            unsafe { (api.cuStreamSynchronize)(self.stream) },
            "cuStreamSynchronize",
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(current) = self.device.bind() {
            let api = current.api;
            // SAFETY: waits for queued work (whose sources may be freed next), then destroys
            // the stream once.
            unsafe {
                (api.cuStreamSynchronize)(self.stream);
                (api.cuStreamDestroy_v2)(self.stream);
            }
        }
    }
}

/// A point in a stream to wait for.
#[derive(Debug)]
pub(crate) struct Event {
    event: CuEvent,
}

impl Event {
    pub(crate) fn wait(&self) -> Result<()> {
        let api = driver()?;
        // SAFETY: the event is live.
        check(
            api,
            unsafe { (api.cuEventSynchronize)(self.event) },
            "cuEventSynchronize",
        )
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(api) = driver() {
            // SAFETY: destroys the event once.
            unsafe { (api.cuEventDestroy_v2)(self.event) };
        }
    }
}
