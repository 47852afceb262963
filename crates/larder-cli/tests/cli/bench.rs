//! `larder bench`: what its report says about one epoch and about short buckets.

use std::path::{Path, PathBuf};

use crate::{larder, s};

/// A store of 5 landscape and 2 portrait images (two buckets, of 5 and 2 items) prepared at
/// resolution 64 with the CLI.
fn store(root: &Path) -> PathBuf {
    let imgs = root.join("imgs");
    std::fs::create_dir_all(&imgs).expect("mkdir");
    for i in 0..7u64 {
        // At resolution 64 these fall in buckets 80x48 and 48x80.
        let (w, h) = if i < 5 { (128, 64) } else { (64, 128) };
        larder_synth::write_image(&imgs.join(format!("img{i}.png")), w, h, i).expect("image");
    }
    let config = root.join("c.yaml");
    std::fs::write(
        &config,
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n",
    )
    .expect("config");
    let store = root.join("store");
    let out = larder(&["prepare", s(&config), "--out", s(&store)]);
    assert!(
        out.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    store
}

fn stdout(args: &[&str]) -> String {
    let out = larder(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn bench_says_how_many_samples_topped_up_short_buckets_and_that_one_epoch_has_no_switch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path());
    let store = s(&store);

    // Batches of 4: the bucket of 5 ends with 1 item and 3 repeats, the bucket of 2 has 2
    // items and 2 repeats.
    let text = stdout(&["bench", store, "--epochs", "1", "--batch-size", "4"]);
    assert!(text.contains("epoch switch n/a (one epoch)"), "{text}");
    assert!(
        text.contains("repeats: 5 of the 12 samples were items already served in their epoch"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&[
        "bench",
        store,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--json",
    ]))
    .expect("one JSON document");
    assert_eq!(
        (json["samples"].as_u64(), json["repeated_samples"].as_u64()),
        (Some(24), Some(10))
    );

    // Two epochs have one switch, measured; batches of 1 repeat nothing.
    let text = stdout(&["bench", store, "--epochs", "2", "--batch-size", "1"]);
    let switch = text
        .split("epoch switch ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .unwrap_or_else(|| panic!("no epoch switch in {text}"));
    assert!(switch.parse::<f64>().is_ok(), "{switch:?} in {text}");
    assert!(!text.contains("repeats"), "{text}");
}
