//! CUDA, when the machine has it: the driver and GPUDirect Storage loaded at run time, so that
//! larder builds and runs without either and uses them when they are there.
//!
//! - [`probe`] reports the driver, the devices and every requirement of GPUDirect Storage, with
//!   the reason each faster path is unavailable (`larder doctor` shows it).
//! - [`PinnedBuffer`]: page-locked host memory, which the GPU's copy engines read directly
//!   (the loader's `pin_memory` and the fast loader's pinned path use it).
//! - [`Device`] and [`DeviceBuffer`]: a GPU's primary context (the one PyTorch uses) and memory
//!   on it, which [`fastload`](crate::fastload) fills by asynchronous copies or by cuFile.
//!
//! Nothing here panics or aborts when CUDA is missing: every entry point returns
//! [`Error::Cuda`](crate::Error::Cuda) with the reason. Setting `LARDER_NO_CUDA=1` makes larder
//! behave as if the driver were absent (to test the fallbacks on a GPU machine).

pub(crate) mod cufile;
mod driver;
mod probe;

pub use cufile::Check;
pub(crate) use driver::{ATTR_GPU_DIRECT_RDMA_SUPPORTED, Stream};
pub use driver::{Device, DeviceBuffer, DevicePtr, PinnedBuffer};
pub use probe::{DeviceInfo, Probe, probe, probe_for};

/// Returns `Ok` when the CUDA driver loads and initializes, else the reason it does not.
pub fn available() -> Result<(), String> {
    driver::api().map(|_| ())
}
