//! Video datasets: clips found beside images, frames chosen as AI Toolkit chooses them, stored
//! as [F, 3, H, W] and served stacked; broken clips are findings.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use larder::encode::{
    EncodedTensor, EncoderError, EncoderIdentity, Encoders, ImageEncoder, PixelBatch, PixelFormat,
    PixelValues,
};
use larder::load::{Batch, Loader};
use larder::store::codec::Codec;
use larder::{
    Config, FieldData, FindingKind, Plan, Prepare, PrepareOptions, Store, Summary, prepare, scan,
};
use larder_synth::video::{Clip, Tone, frame_index, tone_sample, write_clip, write_video};

use crate::file;
use crate::load::options;

/// The index drawn into each frame of a stored [F, 3, H, W] clip (its middle row of red).
fn frame_indices(clip: &[u8], frames: usize, h: usize, w: usize) -> Vec<u32> {
    (0..frames)
        .map(|f| {
            let row = &clip[f * 3 * h * w + (h / 2) * w..][..w];
            frame_index(row)
        })
        .collect()
}

/// A video dataset: two 64x64 clips (30 fps, `frames` long) and one image, with `settings`.
fn video_dataset(root: &Path, settings: &str) -> std::path::PathBuf {
    let dir = root.join("clips");
    std::fs::create_dir_all(&dir).expect("folder");
    write_video(&dir.join("long.mp4"), 64, 64, 90, 30, 1).expect("clip");
    write_video(&dir.join("short.mp4"), 64, 64, 20, 30, 2).expect("clip");
    larder_synth::write_image(&dir.join("still.png"), 64, 64, 3).expect("image");
    file(
        root,
        "v.yaml",
        &format!(
            "datasets:\n  - folder_path: clips\n    resolution: [64]\n    default_caption: a clip\n{settings}"
        ),
    )
}

fn prepared(config: &Path, out: &Path) -> (Arc<Store>, larder::PrepareReport) {
    let report = prepare(
        &Config::load(config).expect("config"),
        out,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    (Arc::new(Store::open(out).expect("open")), report)
}

/// Every batch of one epoch.
fn epoch(store: &Arc<Store>, batch_size: u32) -> Vec<Batch> {
    Loader::new(store.clone(), options(batch_size, 2))
        .expect("loader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// The frames each clip of the store was stored with, read from their pixels, by file name.
fn stored_frames(store: &Arc<Store>) -> BTreeMap<String, Vec<u32>> {
    let items = store.items().expect("items");
    let mut out = BTreeMap::new();
    for batch in epoch(store, 1) {
        let pixels = &batch.fields["pixels"];
        if pixels.shape.len() == 5 {
            let (f, h, w) = (pixels.shape[1], pixels.shape[3], pixels.shape[4]);
            let item = &items[batch.items[0] as usize];
            let name = Path::new(&item.path).file_name().expect("name");
            out.insert(
                name.to_string_lossy().into_owned(),
                frame_indices(pixels.data.as_slice(), f, h, w),
            );
        }
    }
    out
}

#[test]
fn clips_are_stored_with_the_frames_ai_toolkit_chooses_and_images_are_single_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = video_dataset(dir.path(), "    num_frames: 5\n");
    let (store, report) = prepared(&config, &dir.path().join("store"));
    assert_eq!(report.items, 3, "{:#?}", report.findings);
    // The scan's summary labels clip buckets as AI Toolkit keys them.
    let loaded = Config::load(&config).expect("config");
    let scanned = scan(&loaded).expect("scan");
    let summary = Summary::new(
        &loaded,
        &scanned,
        &Plan::new(&loaded, &scanned).expect("plan"),
    );
    let labels: Vec<(&str, usize)> = (summary.buckets.iter())
        .map(|b| (b.bucket.as_str(), b.count))
        .collect();
    assert_eq!(labels, [("64x64x5f", 2), ("64x64", 1)]);
    // Spread over each clip: 89 / 4 = 22.25 apart; 19 / 4 = 4.75 apart.
    assert_eq!(
        stored_frames(&store),
        BTreeMap::from([
            ("long.mp4".to_owned(), vec![0, 22, 44, 67, 89]),
            ("short.mp4".to_owned(), vec![0, 5, 10, 14, 19]),
        ])
    );
    let items = store.items().expect("items");
    let long = items
        .iter()
        .find(|i| i.path.ends_with("long.mp4"))
        .expect("long");
    assert_eq!(long.frames.as_deref(), Some(&[0, 22, 44, 67, 89][..]));
    let still = items
        .iter()
        .find(|i| i.path.ends_with("still.png"))
        .expect("image");
    assert_eq!(still.frames, None);
    // Clips of one length batch together, stacked [B, F, 3, H, W]; the image apart, as AI
    // Toolkit keys its buckets `64x64x5f` and `64x64`.
    let mut shapes: Vec<Vec<usize>> = epoch(&store, 4)
        .iter()
        .map(|b| b.fields["pixels"].shape.clone())
        .collect();
    shapes.sort();
    assert_eq!(shapes, [vec![1, 3, 64, 64], vec![2, 5, 3, 64, 64]]);
}

#[test]
fn frames_at_fps_and_auto_frame_count_follow_ai_toolkit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 30 fps clips taken at 15 fps: every other frame, from a start drawn from the seed.
    let config = video_dataset(
        dir.path(),
        "    num_frames: 4\n    shrink_video_to_frames: false\n    fps: 15\n",
    );
    let (store, _) = prepared(&config, &dir.path().join("at-fps"));
    let frames = stored_frames(&store);
    let long = &frames["long.mp4"];
    assert!(long.windows(2).all(|w| w[1] - w[0] == 2), "{long:?}");
    assert!(long[3] <= 89);
    assert_eq!(frames["short.mp4"].len(), 4);
    // The same seed, the same start; the store records what it chose.
    let (again, _) = prepared(&config, &dir.path().join("again"));
    assert_eq!(stored_frames(&again), frames);

    // auto_frame_count: 3 s at 16 fps with Wan's temporal compression of 4 is 45 frames
    // ((48 − 1) // 4 · 4 + 1), taken at the dataset's rate from the start.
    let config = video_dataset(
        dir.path(),
        "    auto_frame_count: true\n    fps: 16\nmodel:\n  arch: wan21\n",
    );
    let (store, _) = prepared(&config, &dir.path().join("auto"));
    let frames = stored_frames(&store);
    let long = &frames["long.mp4"];
    assert_eq!(long.len(), 45);
    assert_eq!(&long[..5], [0, 2, 4, 6, 8]);
    // 20 frames at 30 fps are 0.67 s: 10 frames at 16 fps → (10 − 1) // 4 · 4 + 1 = 9.
    assert_eq!(frames["short.mp4"].len(), 9);
}

#[test]
fn a_prepare_again_reuses_every_clip_and_other_frames_are_other_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = video_dataset(dir.path(), "    num_frames: 3\n");
    let out = dir.path().join("store");
    let (_, first) = prepared(&config, &out);
    assert_eq!(first.entries_computed, 3);
    let (_, again) = prepared(&config, &out);
    assert_eq!((again.entries_computed, again.entries_reused), (0, 3));
    let config = video_dataset(dir.path(), "    num_frames: 4\n");
    let (store, other) = prepared(&config, &out);
    assert_eq!(
        other.entries_computed, 2,
        "the image is the same; both clips are not"
    );
    assert_eq!(stored_frames(&store)["short.mp4"], [0, 6, 13, 19]);
}

#[test]
fn broken_clips_are_findings_and_clips_outside_video_datasets_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clips = dir.path().join("clips");
    std::fs::create_dir_all(&clips).expect("folder");
    write_video(&clips.join("good.mp4"), 64, 64, 30, 30, 3).expect("clip");
    let bytes = std::fs::read(clips.join("good.mp4")).expect("read");
    std::fs::write(clips.join("cut.mp4"), &bytes[..bytes.len() / 2]).expect("write");
    std::fs::write(clips.join("empty.mov"), b"").expect("write");
    std::fs::write(clips.join("text.webm"), b"not a video, only words").expect("write");
    let config = file(
        dir.path(),
        "v.yaml",
        "datasets:\n  - folder_path: clips\n    num_frames: 3\n",
    );
    let report = scan(&Config::load(&config).expect("config")).expect("scan");
    assert_eq!(report.datasets[0].images.len(), 1, "{:#?}", report.findings);
    let kinds: BTreeMap<String, FindingKind> = report
        .findings
        .iter()
        .map(|f| {
            let name = f
                .path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, f.kind)
        })
        .collect();
    assert_eq!(kinds["empty.mov"], FindingKind::Empty);
    assert_eq!(kinds["text.webm"], FindingKind::Corrupt);
    assert!(
        matches!(
            kinds["cut.mp4"],
            FindingKind::Truncated | FindingKind::Corrupt
        ),
        "{kinds:?}"
    );
    // An image dataset (one frame) reads no videos, as AI Toolkit; larder says so.
    let config = file(dir.path(), "i.yaml", "datasets:\n  - folder_path: clips\n");
    let report = scan(&Config::load(&config).expect("config")).expect("scan");
    assert!(report.datasets[0].images.is_empty());
    let good = report
        .findings
        .iter()
        .find(|f| f.path.ends_with("good.mp4"))
        .expect("finding");
    assert_eq!(good.kind, FindingKind::Unsupported);
    assert!(good.detail.contains("num_frames"), "{}", good.detail);
}

#[test]
fn video_settings_are_checked_and_the_model_sets_the_frame_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("clips")).expect("folder");
    let load = |text: &str| Config::load(file(dir.path(), "v.yaml", text));
    for (bad, key) in [
        ("    num_frames: 0\n", "num_frames"),
        ("    fps: -3\n", "fps"),
        (
            "    shrink_video_to_frames: often\n",
            "shrink_video_to_frames",
        ),
    ] {
        let err = load(&format!("datasets:\n  - folder_path: clips\n{bad}"))
            .expect_err(bad)
            .to_string();
        assert!(err.contains(&format!("datasets[0].{key}")), "{err}");
    }
    let frames = |text: &str| load(text).expect("config").datasets[0].frames;
    // Wan's VAE compresses time by 4; AI Toolkit's default is 8; larder's key says it outright.
    let wan = frames("model:\n  arch: wan22_14b\ndatasets:\n  - folder_path: clips\n");
    assert_eq!(wan.temporal_compression, 4);
    let other = frames("model:\n  arch: ltx2\ndatasets:\n  - folder_path: clips\n");
    assert_eq!(other.temporal_compression, 8);
    let set = frames("larder:\n  temporal_compression: 6\ndatasets:\n  - folder_path: clips\n");
    assert_eq!(set.temporal_compression, 6);
    // MiniMax H3 counts frames on a grid of its own, which auto_frame_count would need.
    let err = load("model:\n  arch: minimax_h3\ndatasets:\n  - folder_path: clips\n    auto_frame_count: true\n")
        .expect_err("minimax")
        .to_string();
    assert!(
        err.contains("auto_frame_count") && err.contains("minimax_h3"),
        "{err}"
    );
}

/// An image encoder that returns its input as floats, shape and all, and records the shapes it
/// was given; it asks for pixels in `format`.
struct Echo {
    shapes: Arc<Mutex<Vec<Vec<usize>>>>,
    format: PixelFormat,
}

impl ImageEncoder for Echo {
    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity::new("echo")
    }

    fn pixel_format(&self) -> PixelFormat {
        self.format
    }

    fn encode(&mut self, batch: PixelBatch) -> Result<EncodedTensor, EncoderError> {
        self.shapes.lock().expect("lock").push(batch.shape.clone());
        let values = match batch.values {
            PixelValues::U8(values) => values.into_iter().map(f32::from).collect(),
            PixelValues::F32(values) => values,
        };
        Ok(EncodedTensor {
            shape: batch.shape,
            values,
        })
    }
}

#[test]
fn do_i2v_encodes_each_clips_first_chosen_frame_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Frames at 10 fps from a drawn start: the first chosen frame is rarely frame 0.
    let settings = "    num_frames: 5\n    shrink_video_to_frames: false\n    fps: 10\n";
    let config = video_dataset(dir.path(), &format!("{settings}    do_i2v: true\n"));
    let out = dir.path().join("store");
    let shapes = Arc::new(Mutex::new(Vec::new()));
    let run = |config: &Path| -> larder::PrepareReport {
        let mut encoders = Encoders {
            image: vec![(
                "latent".into(),
                Box::new(Echo {
                    shapes: shapes.clone(),
                    format: PixelFormat::U8,
                }),
            )],
            ..Encoders::default()
        };
        Prepare::new(&Config::load(config).expect("config"))
            .options(PrepareOptions {
                latent_codec: Codec::parse("f32").expect("codec"),
                ..PrepareOptions::default()
            })
            .encoders(&mut encoders)
            .run(&out)
            .expect("prepare")
    };
    let report = run(&config);
    assert_eq!(report.items, 3, "{:#?}", report.findings);
    let store = Arc::new(Store::open(&out).expect("open"));
    let clips: Vec<_> = (store.items().expect("items").into_iter())
        .filter(|i| i.frames.is_some())
        .collect();
    assert_eq!(clips.len(), 2);
    for item in &clips {
        let (clip, shape) = floats(store.read_field(item, "latent").expect("latent"));
        assert_eq!(shape, [5, 3, 64, 64]);
        let (first, shape) = floats(store.read_field(item, "latent.first_frame").expect("first"));
        assert_eq!(shape, [3, 64, 64]);
        // The clip's first frame, encoded alone: the same values as frame 0 of its latents,
        // and the index drawn into it is the first frame the clip trains with.
        assert_eq!(first[..], clip[..3 * 64 * 64]);
        let row: Vec<u8> = first[32 * 64..33 * 64].iter().map(|&v| v as u8).collect();
        let chosen = item.frames.as_ref().expect("frames")[0];
        assert_eq!(u64::from(frame_index(&row)), chosen);
    }
    assert!(
        clips
            .iter()
            .any(|i| i.frames.as_ref().expect("frames")[0] > 0)
    );
    // Images are not clips: no first-frame latents.
    let still = (store.items().expect("items").into_iter())
        .find(|i| i.path.ends_with("still.png"))
        .expect("image");
    assert!(store.read_field(&still, "latent.first_frame").is_err());
    // The encoder saw the clips whole, the image, then the first frames as images.
    let seen = std::mem::take(&mut *shapes.lock().expect("lock"));
    let clip_count = clips.len();
    assert!(seen.contains(&vec![clip_count, 5, 3, 64, 64]), "{seen:?}");
    assert!(seen.contains(&vec![1, 3, 64, 64]), "{seen:?}");
    assert!(seen.contains(&vec![clip_count, 3, 64, 64]), "{seen:?}");
    // Batches of clips carry the field, stacked [B, 3, H, W].
    let batches = epoch(&store, 4);
    let with: Vec<&Vec<usize>> = (batches.iter())
        .filter_map(|b| b.fields.get("latent.first_frame").map(|t| &t.shape))
        .collect();
    assert_eq!(with, [&vec![clip_count, 3, 64, 64]]);
    // Without do_i2v the latents are reused and the field is gone; with it again, reused too.
    let plain = video_dataset(dir.path(), settings);
    let again = run(&plain);
    assert_eq!(again.entries_computed, 0);
    let store = Store::open(&out).expect("open");
    let item = (store.items().expect("items").into_iter())
        .find(|i| i.frames.is_some())
        .expect("clip");
    assert!(store.read_field(&item, "latent.first_frame").is_err());
    let back = run(&video_dataset(
        dir.path(),
        &format!("{settings}    do_i2v: true\n"),
    ));
    assert_eq!(back.entries_computed, 0);
    assert!(shapes.lock().expect("lock").is_empty());
}

fn floats(data: FieldData) -> (Vec<f32>, Vec<usize>) {
    match data {
        FieldData::F32 { values, shape } => (values, shape),
        FieldData::U8 { .. } => panic!("expected floats"),
    }
}

#[test]
fn a_clip_recorded_sideways_is_read_upright_as_its_container_asks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clips = dir.path().join("clips");
    std::fs::create_dir_all(&clips).expect("folder");
    // Stored 64 wide and 32 tall; played turned 90° clockwise: 32 wide, 64 tall.
    let clip = Clip {
        width: 64,
        height: 32,
        frames: 20,
        fps: 30,
        seed: 4,
        rotate: 90,
        audio: None,
    };
    write_clip(&clips.join("phone.mp4"), &clip).expect("clip");
    let config = file(
        dir.path(),
        "r.yaml",
        "datasets:\n  - folder_path: clips\n    resolution: [64]\n    num_frames: 3\n    default_caption: a clip\n",
    );
    let loaded = Config::load(&config).expect("config");
    let scanned = scan(&loaded).expect("scan");
    let clip = &scanned.datasets[0].images[0];
    let video = clip.video.expect("a clip");
    assert_eq!((clip.width, clip.height, video.rotation), (32, 64, 90));
    let (store, report) = prepared(&config, &dir.path().join("store"));
    assert_eq!(report.items, 1, "{:#?}", report.findings);
    let batch = epoch(&store, 1).remove(0);
    let pixels = &batch.fields["pixels"];
    let [_, f, _, h, w] = pixels.shape[..] else {
        panic!("not a clip: {:?}", pixels.shape)
    };
    assert_eq!((f, h, w), (3, 64, 32));
    // Turned clockwise, the stored frame's middle row (its bar code, left to right) is the
    // upright frame's middle column, top to bottom (OpenCV, AI Toolkit's reader, shows this
    // file the same way: 32x64, the bar code down its middle column, most significant bit on
    // top; checked by hand with opencv-python-headless 5.1).
    let data = pixels.data.as_slice();
    let indices: Vec<u32> = (0..f)
        .map(|k| {
            let red = &data[k * 3 * h * w..][..h * w];
            let column: Vec<u8> = (0..h).map(|y| red[y * w + w / 2]).collect();
            frame_index(&column)
        })
        .collect();
    assert_eq!(indices, [0, 10, 19]);
}

#[test]
fn a_clip_encoder_sees_a_clips_first_chosen_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = "    num_frames: 5\n    shrink_video_to_frames: false\n    fps: 10\n";
    let config = video_dataset(dir.path(), settings);
    let out = dir.path().join("store");
    let shapes = Arc::new(Mutex::new(Vec::new()));
    let mut encoders = Encoders {
        clip: vec![(
            "clip".into(),
            Box::new(Echo {
                shapes: shapes.clone(),
                // CLIP-normalized f32, larder preprocessing.
                format: PixelFormat::SignedUnit,
            }),
        )],
        ..Encoders::default()
    };
    let mut options = PrepareOptions {
        latent_codec: Codec::parse("f32").expect("codec"),
        ..PrepareOptions::default()
    };
    // The clips' own size: CLIP's resize and crop leave the frame as it is.
    options.clip.size = 64;
    let report = Prepare::new(&Config::load(&config).expect("config"))
        .options(options)
        .encoders(&mut encoders)
        .run(&out)
        .expect("prepare");
    assert_eq!(report.items, 3, "{:#?}", report.findings);
    // One image per item, clips and the still alike.
    let seen = shapes.lock().expect("lock").clone();
    assert!(seen.iter().all(|s| s[1..] == [3, 64, 64]), "{seen:?}");
    assert_eq!(seen.iter().map(|s| s[0]).sum::<usize>(), 3);
    let store = Store::open(&out).expect("open");
    let mut firsts = Vec::new();
    for item in store.items().expect("items") {
        let Some(frames) = &item.frames else { continue };
        firsts.push(frames[0]);
        let (clip, shape) = floats(store.read_field(&item, "clip").expect("clip"));
        assert_eq!(shape, [3, 64, 64]);
        // The red plane's middle row, CLIP's normalization undone.
        let [mean, std] = [larder::encode::CLIP_MEAN[0], larder::encode::CLIP_STD[0]];
        let row: Vec<u8> = clip[32 * 64..33 * 64]
            .iter()
            .map(|v| ((v * std + mean) * 255.0).round() as u8)
            .collect();
        assert_eq!(u64::from(frame_index(&row)), frames[0], "{}", item.path);
    }
    // Not simply each clip's frame 0.
    assert_eq!(firsts.len(), 2);
    assert!(firsts.iter().any(|&f| f > 0), "{firsts:?}");
}

#[test]
fn do_audio_stores_the_audio_under_the_chosen_frames_stretched_to_the_training_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clips = dir.path().join("clips");
    std::fs::create_dir_all(&clips).expect("folder");
    let tone = Tone {
        rate: 8000,
        channels: 2,
        samples: 16_000,
    };
    let talk = Clip {
        width: 64,
        height: 64,
        frames: 60,
        fps: 30,
        seed: 5,
        rotate: 0,
        audio: Some(tone),
    };
    write_clip(&clips.join("talk.mov"), &talk).expect("clip");
    write_video(&clips.join("silent.mp4"), 64, 64, 60, 30, 6).expect("clip");
    // 5 frames 3 apart (10 of the clip's 30 fps) from a drawn start: 13 frames of source,
    // 0.433 s, trained as 5 frames at 10 fps, 0.5 s.
    let config = file(
        dir.path(),
        "a.yaml",
        "datasets:\n  - folder_path: clips\n    resolution: [64]\n    num_frames: 5\n    shrink_video_to_frames: false\n    fps: 10\n    do_audio: true\n    default_caption: a clip\n",
    );
    let (store, report) = prepared(&config, &dir.path().join("store"));
    assert_eq!(report.items, 2, "{:#?}", report.findings);
    let items = store.items().expect("items");
    let talk = items
        .iter()
        .find(|i| i.path.ends_with("talk.mov"))
        .expect("talk");
    let frames = talk.frames.as_ref().expect("frames");
    let (waveform, shape) = floats(store.read_field(talk, "audio").expect("audio"));
    assert_eq!(shape, [2, 4000], "0.5 s at 8 kHz");
    let (rate, shape) = floats(store.read_field(talk, "audio.sample_rate").expect("rate"));
    assert_eq!((rate, shape), (vec![8000.0], vec![]));
    // The window starts at the first chosen frame's time, round(f / 30 · 8000), and ends at
    // the sample before the last chosen frame's successor; in between it is stretched.
    let start = (frames[0] as f64 / 30.0 * 8000.0).round_ties_even() as u32;
    let end = ((frames[4] + 1) as f64 / 30.0 * 8000.0).round_ties_even() as u32;
    let (left, right) = waveform.split_at(4000);
    let sample = |i: u32, c: u16| f32::from(tone_sample(i, c)) / 32_768.0;
    assert_eq!(left[0], sample(start, 0));
    assert_eq!(right[0], sample(start, 1));
    assert_eq!(left[3999], sample(end - 1, 0));
    assert!(
        left.windows(2).all(|w| w[1] >= w[0]),
        "the stretched ramp still rises"
    );
    assert!(frames[0] > 0, "a drawn start: {frames:?}");
    // A clip without an audio track has none stored.
    let silent = items
        .iter()
        .find(|i| i.path.ends_with("silent.mp4"))
        .expect("silent");
    assert!(store.read_field(silent, "audio").is_err());
    // Batches carry each clip's audio as its own tensor, and the rates stacked; in a batch
    // with a clip that has audio, one without gets silence of the same length and rate 0, as
    // AI Toolkit's batch fills it with zeros.
    let batch = epoch(&store, 2).remove(0);
    let audio = &batch.per_item_fields["audio"];
    assert_eq!(audio.len(), 2);
    assert!(audio.iter().all(|t| t.shape == [2, 4000]));
    let rates: Vec<f32> = (batch.fields["audio.sample_rate"].data.as_slice())
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let k = batch
        .items
        .iter()
        .position(|&id| id as u64 == silent.id)
        .expect("silent in the batch");
    assert_eq!(rates[k], 0.0);
    assert_eq!(rates[1 - k], 8000.0);
    assert!(audio[k].data.as_slice().iter().all(|&b| b == 0));
    assert!(audio[1 - k].data.as_slice().iter().any(|&b| b != 0));
    // Nothing is decoded again.
    let (_, again) = prepared(&config, &dir.path().join("store"));
    assert_eq!(again.entries_computed, 0);
}
