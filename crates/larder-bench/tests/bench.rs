//! `larder-bench`, run as a developer runs it: each benchmark prints larder's figures beside its
//! peer's, and refuses arguments it cannot measure with.

use std::path::Path;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder-bench"))
        .args(args)
        .output()
        .expect("run larder-bench")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn fastload_generates_a_checkpoint_and_times_each_host_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gen.safetensors");
    let out = bench(&[
        "fastload",
        s(&file),
        "--generate",
        "2M",
        "--runs",
        "1",
        "--warm-only",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&file).map(|m| m.len() >> 20).ok(),
        Some(2)
    );
    for row in [
        "larder (default",
        "larder plain (page cache)",
        "larder direct (O_DIRECT)",
    ] {
        assert!(text.contains(row), "no row {row:?} in:\n{text}");
    }
    // Without CUDA the pinned path is listed as unavailable, with the reason.
    if !text.contains("larder pinned") {
        assert!(
            text.contains("unavailable: larder pinned: CUDA: "),
            "{text}"
        );
    }
    let bad = bench(&["fastload", s(&file), "--device", "tpu"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--device must be cpu or cuda:N"));
}

#[test]
fn metrics_prints_each_output_beside_the_goal() {
    let out = bench(&["metrics", "--steps", "2000", "--runs", "1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = report["rows"].as_array().expect("rows");
    assert!(rows.len() >= 2, "{report}");
    for row in rows {
        assert!(
            row["us_per_step"].as_f64().is_some_and(|us| us > 0.0),
            "{row}"
        );
    }
}

#[test]
fn a_zero_run_count_is_refused_with_the_reason() {
    let run = bench(&["encode", "--runs", "0"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--runs"));
}

/// Runs `larder` (built beside `larder-bench` by `cargo test --workspace`).
fn larder(args: &[&str]) -> Output {
    let exe = Path::new(env!("CARGO_BIN_EXE_larder-bench")).with_file_name("larder");
    Command::new(&exe).args(args).output().unwrap_or_else(|e| {
        panic!(
            "run {}: {e} (build the workspace: cargo test --workspace)",
            exe.display()
        )
    })
}

#[test]
fn remote_serves_one_store_locally_and_from_s3_cold_and_warm() {
    let bucket = std::env::var("LARDER_TEST_S3_URL").expect(
        "LARDER_TEST_S3_URL (and AWS_ENDPOINT_URL with credentials) must name the test S3 server: run scripts/test, which starts it",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sample/config.yaml");
    let prepared = larder(&["prepare", s(&config), "--out", s(&store)]);
    assert!(
        prepared.status.success(),
        "{}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let url = format!("{bucket}/bench/remote-{}", std::process::id());
    let out = bench(&["remote", s(&store), &url, "--epochs", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for run in ["local_cold", "remote_cold", "local_warm", "remote_warm"] {
        assert!(
            report[run]["samples_per_s"].as_f64() > Some(0.0),
            "{report}"
        );
    }
    assert_eq!(report["local_warm"]["epochs"], 2);
    // Everything the cold remote run served was fetched; the local runs fetch nothing.
    assert!(
        report["remote_cold"]["cache_misses"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(report["local_cold"]["cache_misses"], 0);
    assert!(report["warm_vs_local"].as_f64() > Some(0.0));
}
