//! `larder import-aitk` and `larder bench-encode` as users run them.

use crate::{larder, s, sample_config};

#[test]
fn import_aitk_without_caches_prepares_the_store_and_counts_every_item_as_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("store");
    let run = larder(&[
        "import-aitk",
        s(&sample_config()),
        "--out",
        s(&out),
        "--json",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    let items = report["prepare"]["items"].as_u64().expect("items");
    assert!(items > 0);
    for kind in ["latents", "texts", "clip"] {
        assert_eq!(
            report[kind]["missing"].as_u64(),
            Some(items),
            "{kind}: {report}"
        );
        assert_eq!(report[kind]["imported"].as_u64(), Some(0));
    }
    assert!(report["arch"].is_null());
    let text = larder(&["import-aitk", s(&sample_config()), "--out", s(&out)]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("latents") && stdout.contains("without a cache"),
        "{stdout}"
    );
}

#[test]
fn a_bad_codec_or_a_zero_count_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("store");
    let run = larder(&[
        "import-aitk",
        s(&sample_config()),
        "--out",
        s(&out),
        "--latent-codec",
        "u9",
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("u9"));
}
