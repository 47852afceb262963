//! Prepare and the store: keys that recompute exactly what changed, findings, verify, gc.

use std::path::Path;

use larder::{Config, FieldData, PrepareOptions, PrepareReport, Store, prepare};

use crate::{file, image};

fn options() -> PrepareOptions {
    PrepareOptions {
        shard_bytes: 16 << 10,
        ..PrepareOptions::default()
    }
}

/// Returns true if and only if `larder verify` finds nothing wrong with the store.
fn sound(out: &Path) -> bool {
    Store::open(out)
        .expect("open")
        .verify()
        .expect("verify")
        .problems
        .is_empty()
}

fn run(config: &Path, out: &Path) -> PrepareReport {
    prepare(&Config::load(config).expect("config"), out, &options()).expect("prepare")
}

/// A dataset of four images, one with a mask and a control image.
fn dataset(root: &Path) -> std::path::PathBuf {
    let imgs = root.join("imgs");
    image(&imgs, "a.jpg", 96, 64, Some("a cat"));
    image(&imgs, "b.png", 64, 96, Some("a dog"));
    image(&imgs, "c.webp", 80, 80, Some("a bird"));
    image(&imgs, "d.jpg", 120, 40, Some("a fish"));
    image(&root.join("masks"), "a.png", 96, 64, None);
    image(&root.join("ctl"), "a.jpg", 48, 32, None);
    file(
        root,
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n    mask_path: masks\n    control_path: ctl\nlarder:\n  divisibility: 16\n",
    )
}

#[test]
fn prepare_stores_pixels_in_bucket_geometry_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    let report = run(&config, &out);
    // 4 pixels + 1 mask + 1 control.
    assert_eq!(
        (report.items, report.entries, report.entries_computed),
        (4, 6, 6)
    );
    assert!(report.shards_written >= 3, "16 KiB shards: {report:?}");
    let store = Store::open(&out).expect("open");
    assert!(store.verify().expect("verify").problems.is_empty());
    let items = store.items().expect("items");
    let a = items
        .iter()
        .find(|i| i.path.ends_with("a.jpg"))
        .expect("a.jpg");
    assert_eq!(a.caption, "a cat");
    assert_eq!(
        a.fields.keys().collect::<Vec<_>>(),
        vec!["control.0", "mask", "pixels"]
    );
    for (field, channels) in [("pixels", 3), ("mask", 1), ("control.0", 3)] {
        match store.read_field(a, field).expect("read") {
            FieldData::U8 { values, shape } => {
                assert_eq!(
                    shape,
                    vec![channels, a.bucket_h as usize, a.bucket_w as usize],
                    "{field}"
                );
                assert_eq!(values.len(), shape.iter().product::<usize>());
                assert!(values.iter().any(|&v| v > 0), "{field} is not blank");
            }
            other => panic!("{field}: expected u8 data, got {other:?}"),
        }
    }
    let inspection = store.inspect().expect("inspect");
    assert_eq!(inspection.items, 4);
    assert_eq!(inspection.fields["pixels"].entries, 4);
    assert_eq!(
        inspection.config_digest.as_deref(),
        Some(larder::config_digest(&Config::load(&config).expect("config")).as_str())
    );
}

#[test]
fn stored_pixels_match_the_source_geometry() {
    // A left-to-right gradient, flipped: the stored row must run right to left.
    let dir = tempfile::tempdir().expect("tempdir");
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).expect("mkdir");
    let img = image::RgbImage::from_fn(64, 32, |x, _| image::Rgb([(x * 4) as u8, 0, 255]));
    img.save(imgs.join("g.png")).expect("save");
    let config = file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n    flip_x: true\n",
    );
    let out = dir.path().join("store");
    run(&config, &out);
    let store = Store::open(&out).expect("open");
    let items = store.items().expect("items");
    assert_eq!(items.len(), 2);
    // Each item says how it was made: the flip, and the resize and crop (none needed here).
    let flips: Vec<larder::Flip> = items.iter().map(|i| i.flip).collect();
    assert_eq!(flips, [larder::Flip::None, larder::Flip::X]);
    for item in &items {
        assert_eq!((item.width, item.height), (64, 32));
        assert_eq!((item.scale_to_w, item.scale_to_h), (64, 32));
        assert_eq!((item.crop_x, item.crop_y), (0, 0));
    }
    let rows: Vec<Vec<u8>> = items
        .iter()
        .map(
            |item| match store.read_field(item, "pixels").expect("read") {
                FieldData::U8 { values, shape } => {
                    assert_eq!(shape, vec![3, 32, 64]);
                    values[..64].to_vec()
                }
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(rows[0][0], 0);
    assert_eq!(rows[0][63], 252);
    let mut mirrored = rows[1].clone();
    mirrored.reverse();
    assert_eq!(mirrored, rows[0]);
}

#[test]
fn keys_recompute_exactly_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);

    // Nothing changed: nothing is read or computed.
    let again = run(&config, &out);
    assert_eq!(
        (
            again.entries_computed,
            again.entries_reused,
            again.sources_hashed,
            again.shards_written
        ),
        (0, 6, 0, 0)
    );

    // One image edited: its pixels only.
    image(&dir.path().join("imgs"), "c.webp", 80, 80, None);
    larder_synth::write_image(&dir.path().join("imgs/c.webp"), 80, 80, 99).expect("edit");
    let edited = run(&config, &out);
    assert_eq!((edited.entries_computed, edited.sources_hashed), (1, 1));

    // A caption edit changes no tensor.
    std::fs::write(dir.path().join("imgs/d.txt"), "a different fish").expect("caption");
    assert_eq!(run(&config, &out).entries_computed, 0);
    let store = Store::open(&out).expect("open");
    assert!(
        store
            .items()
            .expect("items")
            .iter()
            .any(|i| i.caption == "a different fish")
    );

    // A mask parameter: the one mask entry.
    let text = std::fs::read_to_string(&config).expect("read").replace(
        "control_path: ctl",
        "control_path: ctl\n    invert_mask: true",
    );
    std::fs::write(&config, text).expect("write");
    assert_eq!(run(&config, &out).entries_computed, 1);

    // A geometry parameter (flip): the flipped copies of all four items, with their fields.
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("invert_mask: true", "invert_mask: true\n    flip_x: true");
    std::fs::write(&config, text).expect("write");
    let flipped = run(&config, &out);
    assert_eq!(
        (
            flipped.items,
            flipped.entries_computed,
            flipped.entries_reused
        ),
        (8, 6, 6)
    );
    assert!(sound(&out));
}

#[test]
fn an_undecodable_image_is_a_finding_and_the_rest_is_prepared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let imgs = dir.path().join("imgs");
    image(&imgs, "good.jpg", 64, 64, Some("good"));
    // A JPEG with a valid header and end marker but garbage in between: the scan accepts it,
    // the decoder does not.
    let p = image(&imgs, "bad.jpg", 64, 64, Some("bad"));
    let mut bytes = std::fs::read(&p).expect("read");
    let n = bytes.len();
    for b in &mut bytes[n / 3..n - 2] {
        *b = 0xFF;
    }
    std::fs::write(&p, bytes).expect("write");
    let config = file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n",
    );
    let out = dir.path().join("store");
    let report = run(&config, &out);
    assert_eq!(report.items, 1);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.path.ends_with("bad.jpg") && f.kind == larder::FindingKind::Corrupt),
        "{:?}",
        report.findings
    );
    let inspection = Store::open(&out).expect("open").inspect().expect("inspect");
    assert!(inspection.findings["corrupt"][0].contains("bad.jpg"));
}

#[test]
fn verify_names_broken_and_missing_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);
    let mut shards: Vec<_> = std::fs::read_dir(out.join("shards"))
        .expect("shards")
        .flatten()
        .map(|e| e.path())
        .collect();
    shards.sort();
    assert!(shards.len() >= 3);
    let mut bytes = std::fs::read(&shards[0]).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&shards[0], bytes).expect("corrupt");
    std::fs::remove_file(&shards[1]).expect("remove");
    let report = Store::open(&out).expect("open").verify().expect("verify");
    let named: Vec<(&Path, &str)> = report
        .problems
        .iter()
        .map(|p| (p.path.as_path(), p.message.as_str()))
        .collect();
    assert!(
        named
            .iter()
            .any(|(p, m)| *p == shards[0] && m.contains("checksum")),
        "{named:?}"
    );
    assert!(
        named
            .iter()
            .any(|(p, m)| *p == shards[1] && m.contains("missing")),
        "{named:?}"
    );
    // A reader meeting the missing shard says which and what to do.
    let store = Store::open(&out).expect("open");
    let errors: Vec<String> = store
        .items()
        .expect("items")
        .iter()
        .filter_map(|i| store.read_field(i, "pixels").err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("missing") && e.contains("larder verify --repair")),
        "{errors:?}"
    );
    drop(store);

    // What the message says to do works: repair forgets the broken shards, prepare rebuilds
    // exactly their entries, and the store is whole again.
    let mut store = Store::open(&out).expect("open");
    store.repair().expect("repair");
    let rebuilt = run(&config, &out);
    assert!(
        rebuilt.entries_computed > 0 && rebuilt.entries_computed < 6,
        "{rebuilt:?}"
    );
    let store = Store::open(&out).expect("open");
    assert!(store.verify().expect("verify").problems.is_empty());
    for item in store.items().expect("items") {
        store.read_field(&item, "pixels").expect("readable");
    }
}

#[test]
fn a_missing_shard_is_rebuilt_by_the_next_prepare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);
    let shard = std::fs::read_dir(out.join("shards"))
        .expect("shards")
        .flatten()
        .next()
        .expect("a shard")
        .path();
    std::fs::remove_file(&shard).expect("remove");
    let again = run(&config, &out);
    assert!(again.entries_computed > 0);
    assert!(sound(&out));
}

#[test]
fn gc_drops_what_no_item_references() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);
    let before = Store::open(&out).expect("open").inspect().expect("inspect");
    std::fs::remove_file(dir.path().join("imgs/b.png")).expect("remove image");
    std::fs::write(dir.path().join("stray.bin"), b"x").expect("write");
    std::fs::write(out.join("tmp/left-over.tmp"), b"partial").expect("leftover");
    let report = run(&config, &out);
    assert_eq!((report.items, report.entries_computed), (3, 0));
    let mut store = Store::open(&out).expect("open");
    let gc = store.gc().expect("gc");
    assert_eq!(gc.entries_removed, 1);
    let after = store.inspect().expect("inspect");
    assert_eq!(after.fields["pixels"].entries, 3);
    assert!(after.shard_bytes <= before.shard_bytes);
    assert!(store.verify().expect("verify").problems.is_empty());
    assert!(store.verify().expect("verify").strays.is_empty());
}

/// Asserts that `err` is the damaged-catalog error for `catalog`, carrying SQLite's error as
/// its source and saying what to run.
fn assert_corrupt_catalog(err: &larder::Error, catalog: &Path) {
    assert!(
        matches!(err, larder::Error::CorruptCatalog { path, .. } if path == catalog),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(catalog.to_str().expect("utf-8")) && text.contains("larder prepare"),
        "{text}"
    );
    let source = std::error::Error::source(err).expect("a source");
    assert!(
        source.downcast_ref::<rusqlite::Error>().is_some(),
        "{source:?}"
    );
}

#[test]
fn a_truncated_catalog_names_the_file_and_what_to_run_and_the_advice_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);
    let catalog = out.join("catalog.sqlite");
    let len = std::fs::metadata(&catalog).expect("catalog").len();
    // Cut at a page boundary (what SQLite's own header check catches) and inside a page (what
    // it would read as zeros).
    for cut in [len / 2 / 4096 * 4096, len - 100] {
        let whole = std::fs::read(&catalog).expect("read");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&catalog)
            .and_then(|f| f.set_len(cut))
            .expect("truncate");
        // Open is what inspect, verify, verify --repair and bench start with.
        let err = Store::open(&out).expect_err("a truncated catalog is refused");
        assert_corrupt_catalog(&err, &catalog);
        let err = prepare(&Config::load(&config).expect("config"), &out, &options())
            .expect_err("prepare refuses it too");
        assert_corrupt_catalog(&err, &catalog);
        std::fs::write(&catalog, whole).expect("restore");
        assert!(
            sound(&out),
            "restoring the copy (the first advice) mends it"
        );
    }
    // The second advice: move it aside and prepare again.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&catalog)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    std::fs::rename(&catalog, out.join("catalog.damaged")).expect("move aside");
    let again = run(&config, &out);
    assert_eq!(again.entries_computed, again.entries, "{again:?}");
    assert!(sound(&out));
}

#[test]
fn a_catalog_overwritten_in_the_middle_fails_verify_with_the_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);
    let catalog = out.join("catalog.sqlite");
    let mut bytes = std::fs::read(&catalog).expect("read");
    // Every page after the first (the header) scribbled over, the length kept.
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&catalog, bytes).expect("scribble");
    let err = Store::open(&out)
        .and_then(|s| s.verify())
        .expect_err("a damaged catalog fails verify");
    assert_corrupt_catalog(&err, &catalog);
}

#[test]
fn repair_records_the_chunk_checksums_a_store_written_before_them_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path());
    let out = dir.path().join("store");
    run(&config, &out);
    let sums = |db: &rusqlite::Connection| -> Vec<(i64, i64, Vec<u8>)> {
        let mut stmt = db
            .prepare("SELECT shard, chunk_bytes, blake3 FROM shard_chunks ORDER BY shard")
            .expect("query");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("sums")
    };
    let db = rusqlite::Connection::open(out.join("catalog.sqlite")).expect("catalog");
    let written = sums(&db);
    assert!(!written.is_empty());
    // A catalog from before chunk checksums: no table at all.
    db.execute_batch("DROP TRIGGER shard_chunks_follow_shards; DROP TABLE shard_chunks")
        .expect("drop");
    drop(db);
    let store = Store::open(&out).expect("open");
    for item in store.items().expect("items") {
        store.read_field(&item, "pixels").expect("read unchecked");
    }
    drop(store);
    let mut store = Store::open(&out).expect("open");
    let report = store.repair().expect("repair");
    assert!(report.problems.is_empty(), "{report:?}");
    let db = rusqlite::Connection::open(out.join("catalog.sqlite")).expect("catalog");
    assert_eq!(sums(&db), written);
}

#[test]
fn a_given_plan_is_prepared_as_filtered_without_scanning_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(dataset(dir.path())).expect("config");
    let scanned = larder::scan(&config).expect("scan");
    let mut plan = larder::Plan::new(&config, &scanned).expect("plan");
    assert_eq!(plan.items.len(), 4);
    // The caller drops an item, and an image arrives after the scan: the run prepares the
    // plan it was given, neither the dropped item nor the newcomer.
    let dropped = &scanned.datasets[0].images[plan.items[3].image].path;
    let dropped = dropped
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    plan.items.remove(3);
    image(&dir.path().join("imgs"), "e.jpg", 64, 64, Some("an eel"));
    let out = dir.path().join("store");
    let report = larder::Prepare::new(&config)
        .plan(&scanned, &plan)
        .options(options())
        .run(&out)
        .expect("prepare");
    assert_eq!(report.items, 3);
    let items = Store::open(&out).expect("open").items().expect("items");
    let names: Vec<_> = items
        .iter()
        .map(|i| {
            let name = Path::new(&i.path).file_name().expect("name");
            name.to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(names.len(), 3);
    assert!(!names.contains(&dropped), "{names:?}");
    assert!(!names.iter().any(|n| n == "e.jpg"), "{names:?}");
    // The same config prepared from scratch scans again and sees the newcomer.
    let again = prepare(&config, &out, &options()).expect("prepare again");
    assert_eq!(again.items, 5);
}

#[test]
fn a_plan_naming_an_image_the_scan_lacks_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(dataset(dir.path())).expect("config");
    let scanned = larder::scan(&config).expect("scan");
    let mut plan = larder::Plan::new(&config, &scanned).expect("plan");
    plan.items[1].image = 99;
    let out = dir.path().join("store");
    let err = larder::Prepare::new(&config)
        .plan(&scanned, &plan)
        .run(&out)
        .expect_err("a plan of another scan");
    assert!(
        matches!(&err, larder::Error::InvalidArgument { name: "plan", message } if message.contains("item 1")),
        "{err}"
    );
    assert!(
        !out.exists(),
        "nothing is written for a plan that does not fit"
    );
}

#[test]
fn a_url_decides_remote_for_import_and_merge_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::load(dataset(dir.path())).expect("config");
    let err = larder::Prepare::new(&config)
        .import_aitk("s3://bucket/faces", &Default::default())
        .expect_err("import into a URL");
    assert!(
        matches!(&err, larder::Error::InvalidArgument { name: "out", .. }),
        "{err}"
    );
    let err = larder::merge("s3://bucket/faces", &[dir.path().join("part")], None)
        .expect_err("part folders with a URL");
    assert!(
        matches!(&err, larder::Error::InvalidArgument { name: "parts", .. }),
        "{err}"
    );
    // A path stays a folder even when it reads like a URL.
    assert_eq!(
        larder::Location::from(Path::new("s3://bucket")),
        larder::Location::Local("s3://bucket".into())
    );
}
