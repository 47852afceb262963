//! Distributed prepare: parts prepared separately merge into exactly the store an unsharded
//! prepare writes; merges refuse parts that do not belong together, and finish when re-run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use larder::encode::Encoders;
use larder::load::{Loader, LoaderOptions};
use larder::{Config, Part, Prepare, PrepareOptions, PrepareReport, Store, merge_parts};

use crate::encode::{latent_encoders, text_encoders};
use crate::{file, image};

/// Two datasets: seven captioned images (two share a caption, one has a mask) at two
/// resolutions, repeated twice and flipped; three more at one resolution. Returns the config.
fn dataset(root: &Path, resolution: &str) -> PathBuf {
    let captions = [
        "a cat, red",
        "a dog",
        "a fish",
        "a fish",
        "a bird, small, green",
        "a cow",
        "a hen",
    ];
    for (i, caption) in captions.iter().enumerate() {
        let (w, h) = [(96, 64), (64, 96), (80, 80), (120, 60)][i % 4];
        let path = image(&root.join("a"), &format!("img{i}.png"), w, h, Some(caption));
        larder_synth::write_image(&path, w, h, 20 + i as u64).expect("distinct image");
    }
    image(&root.join("masks"), "img0.png", 96, 64, None);
    for i in 0..3 {
        image(
            &root.join("b"),
            &format!("b{i}.jpg"),
            72,
            72 + 8 * i,
            Some(&format!("b number {i}")),
        );
    }
    file(
        root,
        "c.yaml",
        &format!(
            "datasets:\n  - folder_path: a\n    resolution: {resolution}\n    num_repeats: 2\n    flip_x: true\n    mask_path: masks\n    shuffle_tokens: true\n  - folder_path: b\n    resolution: 64\nlarder:\n  divisibility: 16\n"
        ),
    )
}

fn options(part: Option<Part>) -> PrepareOptions {
    PrepareOptions {
        shard_bytes: 16 << 10,
        encode_batch_size: 4,
        caption_variants: 3,
        part,
        ..PrepareOptions::default()
    }
}

fn part(i: u32, n: u32) -> Option<Part> {
    Some(Part::new(i, n).expect("part"))
}

fn run(config: &Path, out: &Path, part: Option<Part>, encoders: &mut Encoders) -> PrepareReport {
    Prepare::new(&Config::load(config).expect("config"))
        .options(options(part))
        .encoders(encoders)
        .run(out)
        .expect("prepare")
}

/// Every item as the catalog records it, in id order: source, geometry, flip, repeat,
/// caption, item key, each field's entry key, and each text encoder's caption variants.
fn listing(store: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(store.join("catalog.sqlite")).expect("catalog");
    let text = |r: &rusqlite::Row<'_>, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("{:?}", r.get_ref(i).expect("column")))
            .collect()
    };
    let mut items = db
        .prepare(
            "SELECT id, dataset, path, resolution, bucket_w, bucket_h, scale_to_w, scale_to_h, crop_x, crop_y,
                    flip, repeat, caption, item_key FROM items ORDER BY id",
        )
        .expect("items");
    let rows: Vec<(i64, Vec<String>)> = items
        .query_map([], |r| Ok((r.get(0)?, text(r, 14))))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut fields = db
        .prepare("SELECT field, entry FROM item_fields WHERE item = ?1 ORDER BY field")
        .expect("fields");
    let mut variants = db
        .prepare(
            "SELECT v.encoder, v.variant, c.key, c.text FROM item_captions v JOIN captions c ON c.id = v.caption
             WHERE v.item = ?1 ORDER BY v.encoder, v.variant",
        )
        .expect("variants");
    rows.into_iter()
        .map(|(id, mut row)| {
            for stmt in [&mut fields, &mut variants] {
                let n = stmt.column_count();
                let more: Vec<Vec<String>> = stmt
                    .query_map([id], |r| Ok(text(r, n)))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows");
                row.extend(more.concat());
            }
            row.join(" ")
        })
        .collect()
}

/// Every text encoder's captions: (encoder, text, caption key).
fn captions(store: &Path) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open(store.join("catalog.sqlite")).expect("catalog");
    let mut stmt = db
        .prepare("SELECT encoder, text, key FROM captions ORDER BY id")
        .expect("captions");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The findings the catalog records (scan, plan, decode), sorted.
fn findings(store: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(store.join("catalog.sqlite")).expect("catalog");
    let mut stmt = db
        .prepare("SELECT dataset || ' ' || kind || ' ' || path || ' ' || detail FROM findings ORDER BY 1")
        .expect("findings");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Two epochs of batches: item keys, captions, and every field's bytes.
type Served = Vec<(Vec<String>, Vec<String>, BTreeMap<String, Vec<u8>>)>;

fn served(store: &Path) -> Served {
    let mut loader = Loader::new(
        Arc::new(Store::open(store).expect("open")),
        LoaderOptions {
            batch_size: 3,
            threads: 2,
            ..LoaderOptions::default()
        },
    )
    .expect("loader");
    let mut out = Vec::new();
    for _ in 0..2 {
        for batch in loader.by_ref() {
            let batch = batch.expect("batch");
            let fields = batch
                .fields
                .iter()
                .map(|(name, t)| (name.clone(), t.data.as_slice().to_vec()))
                .collect();
            out.push((batch.keys.clone(), batch.captions.clone(), fields));
        }
    }
    out
}

fn sound(store: &Path) {
    let report = Store::open(store).expect("open").verify().expect("verify");
    assert!(
        report.problems.is_empty() && report.strays.is_empty(),
        "{report:?}"
    );
}

fn error_of(result: larder::Result<larder::MergeReport>) -> String {
    result.expect_err("the merge is refused").to_string()
}

#[test]
fn parts_with_encoders_merge_into_the_store_an_unsharded_prepare_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "[64, 96]");
    let encoders = |images: &Arc<AtomicUsize>, captions: &Arc<AtomicUsize>| {
        let mut e = latent_encoders("patch-vae", images);
        e.text = text_encoders(captions).text;
        e
    };
    let whole = dir.path().join("whole");
    let (images, texts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let unsharded = run(&config, &whole, None, &mut encoders(&images, &texts));

    let out = dir.path().join("store");
    let (part_images, part_texts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut items = 0;
    for i in 0..3 {
        let report = run(
            &config,
            &out,
            part(i, 3),
            &mut encoders(&part_images, &part_texts),
        );
        assert!(report.items > 0, "part {i} got items: {report:?}");
        items += report.items;
        assert!(out.join(format!("parts/{i}-of-3/catalog.sqlite")).is_file());
    }
    assert_eq!(items, unsharded.items);
    assert!(
        !out.join("catalog.sqlite").exists(),
        "parts do not write the store itself"
    );
    // An image's repeats and flips go to one part: no latent is computed twice.
    assert_eq!(
        part_images.load(Ordering::SeqCst),
        images.load(Ordering::SeqCst)
    );
    // Captions: each part encodes the empty caption and its own items' captions.
    assert!(part_texts.load(Ordering::SeqCst) >= texts.load(Ordering::SeqCst));

    let report = merge_parts(&out, &[]).expect("merge");
    assert_eq!((report.parts, report.items), (3, unsharded.items));
    assert_eq!(report.shards_moved, report.shards);
    // The empty caption at least is in every part.
    assert!(report.duplicate_entries >= 2 * 2, "{report:?}");
    assert!(!out.join("parts").exists());

    sound(&out);
    assert_eq!(listing(&out), listing(&whole));
    assert_eq!(captions(&out), captions(&whole));
    let noted = findings(&out);
    assert!(
        noted.iter().any(|f| f.contains("missing_mask")),
        "{noted:?}"
    );
    assert_eq!(noted, findings(&whole));
    let (merged, reference) = (
        Store::open(&out).expect("open"),
        Store::open(&whole).expect("open"),
    );
    let merged_items = merged.items().expect("items");
    assert_eq!(merged_items, reference.items().expect("items"));
    for item in &merged_items {
        assert!(item.fields.contains_key("latent"), "{item:?}");
        for field in item.fields.keys() {
            assert_eq!(
                merged.read_field(item, field).expect("merged"),
                reference.read_field(item, field).expect("reference"),
                "item {} field {field}",
                item.id
            );
        }
    }
    for (_, _, key) in captions(&whole) {
        for output in ["embeds", "pooled"] {
            let key = format!("{key}.{output}");
            assert_eq!(
                merged.read_entry(&key).expect("merged"),
                reference.read_entry(&key).expect("reference")
            );
        }
    }
    let (a, b) = (
        merged.inspect().expect("inspect"),
        reference.inspect().expect("inspect"),
    );
    assert_eq!(
        (a.items, &a.buckets, &a.encoders),
        (b.items, &b.buckets, &b.encoders)
    );
    assert_eq!(a.config_digest, b.config_digest);
    // The merged store records the parts' caption recipes, as an unsharded prepare does.
    let recorded = rusqlite::Connection::open(out.join("catalog.sqlite"))
        .and_then(|db| {
            db.query_row(
                "SELECT count(*) FROM datasets WHERE caption_recipe IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .expect("catalog");
    assert_eq!(recorded, 2);
    let batches = served(&out);
    assert!(
        batches
            .iter()
            .any(|(_, _, f)| f.contains_key("text.embeds"))
    );
    assert!(batches.iter().any(|(_, _, f)| f.contains_key("latent")));
    assert_eq!(batches, served(&whole));
}

#[test]
fn a_part_prepared_twice_does_nothing_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "64");
    let out = dir.path().join("store");
    let first = run(&config, &out, part(1, 3), &mut Encoders::default());
    assert!(first.entries_computed > 0, "{first:?}");
    let again = run(&config, &out, part(1, 3), &mut Encoders::default());
    assert_eq!(
        (
            again.items,
            again.entries_computed,
            again.shards_written,
            again.sources_hashed
        ),
        (first.items, 0, 0, 0)
    );
    // `0/1` is no split: the store itself.
    run(&config, &out, part(0, 1), &mut Encoders::default());
    assert!(out.join("catalog.sqlite").is_file());
}

#[test]
fn merge_refuses_missing_unfinished_and_mismatched_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "64");
    let other = dataset(&dir.path().join("other"), "96");
    let out = dir.path().join("store");
    for i in [0, 2] {
        run(&config, &out, part(i, 3), &mut Encoders::default());
    }
    let err = error_of(merge_parts(&out, &[]));
    assert!(err.contains("1/3 missing"), "{err}");

    // A part whose prepare never finished (no catalog, or no marker) is named.
    std::fs::create_dir_all(out.join("parts/1-of-3")).expect("mkdir");
    let err = error_of(merge_parts(&out, &[]));
    assert!(
        err.contains("1-of-3") && err.contains("not finished"),
        "{err}"
    );

    // A part of another config.
    run(&other, &out, part(1, 3), &mut Encoders::default());
    let err = error_of(merge_parts(&out, &[]));
    assert!(err.contains("config digest"), "{err}");
    run(&config, &out, part(1, 3), &mut Encoders::default());

    // Parts of another split next to them, and parts named explicitly from two splits.
    run(&config, &out, part(0, 2), &mut Encoders::default());
    let err = error_of(merge_parts(&out, &[]));
    assert!(err.contains("splits into"), "{err}");
    let err = error_of(merge_parts(
        &out,
        &[out.join("parts/0-of-2"), out.join("parts/1-of-3")],
    ));
    assert!(err.contains("split differently"), "{err}");
    std::fs::remove_dir_all(out.join("parts/0-of-2")).expect("remove");

    // A store of another config in the target folder.
    run(&other, &out, None, &mut Encoders::default());
    let err = error_of(merge_parts(&out, &[]));
    assert!(err.contains("another config"), "{err}");
    // Nothing was touched: after the foreign store goes, the merge succeeds.
    std::fs::remove_file(out.join("catalog.sqlite")).expect("remove catalog");
    let report = merge_parts(&out, &[]).expect("merge");
    assert_eq!(report.parts, 3);
    sound(&out);
    let err = error_of(merge_parts(&out, &[]));
    assert!(err.contains("merged from 3 parts already"), "{err}");
}

/// Copies the folder `from` to `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn an_interrupted_merge_run_again_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "64");
    let whole = dir.path().join("whole");
    run(&config, &whole, None, &mut Encoders::default());
    let out = dir.path().join("store");
    for i in 0..3 {
        run(&config, &out, part(i, 3), &mut Encoders::default());
    }
    // As a merge killed while moving shards leaves it: half of every part's shards moved,
    // and a half-written merged catalog.
    std::fs::create_dir_all(out.join("shards")).expect("mkdir");
    std::fs::create_dir_all(out.join("tmp")).expect("mkdir");
    let mut moved = 0;
    for i in 0..3 {
        let shards = out.join(format!("parts/{i}-of-3/shards"));
        let mut files: Vec<_> = std::fs::read_dir(&shards)
            .expect("shards")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files.iter().step_by(2) {
            std::fs::rename(f, out.join("shards").join(f.file_name().expect("name")))
                .expect("move");
            moved += 1;
        }
    }
    assert!(moved >= 3);
    std::fs::write(out.join("tmp/catalog.merging.sqlite"), b"half a catalog").expect("write");
    let parts = dir.path().join("parts-copy");
    copy_tree(&out.join("parts"), &parts);
    let report = merge_parts(&out, &[]).expect("merge again");
    assert_eq!(report.shards_moved, report.shards - moved);
    sound(&out);
    assert_eq!(listing(&out), listing(&whole));

    // Killed after the merged catalog was put in place, before the parts were removed.
    std::fs::rename(&parts, out.join("parts")).expect("restore parts");
    let report = merge_parts(&out, &[]).expect("merge again");
    assert_eq!(report.shards_moved, 0);
    assert!(!out.join("parts").exists());
    sound(&out);
    assert_eq!(listing(&out), listing(&whole));

    // Killed after the merged catalog was in place, while removing the parts: run again, it
    // clears what is left and says the store is merged.
    std::fs::create_dir_all(out.join(".parts-merged/2-of-3")).expect("mkdir");
    let err = error_of(merge_parts(&out, &[]));
    assert!(err.contains("merged from 3 parts already"), "{err}");
    assert!(!out.join(".parts-merged").exists());
    sound(&out);
}

#[test]
fn parts_named_explicitly_merge_and_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "64");
    let whole = dir.path().join("whole");
    run(&config, &whole, None, &mut Encoders::default());
    // Parts written elsewhere (as on other machines' disks), merged into a new folder.
    let parts: Vec<PathBuf> = (0..2)
        .map(|i| {
            let somewhere = dir.path().join(format!("machine{i}"));
            run(&config, &somewhere, part(i, 2), &mut Encoders::default());
            somewhere.join(format!("parts/{i}-of-2"))
        })
        .collect();
    let out = dir.path().join("merged");
    let report = merge_parts(&out, &parts).expect("merge");
    assert_eq!(report.parts, 2);
    assert!(parts.iter().all(|p| !p.exists()));
    sound(&out);
    assert_eq!(listing(&out), listing(&whole));
    assert_eq!(served(&out), served(&whole));
    // A whole prepare of the same config over the merged store finds everything stored.
    let again = run(&config, &out, None, &mut Encoders::default());
    assert_eq!(
        (
            again.entries_computed,
            again.shards_written,
            again.sources_hashed
        ),
        (0, 0, 0)
    );
    assert_eq!(listing(&out), listing(&whole));
}
