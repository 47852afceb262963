//! GPUDirect Storage (`libcufile.so.0`), loaded when first needed: reads that DMA straight
//! from an NVMe (or RDMA file system) into GPU memory, without a bounce through host memory.
//!
//! GDS is only faster when the whole chain supports it: the `nvidia_fs` kernel module, a file
//! system that NVIDIA supports (ext4 or XFS on local NVMe, Lustre, GPFS, BeeGFS, NFS over
//! RDMA), files opened with `O_DIRECT`, and a GPU that does GPUDirect RDMA. Without
//! `nvidia_fs`, libcufile runs in "compatibility mode" — POSIX reads into its own bounce
//! buffers — which works but is no faster than larder's pinned path, so larder does not choose
//! it (see [`gds_checks`]).

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

use libloading::Library;

use super::driver::DeviceBuffer;
use crate::{Error, Result};

/// `CUfileError_t`: cuFile's status and, for CUDA failures, the driver's.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CuFileError {
    err: c_int,
    cu_err: c_int,
}

/// `CU_FILE_HANDLE_TYPE_OPAQUE_FD`: the handle is a POSIX file descriptor.
const HANDLE_TYPE_OPAQUE_FD: c_int = 1;

/// `CUfileDescr_t`: which file to register.
#[repr(C)]
struct CuFileDescr {
    kind: c_int,
    /// The union `{ int fd; void *handle; }`: pointer-sized, the fd in its low bytes.
    handle: FdOrHandle,
    fs_ops: *const c_void,
}

#[repr(C)]
union FdOrHandle {
    fd: c_int,
    handle: *mut c_void,
}

type CuFileHandle = *mut c_void;

#[allow(non_snake_case)]
struct Api {
    _lib: Library,
    cuFileDriverOpen: unsafe extern "C" fn() -> CuFileError,
    cuFileHandleRegister: unsafe extern "C" fn(*mut CuFileHandle, *mut CuFileDescr) -> CuFileError,
    cuFileHandleDeregister: unsafe extern "C" fn(CuFileHandle),
    cuFileBufRegister: unsafe extern "C" fn(*const c_void, usize, c_int) -> CuFileError,
    cuFileBufDeregister: unsafe extern "C" fn(*const c_void) -> CuFileError,
    cuFileRead: unsafe extern "C" fn(CuFileHandle, *mut c_void, usize, i64, i64) -> isize,
}

const LIBRARY_NAMES: [&str; 2] = ["libcufile.so.0", "libcufile.so"];

/// The library, loaded once; the error says why it could not be.
fn library() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> std::result::Result<Api, String> {
    super::driver::api()?;
    let mut errors = Vec::new();
    for name in LIBRARY_NAMES {
        // SAFETY: loading libcufile runs its initializers, which have no preconditions on our
        // side (the CUDA driver it depends on is loaded above).
        match unsafe { Library::new(name) } {
            Ok(lib) => return resolve(lib).map_err(|e| format!("{name}: {e}")),
            Err(e) => errors.push(super::driver::load_error(&e)),
        }
    }
    Err(format!(
        "libcufile is not installed (it ships with the CUDA toolkit's GPUDirect Storage package, nvidia-gds): {}",
        errors.join("; ")
    ))
}

fn resolve(lib: Library) -> std::result::Result<Api, String> {
    macro_rules! sym {
        ($name:ident) => {{
            // SAFETY: the symbol is the cuFile function of that name with the C signature the
            // field's type reproduces; `lib` stays loaded in the same never-dropped static.
            let s =
                unsafe { lib.get(concat!(stringify!($name), "\0").as_bytes()) }.map_err(|e| {
                    format!(
                        "missing {}: {}",
                        stringify!($name),
                        super::driver::load_error(&e)
                    )
                })?;
            *s
        }};
    }
    Ok(Api {
        cuFileDriverOpen: sym!(cuFileDriverOpen),
        cuFileHandleRegister: sym!(cuFileHandleRegister),
        cuFileHandleDeregister: sym!(cuFileHandleDeregister),
        cuFileBufRegister: sym!(cuFileBufRegister),
        cuFileBufDeregister: sym!(cuFileBufDeregister),
        cuFileRead: sym!(cuFileRead),
        _lib: lib,
    })
}

fn describe(e: CuFileError) -> String {
    if e.cu_err != 0 {
        format!("cuFile error {} (CUDA error {})", e.err, e.cu_err)
    } else {
        format!("cuFile error {} (see CUfileOpError in cufile.h)", e.err)
    }
}

/// Opens the cuFile driver once per process; the result (or why it failed) is kept.
fn opened() -> std::result::Result<&'static Api, String> {
    static OPEN: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let api = library()?;
    OPEN.get_or_init(|| {
        // SAFETY: cuFileDriverOpen takes no arguments; it is reference-counted by the library
        // and stays open for the life of the process.
        let r = unsafe { (api.cuFileDriverOpen)() };
        if r.err == 0 {
            Ok(())
        } else {
            Err(format!("cuFileDriverOpen failed: {}", describe(r)))
        }
    })
    .clone()?;
    Ok(api)
}

/// Returns true if and only if the `nvidia_fs` kernel module (GDS's DMA path) is loaded.
fn nvidia_fs_loaded() -> bool {
    Path::new("/sys/module/nvidia_fs").exists()
}

/// File systems GDS can DMA from, by `statfs` magic number.
fn filesystem_of(path: &Path) -> std::result::Result<(&'static str, bool), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: the path holds a NUL byte", path.display()))?;
    // SAFETY: `statfs` is plain data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(match st.f_type as u64 {
        0xEF53 => ("ext4", true),
        0x5846_5342 => ("xfs", true),
        0x0BD0_0BD0 => ("lustre", true),
        0x4750_4653 => ("gpfs", true),
        0x1983_0326 => ("beegfs", true),
        0x6969 => ("nfs (GDS needs NFS over RDMA)", true),
        0x0102_1994 => ("tmpfs", false),
        0x794C_7630 => ("overlayfs", false),
        0x9123_683E => ("btrfs", false),
        0x6573_5546 => ("fuse", false),
        0x0000_9FA0 => ("procfs", false),
        _ => ("another file system", false),
    })
}

/// One line of the GPUDirect Storage report: a requirement, whether it holds, and what was
/// found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What is required.
    pub what: String,
    /// Returns true if and only if the requirement holds.
    pub ok: bool,
    /// What was found (the error or the value).
    pub detail: String,
}

/// Every requirement of the GDS path, checked in order: libcufile loads, `nvidia_fs` is loaded,
/// `cuFileDriverOpen` succeeds, and (when `file` is given) its file system is one GDS reads
/// from. GDS is usable when all hold (and the GPU supports GPUDirect RDMA, which
/// [`probe`](super::probe) checks per device).
pub fn gds_checks(file: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let lib = library();
    checks.push(Check {
        what: "libcufile loads".into(),
        ok: lib.is_ok(),
        detail: lib
            .as_ref()
            .err()
            .cloned()
            .unwrap_or_else(|| "loaded".into()),
    });
    let fs = nvidia_fs_loaded();
    checks.push(Check {
        what: "nvidia_fs kernel module loaded".into(),
        ok: fs,
        detail: if fs {
            "/sys/module/nvidia_fs exists".into()
        } else {
            "not loaded (modprobe nvidia_fs; without it cuFile runs in compatibility mode, no faster than pinned copies)".into()
        },
    });
    if lib.is_ok() {
        let open = opened();
        checks.push(Check {
            what: "cuFileDriverOpen".into(),
            ok: open.is_ok(),
            detail: open.err().unwrap_or_else(|| "ok".into()),
        });
    }
    if let Some(file) = file {
        let (detail, ok) = match filesystem_of(file) {
            Ok((name, ok)) => (
                if ok {
                    format!("{name}: supported by GDS")
                } else {
                    format!("{name}: GDS cannot DMA from it")
                },
                ok,
            ),
            Err(e) => (e, false),
        };
        checks.push(Check {
            what: format!("file system of {}", file.display()),
            ok,
            detail,
        });
    }
    checks
}

/// Returns `Ok` when every GDS requirement for `file` holds, else the first one that does not.
pub(crate) fn usable_for(file: &Path) -> std::result::Result<(), String> {
    match gds_checks(Some(file)).into_iter().find(|c| !c.ok) {
        None => Ok(()),
        Some(c) => Err(format!("{}: {}", c.what, c.detail)),
    }
}

/// A file registered with cuFile (opened with `O_DIRECT`), deregistered when dropped.
#[derive(Debug)]
pub(crate) struct CuFile {
    handle: CuFileHandle,
    _file: File,
}

// SAFETY: cuFile handles are usable from any thread; cuFileRead is thread-safe.
unsafe impl Send for CuFile {}
// SAFETY: as above.
unsafe impl Sync for CuFile {}

impl CuFile {
    pub(crate) fn open(path: &Path) -> Result<CuFile> {
        let api = opened().map_err(|message| Error::Cuda { message })?;
        let file = crate::os::open(path, true).map_err(|e| Error::io(path, e))?;
        let mut descr = CuFileDescr {
            kind: HANDLE_TYPE_OPAQUE_FD,
            handle: FdOrHandle {
                handle: std::ptr::null_mut(),
            },
            fs_ops: std::ptr::null(),
        };
        descr.handle.fd = file.as_raw_fd();
        let mut handle = std::ptr::null_mut();
        // SAFETY: `descr` names an open descriptor that outlives the handle (both are kept in
        // the returned value, the handle deregistered first in Drop).
        let r = unsafe { (api.cuFileHandleRegister)(&mut handle, &mut descr) };
        if r.err != 0 {
            return Err(Error::Cuda {
                message: format!("cuFileHandleRegister {}: {}", path.display(), describe(r)),
            });
        }
        Ok(CuFile {
            handle,
            _file: file,
        })
    }

    /// Reads `len` bytes at `file_offset` into `dst` at `dst_offset`; the device's context
    /// must be current on the calling thread.
    pub(crate) fn read(
        &self,
        dst: &DeviceBuffer,
        dst_offset: usize,
        file_offset: u64,
        len: usize,
    ) -> Result<()> {
        let api = opened().map_err(|message| Error::Cuda { message })?;
        assert!(
            dst_offset + len <= dst.len(),
            "cuFile read past the device buffer"
        );
        let mut done = 0usize;
        while done < len {
            // SAFETY: the destination range lies inside `dst` (asserted), a live device
            // allocation; the handle is registered.
            let n = unsafe {
                (api.cuFileRead)(
                    self.handle,
                    dst.ptr() as *mut c_void,
                    len - done,
                    (file_offset + done as u64) as i64,
                    (dst_offset + done) as i64,
                )
            };
            if n <= 0 {
                return Err(Error::Cuda {
                    message: if n == 0 {
                        format!(
                            "cuFileRead hit the end of the file at byte {}",
                            file_offset + done as u64
                        )
                    } else {
                        format!(
                            "cuFileRead failed with {n} at byte {}",
                            file_offset + done as u64
                        )
                    },
                });
            }
            done += n as usize;
        }
        Ok(())
    }
}

impl Drop for CuFile {
    fn drop(&mut self) {
        if let Ok(api) = library() {
            // SAFETY: the handle was registered in `open` and is deregistered once, before the
            // file it names is closed.
            unsafe { (api.cuFileHandleDeregister)(self.handle) };
        }
    }
}

/// A device buffer registered with cuFile for the length of a load (registration lets cuFile
/// DMA into it without its own bounce buffers).
#[derive(Debug)]
pub(crate) struct Registered<'a> {
    buffer: &'a DeviceBuffer,
    registered: bool,
}

impl<'a> Registered<'a> {
    pub(crate) fn new(buffer: &'a DeviceBuffer) -> Registered<'a> {
        let registered = opened().is_ok_and(|api| {
            // SAFETY: the buffer is a live device allocation of `len` bytes, deregistered in
            // Drop before it can be freed (the borrow outlives this value).
            let r = unsafe {
                (api.cuFileBufRegister)(buffer.ptr() as *const c_void, buffer.len().max(1), 0)
            };
            if r.err != 0 {
                tracing::debug!(
                    "cuFileBufRegister failed ({}): reading unregistered",
                    describe(r)
                );
            }
            r.err == 0
        });
        Registered { buffer, registered }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if self.registered
            && let Ok(api) = library()
        {
            // SAFETY: balances the registration in `new`.
            unsafe { (api.cuFileBufDeregister)(self.buffer.ptr() as *const c_void) };
        }
    }
}
