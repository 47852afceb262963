//! The fast loader against the Python `safetensors` package (both ways), on every dtype,
//! empty and scalar tensors, metadata and a sharded checkpoint; damaged and hostile files;
//! and the fallbacks when CUDA is absent.
//!
//! Needs `LARDER_TEST_PYTHON` (see `interop.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use larder::Error;
use larder::fastload::{Checkpoint, LoadOptions, LoadPath, write_synthetic};

use crate::interop::run_script;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/fastload_interop.py")
}

fn python_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    serde_json::from_slice(&run_script(&script(), args)).unwrap_or(serde_json::Value::Null)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Python writes the test files; returns their folder and the manifest of what it wrote.
fn written() -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    python_json(&["write".as_ref(), dir.path().as_os_str()]);
    let manifest = std::fs::read(dir.path().join("manifest.json")).expect("manifest");
    (
        dir,
        serde_json::from_slice(&manifest).expect("manifest json"),
    )
}

/// Asserts that `ckpt`, loaded with `options` and read tensor by tensor, holds exactly the
/// tensors of `expected` ({name: {dtype, shape, hex}}).
fn assert_holds(
    ckpt: &Checkpoint,
    options: &LoadOptions,
    expected: &serde_json::Map<String, serde_json::Value>,
) {
    let names: Vec<&str> = ckpt.names().collect();
    let mut want: Vec<&str> = expected.keys().map(String::as_str).collect();
    want.sort();
    assert_eq!(names, want);
    let host = ckpt.load(options).expect("load");
    for (name, e) in expected {
        let view = host.get(ckpt, name).expect("view");
        assert_eq!(
            format!("{:?}", view.info.dtype),
            e["dtype"].as_str().unwrap_or(""),
            "{name}"
        );
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).expect("shape");
        assert_eq!(view.info.shape, shape, "{name}");
        assert_eq!(
            hex(view.data()),
            e["hex"].as_str().unwrap_or(""),
            "{name} (whole load)"
        );
        let one = ckpt.read(name).expect("read one");
        assert_eq!(
            hex(one.buffer.as_slice()),
            e["hex"].as_str().unwrap_or(""),
            "{name} (read alone)"
        );
    }
}

#[test]
fn files_of_every_dtype_written_by_python_load_byte_for_byte() {
    let (dir, manifest) = written();
    let all = &manifest["all.safetensors"];
    let ckpt = Checkpoint::open(dir.path().join("all.safetensors")).expect("open");
    let expected = all["tensors"].as_object().expect("tensors");
    assert!(expected.len() >= 15 * 6, "every dtype in every shape");
    let metadata: BTreeMap<String, String> =
        serde_json::from_value(all["metadata"].clone()).expect("metadata");
    assert_eq!(ckpt.metadata(), &metadata);
    // Small chunks and several threads: many reads, some ending mid-tensor.
    let small = LoadOptions {
        threads: 3,
        chunk_bytes: 4096,
        ..LoadOptions::default()
    };
    assert_holds(&ckpt, &small, expected);
    assert_holds(&ckpt, &LoadOptions::default(), expected);
}

#[test]
fn a_sharded_checkpoint_loads_through_its_index() {
    let (dir, manifest) = written();
    let ckpt = Checkpoint::open(dir.path().join("sharded/model.safetensors.index.json"))
        .expect("open index");
    assert_eq!(ckpt.files().count(), 2);
    assert_eq!(
        ckpt.metadata().get("total_size").map(String::as_str),
        Some("393")
    );
    let mut expected = serde_json::Map::new();
    for part in [
        "sharded/model-00001-of-00002.safetensors",
        "sharded/model-00002-of-00002.safetensors",
    ] {
        expected.extend(
            manifest[part]["tensors"]
                .as_object()
                .expect("tensors")
                .clone(),
        );
    }
    assert_holds(&ckpt, &LoadOptions::default(), &expected);
}

#[test]
fn python_reads_larder_synthetic_checkpoints_as_larder_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("synthetic.safetensors");
    let n = write_synthetic(&path, 1 << 20, 3).expect("write");
    assert_eq!(n, 1);
    let dumped = python_json(&["dump".as_ref(), path.as_os_str()]);
    let ckpt = Checkpoint::open(&path).expect("open");
    assert_eq!(ckpt.metadata().get("seed").map(String::as_str), Some("3"));
    assert_holds(
        &ckpt,
        &LoadOptions::default(),
        dumped["tensors"].as_object().expect("tensors"),
    );
    // Deterministic: the same seed writes the same bytes.
    let again = dir.path().join("again.safetensors");
    write_synthetic(&again, 1 << 20, 3).expect("write again");
    assert_eq!(std::fs::read(&path).ok(), std::fs::read(&again).ok());
}

fn open_err(path: &Path) -> String {
    match Checkpoint::open(path) {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e @ Error::Safetensors { .. }) => e.to_string(),
        Err(other) => panic!("expected a safetensors error, got {other:?}"),
    }
}

#[test]
fn truncated_and_corrupt_files_give_errors_naming_file_and_tensor() {
    let (dir, _) = written();
    let good = std::fs::read(dir.path().join("all.safetensors")).expect("read");
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &good[..good.len() - 10]).expect("write");
    let m = open_err(&cut);
    assert!(
        m.contains("cut.safetensors") && m.contains("tensor `t.") && m.contains("truncated"),
        "{m}"
    );

    let short = dir.path().join("short.safetensors");
    std::fs::write(&short, &good[..100]).expect("write");
    let m = open_err(&short);
    assert!(
        m.contains("short.safetensors") && m.contains("truncated"),
        "{m}"
    );

    let mut garbage = good.clone();
    garbage[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let huge = dir.path().join("huge.safetensors");
    std::fs::write(&huge, &garbage).expect("write");
    assert!(open_err(&huge).contains("limit"));

    let mut broken = good.clone();
    broken[20] = b'\\';
    broken[21] = b'"';
    let bad_json = dir.path().join("json.safetensors");
    std::fs::write(&bad_json, &broken).expect("write");
    assert!(open_err(&bad_json).contains("json.safetensors"));

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"abc").expect("write");
    assert!(open_err(&tiny).contains("too short"));
}

#[test]
fn a_hostile_index_cannot_reach_outside_its_folder_or_misplace_tensors() {
    let (dir, _) = written();
    let sharded = dir.path().join("sharded");
    let escape = sharded.join("escape.index.json");
    std::fs::write(&escape, r#"{"weight_map": {"w": "../all.safetensors"}}"#).expect("write");
    let m = open_err(&escape);
    assert!(
        m.contains("`w`") && m.contains("inside the index's folder"),
        "{m}"
    );
    let absolute = sharded.join("absolute.index.json");
    std::fs::write(&absolute, r#"{"weight_map": {"w": "/etc/passwd"}}"#).expect("write");
    assert!(open_err(&absolute).contains("inside the index's folder"));
    let wrong = sharded.join("wrong.index.json");
    std::fs::write(
        &wrong,
        r#"{"weight_map": {"layers.1.0": "model-00002-of-00002.safetensors"}}"#,
    )
    .expect("write");
    let m = open_err(&wrong);
    assert!(
        m.contains("`layers.1.0`") && m.contains("does not hold it"),
        "{m}"
    );
    let not_index = sharded.join("plain.json");
    std::fs::write(&not_index, r#"{"a": 1}"#).expect("write");
    assert!(open_err(&not_index).contains("weight_map"));
    let empty = sharded.join("empty.index.json");
    std::fs::write(&empty, r#"{"weight_map": {}}"#).expect("write");
    assert!(open_err(&empty).contains("names no tensor"));
}

#[test]
fn direct_io_reads_the_same_bytes_or_says_why_it_could_not() {
    let (dir, manifest) = written();
    let ckpt = Checkpoint::open(dir.path().join("all.safetensors")).expect("open");
    let direct = LoadOptions {
        direct: Some(true),
        ..LoadOptions::default()
    };
    assert_holds(
        &ckpt,
        &direct,
        manifest["all.safetensors"]["tensors"]
            .as_object()
            .expect("tensors"),
    );
    let report = ckpt.load(&direct).expect("load").report().clone();
    // The file (8,399 bytes) ends inside a block: the last read must stop there, not retry at
    // the unaligned end. Where the file system takes O_DIRECT at all, the load must be direct.
    if supports_direct_io(dir.path()) {
        assert_eq!(report.path, LoadPath::Direct, "{report:?}");
        assert!(report.fallbacks.is_empty(), "{report:?}");
    } else {
        assert_eq!(report.path, LoadPath::Plain, "{report:?}");
        assert!(
            report.fallbacks[0].contains("O_DIRECT refused"),
            "{report:?}"
        );
    }
}

/// Returns true if and only if the file system of `dir` accepts an aligned `O_DIRECT` read.
fn supports_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join("probe-direct");
    std::fs::write(&path, vec![7u8; 8192]).expect("write");
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    else {
        return false;
    };
    // Anonymous memory is page-aligned, as O_DIRECT requires.
    let mut buf = memmap2::MmapMut::map_anon(4096).expect("page");
    file.read_at(&mut buf, 0).is_ok()
}

#[test]
fn pinned_and_gpu_loads_use_cuda_when_present_and_report_why_not_when_absent() {
    let (dir, manifest) = written();
    let path = dir.path().join("all.safetensors");
    let ckpt = Checkpoint::open(&path).expect("open");
    let pinned = LoadOptions {
        pinned: true,
        ..LoadOptions::default()
    };
    let host = ckpt
        .load(&pinned)
        .expect("a pinned request never fails for want of CUDA");
    let probe = larder::cuda::probe_for(&path);
    match larder::cuda::available() {
        Ok(()) => {
            assert_eq!(host.report().path, LoadPath::Pinned);
            assert!(host.buffers().iter().all(|b| b.is_pinned()));
            assert!(probe.driver_version.is_some() && probe.pinned_usable);
        }
        Err(why) => {
            assert_eq!(host.report().path, LoadPath::Plain);
            assert!(!host.buffers()[0].is_pinned());
            assert!(
                host.report().fallbacks[0].contains("pinned host memory unavailable"),
                "{:?}",
                host.report()
            );
            assert_eq!(
                probe.driver_error.as_deref(),
                Some(format!("CUDA: {why}").as_str())
            );
            assert!(!probe.pinned_usable && !probe.gds_usable && probe.devices.is_empty());
            assert!(
                probe.unavailable.iter().any(|u| u.starts_with("cufile: ")),
                "{probe:?}"
            );
            assert!(
                probe.unavailable.iter().any(|u| u.starts_with("pinned: ")),
                "{probe:?}"
            );
            match ckpt.load_to(0, &LoadOptions::default()) {
                Err(Error::Cuda { message }) => assert_eq!(message, why),
                other => panic!("a GPU load without CUDA must fail with the reason, got {other:?}"),
            }
        }
    }
    assert_holds(
        &ckpt,
        &pinned,
        manifest["all.safetensors"]["tensors"]
            .as_object()
            .expect("tensors"),
    );
}

#[test]
fn by_default_a_large_cold_file_is_read_direct_and_a_cached_one_through_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("large.safetensors");
    write_synthetic(&path, 65 << 20, 1).expect("write");
    let ckpt = Checkpoint::open(&path).expect("open");
    larder::fastload::evict(&path).expect("evict");
    let cold = ckpt.load(&LoadOptions::default()).expect("cold load");
    let expected = if supports_direct_io(dir.path()) {
        LoadPath::Direct
    } else {
        LoadPath::Plain
    };
    assert_eq!(cold.report().path, expected, "{:?}", cold.report());
    std::fs::read(&path).expect("read through the page cache");
    let warm = ckpt.load(&LoadOptions::default()).expect("warm load");
    assert_eq!(warm.report().path, LoadPath::Plain, "{:?}", warm.report());
    let name = "embed.weight";
    assert_eq!(
        cold.get(&ckpt, name).map(|t| t.data()),
        warm.get(&ckpt, name).map(|t| t.data())
    );
}
