//! `larder load-bench`: a generated checkpoint, timed by every host path.

use crate::{larder, s};

#[test]
fn load_bench_generates_a_checkpoint_and_times_each_host_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gen.safetensors");
    let out = larder(&[
        "load-bench",
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
    let bad = larder(&["load-bench", s(&file), "--device", "tpu"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--device must be cpu or cuda:N"));
}
