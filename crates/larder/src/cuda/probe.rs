//! What this machine offers for getting tensors to a GPU, and why a faster path is not there.

use std::path::Path;

use super::cufile::{Check, gds_checks};
use super::driver::{self, Device};

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// Its index (`cuda:N`).
    pub ordinal: usize,
    /// Its name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Memory in bytes.
    pub total_memory: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Returns true if and only if the GPU supports GPUDirect RDMA (needed by GDS).
    pub gpudirect_rdma: bool,
}

/// The CUDA report: driver, devices, GPUDirect Storage, and the fast-load paths available.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// The driver's CUDA version as "major.minor", or `None` when it does not load.
    pub driver_version: Option<String>,
    /// Why the driver is unusable, when it is.
    pub driver_error: Option<String>,
    /// The GPUs.
    pub devices: Vec<DeviceInfo>,
    /// Every requirement of GPUDirect Storage, checked in order.
    pub gds: Vec<Check>,
    /// Returns true if and only if cuFile reads straight to GPU memory would be used (every
    /// GDS requirement holds and device 0 supports GPUDirect RDMA).
    pub gds_usable: bool,
    /// Returns true if and only if page-locked memory and asynchronous copies are available.
    pub pinned_usable: bool,
    /// Why each unavailable path is unavailable, one line per path ("cufile: ...").
    pub unavailable: Vec<String>,
}

/// Probes CUDA and GPUDirect Storage (without a file: the file system is not judged).
pub fn probe() -> Probe {
    probe_inner(None)
}

/// [`probe`], also judging whether GDS can read `file`'s file system.
pub fn probe_for(file: &Path) -> Probe {
    probe_inner(Some(file))
}

fn probe_inner(file: Option<&Path>) -> Probe {
    let (driver_version, driver_error) = match driver::driver().and_then(driver::driver_version) {
        Ok(v) => (Some(format!("{}.{}", v / 1000, v % 1000 / 10)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut devices = Vec::new();
    let mut unavailable = Vec::new();
    if driver_error.is_none() {
        for ordinal in 0.. {
            let Ok(device) = Device::open(ordinal) else {
                break;
            };
            let info = (|| -> crate::Result<DeviceInfo> {
                let (name, total_memory) = device.name_and_memory()?;
                Ok(DeviceInfo {
                    ordinal,
                    name,
                    total_memory,
                    compute_capability: (
                        device.attribute(driver::ATTR_COMPUTE_CAPABILITY_MAJOR)?,
                        device.attribute(driver::ATTR_COMPUTE_CAPABILITY_MINOR)?,
                    ),
                    gpudirect_rdma: device.attribute(driver::ATTR_GPU_DIRECT_RDMA_SUPPORTED)? != 0,
                })
            })();
            match info {
                Ok(i) => devices.push(i),
                Err(e) => unavailable.push(format!("cuda:{ordinal}: {e}")),
            }
        }
    }
    let gds = if driver_error.is_none() {
        gds_checks(file)
    } else {
        Vec::new()
    };
    let pinned_usable = driver_error.is_none() && !devices.is_empty();
    let rdma = devices.first().is_some_and(|d| d.gpudirect_rdma);
    let gds_usable = pinned_usable && rdma && gds.iter().all(|c| c.ok);
    if let Some(e) = &driver_error {
        unavailable.push(format!("cufile: {e}"));
        unavailable.push(format!("pinned: {e}"));
    } else if devices.is_empty() {
        unavailable.push("cufile: the driver sees no GPU".into());
        unavailable.push("pinned: the driver sees no GPU".into());
    } else if !gds_usable {
        let why = gds
            .iter()
            .find(|c| !c.ok)
            .map(|c| format!("{}: {}", c.what, c.detail))
            .unwrap_or_else(|| "cuda:0 does not support GPUDirect RDMA".into());
        unavailable.push(format!("cufile: {why}"));
    }
    Probe {
        driver_version,
        driver_error,
        devices,
        gds,
        gds_usable,
        pinned_usable,
        unavailable,
    }
}
