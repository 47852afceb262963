//! `larder::diagnose`: estimates against sizes computed by hand, and measurements against what
//! /proc and util-linux's `fincore` report independently.

use std::path::Path;
use std::process::Command;

use larder::diagnose::{
    EstimateOptions, MeasureOptions, ProcessMemory, Workload, estimate, family, measure,
    store_residency,
};
use larder::{Config, Plan, PrepareOptions, Store, scan};

use crate::{file, image};

/// Three square images (every one lands in the 64x64 bucket at resolution 64), two captions.
fn flux_dataset(dir: &Path, extra: &str) -> Config {
    image(dir, "imgs/a.png", 64, 64, Some("a cat"));
    image(dir, "imgs/b.png", 96, 96, Some("a cat"));
    image(dir, "imgs/c.jpg", 128, 128, Some("a dog on a mat"));
    let config = file(
        dir,
        "c.yaml",
        &format!(
            "model:\n  arch: flux\ndatasets:\n  - folder_path: imgs\n    resolution: 64\n    flip_x: true\n    num_repeats: 2\n    caption_dropout_rate: 0\n{extra}"
        ),
    );
    Config::load(config).expect("config")
}

#[test]
fn plan_estimate_matches_hand_computed_sizes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = flux_dataset(
        tmp.path(),
        "    cache_latents: true\n    cache_text_embeddings: true\n",
    );
    let scanned = scan(&config).expect("scan");
    let plan = Plan::new(&config, &scanned).expect("plan");
    let options = EstimateOptions {
        family: family("flux"),
        batch_size: 2,
        workers: 2,
        ..EstimateOptions::default()
    };
    let e = estimate(
        Workload::from_plan(&config, &scanned, &plan, &options),
        &options,
    );
    // 3 images x 2 repeats, then their x-flips: 12 items; repeats share an entry, flips do
    // not: 6 distinct latents.
    assert_eq!(e.workload.items, 12);
    let field = |name: &str| {
        e.workload
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no field {name}: {:?}", e.workload.fields))
    };
    let latent = field("latent");
    assert_eq!(latent.entries, 6);
    // A Flux latent of a 64x64 crop: 16 channels x (64/8) x (64/8) values, 2 bytes each.
    let per_latent = 16 * 8 * 8 * 2;
    assert_eq!(per_latent, 2048);
    assert_eq!(latent.stored_bytes, 6 * 2048);
    assert!(
        latent.in_memory,
        "cache_latents without _to_disk is in memory"
    );
    // Two distinct captions, each T5 512x4096 plus CLIP's pooled 768, in bf16.
    let per_caption = (512 * 4096 + 768) * 2;
    let text = field("text_embedding");
    assert_eq!(text.entries, 2);
    assert_eq!(text.stored_bytes, 2 * per_caption);
    assert_eq!(e.store_bytes, 6 * 2048 + 2 * per_caption);
    // The largest batch: 2 items of 64x64 pixels at 0.5 bytes of latent per pixel, plus a
    // caption's embedding each.
    let batch = 2 * (64 * 64 / 2 + per_caption);
    assert_eq!(e.largest_batch_bytes, batch);
    // Flux's weights: 11.901 + 0.084 + 0.123 + 4.762 billion parameters, 2 bytes each.
    let model = 2 * (11_901 + 84 + 123 + 4_762) * 1_000_000;
    assert_eq!(e.model_bytes, model);
    // Each worker: torch, its copy of the dataset object (12 file items), its copy of the
    // in-memory latents, and prefetch_factor (2) batches, but not the model (AI Toolkit's
    // dataset drops it when pickled); the main process holds the latents once more.
    let state = 12 * (larder::diagnose::FILE_ITEM_BYTES + 2 * 49) + e.workload.item_text_bytes;
    assert_eq!(e.dataloader.dataset_state_per_worker, state);
    let per_worker = 290_000_000 + state + 6 * 2048 + 2 * batch;
    assert_eq!(e.dataloader.per_worker, per_worker);
    assert_eq!(e.dataloader.total, 2 * per_worker + 6 * 2048);
    // larder: the whole store mapped once, with the shard header's JSON of each of the 8
    // entries (112 bytes each: checked reads map the header chunk too), and prefetch (4) + 1
    // batch buffers.
    assert_eq!(e.larder.mapped_store, e.store_bytes + 8 * 112);
    assert_eq!(e.larder.batch_buffers, 5 * batch);
}

#[test]
fn datasets_without_cached_latents_are_estimated_as_pixels() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = flux_dataset(tmp.path(), "");
    let scanned = scan(&config).expect("scan");
    let plan = Plan::new(&config, &scanned).expect("plan");
    let options = EstimateOptions {
        family: family("flux"),
        ..EstimateOptions::default()
    };
    let w = Workload::from_plan(&config, &scanned, &plan, &options);
    let names: Vec<&str> = w.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["pixels"]);
    // 6 distinct 64x64 RGB crops, one byte per channel.
    assert_eq!(w.fields[0].stored_bytes, 6 * 3 * 64 * 64);
    assert_eq!(w.fields[0].bytes_per_pixel, 3.0);
}

/// Prepares the Flux dataset (pixels only) into `dir/store`.
fn prepared(dir: &Path) -> std::path::PathBuf {
    let config = flux_dataset(dir, "");
    let store = dir.join("store");
    larder::prepare(&config, &store, &PrepareOptions::default()).expect("prepare");
    store
}

#[test]
fn store_workload_reads_the_stored_sizes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = prepared(tmp.path());
    let w = Workload::from_store(&Store::open(&root).expect("open")).expect("workload");
    assert_eq!(w.items, 12);
    assert_eq!(w.distinct_captions, 2);
    let pixels = &w.fields[0];
    assert_eq!(pixels.name, "pixels");
    assert_eq!(pixels.entries, 6);
    assert_eq!(pixels.stored_bytes, 6 * 3 * 64 * 64);
    assert_eq!(pixels.bytes_per_pixel, 3.0);
    assert!(w.catalog_bytes.is_some_and(|b| b > 0));
    // The shard files, headers included: what a whole epoch leaves mapped.
    let on_disk: u64 = std::fs::read_dir(root.join("shards"))
        .expect("shards")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    assert_eq!(w.shard_bytes, Some(on_disk));
    assert!(on_disk > pixels.stored_bytes);
    let e = estimate(w, &EstimateOptions::default());
    assert_eq!(e.larder.mapped_store, on_disk);
}

/// Resident bytes of the files in `dir` as util-linux's `fincore` reports them.
fn fincore_bytes(dir: &Path) -> u64 {
    let files: Vec<_> = std::fs::read_dir(dir)
        .expect("shards")
        .map(|e| e.expect("entry").path())
        .collect();
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .args(&files)
        .output()
        .expect("fincore (util-linux) must be installed for this test");
    assert!(out.status.success(), "fincore failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse::<u64>().expect("fincore prints byte counts"))
        .sum()
}

#[test]
fn residency_agrees_with_fincore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = prepared(tmp.path());
    // Reading every shard puts it in the page cache (the machine has memory to spare).
    for entry in std::fs::read_dir(root.join("shards")).expect("shards") {
        std::fs::read(entry.expect("entry").path()).expect("read shard");
    }
    let ours = store_residency(&root).expect("residency");
    let theirs = fincore_bytes(&root.join("shards"));
    assert_eq!(ours.resident, theirs);
    assert!(ours.resident >= ours.bytes, "{ours:?}");
}

#[test]
fn process_memory_agrees_with_proc_status() {
    let ours = ProcessMemory::read().expect("smaps_rollup");
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let vm_rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024;
    // Two readings a moment apart, while other tests run: within 4 MB of each other.
    assert!(ours.rss.abs_diff(vm_rss) < 4 << 20, "{ours:?} vs {vm_rss}");
    assert!(ours.pss <= ours.rss + (1 << 20) && ours.anonymous <= ours.rss);
}

#[test]
fn measuring_an_epoch_sees_the_mapped_store_in_rss() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = prepared(tmp.path());
    let m = measure_epoch(&root);
    // 12 items in one bucket, batches of 2.
    assert_eq!((m.batches, m.items), (6, 12));
    // Every entry was read through the mapping: the shards' data pages are resident in this
    // process (other tests running alongside can only add to the growth).
    let shard_bytes = m.page_cache_after.bytes;
    let data = 6 * 3 * 64 * 64;
    assert!(shard_bytes >= data);
    assert!(
        m.after.file_backed() >= m.before.file_backed() + data,
        "{m:?}"
    );
    assert_eq!(
        m.page_cache_after.resident,
        fincore_bytes(&root.join("shards"))
    );
}

#[test]
fn the_estimate_of_the_mapped_store_is_what_an_epoch_leaves_resident() {
    // Regression: diagnose compared its mapped-store estimate with the growth of all
    // file-backed RSS, which includes the program's own code paged in while serving (11 MB of
    // a debug build, 15% of the sample store), and counted the entries' bytes only, while
    // checked reads hash whole 1 MiB chunks, shard headers included. The estimate is now the
    // shard files, and the measurement the resident pages of the shard maps alone.
    let tmp = tempfile::tempdir().expect("tmp");
    let root = prepared(tmp.path());
    let e = estimate(
        Workload::from_store(&Store::open(&root).expect("open")).expect("workload"),
        &EstimateOptions::default(),
    );
    let m = measure_epoch(&root);
    assert_eq!(m.items, 12);
    // Every page of every shard, the last one whole: the estimate within one page per shard.
    let files = m.page_cache_after.files;
    assert!(m.mapped_store >= e.larder.mapped_store, "{m:?} {e:?}");
    assert!(
        m.mapped_store <= e.larder.mapped_store + files * 4096,
        "{m:?} {e:?}"
    );
}

/// Measures one whole epoch of the store at `root` (batches of 2, 2 threads, prefetch 2).
fn measure_epoch(root: &std::path::Path) -> larder::diagnose::Measurement {
    measure(
        root,
        &MeasureOptions {
            batch_size: 2,
            threads: 2,
            prefetch: 2,
            batches: None,
        },
    )
    .expect("measure")
}
