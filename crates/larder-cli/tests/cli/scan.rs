//! The `larder` binary, run as users run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn larder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .output()
        .expect("run larder")
}

fn sample_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample/config.yaml")
}

#[test]
fn scan_prints_the_summary_of_the_sample_dataset() {
    let out = larder(&["scan", sample_config().to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "divisibility 32 (model flux)",
        "bucket",
        "total              36",
        "Truncated (left out): 1",
        "captions: 17 of 18",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn scan_json_has_one_record_per_planned_item() {
    let out = larder(&[
        "scan",
        "--json",
        sample_config().to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let items = doc["items"].as_array().expect("items");
    assert_eq!(items.len(), 36);
    assert_eq!(doc["items_total"], 36);
    for key in [
        "path",
        "width",
        "height",
        "resolution",
        "bucket_w",
        "bucket_h",
        "scale_to_w",
        "scale_to_h",
        "crop_x",
        "crop_y",
        "flip",
        "caption",
    ] {
        assert!(
            items[0].get(key).is_some(),
            "item lacks {key}: {}",
            items[0]
        );
    }
    let rotated = items
        .iter()
        .find(|i| {
            i["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("phone_rotated.jpg"))
        })
        .expect("rotated");
    assert_eq!(
        (rotated["width"].as_u64(), rotated["height"].as_u64()),
        (Some(480), Some(640))
    );
    assert_eq!(
        doc["findings"]["truncated"].as_array().map(Vec::len),
        Some(1)
    );
    let shares: f64 = doc["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(|b| b["share"].as_f64())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9);
}

#[test]
fn scan_accepts_a_bare_folder() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample/images");
    let out = larder(&["scan", "--json", folder.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["divisibility"], 16);
    assert_eq!(doc["items_total"], 18);
}

#[test]
fn an_unusable_config_fails_with_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "datasets:\n  - folder_path: .\n    resolution: [512, huge]\n",
    )
    .expect("write");
    let out = larder(&["scan", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3")
            && err.contains("datasets[0].resolution")
            && err.contains("huge"),
        "{err}"
    );
}

#[test]
fn ignored_keys_are_warned_about_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.yaml");
    std::fs::write(
        &path,
        "datasets:\n  - folder_path: .\n    augments: [ColorJitter]\n",
    )
    .expect("write");
    let out = larder(&["scan", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("augments") && err.contains("w.yaml:3"),
        "{err}"
    );
}

/// Runs `larder args` with its standard output a real pipe whose reading end is closed
/// before the command starts (as in `larder scan --json | head -c 0`); returns its output.
pub fn with_stdout_closed(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .stdout(writer)
        .output()
        .expect("run larder")
}

#[test]
fn scan_into_a_closed_pipe_ends_quietly_with_status_0() {
    let config = sample_config();
    let config = config.to_str().expect("utf-8 path");
    for args in [vec!["scan", "--json", config], vec!["scan", config]] {
        let out = with_stdout_closed(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}
