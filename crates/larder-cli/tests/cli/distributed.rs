//! `larder prepare --shard` in several processes at once, under torchrun's variables, and
//! `larder merge`, as users run them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use larder::Store;
use larder::load::{Loader, LoaderOptions};

use crate::{larder, s};

/// Nine captioned images of three sizes, planned at two resolutions, repeated and flipped.
fn dataset(root: &Path) -> PathBuf {
    let imgs = root.join("imgs");
    std::fs::create_dir_all(&imgs).expect("mkdir");
    for i in 0..9 {
        let (w, h) = [(96, 64), (64, 96), (80, 80)][i % 3];
        larder_synth::write_image(&imgs.join(format!("img{i}.png")), w, h, i as u64)
            .expect("image");
        std::fs::write(
            imgs.join(format!("img{i}.txt")),
            format!("caption {}", i % 4),
        )
        .expect("caption");
    }
    let config = root.join("c.yaml");
    std::fs::write(
        &config,
        "datasets:\n  - folder_path: imgs\n    resolution: [64, 96]\n    num_repeats: 2\n    flip_x: true\nlarder:\n  divisibility: 16\n",
    )
    .expect("config");
    config
}

/// Each item's source, bucket, crop, flip, item key, caption and field entries, in id order.
fn listing(store: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(store.join("catalog.sqlite")).expect("catalog");
    let mut stmt = db
        .prepare(
            "SELECT path || ' ' || bucket_w || 'x' || bucket_h || ' ' || crop_x || ',' || crop_y || ' '
                    || flip || ' ' || item_key || ' ' || caption || ' '
                    || (SELECT group_concat(field || '=' || entry, ' ') FROM item_fields WHERE item = items.id)
             FROM items ORDER BY id",
        )
        .expect("items");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// A batch as compared: item keys and every field's bytes.
type Served = (Vec<String>, BTreeMap<String, Vec<u8>>);

/// One epoch of batches for seed 3.
fn served(store: &Path) -> Vec<Served> {
    let store = Arc::new(Store::open(store).expect("open"));
    let mut options = LoaderOptions {
        batch_size: 4,
        threads: 2,
        ..LoaderOptions::default()
    };
    options.order.seed = 3;
    Loader::new(store, options)
        .expect("loader")
        .map(|b| {
            let b = b.expect("batch");
            let fields = b
                .fields
                .iter()
                .map(|(name, t)| (name.clone(), t.data.as_slice().to_vec()))
                .collect();
            (b.keys, fields)
        })
        .collect()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn prepare_command(config: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.args([
        "prepare",
        s(config),
        "--out",
        s(out),
        "--shard-size",
        "16KiB",
    ])
    .env_remove("RANK")
    .env_remove("WORLD_SIZE");
    cmd
}

#[test]
fn three_processes_prepare_parts_at_once_and_the_merge_equals_an_unsharded_prepare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    let children: Vec<_> = (0..3)
        .map(|i| {
            prepare_command(&config, &out)
                .args(["--shard", &format!("{i}/3")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let printed = ok(&child.wait_with_output().expect("wait"));
        assert!(printed.contains("larder merge"), "{printed}");
    }
    let whole = dir.path().join("whole");
    ok(&prepare_command(&config, &whole).output().expect("run"));

    let report: serde_json::Value =
        serde_json::from_str(&ok(&larder(&["merge", s(&out), "--json"]))).expect("json");
    assert_eq!(report["parts"], 3);
    let (merged, reference) = (
        Store::open(&out).expect("open"),
        Store::open(&whole).expect("open"),
    );
    let items = merged.items().expect("items");
    assert_eq!(
        items.len(),
        9 * 2 * 2 * 2,
        "9 images, 2 resolutions, 2 repeats, flipped"
    );
    assert_eq!(items, reference.items().expect("items"));
    assert_eq!(listing(&out), listing(&whole));
    for item in &items {
        for field in item.fields.keys() {
            assert_eq!(
                merged.read_field(item, field).expect("merged"),
                reference.read_field(item, field).expect("reference")
            );
        }
    }
    let batches = served(&out);
    assert_eq!(batches.len(), 72 / 4);
    assert_eq!(batches, served(&whole));
    let verified = ok(&larder(&["verify", s(&out)]));
    assert!(verified.contains("0 problems"), "{verified}");
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&larder(&["inspect", s(&out), "--json"]))).expect("json");
    assert_eq!(inspected["items"], items.len());
    assert!(!out.join("parts").exists());
}

#[test]
fn torchrun_variables_choose_the_part() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    let run = prepare_command(&config, &out)
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .output()
        .expect("run");
    ok(&run);
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("part 1/2"), "{said}");
    assert!(out.join("parts/1-of-2/catalog.sqlite").is_file());
    assert!(!out.join("catalog.sqlite").exists());
    // The other rank, then the merge: a complete store.
    ok(&prepare_command(&config, &out)
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .output()
        .expect("run"));
    ok(&larder(&["merge", s(&out)]));
    assert_eq!(
        Store::open(&out)
            .expect("open")
            .items()
            .expect("items")
            .len(),
        72
    );
    // WORLD_SIZE=1 is no split: the store itself.
    let single = dir.path().join("single");
    ok(&prepare_command(&config, &single)
        .env("RANK", "0")
        .env("WORLD_SIZE", "1")
        .output()
        .expect("run"));
    assert!(single.join("catalog.sqlite").is_file());
}

#[test]
fn bad_shards_and_missing_parts_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    for (shard, says) in [
        ("3/3", "0..=2"),
        ("x", "not a part like 0/4"),
        ("1/0", "below"),
    ] {
        let run = prepare_command(&config, &out)
            .args(["--shard", shard])
            .output()
            .expect("run");
        assert!(!run.status.success(), "--shard {shard} accepted");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(said.contains(says), "--shard {shard}: {said}");
    }
    let bad_env = prepare_command(&config, &out)
        .env("RANK", "2")
        .env("WORLD_SIZE", "2")
        .output()
        .expect("run");
    assert!(!bad_env.status.success());
    assert!(!out.join("parts").exists(), "nothing written for bad parts");

    ok(&prepare_command(&config, &out)
        .args(["--shard", "0/2"])
        .output()
        .expect("run"));
    let merge = larder(&["merge", s(&out)]);
    assert_eq!(merge.status.code(), Some(2));
    let said = String::from_utf8_lossy(&merge.stderr);
    assert!(
        said.contains("1/2 missing") && said.contains("--shard i/2"),
        "{said}"
    );
}
