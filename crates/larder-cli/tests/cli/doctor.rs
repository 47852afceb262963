//! `larder doctor`: its rows against what standard tools report, with and without a store.

use std::process::Command;

use crate::{larder, s, sample_config};

fn checks(out: &std::process::Output) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // The exit code follows the worst status: 1 exactly when a check fails.
    let failed = v["worst"] == "fail";
    assert_eq!(out.status.code(), Some(i32::from(failed)), "{v}");
    v["checks"].as_array().expect("checks").clone()
}

fn row<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} row in {checks:?}"))
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn doctor_reports_the_machine_as_df_and_ulimit_see_it() {
    let out = larder(&["doctor", "--json"]);
    let checks = checks(&out);
    for name in [
        "memory",
        "/dev/shm",
        "open files",
        "free disk",
        "NVIDIA driver",
        "GPU devices",
        "GPUDirect Storage",
    ] {
        let c = row(&checks, name);
        assert!(["ok", "info", "warn", "fail"].contains(&c["status"].as_str().expect("status")));
    }
    // The open-file limit is the shell's `ulimit -n` (a child inherits it).
    let soft = sh("ulimit -n");
    let detail = row(&checks, "open files")["detail"]
        .as_str()
        .expect("detail");
    assert!(
        detail.starts_with(&format!("soft limit {soft},")),
        "{detail} vs {soft}"
    );
    // /dev/shm's size as df reports it, in the same units.
    let size: u64 = sh("df --output=size -B1 /dev/shm | tail -1")
        .parse()
        .expect("df size");
    let detail = row(&checks, "/dev/shm")["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(&larder::diagnose::human(size)),
        "{detail} vs {size}"
    );
    // Without a GPU driver, GPUDirect Storage is unavailable with its reasons.
    if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        let gds = row(&checks, "GPUDirect Storage");
        assert!(
            gds["detail"]
                .as_str()
                .expect("detail")
                .starts_with("unavailable: ")
        );
    }
}

#[test]
fn doctor_tests_a_stores_disk_and_page_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let prep = larder(&["prepare", s(&sample_config()), "--out", s(&store)]);
    assert!(prep.status.success(), "{prep:?}");
    let out = larder(&["doctor", "--store", s(&store), "--json"]);
    let checks = checks(&out);
    let read = row(&checks, "sequential read");
    assert_eq!(read["status"], "ok", "{read}");
    assert!(
        read["detail"]
            .as_str()
            .expect("detail")
            .contains(" MB/s reading ")
    );
    let hit = row(&checks, "page-cache hit test");
    assert_eq!(hit["status"], "ok", "{hit}");
    assert!(
        row(&checks, "store in page cache")["detail"]
            .as_str()
            .expect("detail")
            .contains("of the store's 1 shards")
    );
    // The plain report shows the same rows, with advice lines under them.
    let out = larder(&["doctor", "--store", s(&store)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("page-cache hit test"), "{text}");
}

#[test]
fn doctor_with_a_folder_that_is_no_store_fails() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = larder(&["doctor", "--store", s(tmp.path()), "--json"]);
    let checks = checks(&out);
    assert_eq!(row(&checks, "store")["status"], "fail");
    assert_eq!(out.status.code(), Some(1));
}
