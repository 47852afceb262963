//! What larder itself can use on this machine, from the CUDA driver loaded at run time
//! ([`crate::cuda::probe`]): the rows that say which path `larder.load_file(device="cuda")`
//! and `DataLoader(pin_memory=True)` will take, and why a faster one is not there. The file
//! checks in [`super::gpu`] say what is installed; these say what actually works.

use super::{Check, Status};
use crate::cuda::Probe;

/// Rows for the driver as loaded, the pinned-memory path and the GPUDirect Storage path.
pub fn fast_path_checks(probe: &Probe) -> Vec<Check> {
    let mut rows = Vec::new();
    // Without a driver every path fails for the same reason, given once in the driver row.
    let reason = |path: &str| {
        if probe.driver_version.is_none() {
            return Some("no usable CUDA driver".to_owned());
        }
        probe
            .unavailable
            .iter()
            .find_map(|line| {
                line.strip_prefix(path)
                    .map(|r| r.trim_start_matches([':', ' ']))
            })
            .map(str::to_owned)
    };
    match (&probe.driver_version, &probe.driver_error) {
        (Some(version), _) => {
            let devices: Vec<String> = probe
                .devices
                .iter()
                .map(|d| {
                    format!(
                        "cuda:{} {} ({:.0} GiB, sm {}.{})",
                        d.ordinal,
                        d.name,
                        d.total_memory as f64 / f64::from(1u32 << 30),
                        d.compute_capability.0,
                        d.compute_capability.1
                    )
                })
                .collect();
            let status = if devices.is_empty() {
                Status::Warn
            } else {
                Status::Ok
            };
            let detail = if devices.is_empty() {
                format!("CUDA {version} loads, but it sees no GPU")
            } else {
                format!("CUDA {version}: {}", devices.join("; "))
            };
            rows.push(Check::new("CUDA driver (loaded)", status, detail));
        }
        (None, error) => rows.push(Check::new(
            "CUDA driver (loaded)",
            Status::Info,
            format!(
                "not usable: {}",
                error.as_deref().unwrap_or("libcuda does not load")
            ),
        )),
    }
    rows.push(if probe.pinned_usable {
        Check::new(
            "pinned memory",
            Status::Ok,
            "page-locked host buffers and asynchronous copies: pin_memory=True and GPU loads use them",
        )
    } else {
        Check::new(
            "pinned memory",
            Status::Info,
            format!(
                "unavailable ({}): batches stay in ordinary memory",
                reason("pinned").unwrap_or_else(|| "no usable CUDA driver".into())
            ),
        )
    });
    let failed: Vec<String> = probe
        .gds
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.what, c.detail))
        .collect();
    rows.push(if probe.gds_usable {
        Check::new(
            "GPUDirect Storage (cuFile)",
            Status::Ok,
            "cuFile opens and the GPU supports GPUDirect RDMA: GPU loads read straight to GPU memory",
        )
    } else {
        let why = reason("cufile")
            .or_else(|| failed.first().cloned())
            .unwrap_or_else(|| "not available".into());
        Check::new("GPUDirect Storage (cuFile)", Status::Info, format!("not used: {why}"))
            .advise("GPU loads fall back to pinned memory and asynchronous copies, else plain copies")
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::DeviceInfo;

    fn probe() -> Probe {
        Probe {
            driver_version: None,
            driver_error: Some("libcuda.so.1: cannot open shared object file".into()),
            devices: vec![],
            gds: vec![],
            gds_usable: false,
            pinned_usable: false,
            unavailable: vec![
                "cufile: libcufile.so.0 does not load".into(),
                "pinned: no CUDA driver".into(),
            ],
        }
    }

    #[test]
    fn without_a_driver_every_row_says_why() {
        let rows = fast_path_checks(&probe());
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.status == Status::Info));
        assert!(
            rows[0].detail.contains("libcuda.so.1"),
            "{}",
            rows[0].detail
        );
        // The driver's error is given once; the paths point to it.
        for row in &rows[1..] {
            assert!(
                row.detail.contains("no usable CUDA driver"),
                "{}",
                row.detail
            );
            assert!(!row.detail.contains("libcuda.so.1"), "{}", row.detail);
        }
    }

    #[test]
    fn a_driver_with_a_gpu_names_it_and_the_paths_it_allows() {
        let p = Probe {
            driver_version: Some("12.8".into()),
            driver_error: None,
            devices: vec![DeviceInfo {
                ordinal: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                total_memory: 80 << 30,
                compute_capability: (9, 0),
                gpudirect_rdma: true,
            }],
            pinned_usable: true,
            gds_usable: true,
            ..probe()
        };
        let rows = fast_path_checks(&p);
        assert_eq!(rows[0].status, Status::Ok);
        assert!(
            rows[0]
                .detail
                .contains("CUDA 12.8: cuda:0 NVIDIA H100 80GB HBM3 (80 GiB, sm 9.0)")
        );
        assert_eq!((rows[1].status, rows[2].status), (Status::Ok, Status::Ok));
        let no_gds = Probe {
            gds_usable: false,
            unavailable: vec!["cufile: nvidia_fs is not loaded".into()],
            ..p
        };
        let rows = fast_path_checks(&no_gds);
        assert_eq!(rows[2].detail, "not used: nvidia_fs is not loaded");
    }
}
