//! The loader: deterministic, resumable, elastic, rank-aware; errors at the right batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use larder::load::order::{BucketTail, OrderOptions, RankTail};
use larder::load::{Batch, Loader, LoaderOptions, LoaderState};
use larder::{Config, PrepareOptions, Store, prepare};

use crate::{file, image};

/// Writes the config `text` as `dir/name`, prepares it into `dir/out` and opens the store.
fn prepared(dir: &Path, name: &str, text: &str, out: &str) -> Arc<Store> {
    let config = file(dir, name, text);
    let out = dir.join(out);
    prepare(
        &Config::load(&config).expect("config"),
        &out,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    Arc::new(Store::open(&out).expect("open"))
}

/// A store of `n` items in three buckets, with shuffled, dropped-out captions.
pub fn store(root: &Path, n: usize) -> Arc<Store> {
    let imgs = root.join("imgs");
    for i in 0..n {
        let (w, h) = [(64, 64), (96, 64), (64, 96)][i % 3];
        // Distinct pixels per image: identical images would share their stored entries.
        let path = image(
            &imgs,
            &format!("img{i:03}.png"),
            w,
            h,
            Some(&format!("tag{i}, red, blue, green")),
        );
        larder_synth::write_image(&path, w, h, i as u64).expect("distinct image");
    }
    let config = file(
        root,
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n    shuffle_tokens: true\n    caption_dropout_rate: 0.2\n",
    );
    let out = root.join("store");
    let options = PrepareOptions {
        shard_bytes: 32 << 10,
        ..PrepareOptions::default()
    };
    prepare(&Config::load(&config).expect("config"), &out, &options).expect("prepare");
    Arc::new(Store::open(&out).expect("open"))
}

pub fn options(batch_size: u32, threads: usize) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        order: OrderOptions {
            seed: 3,
            shuffle: true,
            bucket_tail: BucketTail::Keep,
            rank_tail: RankTail::Pad,
        },
        threads,
        prefetch: 3,
        ..LoaderOptions::default()
    }
}

/// What a batch holds, comparable: items, captions, and each field's shape and a hash of its bytes.
pub type Digest = (
    Vec<u32>,
    Vec<String>,
    BTreeMap<String, (Vec<usize>, String)>,
);

/// The digest of a batch.
pub fn digest(b: &Batch) -> Digest {
    let fields = b
        .fields
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                (
                    t.shape.clone(),
                    blake3::hash(t.data.as_slice()).to_hex().to_string(),
                ),
            )
        })
        .collect();
    (b.items.clone(), b.captions.clone(), fields)
}

pub fn epoch(loader: &mut Loader) -> Vec<Digest> {
    let mut out = Vec::new();
    for b in loader.by_ref() {
        out.push(digest(&b.expect("batch")));
    }
    out
}

#[test]
fn batches_are_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 30);
    let one = epoch(&mut Loader::new(store.clone(), options(4, 1)).expect("loader"));
    let four = epoch(&mut Loader::new(store.clone(), options(4, 4)).expect("loader"));
    assert_eq!(one, four);
    let mut items: Vec<u32> = one.iter().flat_map(|(i, _, _)| i.clone()).collect();
    items.sort_unstable();
    assert_eq!(
        items,
        (0..30).collect::<Vec<_>>(),
        "each item once per epoch"
    );
    let (ids, captions, fields) = &one[0];
    assert_eq!(fields["pixels"].0[0], ids.len());
    assert_eq!(fields["pixels"].0[1], 3);
    assert_eq!(captions.len(), ids.len());
}

#[test]
fn epochs_differ_and_captions_follow_the_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 24);
    let mut loader = Loader::new(store, options(4, 2)).expect("loader");
    let e0 = epoch(&mut loader);
    assert_eq!(loader.epoch(), 1);
    let e1 = epoch(&mut loader);
    assert_ne!(
        e0.iter().map(|b| &b.0).collect::<Vec<_>>(),
        e1.iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    let captions: Vec<&String> = e0.iter().flat_map(|b| &b.1).collect();
    assert!(
        captions.iter().any(|c| c.is_empty()),
        "caption dropout at 0.2 over 24 items"
    );
    assert!(
        captions.iter().any(|c| !c.starts_with("tag")),
        "tokens are shuffled"
    );
}

#[test]
fn resume_from_state_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 30);
    let full = epoch(&mut Loader::new(store.clone(), options(3, 2)).expect("loader"));
    let mut first = Loader::new(store.clone(), options(3, 2)).expect("loader");
    let head: Vec<_> = (0..4)
        .map(|_| digest(&first.next().expect("batch").expect("ok")))
        .collect();
    let saved = first.state().to_json();
    drop(first);
    let state = LoaderState::from_json(&saved).expect("state");
    assert_eq!(state.consumed, 4);
    let mut resumed = Loader::with_state(store, options(3, 3), state).expect("resume");
    let tail = epoch(&mut resumed);
    assert_eq!([head, tail].concat(), full);
}

#[test]
fn elastic_resume_on_another_world_size_serves_each_item_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 45);
    let on = |rank, world| LoaderOptions {
        rank,
        world_size: world,
        ..options(3, 1)
    };
    // Two ranks take three steps each.
    let mut seen: Vec<u32> = Vec::new();
    let mut state = None;
    for rank in 0..2 {
        let mut l = Loader::new(store.clone(), on(rank, 2)).expect("loader");
        for _ in 0..3 {
            seen.extend(l.next().expect("batch").expect("ok").items);
        }
        state = Some(l.state().clone());
    }
    let state = state.expect("a state");
    assert_eq!(state.consumed, 6);
    // The job resumes on three ranks, which take equal numbers of steps.
    let mut steps = Vec::new();
    for rank in 0..3 {
        let mut l = Loader::with_state(store.clone(), on(rank, 3), state.clone()).expect("resume");
        let batches: Vec<Batch> = l.by_ref().map(|b| b.expect("ok")).collect();
        steps.push(batches.len());
        seen.extend(batches.into_iter().flat_map(|b| b.items));
    }
    assert!(steps.iter().all(|&s| s == steps[0]), "{steps:?}");
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, (0..45).collect::<Vec<_>>(), "no item skipped");
    // Only padding repeats items: less than one batch per rank.
    assert!(seen.len() - 45 < 3 * 3, "{} served", seen.len());
}

#[test]
fn set_batch_size_takes_effect_at_the_next_batch_and_survives_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 60);
    let mut loader = Loader::new(store.clone(), options(2, 2)).expect("loader");
    let a = loader.next().expect("batch").expect("ok");
    assert_eq!(a.len(), 2);
    loader.set_batch_size(5).expect("resize");
    let b = loader.next().expect("batch").expect("ok");
    assert_eq!(b.len(), 5);
    assert_eq!(b.keys.len(), 5);
    assert!(
        b.keys
            .iter()
            .all(|k| k.len() == 32 && k.chars().all(|c| c.is_ascii_hexdigit()))
    );
    assert_eq!(b.fields["pixels"].shape[0], 5);
    let state = loader.state().clone();
    assert_eq!(state.history.len(), 1);
    let rest: Vec<_> = loader.by_ref().map(|b| digest(&b.expect("ok"))).collect();
    let resumed: Vec<_> = Loader::with_state(store, options(2, 1), state)
        .expect("resume")
        .map(|b| digest(&b.expect("ok")))
        .collect();
    assert_eq!(rest, resumed);
}

#[test]
fn each_dataset_is_batched_on_its_own_at_its_own_batch_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two datasets of same-sized images (one bucket each), the second with `batch_size: 3`.
    for (folder, n) in [("a", 12), ("b", 9)] {
        for i in 0..n {
            let path = image(&dir.path().join(folder), &format!("{i}.png"), 64, 64, None);
            larder_synth::write_image(&path, 64, 64, 100 * n + i).expect("distinct image");
        }
    }
    let config = file(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: a\n    resolution: 64\n  - folder_path: b\n    resolution: 64\n    batch_size: 3\n",
    );
    let config = Config::load(&config).expect("config");
    assert!(
        config
            .warnings
            .iter()
            .all(|w| !w.key.ends_with("batch_size")),
        "batch_size is served: {:?}",
        config.warnings
    );
    let out = dir.path().join("store");
    prepare(&config, &out, &PrepareOptions::default()).expect("prepare");
    let store = Arc::new(Store::open(&out).expect("open"));
    let dataset: Vec<u32> = (store.items().expect("items").iter())
        .map(|i| i.dataset)
        .collect();
    let sizes: Vec<Option<u32>> = (store.dataset_batching().expect("batching").iter())
        .map(|b| b.batch_size)
        .collect();
    assert_eq!(sizes, [None, Some(3)]);

    let mut loader = Loader::new(store.clone(), options(4, 2)).expect("loader");
    let batches: Vec<Vec<u32>> = (loader.by_ref()).map(|b| b.expect("batch").items).collect();
    let mut sizes: Vec<(u32, usize)> = (batches.iter())
        .map(|items| {
            let d = dataset[items[0] as usize];
            assert!(items.iter().all(|&i| dataset[i as usize] == d), "{items:?}");
            (d, items.len())
        })
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [(0, 4), (0, 4), (0, 4), (1, 3), (1, 3), (1, 3)]);

    // The trainer's batch size grows; the dataset's own stays.
    let mut loader = Loader::new(store, options(4, 2)).expect("loader");
    loader.set_batch_size(6).expect("resize");
    for batch in loader {
        let items = batch.expect("batch").items;
        let own = dataset[items[0] as usize] == 1;
        assert_eq!(items.len(), if own { 3 } else { 6 });
    }

    // Without buckets, AI Toolkit batches all datasets together.
    let store = prepared(
        dir.path(),
        "together.yaml",
        "datasets:\n  - folder_path: a\n    resolution: 64\n    buckets: false\n  - folder_path: b\n    resolution: 64\n    buckets: false\n",
        "together",
    );
    let batches: Vec<Vec<u32>> = (Loader::new(store, options(4, 2)).expect("loader"))
        .map(|b| b.expect("batch").items)
        .collect();
    assert_eq!(batches.len(), 21_usize.div_ceil(4));
    assert!(
        batches
            .iter()
            .any(|items| items.iter().any(|&i| dataset[i as usize] == 0)
                && items.iter().any(|&i| dataset[i as usize] == 1)),
        "{batches:?}"
    );
}

#[test]
fn the_resolutions_of_one_dataset_are_batched_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..6 {
        let path = image(&dir.path().join("imgs"), &format!("{i}.png"), 64, 64, None);
        larder_synth::write_image(&path, 64, 64, 50 + i).expect("distinct image");
    }
    // Both resolutions place every image in the one listed bucket: only the resolution
    // (a dataset of its own in AI Toolkit) tells the two copies' batches apart.
    let store = prepared(
        dir.path(),
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: [64, 128]\n    bucket_list: [[64, 64]]\n",
        "store",
    );
    assert_eq!(store.items().expect("items").len(), 12);
    let mut sizes: Vec<usize> = (Loader::new(store, options(4, 2)).expect("loader"))
        .map(|b| b.expect("batch").items.len())
        .collect();
    sizes.sort_unstable();
    // Six items per resolution in batches of 4 (short tails kept): 4 + 2, twice.
    assert_eq!(sizes, [2, 2, 4, 4]);
}

#[test]
fn ranks_come_from_torchrun_variables() {
    // Through a lookup rather than std::env::set_var: changing the environment while other
    // test threads read it is undefined behaviour.
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let opts = LoaderOptions::default();
    let got = opts
        .clone()
        .with_ranks_from(env(&[("RANK", "1"), ("WORLD_SIZE", "4")]))
        .expect("ranks");
    assert_eq!((got.rank, got.world_size), (1, 4));
    let unset = opts
        .clone()
        .with_ranks_from(env(&[]))
        .expect("no variables");
    assert_eq!((unset.rank, unset.world_size), (opts.rank, opts.world_size));
    let err = opts
        .with_ranks_from(env(&[("WORLD_SIZE", "four")]))
        .expect_err("not a number");
    assert!(err.to_string().contains("WORLD_SIZE"), "{err}");
}

#[test]
fn a_missing_shard_fails_its_batch_naming_shard_and_item_and_others_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let store = store(dir.path(), 30);
    let shard = std::fs::read_dir(store_dir.join("shards"))
        .expect("shards")
        .flatten()
        .next()
        .expect("shard")
        .path();
    std::fs::remove_file(&shard).expect("remove");
    let loader = Loader::new(store, options(3, 2)).expect("loader");
    let results: Vec<_> = loader.collect();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(!errors.is_empty());
    assert!(
        errors.len() < results.len(),
        "the other batches load: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.contains(shard.to_str().expect("utf-8")) && e.contains("item ")),
        "{errors:?}"
    );
}

#[test]
fn dropping_the_loader_mid_epoch_stops_its_threads_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 30);
    let mut loader = Loader::new(
        store,
        LoaderOptions {
            prefetch: 8,
            ..options(1, 4)
        },
    )
    .expect("loader");
    loader.next().expect("batch").expect("ok");
    let started = std::time::Instant::now();
    drop(loader);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn random_flip_mirrors_about_half_the_items_per_epoch_consistently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 30);
    let plain: BTreeMap<u32, Vec<u8>> = Loader::new(store.clone(), options(1, 2))
        .expect("loader")
        .map(|b| {
            let b = b.expect("ok");
            (b.items[0], b.fields["pixels"].data.as_slice().to_vec())
        })
        .collect();
    let flip = LoaderOptions {
        random_flip: true,
        ..options(1, 2)
    };
    let run = || -> Vec<(u32, bool, Vec<u8>, Vec<usize>)> {
        Loader::new(store.clone(), flip.clone())
            .expect("loader")
            .map(|b| {
                let b = b.expect("ok");
                let t = &b.fields["pixels"];
                (
                    b.items[0],
                    b.flipped[0],
                    t.data.as_slice().to_vec(),
                    t.shape.clone(),
                )
            })
            .collect()
    };
    let first = run();
    assert_eq!(
        first,
        run(),
        "the flips are a function of (seed, epoch, item)"
    );
    let flipped = first.iter().filter(|(_, f, _, _)| *f).count();
    assert!((6..=24).contains(&flipped), "{flipped} of 30 flipped");
    for (id, was_flipped, data, shape) in &first {
        let original = &plain[id];
        if *was_flipped {
            let w = shape[3];
            let mirrored: Vec<u8> = original
                .chunks_exact(w)
                .flat_map(|row| row.iter().rev().copied())
                .collect();
            assert_eq!(data, &mirrored, "item {id}");
        } else {
            assert_eq!(data, original, "item {id}");
        }
    }
}

#[test]
fn a_failed_step_is_served_again_in_smaller_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 36);
    let mut loader = Loader::new(store.clone(), options(4, 2)).expect("loader");
    let mut served: Vec<u32> = loader.next().expect("batch").expect("ok").items;
    let failed = loader.next().expect("batch").expect("ok");
    assert_eq!(failed.len(), 4);
    // Out of memory: the step is retried at size 2; the failed batch's items come back.
    loader.retry_step_with(2).expect("retry");
    assert_eq!(loader.state().consumed, 1);
    let rest: Vec<Batch> = loader.by_ref().map(|b| b.expect("ok")).collect();
    assert!(rest.iter().all(|b| b.len() <= 2));
    served.extend(rest.iter().flat_map(|b| b.items.clone()));
    let mut sorted = served.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..36).collect::<Vec<_>>(),
        "every item once, the failed ones included"
    );
    assert!(failed.items.iter().all(|i| served.contains(i)));
}

/// The shard file, offset and length of `field` of item `item` in the store at `dir`.
fn entry_location(dir: &Path, item: u32, field: &str) -> (std::path::PathBuf, u64, u64) {
    let db = rusqlite::Connection::open(dir.join("catalog.sqlite")).expect("catalog");
    let (file, offset, length): (String, i64, i64) = db
        .query_row(
            "SELECT s.file, e.offset, e.length FROM item_fields f JOIN entries e ON e.id = f.entry_id
             JOIN shards s ON s.id = e.shard WHERE f.item = ?1 AND f.field = ?2",
            rusqlite::params![item, field],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("entry");
    (dir.join("shards").join(file), offset as u64, length as u64)
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

/// Serves one epoch of a freshly opened store at `dir`; returns the items of each batch that
/// loaded and the errors of those that did not.
fn serve(dir: &Path) -> (Vec<Vec<u32>>, Vec<larder::Error>) {
    let store = Arc::new(Store::open(dir).expect("open"));
    let (mut served, mut errors) = (Vec::new(), Vec::new());
    for b in Loader::new(store, options(3, 2)).expect("loader") {
        match b {
            Ok(b) => served.push(b.items.clone()),
            Err(e) => errors.push(e),
        }
    }
    (served, errors)
}

#[test]
fn a_flipped_byte_in_a_stored_tensor_fails_its_batch_naming_shard_and_item() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    drop(store(dir.path(), 30));
    let (clean, errors) = serve(&store_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let (shard, offset, length) = entry_location(&store_dir, 7, "pixels");
    flip_byte(&shard, offset + length / 2);
    let (served, errors) = serve(&store_dir);
    assert!(!errors.is_empty(), "the damaged item's batch fails");
    assert!(
        served.iter().all(|items| !items.contains(&7)),
        "no batch with item 7 is served: {served:?}"
    );
    assert!(served.len() < clean.len() && !served.is_empty());
    for e in &errors {
        match e {
            larder::Error::CorruptShard {
                shard: named,
                item: Some(item),
                chunk: 0,
                bytes,
            } => {
                // The first chunk: from the shard's start to its end or the chunk's.
                assert_eq!(bytes.start, 0);
                assert!(bytes.end > 0 && bytes.end <= larder::store::CHUNK_BYTES);
                assert_eq!(named, &shard);
                assert!(
                    item.starts_with("item ") && item.contains("pixels"),
                    "{item}"
                );
            }
            other => panic!("expected a corrupt shard error: {other:?}"),
        }
        let text = e.to_string();
        assert!(text.contains("larder verify --repair"), "{text}");
    }
    assert!(
        errors.iter().any(|e| e.to_string().contains("item 7 (")),
        "{errors:?}"
    );
}

#[test]
fn a_flipped_byte_in_a_shard_header_fails_the_batches_that_read_the_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    drop(store(dir.path(), 30));
    let (shard, _, _) = entry_location(&store_dir, 4, "pixels");
    // Inside the JSON header: 8 length bytes, then `{"__metadata__":…`.
    flip_byte(&shard, 20);
    let (served, errors) = serve(&store_dir);
    assert!(!errors.is_empty());
    assert!(served.iter().all(|items| !items.contains(&4)), "{served:?}");
    assert!(
        errors.iter().all(|e| matches!(
            e,
            larder::Error::CorruptShard { shard: named, item: Some(_), chunk: 0, .. } if named == &shard
        )),
        "{errors:?}"
    );
}

/// A store of six 64×64 images in one bucket; `a` and `c` have masks, `b` a control image.
fn partly_masked(root: &Path) -> Arc<Store> {
    let imgs = root.join("imgs");
    for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        let path = image(&imgs, &format!("{name}.png"), 64, 64, Some(name));
        larder_synth::write_image(&path, 64, 64, i as u64 + 1).expect("distinct image");
    }
    image(&root.join("masks"), "a.png", 64, 64, None);
    larder_synth::write_image(&root.join("masks/c.png"), 64, 64, 9).expect("mask");
    image(&root.join("ctl"), "b.png", 64, 64, None);
    let config = file(
        root,
        "c.yaml",
        "datasets:\n  - folder_path: imgs\n    resolution: 64\n    mask_path: masks\n    control_path: ctl\n",
    );
    let out = root.join("store");
    prepare(
        &Config::load(&config).expect("config"),
        &out,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    Arc::new(Store::open(&out).expect("open"))
}

#[test]
fn a_mask_or_control_some_items_lack_is_zeros_for_them_as_in_ai_toolkit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = partly_masked(dir.path());
    let items = store.items().expect("items");
    let mut loader = Loader::new(store.clone(), options(6, 2)).expect("loader");
    // Several epochs, so that pooled buffers holding the last epoch's bytes are reused.
    for _ in 0..3 {
        let batches: Vec<Batch> = loader.by_ref().map(|b| b.expect("batch")).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        for (field, channels) in [("mask", 1), ("control.0", 3)] {
            let t = &b
                .fields
                .get(field)
                .unwrap_or_else(|| panic!("{field} is in the batch"));
            assert_eq!(t.shape, vec![6, channels, 64, 64], "{field}");
            let size = channels * 64 * 64;
            for (k, &id) in b.items.iter().enumerate() {
                let slot = &t.data.as_slice()[k * size..(k + 1) * size];
                let item = &items[id as usize];
                match item.fields.contains_key(field) {
                    true => match store.read_field(item, field).expect("read") {
                        larder::FieldData::U8 { values, .. } => {
                            assert_eq!(slot, &values[..], "{field} of {}", item.path)
                        }
                        other => panic!("{other:?}"),
                    },
                    false => assert!(
                        slot.iter().all(|&v| v == 0),
                        "{field} of {} is zeros",
                        item.path
                    ),
                }
            }
        }
    }
}

#[test]
fn a_field_other_than_mask_or_control_that_one_item_lacks_fails_the_batch_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(partly_masked(dir.path()));
    let store_dir = dir.path().join("store");
    // An item without pixels among items with them stands for any encoder output (a latent,
    // a CLIP embedding) that one item lacks: AI Toolkit stops on those.
    let db = rusqlite::Connection::open(store_dir.join("catalog.sqlite")).expect("catalog");
    let path: String = db
        .query_row("SELECT path FROM items WHERE id = 3", [], |r| r.get(0))
        .expect("item 3");
    db.execute(
        "DELETE FROM item_fields WHERE item = 3 AND field = 'pixels'",
        [],
    )
    .expect("delete");
    drop(db);
    let store = Arc::new(Store::open(&store_dir).expect("open"));
    let results: Vec<_> = Loader::new(store, options(6, 2)).expect("loader").collect();
    assert_eq!(results.len(), 1);
    let err = results[0]
        .as_ref()
        .expect_err("the batch fails")
        .to_string();
    assert!(
        err.contains("item 3 (") && err.contains(&path) && err.contains("pixels"),
        "{err}"
    );
}

/// Runs `sql` on the catalog of the store in `store_dir`.
pub fn edit_catalog(store_dir: &Path, sql: &str) {
    let db = rusqlite::Connection::open(store_dir.join("catalog.sqlite")).expect("catalog");
    db.execute_batch(sql).expect(sql);
}

#[test]
fn prepare_records_each_datasets_caption_recipe_and_the_loader_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 6);
    let config = Config::load(dir.path().join("c.yaml")).expect("config");
    let expected = larder::CaptionRecipe::from_dataset(&config.datasets[0]);
    assert!(expected.shuffle_tokens && expected.caption_dropout_rate == 0.2);
    let db = rusqlite::Connection::open(dir.path().join("store/catalog.sqlite")).expect("catalog");
    let recorded: String = db
        .query_row(
            "SELECT caption_recipe FROM datasets WHERE id = 0",
            [],
            |r| r.get(0),
        )
        .expect("a recipe is recorded");
    let recorded: larder::CaptionRecipe = serde_json::from_str(&recorded).expect("recipe JSON");
    assert_eq!(recorded, expected);
    assert_eq!(store.caption_recipes().expect("recipes"), vec![expected]);
}

#[test]
fn a_store_prepared_before_recipes_were_recorded_serves_the_same_captions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recorded = epoch(&mut Loader::new(store(dir.path(), 12), options(4, 2)).expect("loader"));
    let store_dir = dir.path().join("store");
    let reopened = |dir: &Path| {
        let store = Arc::new(Store::open(dir).expect("open"));
        epoch(&mut Loader::new(store, options(4, 2)).expect("loader"))
    };
    // A recipe column left empty, then no column at all: the settings are all there is.
    edit_catalog(&store_dir, "UPDATE datasets SET caption_recipe = NULL");
    assert_eq!(reopened(&store_dir), recorded);
    edit_catalog(
        &store_dir,
        "ALTER TABLE datasets DROP COLUMN caption_recipe",
    );
    assert_eq!(reopened(&store_dir), recorded);
    // Preparing again records the recipe, and recomputes nothing.
    let config = Config::load(dir.path().join("c.yaml")).expect("config");
    let report = prepare(&config, &store_dir, &PrepareOptions::default()).expect("prepare");
    assert_eq!(report.entries_computed, 0, "{report:?}");
    let db = rusqlite::Connection::open(store_dir.join("catalog.sqlite")).expect("catalog");
    let recipe: Option<String> = db
        .query_row(
            "SELECT caption_recipe FROM datasets WHERE id = 0",
            [],
            |r| r.get(0),
        )
        .expect("the column is back");
    assert!(recipe.is_some());
    assert_eq!(reopened(&store_dir), recorded);
}

#[test]
fn an_unreadable_caption_recipe_is_refused_with_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(store(dir.path(), 3));
    let store_dir = dir.path().join("store");
    let refusal = |sql: &str| {
        edit_catalog(&store_dir, sql);
        let store = Arc::new(Store::open(&store_dir).expect("open"));
        Loader::new(store, options(2, 1))
            .expect_err("refused")
            .to_string()
    };
    // A newer larder's recipe, with a transform this one does not know.
    let err = refusal(
        r#"UPDATE datasets SET caption_recipe = json_set(caption_recipe, '$.reverse_tokens', 1)"#,
    );
    assert!(
        err.contains("dataset 0")
            && err.contains("reverse_tokens")
            && err.contains("larder prepare"),
        "{err}"
    );
    edit_catalog(
        &store_dir,
        "UPDATE datasets SET caption_recipe = json_remove(caption_recipe, '$.reverse_tokens')",
    );
    // An item of a dataset the catalog does not list.
    let err = refusal("UPDATE items SET dataset = 4 WHERE id = 1");
    assert!(
        err.contains("item 1") && err.contains("dataset 4") && err.contains("larder prepare"),
        "{err}"
    );
    edit_catalog(&store_dir, "UPDATE items SET dataset = 0");
    // An old store whose settings lack a caption key: no silent default.
    let err = refusal(
        r#"UPDATE datasets SET caption_recipe = NULL, config = json_remove(config, '$.keep_tokens')"#,
    );
    assert!(
        err.contains("keep_tokens") && err.contains("larder prepare"),
        "{err}"
    );
}

/// Four 64×64 images, each with a control image of its own size and a flipped copy
/// (`flip_x`), prepared with `settings` added to the dataset; the store and each control's
/// decoded pixels (C×H×W) by image stem.
fn edit_pairs(root: &Path, top: &str, settings: &str) -> (Arc<Store>, BTreeMap<String, Vec<u8>>) {
    let sizes = [(40, 30), (50, 70), (64, 64), (33, 17)];
    let mut controls = BTreeMap::new();
    for (i, (w, h)) in sizes.into_iter().enumerate() {
        let name = format!("p{i}");
        let path = image(
            &root.join("imgs"),
            &format!("{name}.png"),
            64,
            64,
            Some("x"),
        );
        larder_synth::write_image(&path, 64, 64, i as u64 + 10).expect("image");
        let control = root.join("ctl").join(format!("{name}.png"));
        std::fs::create_dir_all(control.parent().expect("folder")).expect("folder");
        larder_synth::write_image(&control, w, h, i as u64 + 20).expect("control");
        let rgb = ::image::open(&control).expect("decode").into_rgb8();
        let chw: Vec<u8> = (0..3)
            .flat_map(|c| rgb.pixels().map(move |p| p[c]).collect::<Vec<_>>())
            .collect();
        controls.insert(name, chw);
    }
    let store = prepared(
        root,
        "c.yaml",
        &format!(
            "{top}datasets:\n  - folder_path: imgs\n    resolution: 64\n    flip_x: true\n    control_path: ctl\n{settings}"
        ),
        "store",
    );
    (store, controls)
}

fn stem(path: &str) -> String {
    Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn controls_of_a_raw_control_model_are_served_per_item_at_their_own_size_unflipped() {
    // The model's class says so (Qwen-Image-Edit-Plus), as AI Toolkit's
    // `use_raw_control_images`; and so does larder's own key, for a model larder does not know.
    for top in [
        "model:\n  arch: qwen_image_edit_plus\n",
        "larder:\n  raw_control_images: true\n",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, controls) = edit_pairs(dir.path(), top, "");
        let items = store.items().expect("items");
        assert_eq!(items.len(), 8, "four images and their flipped copies");
        // A control of its own size is stored once for an item and its flipped copy.
        let stats = store.inspect().expect("inspect");
        assert_eq!(
            stats.fields["control_raw"].entries,
            4,
            "{:?}",
            stats.fields.keys()
        );
        let batches: Vec<Batch> = Loader::new(store, options(4, 2))
            .expect("loader")
            .map(|b| b.expect("batch"))
            .collect();
        assert_eq!(batches.len(), 2);
        for b in &batches {
            assert!(!b.fields.contains_key("control.0"), "not stacked");
            let own = &b.per_item_fields["control_raw.0"];
            assert_eq!(own.len(), b.len());
            for (t, &id) in own.iter().zip(&b.items) {
                let item = &items[id as usize];
                let expected = &controls[&stem(&item.path)];
                // AI Toolkit leaves raw controls unflipped, even for a flipped copy.
                assert_eq!(
                    t.data.as_slice(),
                    &expected[..],
                    "{} ({:?})",
                    item.path,
                    item.flip
                );
                assert_eq!(t.shape.iter().product::<usize>(), expected.len());
                assert_eq!(t.shape[0], 3);
            }
        }
    }
}

#[test]
fn full_size_control_images_false_stores_controls_at_512_unflipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = edit_pairs(dir.path(), "", "    full_size_control_images: false\n");
    let items = store.items().expect("items");
    let stats = Store::open(store.root())
        .expect("open")
        .inspect()
        .expect("inspect");
    assert_eq!(
        stats.fields["control"].entries, 4,
        "one per control, not per item"
    );
    let mut by_item = std::collections::HashMap::new();
    for b in Loader::new(store, options(4, 2)).expect("loader") {
        let b = b.expect("batch");
        let t = &b.fields["control.0"];
        assert_eq!(t.shape, vec![b.len(), 3, 512, 512]);
        let size = 3 * 512 * 512;
        for (k, &id) in b.items.iter().enumerate() {
            let item = &items[id as usize];
            let slot = t.data.as_slice()[k * size..(k + 1) * size].to_vec();
            by_item.insert((stem(&item.path), item.flip), slot);
        }
    }
    assert_eq!(by_item.len(), 8);
    for i in 0..4 {
        let plain = &by_item[&(format!("p{i}"), larder::Flip::None)];
        let flipped = &by_item[&(format!("p{i}"), larder::Flip::X)];
        assert_eq!(
            plain, flipped,
            "p{i}: a flipped copy keeps its control as it is"
        );
    }
}
