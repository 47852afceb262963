//! The NVIDIA driver and GPUDirect Storage, read from files only: /proc/driver/nvidia/version,
//! /dev/nvidia*, /proc/modules, the dynamic loader's library folders and /etc/cufile.json.
//! Nothing here loads a CUDA library, so the checks run the same on machines without one; a
//! probe that loads libcuda and libcufile adds its own rows beside these.

use std::path::{Path, PathBuf};

use super::{Check, Status};

/// Where the files are: `/` on a real system, a prepared folder in tests.
#[derive(Debug, Clone)]
struct Roots {
    root: PathBuf,
    lib_dirs: Vec<PathBuf>,
}

/// Driver, devices and GPUDirect Storage rows for this machine.
pub fn gpu_checks() -> Vec<Check> {
    let root = PathBuf::from("/");
    let mut lib_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    lib_dirs.extend(ld_so_conf(&root.join("etc/ld.so.conf"), 0));
    checks_in(&Roots { root, lib_dirs })
}

/// Folders the dynamic loader searches without LD_LIBRARY_PATH: ld.so.conf (with its
/// `include` globs of the form `dir/*.conf`), then the default and CUDA folders.
fn ld_so_conf(path: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
    {
        if let Some(pattern) = line.strip_prefix("include ") {
            if depth > 4 {
                continue; // include cycles: a folder list never needs deeper nesting
            }
            let pattern = Path::new(pattern.trim());
            let (dir, suffix) = match pattern.file_name().and_then(|n| n.to_str()) {
                Some(name) if name.starts_with('*') => (pattern.parent(), Some(&name[1..])),
                _ => (None, None),
            };
            match (dir, suffix) {
                (Some(dir), Some(suffix)) => {
                    let mut confs: Vec<PathBuf> = std::fs::read_dir(dir)
                        .map(|d| d.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default();
                    confs.retain(|p| p.to_string_lossy().ends_with(suffix));
                    confs.sort();
                    for conf in confs {
                        out.extend(ld_so_conf(&conf, depth + 1));
                    }
                }
                _ => out.extend(ld_so_conf(pattern, depth + 1)),
            }
        } else if line.starts_with('/') {
            out.push(PathBuf::from(line));
        }
    }
    if depth == 0 {
        for d in [
            "/lib",
            "/usr/lib",
            "/lib64",
            "/usr/lib64",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
        ] {
            out.push(PathBuf::from(d));
        }
    }
    out
}

/// The driver version in the text of /proc/driver/nvidia/version ("NVRM version: NVIDIA UNIX
/// x86_64 Kernel Module  550.54.15  Tue Mar  5 ...").
fn driver_version(text: &str) -> Option<&str> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    let after = line.split("Kernel Module").nth(1)?;
    after.split_whitespace().next()
}

fn checks_in(r: &Roots) -> Vec<Check> {
    let at = |p: &str| r.root.join(p);
    let mut out = Vec::new();
    let version = std::fs::read_to_string(at("proc/driver/nvidia/version")).ok();
    let driver = version
        .as_deref()
        .and_then(driver_version)
        .map(str::to_owned);
    out.push(match (&version, &driver) {
        (Some(_), Some(v)) => Check::new("NVIDIA driver", Status::Ok, format!("kernel module {v}")),
        (Some(text), None) => Check::new(
            "NVIDIA driver",
            Status::Warn,
            format!(
                "/proc/driver/nvidia/version is unreadable as a version: {:?}",
                text.lines().next().unwrap_or("")
            ),
        ),
        (None, _) => Check::new(
            "NVIDIA driver",
            Status::Info,
            "no NVIDIA kernel driver loaded (/proc/driver/nvidia/version is absent)",
        )
        .advise("training needs one; larder prepares and serves data without a GPU"),
    });

    let mut devices: Vec<String> = std::fs::read_dir(at("dev"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| {
                    n.strip_prefix("nvidia")
                        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    devices.sort_by_key(|n| n[6..].parse::<u32>().unwrap_or(u32::MAX));
    out.push(match (devices.is_empty(), driver.is_some()) {
        (false, _) => Check::new(
            "GPU devices",
            Status::Ok,
            format!("{}: /dev/{}", devices.len(), devices.join(", /dev/")),
        ),
        (true, true) => Check::new(
            "GPU devices",
            Status::Warn,
            "the driver is loaded but there is no /dev/nvidiaN",
        )
        .advise("in a container, start it with --gpus all (NVIDIA Container Toolkit)"),
        (true, false) => Check::new("GPU devices", Status::Info, "no /dev/nvidiaN devices"),
    });

    // GPUDirect Storage needs the nvidia_fs kernel module, libcufile, and its configuration.
    let modules = std::fs::read_to_string(at("proc/modules")).unwrap_or_default();
    let nvidia_fs = modules.lines().any(|l| l.starts_with("nvidia_fs "));
    let cufile = r.lib_dirs.iter().find_map(|d| {
        let mut names: Vec<PathBuf> = std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libcufile.so"))
            })
            .collect();
        names.sort();
        names.into_iter().next()
    });
    let config = at("etc/cufile.json");
    let mut missing = Vec::new();
    if !nvidia_fs {
        missing.push("the nvidia_fs kernel module is not loaded (/proc/modules)".to_owned());
    }
    if cufile.is_none() {
        missing.push(format!(
            "libcufile.so is in none of the loader's {} library folders",
            r.lib_dirs.len()
        ));
    }
    if !config.is_file() {
        missing.push("/etc/cufile.json is absent".to_owned());
    }
    out.push(if missing.is_empty() {
        Check::new(
            "GPUDirect Storage",
            Status::Ok,
            format!(
                "nvidia_fs loaded, {} found, /etc/cufile.json present",
                cufile.as_deref().map_or(String::new(), |p| p.display().to_string())
            ),
        )
    } else {
        Check::new(
            "GPUDirect Storage",
            Status::Info,
            format!("unavailable: {}", missing.join("; ")),
        )
        .advise(if driver.is_some() {
            "install NVIDIA's nvidia-gds package (nvidia-fs module and libcufile) to read shards straight into GPU memory; without it larder reads through the page cache"
        } else {
            "it needs an NVIDIA GPU and driver; larder reads through the page cache without it"
        })
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    fn status(checks: &[Check], name: &str) -> (Status, String) {
        let c = checks.iter().find(|c| c.name == name).expect(name);
        (c.status, c.detail.clone())
    }

    #[test]
    fn a_machine_without_nvidia_says_why_gds_is_unavailable() {
        let root = tempfile::tempdir().expect("tmp");
        let checks = checks_in(&Roots {
            root: root.path().to_path_buf(),
            lib_dirs: vec![],
        });
        assert_eq!(status(&checks, "NVIDIA driver").0, Status::Info);
        assert_eq!(status(&checks, "GPU devices").0, Status::Info);
        let (s, detail) = status(&checks, "GPUDirect Storage");
        assert_eq!(s, Status::Info);
        assert!(
            detail.contains("nvidia_fs kernel module is not loaded"),
            "{detail}"
        );
        assert!(detail.contains("libcufile.so"), "{detail}");
        assert!(detail.contains("/etc/cufile.json is absent"), "{detail}");
    }

    #[test]
    fn a_machine_with_driver_devices_and_gds_is_ok() {
        let root = tempfile::tempdir().expect("tmp");
        let r = root.path();
        put(
            r,
            "proc/driver/nvidia/version",
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc version 12.2.0\n",
        );
        for d in [
            "dev/nvidia0",
            "dev/nvidia1",
            "dev/nvidiactl",
            "dev/nvidia-uvm",
        ] {
            put(r, d, "");
        }
        put(
            r,
            "proc/modules",
            "nvidia_uvm 1 0 - Live 0x0\nnvidia_fs 245760 0 - Live 0x0\n",
        );
        put(r, "etc/cufile.json", "{}");
        put(r, "cuda/lib64/libcufile.so.0", "");
        let checks = checks_in(&Roots {
            root: r.to_path_buf(),
            lib_dirs: vec![r.join("nowhere"), r.join("cuda/lib64")],
        });
        assert_eq!(
            status(&checks, "NVIDIA driver"),
            (Status::Ok, "kernel module 550.54.15".into())
        );
        assert_eq!(
            status(&checks, "GPU devices"),
            (Status::Ok, "2: /dev/nvidia0, /dev/nvidia1".into())
        );
        let (s, detail) = status(&checks, "GPUDirect Storage");
        assert_eq!(s, Status::Ok, "{detail}");
        assert!(detail.contains("libcufile.so.0"), "{detail}");
    }

    #[test]
    fn a_driver_without_devices_warns_about_the_container() {
        let root = tempfile::tempdir().expect("tmp");
        put(
            root.path(),
            "proc/driver/nvidia/version",
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19\n",
        );
        let checks = checks_in(&Roots {
            root: root.path().to_path_buf(),
            lib_dirs: vec![],
        });
        assert_eq!(status(&checks, "GPU devices").0, Status::Warn);
    }

    #[test]
    fn ld_so_conf_follows_includes() {
        let root = tempfile::tempdir().expect("tmp");
        let r = root.path();
        put(
            r,
            "ld.so.conf.d/cuda.conf",
            "/usr/local/cuda-12/lib64\n# comment\n",
        );
        put(r, "ld.so.conf.d/other.txt", "/ignored\n");
        put(
            r,
            "ld.so.conf",
            &format!("include {}/ld.so.conf.d/*.conf\n/opt/lib\n", r.display()),
        );
        let dirs = ld_so_conf(&r.join("ld.so.conf"), 0);
        assert_eq!(dirs[0], PathBuf::from("/usr/local/cuda-12/lib64"));
        assert_eq!(dirs[1], PathBuf::from("/opt/lib"));
        assert!(!dirs.contains(&PathBuf::from("/ignored")));
        assert!(dirs.contains(&PathBuf::from("/usr/lib")));
    }
}
