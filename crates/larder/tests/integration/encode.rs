//! Encoders in prepare and the loader: latents, text embeddings with variants, CLIP
//! embeddings; keys that recompute only what changed; encoder errors that lose nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use larder::encode::{
    CLIP_MEAN, CLIP_STD, EncodedTensor, EncoderError, EncoderIdentity, Encoders, ImageEncoder,
    PixelBatch, PixelValues, TextEncoder,
};
use larder::load::{Loader, LoaderOptions, Padding};
use larder::{Config, Error, FieldData, Prepare, PrepareOptions, PrepareReport, Store};

use crate::{file, image};

/// A deterministic weight in [-1, 1) for (a, b): a small seeded hash, not zeros.
fn weight(seed: u64, a: usize, b: usize) -> f32 {
    let mut z = seed ^ ((a as u64) << 32) ^ b as u64;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// A VAE stand-in: each 8×8 patch of 3 channels projected to `channels` values by seeded
/// weights. Counts the images it encodes and fails on images whose first pixel value is
/// `fail_on` (set per test).
struct PatchEncoder {
    id: String,
    channels: usize,
    images: Arc<AtomicUsize>,
    fail_after: Option<usize>,
}

impl PatchEncoder {
    fn new(id: &str, images: &Arc<AtomicUsize>) -> Self {
        PatchEncoder {
            id: id.into(),
            channels: 4,
            images: images.clone(),
            fail_after: None,
        }
    }
}

/// The patch projection of one C×H×W f32 image.
fn project(pixels: &[f32], h: usize, w: usize, channels: usize) -> Vec<f32> {
    let (lh, lw) = (h / 8, w / 8);
    let mut out = vec![0f32; channels * lh * lw];
    for c in 0..channels {
        for y in 0..lh {
            for x in 0..lw {
                let mut acc = 0f32;
                for k in 0..3 {
                    for dy in 0..8 {
                        for dx in 0..8 {
                            let p = pixels[(k * h + y * 8 + dy) * w + x * 8 + dx];
                            acc += p * weight(7, c, (k * 8 + dy) * 8 + dx);
                        }
                    }
                }
                out[(c * lh + y) * lw + x] = acc / 24.0;
            }
        }
    }
    out
}

impl ImageEncoder for PatchEncoder {
    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity {
            id: self.id.clone(),
            scaling_factor: Some(0.5),
            shift_factor: Some(0.1),
        }
    }

    fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError> {
        let [n, c, h, w] = batch.shape[..] else {
            return Err(format!("expected N×C×H×W, got {:?}", batch.shape).into());
        };
        let PixelValues::F32(values) = batch.values else {
            return Err("expected f32 pixels".into());
        };
        if let Some(limit) = self.fail_after
            && self.images.load(Ordering::SeqCst) >= limit
        {
            return Err("CUDA out of memory (simulated)".into());
        }
        self.images.fetch_add(n, Ordering::SeqCst);
        let per = c * h * w;
        let values = (0..n)
            .flat_map(|i| project(&values[i * per..(i + 1) * per], h, w, self.channels))
            .collect();
        Ok(EncodedTensor {
            shape: vec![n, self.channels, h / 8, w / 8],
            values,
        })
    }
}

/// A text encoder stand-in: each comma-separated token hashed into a seeded 8-dimensional
/// embedding; sequences right-padded to the batch's longest with a mask, plus a pooled mean.
struct HashText {
    captions: Arc<AtomicUsize>,
    fail_after: Option<usize>,
}

const DIM: usize = 8;

fn token_embedding(token: &str) -> Vec<f32> {
    let h = token.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..DIM).map(|d| weight(h, d, 1)).collect()
}

/// The tokens of a caption: a start token, then its comma-separated parts.
fn tokens(caption: &str) -> Vec<String> {
    std::iter::once("<s>".to_owned())
        .chain(
            caption
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        )
        .collect()
}

impl TextEncoder for HashText {
    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity::new("hash-text-8 f32")
    }

    fn encode(&mut self, captions: &[&str]) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        if let Some(limit) = self.fail_after
            && self.captions.load(Ordering::SeqCst) >= limit
        {
            return Err("the text encoder ran out of memory (simulated)".into());
        }
        self.captions.fetch_add(captions.len(), Ordering::SeqCst);
        let toks: Vec<Vec<String>> = captions.iter().map(|c| tokens(c)).collect();
        let l = toks.iter().map(Vec::len).max().unwrap_or(1);
        let n = captions.len();
        let mut embeds = vec![0f32; n * l * DIM];
        let mut mask = vec![0f32; n * l];
        let mut pooled = vec![0f32; n * DIM];
        for (i, t) in toks.iter().enumerate() {
            for (j, token) in t.iter().enumerate() {
                let e = token_embedding(token);
                embeds[(i * l + j) * DIM..][..DIM].copy_from_slice(&e);
                mask[i * l + j] = 1.0;
                for d in 0..DIM {
                    pooled[i * DIM + d] += e[d] / t.len() as f32;
                }
            }
        }
        Ok(vec![
            (
                "embeds".into(),
                EncodedTensor {
                    shape: vec![n, l, DIM],
                    values: embeds,
                },
            ),
            (
                "pooled".into(),
                EncodedTensor {
                    shape: vec![n, DIM],
                    values: pooled,
                },
            ),
            (
                "mask".into(),
                EncodedTensor {
                    shape: vec![n, l],
                    values: mask,
                },
            ),
        ])
    }
}

fn options(batch: usize) -> PrepareOptions {
    PrepareOptions {
        shard_bytes: 16 << 10,
        encode_batch_size: batch,
        caption_variants: 3,
        ..PrepareOptions::default()
    }
}

/// Five distinct images in two buckets (the last two share a caption); returns the config.
fn dataset(root: &Path, extra: &str) -> PathBuf {
    let imgs = root.join("imgs");
    let captions = [
        "a cat, red",
        "a dog, blue",
        "a bird, green, small",
        "a fish",
        "a fish",
    ];
    for (i, caption) in captions.iter().enumerate() {
        let (w, h) = [(64, 64), (96, 64)][i % 2];
        let path = image(&imgs, &format!("img{i}.png"), w, h, Some(caption));
        larder_synth::write_image(&path, w, h, 10 + i as u64).expect("distinct image");
    }
    file(
        root,
        "c.yaml",
        &format!(
            "datasets:\n  - folder_path: imgs\n    resolution: 64\n{extra}larder:\n  divisibility: 16\n"
        ),
    )
}

fn run(
    config: &Path,
    out: &Path,
    options: &PrepareOptions,
    encoders: &mut Encoders,
) -> larder::Result<PrepareReport> {
    Prepare::new(&Config::load(config).expect("config"))
        .options(options.clone())
        .encoders(encoders)
        .run(out)
}

pub(crate) fn latent_encoders(id: &str, images: &Arc<AtomicUsize>) -> Encoders {
    Encoders {
        image: vec![("latent".into(), Box::new(PatchEncoder::new(id, images)))],
        ..Encoders::default()
    }
}

fn f32s(data: FieldData) -> (Vec<f32>, Vec<usize>) {
    match data {
        FieldData::F32 { values, shape } => (values, shape),
        FieldData::U8 { .. } => panic!("expected floats"),
    }
}

fn u8s(data: FieldData) -> Vec<u8> {
    match data {
        FieldData::U8 { values, .. } => values,
        FieldData::F32 { .. } => panic!("expected bytes"),
    }
}

#[test]
fn latents_are_the_encoders_output_of_the_stored_pixels_in_bf16() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "    flip_x: true\n");
    let out = dir.path().join("store");
    let images = Arc::new(AtomicUsize::new(0));
    let report = run(
        &config,
        &out,
        &options(2),
        &mut latent_encoders("patch-v1", &images),
    )
    .expect("prepare");
    // Five images and their flip_x copies, each encoded separately.
    assert_eq!(report.items, 10);
    assert_eq!(images.load(Ordering::SeqCst), 10);
    let store = Store::open(&out).expect("open");
    let items = store.items().expect("items");
    let mut latents = std::collections::HashSet::new();
    for item in &items {
        let pixels = u8s(store.read_field(item, "pixels").expect("pixels"));
        let (h, w) = (item.bucket_h as usize, item.bucket_w as usize);
        let signed: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 127.5 - 1.0).collect();
        let expected = project(&signed, h, w, 4);
        let (latent, shape) = f32s(store.read_field(item, "latent").expect("latent"));
        assert_eq!(shape, [4, h / 8, w / 8]);
        for (a, b) in latent.iter().zip(&expected) {
            assert!((a - b).abs() <= b.abs() / 256.0 + 1e-6, "{a} vs {b}");
        }
        assert!(expected.iter().any(|v| v.abs() > 1e-3));
        latents.insert(item.fields["latent"].clone());
    }
    assert_eq!(latents.len(), 10, "flipped items have latents of their own");
    let inspect = store.inspect().expect("inspect");
    let text = serde_json::to_string(&inspect).expect("json");
    assert!(text.contains("latent"), "{text}");
}

#[test]
fn rerun_encodes_only_changed_items_and_a_new_identity_recomputes_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let images = Arc::new(AtomicUsize::new(0));
    run(
        &config,
        &out,
        &options(4),
        &mut latent_encoders("patch-v1", &images),
    )
    .expect("first");
    assert_eq!(images.load(Ordering::SeqCst), 5);

    let again = Arc::new(AtomicUsize::new(0));
    let report = run(
        &config,
        &out,
        &options(4),
        &mut latent_encoders("patch-v1", &again),
    )
    .expect("again");
    assert_eq!(again.load(Ordering::SeqCst), 0);
    assert_eq!(report.entries_computed, 0);

    // Edit one image: only it is encoded again.
    larder_synth::write_image(&dir.path().join("imgs/img2.png"), 64, 64, 99).expect("edit");
    let edited = Arc::new(AtomicUsize::new(0));
    run(
        &config,
        &out,
        &options(4),
        &mut latent_encoders("patch-v1", &edited),
    )
    .expect("edited");
    assert_eq!(edited.load(Ordering::SeqCst), 1);

    // Another encoder identity: every latent is recomputed; nothing stale is served.
    let other = Arc::new(AtomicUsize::new(0));
    run(
        &config,
        &out,
        &options(4),
        &mut latent_encoders("patch-v2", &other),
    )
    .expect("v2");
    assert_eq!(other.load(Ordering::SeqCst), 5);
}

#[test]
fn an_encoder_error_names_the_item_keeps_what_was_done_and_a_rerun_does_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let images = Arc::new(AtomicUsize::new(0));
    let mut failing = PatchEncoder::new("patch-v1", &images);
    failing.fail_after = Some(3);
    let mut encoders = Encoders {
        image: vec![("latent".into(), Box::new(failing))],
        ..Encoders::default()
    };
    let err = run(&config, &out, &options(1), &mut encoders).expect_err("the encoder fails");
    let message = err.to_string();
    assert!(matches!(err, Error::Encoder { .. }), "{err:?}");
    assert!(
        message.contains("latent") && message.contains("img"),
        "{message}"
    );
    assert!(message.contains("out of memory"), "{message}");
    assert_eq!(images.load(Ordering::SeqCst), 3);

    let rest = Arc::new(AtomicUsize::new(0));
    let report = run(
        &config,
        &out,
        &options(1),
        &mut latent_encoders("patch-v1", &rest),
    )
    .expect("rerun");
    assert_eq!(
        rest.load(Ordering::SeqCst),
        2,
        "only the items not done before the error"
    );
    assert_eq!(report.items, 5);
    assert!(
        Store::open(&out)
            .expect("open")
            .verify()
            .expect("verify")
            .problems
            .is_empty()
    );
}

pub(crate) fn text_encoders(captions: &Arc<AtomicUsize>) -> Encoders {
    Encoders {
        text: vec![(
            "text".into(),
            Box::new(HashText {
                captions: captions.clone(),
                fail_after: None,
            }),
        )],
        ..Encoders::default()
    }
}

fn loader(out: &Path, padding: Padding) -> Loader {
    let store = Arc::new(Store::open(out).expect("open"));
    Loader::new(
        store,
        LoaderOptions {
            batch_size: 2,
            threads: 2,
            text_padding: padding,
            ..LoaderOptions::default()
        },
    )
    .expect("loader")
}

#[test]
fn the_loader_counts_the_text_embeddings_it_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let captions = Arc::new(AtomicUsize::new(0));
    run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
    let store = Arc::new(Store::open(&out).expect("open"));
    let mut text_only = Loader::new(
        store,
        LoaderOptions {
            batch_size: 2,
            threads: 1,
            fields: Some(vec!["text".into()]),
            ..LoaderOptions::default()
        },
    )
    .expect("loader");
    let batch = text_only.next().expect("a batch").expect("readable");
    let embeds = &batch.fields["text.embeds"];
    let read = text_only.metrics().snapshot().bytes_read;
    // At least this batch's embeddings, unpadded, were read from the shards.
    assert!(
        read > 0 && read as usize >= embeds.shape[0] * 4,
        "{read} bytes"
    );
}

#[test]
fn captions_are_encoded_once_per_distinct_text_and_served_padded_with_masks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let captions = Arc::new(AtomicUsize::new(0));
    let report = run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
    // Four distinct captions ("a fish" twice) and the empty caption.
    assert_eq!((report.captions, report.captions_encoded), (5, 5));
    assert_eq!(captions.load(Ordering::SeqCst), 5);

    for padding in [Padding::Right, Padding::Left] {
        let mut seen = std::collections::HashSet::new();
        for batch in loader(&out, padding) {
            let batch = batch.expect("batch");
            let embeds = &batch.fields["text.embeds"];
            let mask = &batch.fields["text.mask"];
            let pooled = &batch.fields["text.pooled"];
            assert_eq!(embeds.dtype, "BF16");
            let (b, l) = (batch.len(), embeds.shape[1]);
            assert_eq!(embeds.shape, [b, l, DIM]);
            assert_eq!(mask.shape, [b, l]);
            assert_eq!(pooled.shape, [b, DIM]);
            for (k, caption) in batch.captions.iter().enumerate() {
                let n = tokens(caption).len();
                let row = &mask.data.as_slice()[k * l..(k + 1) * l];
                assert_eq!(row.iter().filter(|&&m| m == 1).count(), n, "{caption}");
                let real = match padding {
                    Padding::Right => 0..n,
                    Padding::Left => l - n..l,
                };
                assert!(real.clone().all(|j| row[j] == 1), "{padding:?} {row:?}");
                // The first real token is the start token's embedding (bf16 bytes).
                let bytes = embeds.data.as_slice();
                let at = (k * l + real.start) * DIM * 2;
                let first =
                    f32::from_bits(u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]])) << 16);
                let expected = token_embedding("<s>")[0];
                assert!(
                    (first - expected).abs() <= expected.abs() / 128.0,
                    "{first} vs {expected}"
                );
            }
            seen.extend(batch.items.iter().copied());
        }
        assert_eq!(seen.len(), 5);
    }

    let again = Arc::new(AtomicUsize::new(0));
    let report = run(&config, &out, &options(8), &mut text_encoders(&again)).expect("again");
    assert_eq!(
        (report.captions_encoded, again.load(Ordering::SeqCst)),
        (0, 0)
    );

    // Caption entries are referenced by caption, not by item field: gc keeps them, inspect
    // counts them (5 captions × embeds and pooled), and the store still serves them.
    let mut store = Store::open(&out).expect("open");
    let text = &store.inspect().expect("inspect").fields["text"];
    assert_eq!(text.entries, 10, "{text:?}");
    assert_eq!(store.gc().expect("gc").entries_removed, 0);
    assert!(store.verify().expect("verify").problems.is_empty());
    assert!(
        loader(&out, Padding::Right).all(|b| b.expect("batch").fields.contains_key("text.embeds"))
    );
}

#[test]
fn a_text_encoder_error_names_the_caption_and_a_rerun_encodes_only_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let captions = Arc::new(AtomicUsize::new(0));
    let mut failing = Encoders {
        text: vec![(
            "text".into(),
            Box::new(HashText {
                captions: captions.clone(),
                fail_after: Some(2),
            }),
        )],
        ..Encoders::default()
    };
    let err = run(&config, &out, &options(1), &mut failing).expect_err("fails");
    assert!(err.to_string().contains("caption"), "{err}");
    assert_eq!(captions.load(Ordering::SeqCst), 2);
    let rest = Arc::new(AtomicUsize::new(0));
    let report = run(&config, &out, &options(1), &mut text_encoders(&rest)).expect("rerun");
    assert_eq!((report.captions, report.captions_encoded), (5, 3));
    assert_eq!(rest.load(Ordering::SeqCst), 3);
    assert!(loader(&out, Padding::Right).all(|b| b.is_ok()));
}

#[test]
fn shuffled_captions_get_variants_and_dropout_serves_the_empty_caption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(
        dir.path(),
        "    shuffle_tokens: true\n    caption_dropout_rate: 0.3\n",
    );
    let out = dir.path().join("store");
    let captions = Arc::new(AtomicUsize::new(0));
    let report = run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
    // More distinct strings than captions: shuffled variants, deduplicated.
    assert!(report.captions > 5, "{report:?}");
    let mut texts: std::collections::HashMap<u32, std::collections::HashSet<String>> =
        Default::default();
    let mut dropped = 0;
    let mut served = 0;
    let mut l = loader(&out, Padding::Right);
    for _ in 0..12 {
        for batch in l.by_ref() {
            let batch = batch.expect("batch");
            let mask = &batch.fields["text.mask"];
            let width = mask.shape[1];
            for (k, caption) in batch.captions.iter().enumerate() {
                served += 1;
                let ones = mask.data.as_slice()[k * width..(k + 1) * width]
                    .iter()
                    .filter(|&&m| m == 1)
                    .count();
                assert_eq!(ones, tokens(caption).len());
                if caption.is_empty() {
                    dropped += 1;
                } else {
                    texts
                        .entry(batch.items[k])
                        .or_default()
                        .insert(caption.clone());
                }
            }
        }
    }
    // 60 draws at rate 0.3: dropout happens, and not always.
    assert!((5..35).contains(&dropped), "{dropped} of {served}");
    // The three-token caption shows more than one variant across epochs, at most K = 3.
    let many = texts.values().map(|s| s.len()).max().unwrap_or(0);
    assert!((2..=3).contains(&many), "{texts:?}");
}

#[test]
fn a_dropped_caption_is_served_the_trigger_word_embedding_as_ai_toolkit_caches_it() {
    // AI Toolkit encodes a dropped caption as the trigger word alone ("sks ", its trainer's
    // prompt for an empty caption); a regularization dataset gets the empty caption.
    for (extra, dropped, rows) in [
        ("    trigger_word: sks\n", "sks ", 2),
        ("    trigger_word: sks\n    is_reg: true\n", "", 1),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dataset(
            dir.path(),
            &format!("{extra}    caption_dropout_rate: 1.0\n"),
        );
        let out = dir.path().join("store");
        let captions = Arc::new(AtomicUsize::new(0));
        run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
        let mut served = 0;
        for batch in loader(&out, Padding::Right) {
            let batch = batch.expect("batch");
            // The caption behind each embedding, and its rows: the dropout caption's tokens.
            let mask = &batch.fields["text.mask"];
            assert_eq!(mask.shape[1], rows, "{extra}");
            assert!(mask.data.as_slice().iter().all(|&m| m == 1));
            for caption in &batch.captions {
                served += 1;
                assert_eq!(caption, dropped, "{extra}");
            }
        }
        assert_eq!(served, 5 + 1, "five items and a filled tail");
    }
}

#[test]
fn a_store_without_its_dropout_caption_is_refused_at_open_and_a_rerun_encodes_only_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As a store prepared by an earlier larder, which recorded the dataset's dropout but
    // encoded no dropout caption: prepared without dropout, then the recipe says it drops.
    let config = dataset(dir.path(), "    trigger_word: sks\n");
    let out = dir.path().join("store");
    let captions = Arc::new(AtomicUsize::new(0));
    run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
    crate::load::edit_catalog(
        &out,
        "UPDATE datasets SET caption_recipe = json_set(caption_recipe, '$.caption_dropout_rate', 0.5);",
    );
    let store = Arc::new(Store::open(&out).expect("open"));
    let err = Loader::new(store, LoaderOptions::default()).expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("\"sks \"") && message.contains("larder prepare"),
        "{message}"
    );
    let config = dataset(
        dir.path(),
        "    trigger_word: sks\n    caption_dropout_rate: 0.5\n",
    );
    let again = Arc::new(AtomicUsize::new(0));
    let report = run(&config, &out, &options(8), &mut text_encoders(&again)).expect("rerun");
    assert_eq!(report.captions_encoded, 1);
    assert_eq!(again.load(Ordering::SeqCst), 1);
    assert!(loader(&out, Padding::Right).all(|b| b.is_ok()));
}

/// The caption variants a store serves per item, over enough epochs to see every variant.
fn served_variants(
    out: &Path,
) -> std::collections::BTreeMap<u32, std::collections::BTreeSet<String>> {
    let mut texts: std::collections::BTreeMap<u32, std::collections::BTreeSet<String>> =
        Default::default();
    let mut l = loader(out, Padding::Right);
    for _ in 0..30 {
        for batch in l.by_ref() {
            let batch = batch.expect("batch");
            for (k, caption) in batch.captions.iter().enumerate() {
                texts
                    .entry(batch.items[k])
                    .or_default()
                    .insert(caption.clone());
            }
        }
    }
    texts
}

#[test]
fn the_dataset_seed_draws_the_prepared_caption_variants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut by_seed = Vec::new();
    for (n, seed) in [1, 1, 2, 3].into_iter().enumerate() {
        let root = dir.path().join(format!("run{n}"));
        let config = dataset(
            &root,
            &format!("    shuffle_tokens: true\n    seed: {seed}\n"),
        );
        let out = root.join("store");
        let captions = Arc::new(AtomicUsize::new(0));
        run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
        by_seed.push(served_variants(&out));
    }
    // The same seed prepares the same variants; other seeds draw others.
    assert_eq!(by_seed[0], by_seed[1]);
    assert!(
        by_seed[0] != by_seed[2] || by_seed[0] != by_seed[3],
        "{by_seed:?}"
    );
}

#[test]
fn a_cache_the_config_asks_for_without_its_encoder_is_a_warning_of_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(
        dir.path(),
        "    cache_latents_to_disk: true\n    cache_text_embeddings: true\n",
    );
    let out = dir.path().join("store");
    let report = run(&config, &out, &options(8), &mut Encoders::default()).expect("prepare");
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("cached latents"),
        "{:?}",
        report.warnings
    );
    assert!(
        report.warnings[1].contains("cached text embeddings"),
        "{:?}",
        report.warnings
    );
    for w in &report.warnings {
        assert!(w.contains("imgs") && w.contains("docs/encoders.md"), "{w}");
    }
    // Given a latent encoder, only the text embeddings are missing.
    let images = Arc::new(AtomicUsize::new(0));
    let report = run(
        &config,
        &out,
        &options(8),
        &mut latent_encoders("v1", &images),
    )
    .expect("prepare");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("cached text embeddings"));
}

#[test]
fn clip_encoders_see_the_whole_image_clip_normalized() {
    struct Mean {
        seen: Arc<std::sync::Mutex<Vec<Vec<usize>>>>,
    }
    impl ImageEncoder for Mean {
        fn identity(&self) -> EncoderIdentity {
            EncoderIdentity::new("channel-mean")
        }
        fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError> {
            let [n, c, h, w] = batch.shape[..] else {
                return Err(format!("expected N×C×H×W, got {:?}", batch.shape).into());
            };
            self.seen.lock().expect("lock").push(batch.shape.clone());
            let PixelValues::F32(v) = batch.values else {
                return Err("expected f32".into());
            };
            let plane = h * w;
            let values = (0..n * c)
                .map(|i| v[i * plane..(i + 1) * plane].iter().sum::<f32>() / plane as f32)
                .collect();
            Ok(EncodedTensor {
                shape: vec![n, c],
                values,
            })
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut encoders = Encoders {
        clip: vec![("clip".into(), Box::new(Mean { seen: seen.clone() }))],
        ..Encoders::default()
    };
    let mut opts = options(8);
    opts.clip.size = 32;
    run(&config, &out, &opts, &mut encoders).expect("prepare");
    let shapes = seen.lock().expect("lock").clone();
    assert_eq!(shapes.iter().map(|s| s[0]).sum::<usize>(), 5);
    assert!(shapes.iter().all(|s| s[1..] == [3, 32, 32]), "{shapes:?}");
    let store = Store::open(&out).expect("open");
    for item in store.items().expect("items") {
        let (v, shape) = f32s(store.read_field(&item, "clip").expect("clip"));
        assert_eq!(shape, [3]);
        // Synthetic images are mid-range colours: normalized means stay within CLIP's range.
        assert!(v.iter().all(|x| x.abs() < 2.2), "{v:?}");
        assert!(v.iter().any(|x| x.abs() > 1e-3));
    }
}

/// A CLIP encoder that returns what it is given, so a test can look at CLIP's input; counts
/// the images it encodes.
struct ClipInput(Arc<AtomicUsize>);

impl ImageEncoder for ClipInput {
    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity::new("clip-input")
    }
    fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError> {
        let PixelValues::F32(values) = batch.values else {
            return Err("expected f32".into());
        };
        self.0.fetch_add(batch.shape[0], Ordering::SeqCst);
        let per = values.len() / batch.shape[0].max(1);
        Ok(EncodedTensor {
            shape: vec![batch.shape[0], per],
            values,
        })
    }
}

/// A 96×32 reference image of three 32-pixel bands: red, green, blue from left to right.
fn bands(path: &Path) {
    let band = |x: u32| match x / 32 {
        0 => image::Rgb([255, 0, 0]),
        1 => image::Rgb([0, 255, 0]),
        _ => image::Rgb([0, 0, 255]),
    };
    std::fs::create_dir_all(path.parent().expect("folder")).expect("create folder");
    image::RgbImage::from_fn(96, 32, |x, _| band(x))
        .save(path)
        .expect("write reference image");
}

/// The RGB colour at column `x` of the middle row of a stored CLIP input of `size`², undoing
/// CLIP's normalization.
fn clip_colour(v: &[f32], size: usize, x: usize) -> [f32; 3] {
    let at = |c: usize| v[(c * size + size / 2) * size + x] * CLIP_STD[c] + CLIP_MEAN[c];
    [at(0), at(1), at(2)]
}

fn near(got: [f32; 3], want: [f32; 3]) -> bool {
    got.iter().zip(want).all(|(g, w)| (g - w).abs() < 0.03)
}

#[test]
fn clip_image_path_gives_clip_encoders_each_items_reference_squared_as_ai_toolkit_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refs = dir.path().join("refs");
    // References for img0 and img1 (img1's a WebP: any image extension pairs), none for the
    // other three.
    bands(&refs.join("img0.png"));
    bands(&refs.join("img1.webp"));
    let size = 16;
    let count = Arc::new(AtomicUsize::new(0));
    let prepare = |extra: &str, out: &str| {
        let config = dataset(dir.path(), &format!("    clip_image_path: refs\n{extra}"));
        let mut encoders = Encoders {
            clip: vec![("clip".into(), Box::new(ClipInput(count.clone())))],
            ..Encoders::default()
        };
        let mut opts = options(8);
        opts.clip.size = size as u32;
        let report = run(&config, &dir.path().join(out), &opts, &mut encoders).expect("prepare");
        let store = Store::open(dir.path().join(out)).expect("open");
        let clips: Vec<(PathBuf, larder::Flip, Vec<f32>)> = (store.items().expect("items").iter())
            .map(|item| {
                let (v, shape) = f32s(store.read_field(item, "clip").expect("clip"));
                assert_eq!(shape, [3 * size * size]);
                (PathBuf::from(&item.path), item.flip, v)
            })
            .collect();
        (report, clips)
    };
    let (red, green, blue) = ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]);

    // Squished (AI Toolkit's default): the whole reference, its three bands side by side.
    let (report, clips) = prepare("", "squish");
    let stem = |p: &Path| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned()
    };
    let names: Vec<String> = clips.iter().map(|(p, _, _)| stem(p)).collect();
    assert_eq!(names, ["img0", "img1"], "{names:?}");
    for (_, _, v) in &clips {
        assert!(
            near(clip_colour(v, size, 0), red),
            "{:?}",
            clip_colour(v, size, 0)
        );
        assert!(near(clip_colour(v, size, size / 2), green));
        assert!(near(clip_colour(v, size, size - 1), blue));
    }
    // The scan says which item has no reference; prepare leaves it out, naming the folder.
    let missing: Vec<_> = (report.findings.iter())
        .filter(|f| f.kind == larder::FindingKind::MissingClipImage)
        .map(|f| stem(&f.path))
        .collect();
    assert_eq!(missing, ["img2", "img3", "img4"]);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.detail.contains("no readable CLIP image") && f.detail.contains("refs")),
        "{:?}",
        report.findings
    );

    // square_crop: the middle of the reference, all green; flipped items see it flipped.
    let (_, clips) = prepare("    square_crop: true\n", "crop");
    for (_, _, v) in &clips {
        for x in [0, size / 2, size - 1] {
            assert!(
                near(clip_colour(v, size, x), green),
                "{:?}",
                clip_colour(v, size, x)
            );
        }
    }
    let (_, clips) = prepare("    flip_x: true\n", "flip");
    let flipped: Vec<_> = (clips.iter())
        .filter(|(_, flip, _)| *flip == larder::Flip::X)
        .collect();
    assert_eq!(flipped.len(), 2);
    for (_, _, v) in flipped {
        assert!(near(clip_colour(v, size, 0), blue) && near(clip_colour(v, size, size - 1), red));
    }

    // An encoder that takes u8 pixels gets the squared reference at its own size (32², the
    // reference's shorter side), one per batch, to preprocess as it likes.
    struct Unprocessed(Arc<std::sync::Mutex<Vec<Vec<usize>>>>);
    impl ImageEncoder for Unprocessed {
        fn identity(&self) -> EncoderIdentity {
            EncoderIdentity::new("own-processor")
        }
        fn pixel_format(&self) -> larder::encode::PixelFormat {
            larder::encode::PixelFormat::U8
        }
        fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError> {
            let PixelValues::U8(values) = batch.values else {
                return Err("expected u8".into());
            };
            self.0.lock().expect("lock").push(batch.shape.clone());
            Ok(EncodedTensor {
                shape: vec![1, values.len()],
                values: values.into_iter().map(f32::from).collect(),
            })
        }
    }
    let shapes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let config = dataset(dir.path(), "    clip_image_path: refs\n");
    let mut encoders = Encoders {
        clip: vec![("clip".into(), Box::new(Unprocessed(shapes.clone())))],
        ..Encoders::default()
    };
    let raw = dir.path().join("raw");
    run(&config, &raw, &options(8), &mut encoders).expect("prepare");
    assert_eq!(*shapes.lock().expect("lock"), vec![vec![1, 3, 32, 32]; 2]);
    let store = Store::open(&raw).expect("open");
    for item in store.items().expect("items") {
        let (v, _) = f32s(store.read_field(&item, "clip").expect("clip"));
        let at = |c: usize, x: usize| v[(c * 32 + 16) * 32 + x];
        assert_eq!([at(0, 0), at(1, 0), at(2, 0)], [255.0, 0.0, 0.0]);
        assert_eq!([at(0, 16), at(1, 16), at(2, 16)], [0.0, 255.0, 0.0]);
        assert_eq!([at(0, 31), at(1, 31), at(2, 31)], [0.0, 0.0, 255.0]);
    }

    // The entry is the reference's: a new item image reuses it, a new reference re-encodes it.
    let before = count.load(Ordering::SeqCst);
    larder_synth::write_image(&dir.path().join("imgs/img0.png"), 64, 64, 99).expect("image");
    prepare("", "squish");
    assert_eq!(count.load(Ordering::SeqCst), before);
    image::RgbImage::from_pixel(40, 20, image::Rgb([0, 0, 255]))
        .save(refs.join("img0.png"))
        .expect("write reference image");
    let (_, clips) = prepare("", "squish");
    assert_eq!(count.load(Ordering::SeqCst), before + 1);
    assert!(near(clip_colour(&clips[0].2, size, 0), blue));
}

#[test]
fn without_cached_clip_embeddings_each_item_carries_its_squared_clip_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    bands(&dir.path().join("refs/img0.png"));
    image::RgbImage::from_pixel(20, 50, image::Rgb([9, 99, 199]))
        .save(dir.path().join("refs/img2.jpg"))
        .expect("write reference image");
    let prepare = |extra: &str, out: &str, encoders: &mut Encoders| {
        let config = dataset(dir.path(), &format!("    clip_image_path: refs\n{extra}"));
        let report = run(&config, &dir.path().join(out), &options(8), encoders).expect("prepare");
        (
            report,
            Arc::new(Store::open(dir.path().join(out)).expect("open")),
        )
    };
    let (report, store) = prepare("    flip_x: true\n", "images", &mut Encoders::default());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    // Three of the five images have no CLIP image: findings, and they are kept.
    let missing = (report.findings.iter())
        .filter(|f| f.kind == larder::FindingKind::MissingClipImage)
        .count();
    assert_eq!((missing, store.items().expect("items").len()), (3, 10));
    let items = store.items().expect("items");
    let mut seen = 0;
    let loading = LoaderOptions {
        batch_size: 10,
        threads: 2,
        ..LoaderOptions::default()
    };
    for batch in Loader::new(store.clone(), loading).expect("loader") {
        let batch = batch.expect("batch");
        assert!(
            !batch.fields.contains_key("clip_image"),
            "one tensor per item"
        );
        // A batch none of whose items has a CLIP image has no such field.
        let Some(own) = batch.per_item_fields.get("clip_image") else {
            continue;
        };
        for (t, &id) in own.iter().zip(&batch.items) {
            let item = &items[id as usize];
            let flipped = item.flip == larder::Flip::X;
            let pixel = |x: usize| {
                let plane = t.shape[1] * t.shape[2];
                let at = (t.shape[1] / 2) * t.shape[2] + x;
                [0, 1, 2].map(|c| t.data.as_slice()[c * plane + at])
            };
            match Path::new(&item.path).file_stem().and_then(|s| s.to_str()) {
                // Squished to its shorter side, mirrored with a flipped item.
                Some("img0") => {
                    seen += 1;
                    assert_eq!(t.shape, [3, 32, 32]);
                    let (left, right) = if flipped {
                        ([0, 0, 255], [255, 0, 0])
                    } else {
                        ([255, 0, 0], [0, 0, 255])
                    };
                    assert_eq!((pixel(0), pixel(16), pixel(31)), (left, [0, 255, 0], right));
                }
                Some("img2") => {
                    seen += 1;
                    assert_eq!(t.shape, [3, 20, 20]);
                    let px = pixel(10);
                    assert!(
                        px.iter().zip([9, 99, 199]).all(|(a, b)| a.abs_diff(b) <= 3),
                        "{px:?}"
                    );
                }
                // No CLIP image: black, shaped like the batch's first (a gap filled, so the
                // batch still serves; the AI Toolkit drop-in gives such an item no tensor).
                _ => assert!(t.data.as_slice().iter().all(|&v| v == 0)),
            }
        }
    }
    assert_eq!(seen, 4, "img0, img2 and their flipped copies");

    // With the embeddings cached, the CLIP encoder's embeddings stand for the image, which is
    // not stored.
    let cached = "    cache_clip_vision_to_disk: true\n";
    let mut clip = Encoders {
        clip: vec![("clip".into(), Box::new(ClipInput(Arc::default())))],
        ..Encoders::default()
    };
    let (report, store) = prepare(cached, "cached", &mut clip);
    let fields = store.inspect().expect("inspect").fields;
    assert!(fields.contains_key("clip") && !fields.contains_key("clip_image"));
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // Asked for but with no CLIP encoder to compute them, the images are kept (nothing is
    // silently lost) and the run says so.
    let (report, store) = prepare(cached, "uncomputed", &mut Encoders::default());
    let fields = store.inspect().expect("inspect").fields;
    assert!(fields.contains_key("clip_image") && !fields.contains_key("clip"));
    assert!(
        report.warnings.len() == 1 && report.warnings[0].contains("cache_clip_vision_to_disk"),
        "{:?}",
        report.warnings
    );
    // A dataset without CLIP images has nothing of the kind to keep or lose: no warning.
    let config = dataset(dir.path(), cached);
    let out = dir.path().join("no-clip-images");
    let report = run(&config, &out, &options(8), &mut Encoders::default()).expect("prepare");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn bad_encoder_names_and_byte_codecs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let images = Arc::new(AtomicUsize::new(0));
    let mut enc = Encoders {
        image: vec![("pixels".into(), Box::new(PatchEncoder::new("x", &images)))],
        ..Encoders::default()
    };
    let err = run(&config, &out, &options(2), &mut enc).expect_err("reserved name");
    assert!(err.to_string().contains("pixels"), "{err}");
    // The Python batch's own keys would overwrite such a field.
    let mut enc = Encoders {
        image: vec![("index".into(), Box::new(PatchEncoder::new("x", &images)))],
        ..Encoders::default()
    };
    let err = run(&config, &out, &options(2), &mut enc).expect_err("batch metadata name");
    assert!(err.to_string().contains("\"index\""), "{err}");
    let mut opts = options(2);
    opts.latent_codec = larder::store::codec::Codec::RAW_U8;
    let err = run(&config, &out, &opts, &mut latent_encoders("x", &images)).expect_err("u8");
    assert!(err.to_string().contains("latent_codec"), "{err}");
}

#[test]
fn verify_reports_text_embeddings_lost_with_a_repaired_shard_until_prepare_restores_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dataset(dir.path(), "");
    let out = dir.path().join("store");
    let captions = Arc::new(AtomicUsize::new(0));
    run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare");
    // Break a shard that holds text embeddings: repair forgets it.
    let holder = std::fs::read_dir(out.join("shards"))
        .expect("shards")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            larder::store::SafetensorsFile::open(p)
                .expect("shard")
                .names()
                .iter()
                .any(|n| n.ends_with(".embeds"))
        })
        .expect("a shard with text embeddings");
    std::fs::write(&holder, b"broken").expect("break");
    Store::open(&out).expect("open").repair().expect("repair");

    let report = Store::open(&out).expect("open").verify().expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("embedding embeds of caption")
                && p.message.contains("larder prepare")),
        "{:?}",
        report.problems
    );
    run(&config, &out, &options(8), &mut text_encoders(&captions)).expect("prepare again");
    let report = Store::open(&out).expect("open").verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A text encoder that sees control images, as Qwen-Image-Edit's: [`HashText`]'s tokens, and
/// with controls one more token per control, from the control file's bytes. Counts the
/// captions it encodes alone and with controls.
struct ControlText {
    text: HashText,
    with_controls: Arc<AtomicUsize>,
}

impl TextEncoder for ControlText {
    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity::new("hash-text-8 with controls f32")
    }

    fn encode(&mut self, captions: &[&str]) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        self.text.encode(captions)
    }

    fn takes_controls(&self) -> bool {
        true
    }

    fn encode_with_controls(
        &mut self,
        captions: &[&str],
        controls: &[&[PathBuf]],
    ) -> Result<Vec<(String, EncodedTensor)>, EncoderError> {
        self.with_controls
            .fetch_add(captions.len(), Ordering::SeqCst);
        let mut joined = Vec::new();
        for (caption, files) in captions.iter().zip(controls) {
            let mut text = caption.to_string();
            for f in files.iter() {
                let bytes = std::fs::read(f)?;
                text.push_str(&format!(
                    ", control {:x}",
                    bytes.len() * 31 + bytes[bytes.len() / 2] as usize
                ));
            }
            joined.push(text);
        }
        let joined: Vec<&str> = joined.iter().map(String::as_str).collect();
        self.text.encode(&joined)
    }
}

#[test]
fn an_encoder_that_takes_controls_gets_one_embedding_per_caption_and_controls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctl = dir.path().join("ctl");
    for i in 0..5 {
        let path = image(&ctl, &format!("img{i}.png"), 40, 40, None);
        larder_synth::write_image(&path, 40 + 8 * i, 40, 50 + i as u64).expect("control");
    }
    // img3 and img4 share their caption ("a fish") but not their control; a dropped caption
    // is the trigger word alone.
    let config = dataset(
        dir.path(),
        "    control_path: ctl\n    trigger_word: sks\n    caption_dropout_rate: 0.5\n",
    );
    let out = dir.path().join("store");
    let (alone, with_controls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let encoders = || Encoders {
        text: vec![(
            "text".into(),
            Box::new(ControlText {
                text: HashText {
                    captions: alone.clone(),
                    fail_after: None,
                },
                with_controls: with_controls.clone(),
            }) as Box<dyn TextEncoder>,
        )],
        ..Encoders::default()
    };
    let report = run(&config, &out, &options(2), &mut encoders()).expect("prepare");
    // Five items, each with its controls (no caption variants: no random transforms); the
    // empty caption and the dropout caption "sks " alone, as AI Toolkit encodes dropouts.
    assert_eq!(with_controls.load(Ordering::SeqCst), 5);
    assert_eq!(
        alone.load(Ordering::SeqCst) - with_controls.load(Ordering::SeqCst),
        2
    );
    assert_eq!(report.captions_encoded, 7);

    // Each item is served its own embedding: the two "a fish" items differ by their control.
    // Dropout is drawn per item and epoch: over a few epochs every item keeps its caption once.
    let store = Store::open(&out).expect("open");
    let paths: Vec<String> = (store.items().expect("items").into_iter())
        .map(|i| i.path)
        .collect();
    let mut served = std::collections::BTreeMap::new();
    let mut dropped = 0;
    let mut loader = loader(&out, Padding::Right);
    for _ in 0..8 {
        for batch in loader.by_ref() {
            let batch = batch.expect("batch");
            let (embeds, mask) = (&batch.fields["text.embeds"], &batch.fields["text.mask"]);
            let rows = embeds.shape[1];
            for (k, &id) in batch.items.iter().enumerate() {
                let real = &mask.data.as_slice()[k * rows..(k + 1) * rows];
                let n = real.iter().filter(|&&m| m != 0).count();
                if batch.captions[k] == "sks " {
                    // Dropped: the trigger word alone, two tokens, without the control's.
                    assert_eq!(n, 2, "{}", paths[id as usize]);
                    dropped += 1;
                    continue;
                }
                // The start token, the caption's parts, and the control's token.
                let parts = batch.captions[k].matches(',').count() + 1;
                assert_eq!(n, 1 + parts + 1, "{}", batch.captions[k]);
                // bf16 rows of the item's real tokens (right padding: they come first).
                let own = embeds.data.as_slice()[k * rows * DIM * 2..][..n * DIM * 2].to_vec();
                served.insert(paths[id as usize].clone(), own);
            }
        }
    }
    assert!(dropped > 0);
    let fish: Vec<&Vec<u8>> = (served.iter())
        .filter(|(p, _)| p.contains("img3") || p.contains("img4"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(fish.len(), 2, "both served with their caption");
    assert_ne!(
        fish[0], fish[1],
        "same caption, other control: other embedding"
    );

    // A rerun encodes nothing; a changed control re-encodes only its item's caption.
    let report = run(&config, &out, &options(2), &mut encoders()).expect("rerun");
    assert_eq!(report.captions_encoded, 0);
    larder_synth::write_image(&ctl.join("img1.png"), 44, 40, 99).expect("new control");
    let before = with_controls.load(Ordering::SeqCst);
    let report = run(&config, &out, &options(2), &mut encoders()).expect("after an edit");
    assert_eq!(report.captions_encoded, 1);
    assert_eq!(with_controls.load(Ordering::SeqCst) - before, 1);
}
