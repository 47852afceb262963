//! `larder diagnose`: the breakdown of the sample, measured on its store, and its errors.

use crate::{larder, s, sample_config};

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn diagnose_plans_the_sample_with_its_model_family() {
    let out = larder(&[
        "diagnose",
        s(&sample_config()),
        "--batch-size",
        "2",
        "--ram-gb",
        "64",
        "--json",
    ]);
    let v = json(&out);
    let e = &v["estimate"];
    // The sample's job file names `arch: flux` and caches latents to disk.
    assert_eq!(e["family"], "flux");
    assert_eq!(e["batch_size"], 2);
    let fields: Vec<&str> = e["workload"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert!(fields.contains(&"latent"), "{fields:?}");
    // num_workers: 2 in the sample: two workers, neither holding Flux's 33.7 GB of weights.
    assert_eq!(e["dataloader"]["workers"], 2);
    assert!(e["dataloader"].get("model_per_worker").is_none());
    assert!(e["dataloader"]["per_worker"].as_u64().expect("per worker") < 1_000_000_000);
    assert_eq!(v["ram"], 64_000_000_000u64);
    let rules: Vec<&str> = v["advice"]
        .as_array()
        .expect("advice")
        .iter()
        .map(|a| a["rule"].as_str().expect("rule"))
        .collect();
    assert!(rules.contains(&"worker-memory"), "{rules:?}");
}

#[test]
fn diagnose_measures_a_prepared_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let prep = larder(&["prepare", s(&sample_config()), "--out", s(&store)]);
    assert!(prep.status.success(), "{prep:?}");
    let out = larder(&[
        "diagnose",
        s(&store),
        "--model",
        "sdxl",
        "--measure",
        "--batch-size",
        "2",
        "--json",
    ]);
    let v = json(&out);
    let m = &v["measurement"];
    assert!(m["batches"].as_u64().expect("batches") > 0);
    assert!(m["after"]["rss"].as_u64() > m["before"]["rss"].as_u64());
    let rows = v["comparison"].as_array().expect("comparison");
    assert_eq!(rows.len(), 4);
    // The mapped store is the bulk of what the loader adds, and the estimate knows its size
    // from the store: within 15% of what /proc reports.
    let mapped = &rows[1];
    assert!(
        mapped["error_percent"].as_f64().expect("error").abs() < 15.0,
        "{mapped}"
    );
    // The plain report shows the same comparison as a table.
    let out = larder(&["diagnose", s(&store), "--measure"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RSS added by the loader"), "{text}");
    assert!(text.contains("page cache held"), "{text}");
}

#[test]
fn diagnose_errors_name_what_is_missing() {
    let out = larder(&["diagnose", s(&sample_config()), "--measure"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--measure serves a prepared store"), "{err}");
    let out = larder(&["diagnose", s(&sample_config()), "--model", "dalle"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model family \"dalle\""), "{err}");
    assert!(err.contains("qwen-image"), "{err}");
}
