//! `prepare --out s3://…`, `inspect`, `verify`, `bench`, `push`, `pull` and `gc` against the S3
//! server that scripts/test starts (its endpoint and credentials come in `AWS_*`).

use std::path::Path;
use std::process::{Command, Output};

use crate::{s, sample_config};

/// Runs larder with its remote cache in `cache`.
fn larder(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .env("LARDER_CACHE_DIR", cache)
        .output()
        .expect("run larder")
}

/// A fresh prefix in the test bucket, so runs and tests never see each other's objects.
fn fresh_url(name: &str) -> String {
    let bucket = std::env::var("LARDER_TEST_S3_URL").expect(
        "LARDER_TEST_S3_URL (and AWS_ENDPOINT_URL with credentials) must name the test S3 server: run scripts/test, which starts it",
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{bucket}/cli/{name}-{}-{nanos}", std::process::id())
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_sample_prepared_into_s3_is_inspected_verified_served_and_pulled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let url = fresh_url("sample");
    let config = sample_config();
    ok(&larder(
        &cache,
        &["prepare", s(&config), "--out", &url, "--shard-size", "1MiB"],
    ));

    let inspected = ok(&larder(&cache, &["inspect", &url]));
    assert!(inspected.contains(&format!("store {url}")), "{inspected}");
    let verified = ok(&larder(&cache, &["verify", &url, "--json"]));
    let report: serde_json::Value = serde_json::from_str(&verified).expect("json");
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert!(report["shards"].as_u64() > Some(0));

    let bench = ok(&larder(&cache, &["bench", &url, "--epochs", "2", "--json"]));
    let bench: serde_json::Value = serde_json::from_str(&bench).expect("json");
    assert!(bench["samples"].as_u64() > Some(0), "{bench}");
    assert!(
        bench["cache_hits"].as_u64() > Some(0),
        "the second epoch reads the cache: {bench}"
    );

    let pulled = dir.path().join("pulled");
    ok(&larder(&cache, &["pull", &url, s(&pulled)]));
    ok(&larder(&cache, &["verify", s(&pulled)]));
    let copy = fresh_url("copy");
    let pushed = ok(&larder(&cache, &["push", s(&pulled), &copy, "--json"]));
    let pushed: serde_json::Value = serde_json::from_str(&pushed).expect("json");
    assert!(pushed["shards_uploaded"].as_u64() > Some(0), "{pushed}");
    ok(&larder(&cache, &["verify", &copy]));

    let gc = larder(&cache, &["gc", &url]);
    assert!(!gc.status.success());
    assert!(
        String::from_utf8_lossy(&gc.stderr).contains("larder pull"),
        "{gc:?}"
    );
}

#[test]
fn a_url_with_no_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = larder(dir.path(), &["inspect", &fresh_url("nothing")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("catalog.sqlite") && err.contains("not a larder store"),
        "{err}"
    );
}
