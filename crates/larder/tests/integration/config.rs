//! Reading configs: AI Toolkit job files, `datasets:` files, folders; errors and warnings.

use larder::{BucketStrategy, Config, Error, Source};

use crate::{file, image};

fn tmp_with_images() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("imgs")).expect("mkdir");
    image(&dir.path().join("imgs"), "a.jpg", 64, 48, Some("a"));
    dir
}

#[test]
fn reads_an_ai_toolkit_job_file_with_its_model_divisibility() {
    let dir = tmp_with_images();
    let path = file(
        dir.path(),
        "job.yaml",
        "job: extension\nconfig:\n  name: x\n  process:\n    - type: sd_trainer\n      model:\n        name_or_path: Qwen/Qwen-Image\n        arch: qwen_image\n      datasets:\n        - folder_path: imgs\n          resolution: [512, 1024]\n          caption_ext: caption\n          flip_x: yes\n          control_path: imgs\n",
    );
    let config = Config::load(&path).expect("valid job file");
    assert_eq!(config.divisibility, 32);
    assert_eq!(config.arch.as_deref(), Some("qwen_image"));
    let d = &config.datasets[0];
    assert_eq!(d.resolutions, vec![512, 1024]);
    assert_eq!(d.caption_ext, ".caption");
    assert!(d.flip_x);
    assert_eq!(d.source, Source::Folder(dir.path().join("imgs")));
    assert_eq!(d.control_paths, vec![dir.path().join("imgs")]);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn legacy_model_flags_pick_the_divisibility() {
    let dir = tmp_with_images();
    let job = |model: &str| {
        format!(
            "config:\n  process:\n    - model:\n{model}      datasets:\n        - folder_path: imgs\n"
        )
    };
    let load = |text: String| Config::load(file(dir.path(), "j.yaml", &text)).expect("valid");
    assert_eq!(load(job("        is_flux: true\n")).divisibility, 32);
    assert_eq!(load(job("        is_xl: true\n")).divisibility, 16);
    assert_eq!(load(job("        name_or_path: x\n")).divisibility, 16);
    assert_eq!(load(job("        arch: 'flux:schnell'\n")).divisibility, 32);
    assert_eq!(load(job("        arch: wan22_5b\n")).divisibility, 32);
}

#[test]
fn unknown_architecture_is_an_error_naming_the_line() {
    let dir = tmp_with_images();
    let path = file(
        dir.path(),
        "j.yaml",
        "config:\n  process:\n    - model:\n        arch: mystery\n      datasets:\n        - folder_path: imgs\n",
    );
    let err = Config::load(&path).expect_err("unknown arch");
    let msg = err.to_string();
    assert!(
        msg.contains("j.yaml:4") && msg.contains("mystery") && msg.contains("larder.divisibility"),
        "{msg}"
    );
}

#[test]
fn reads_a_datasets_file_with_anchors_merges_and_yes_no() {
    let dir = tmp_with_images();
    let path = file(
        dir.path(),
        "d.yaml",
        "common: &c\n  folder_path: imgs\n  shuffle_tokens: yes\n  caption_dropout_rate: 0.1\ndatasets:\n  - <<: *c\n    resolution: 768\n  - <<: *c\n    is_reg: on\n    random_crop: no\nlarder:\n  seed: 9\n  divisibility: 64\n",
    );
    let config = Config::load(&path).expect("valid");
    assert_eq!(config.datasets.len(), 2);
    assert_eq!(config.divisibility, 64);
    assert!(
        config
            .datasets
            .iter()
            .all(|d| d.shuffle_tokens && d.seed == 9)
    );
    assert_eq!(config.datasets[0].resolutions, vec![768]);
    assert_eq!(config.datasets[1].resolutions, vec![512]);
    assert!(config.datasets[1].is_reg && !config.datasets[1].random_crop);
    // `common` is not a key larder knows at the top level.
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert_eq!(config.warnings[0].key, "common");
}

#[test]
fn a_folder_is_a_config_with_defaults() {
    let dir = tmp_with_images();
    let config = Config::load(dir.path().join("imgs")).expect("folder");
    assert_eq!(config.datasets.len(), 1);
    let d = &config.datasets[0];
    assert_eq!(
        (d.resolutions.clone(), d.caption_ext.as_str(), d.num_repeats),
        (vec![512], ".txt", 1)
    );
    assert_eq!(d.bucket_strategy, BucketStrategy::AiToolkit);
    assert_eq!(config.divisibility, larder::DEFAULT_DIVISIBILITY);
}

#[test]
fn wrong_types_name_file_line_key_and_expectation() {
    let dir = tmp_with_images();
    let cases = [
        (
            "resolution: big\n",
            "datasets[0].resolution",
            "a resolution",
        ),
        (
            "caption_dropout_rate: 1.5\n",
            "datasets[0].caption_dropout_rate",
            "from 0 to 1",
        ),
        ("flip_x: maybe\n", "datasets[0].flip_x", "true or false"),
        ("num_repeats: 0\n", "datasets[0].num_repeats", "from 1"),
        (
            "replacements: ['no-bar']\n",
            "datasets[0].replacements",
            "from|to",
        ),
        (
            "control_transparent_color: [1, 2]\n",
            "datasets[0].control_transparent_color",
            "three",
        ),
        (
            "bucket_strategy: fancy\n",
            "datasets[0].bucket_strategy",
            "aitk, kohya, list",
        ),
    ];
    for (line, key, expected) in cases {
        let text = format!("datasets:\n  - folder_path: imgs\n    {line}");
        let path = file(dir.path(), "bad.yaml", &text);
        match Config::load(&path) {
            Err(Error::Config {
                path: p,
                line: 3,
                key: k,
                message,
            }) => {
                assert_eq!(p, path);
                assert_eq!(k, key);
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("{line}: expected a config error on line 3, got {other:?}"),
        }
    }
}

#[test]
fn missing_folder_and_invalid_yaml_are_errors() {
    let dir = tmp_with_images();
    let err = Config::load(file(
        dir.path(),
        "m.yaml",
        "datasets:\n  - folder_path: nowhere\n",
    ))
    .expect_err("missing");
    assert!(
        err.to_string().contains("nowhere") && err.to_string().contains("does not exist"),
        "{err}"
    );
    let err = Config::load(file(dir.path(), "y.yaml", "datasets: [\n")).expect_err("bad yaml");
    assert!(matches!(err, Error::Yaml { .. }), "{err:?}");
    // The parser's error is the source; its line and column are in the message.
    let source = std::error::Error::source(&err).expect("the parser's error");
    assert!(err.to_string().contains(&source.to_string()), "{err}");
    let err = Config::load(file(dir.path(), "n.yaml", "train: {}\n")).expect_err("no datasets");
    assert!(err.to_string().contains("no datasets"), "{err}");
}

#[test]
fn unimplemented_and_unknown_keys_warn_once_each() {
    let dir = tmp_with_images();
    let path = file(
        dir.path(),
        "w.yaml",
        "datasets:\n  - folder_path: imgs\n    audio_preserve_pitch: true\n    augments: [ColorJitter]\n    shufle_tokens: true\n    num_frames_default: 1\n    fps: 16\n",
    );
    let config = Config::load(&path).expect("valid");
    let keys: Vec<(&str, u64)> = config
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("datasets[0].audio_preserve_pitch", 3),
            ("datasets[0].augments", 4),
            ("datasets[0].shufle_tokens", 5),
            ("datasets[0].num_frames_default", 6)
        ]
    );
    assert!(config.warnings[0].message.contains("pitch"));
    // A pitch-preserving stretch and augmentations ask for data larder does not serve; typos do not.
    let not_served: Vec<bool> = config.warnings.iter().map(|w| w.not_served).collect();
    assert_eq!(not_served, [true, true, false, false]);
    assert!(
        config.warnings[2]
            .message
            .contains("did you mean `shuffle_tokens`")
    );
}

#[test]
fn random_triggers_come_from_a_list_or_a_file() {
    let dir = tmp_with_images();
    file(dir.path(), "triggers.txt", "alpha\n\n  \nbeta gamma\n");
    let config = Config::load(file(
        dir.path(),
        "t.yaml",
        "datasets:\n  - folder_path: imgs\n    random_triggers: triggers.txt\n    random_triggers_max: 2\n  - folder_path: imgs\n    random_triggers: [x, y]\n    replacements: ['cat|dog']\n",
    ))
    .expect("valid");
    assert_eq!(
        config.datasets[0].random_triggers,
        vec!["alpha", "beta gamma"]
    );
    assert_eq!(config.datasets[1].random_triggers, vec!["x", "y"]);
    assert_eq!(
        config.datasets[1].replacements,
        vec![("cat".to_owned(), "dog".to_owned())]
    );
    let err = Config::load(file(
        dir.path(),
        "t2.yaml",
        "datasets:\n  - folder_path: imgs\n    random_triggers: [x]\n    random_triggers_max: 3\n",
    ))
    .expect_err("more than listed");
    assert!(err.to_string().contains("random_triggers_max"), "{err}");
}

#[test]
fn kohya_and_list_strategies_parse_with_defaults() {
    let dir = tmp_with_images();
    let config = Config::load(file(
        dir.path(),
        "k.yaml",
        "datasets:\n  - folder_path: imgs\n    bucket_strategy: kohya\n    kohya_buckets: {max_reso: 2048, no_upscale: true}\n  - folder_path: imgs\n    bucket_list: ['512x768', [768, 512]]\n",
    ))
    .expect("valid");
    assert_eq!(
        config.datasets[0].bucket_strategy,
        BucketStrategy::Kohya {
            min_reso: 256,
            max_reso: 2048,
            reso_steps: 64,
            no_upscale: true
        }
    );
    assert_eq!(
        config.datasets[1].bucket_strategy,
        BucketStrategy::List {
            sizes: vec![(512, 768), (768, 512)]
        }
    );
}

#[test]
fn misspelt_keys_at_every_level_warn_with_the_key_they_misspell() {
    let dir = tmp_with_images();
    let path = file(
        dir.path(),
        "typo.yaml",
        "job: extention\nconfg_extra: 1\nconfig:\n  name: x\n  traning_folder: out\n  process:\n    - type: sd_trainer\n      modle:\n        arch: flux\n      model:\n        arhc: flux\n        name_or_path: x\n      datasets:\n        - folder_path: imgs\n          shufle_tokens: true\n",
    );
    let config = Config::load(&path).expect("typos are warnings");
    let got: Vec<(&str, u64, &str)> = config
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line, w.message.as_str()))
        .collect();
    let expect = [
        ("job", 1, "did you mean `extension`?"),
        (
            "config.traning_folder",
            5,
            "did you mean `training_folder`?",
        ),
        ("config.process[0].modle", 8, "did you mean `model`?"),
        ("config.process[0].model.arhc", 11, "did you mean `arch`?"),
        (
            "config.process[0].datasets[0].shufle_tokens",
            15,
            "did you mean `shuffle_tokens`?",
        ),
    ];
    for (key, line, hint) in expect {
        assert!(
            got.iter()
                .any(|(k, l, m)| *k == key && *l == line && m.contains(hint)),
            "no warning {key}:{line} {hint:?} in {got:#?}"
        );
    }
    // `confg_extra` is unknown at the top level but close to nothing: a plain warning.
    assert!(
        got.iter()
            .any(|(k, _, m)| *k == "confg_extra" && !m.contains("did you mean")),
        "{got:#?}"
    );
    // Without `arch`, AI Toolkit falls back to SD 1.5, and so does larder; the warning is what
    // tells the user.
    assert_eq!(config.divisibility, 16);
}

#[test]
fn misspelt_datasets_in_a_process_is_an_error_naming_the_process_and_its_keys() {
    let dir = tmp_with_images();
    let path = file(
        dir.path(),
        "nods.yaml",
        "job: extension\nconfig:\n  name: x\n  process:\n    - type: sd_trainer\n      model:\n        arch: flux\n      dataset:\n        - folder_path: imgs\n",
    );
    match Config::load(&path).expect_err("no datasets") {
        Error::Config {
            key, line, message, ..
        } => {
            assert_eq!(key, "config.process[0]");
            assert_eq!(line, 5);
            assert!(
                message.contains("`type`, `model`, `dataset`")
                    && message.contains("did you mean `datasets`"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A plain file with a misspelt top-level list names the key it lacks, not an empty one.
    let err = Config::load(file(
        dir.path(),
        "plain.yaml",
        "dataset:\n  - folder_path: imgs\n",
    ))
    .expect_err("no datasets");
    let msg = err.to_string();
    assert!(
        msg.contains("`datasets`: no datasets found") && msg.contains("did you mean `datasets`"),
        "{msg}"
    );
}

#[test]
fn unknown_larder_keys_are_errors_with_a_hint_and_arch_typos_get_one_too() {
    let dir = tmp_with_images();
    let err = Config::load(file(
        dir.path(),
        "l.yaml",
        "datasets:\n  - folder_path: imgs\nlarder:\n  max_image_pixel: 10\n",
    ))
    .expect_err("unknown larder key");
    assert!(
        err.to_string().contains("did you mean `max_image_pixels`"),
        "{err}"
    );
    // AI Toolkit's Z-Image arch is `zimage`: `z_image` would load as SD 1.5 there.
    let err = Config::load(file(
        dir.path(),
        "z.yaml",
        "config:\n  process:\n    - model:\n        arch: z_image\n      datasets:\n        - folder_path: imgs\n",
    ))
    .expect_err("z_image is not an AI Toolkit arch");
    assert!(err.to_string().contains("did you mean `zimage`"), "{err}");
}

#[test]
fn max_image_pixels_is_read_from_the_larder_section() {
    let dir = tmp_with_images();
    let load = |larder: &str| {
        Config::load(file(
            dir.path(),
            "m.yaml",
            &format!("datasets:\n  - folder_path: imgs\n  - folder_path: imgs\n    max_image_pixels: 7\n{larder}"),
        ))
        .expect("valid")
    };
    let c = load("");
    assert_eq!(
        c.datasets[0].max_image_pixels,
        Some(larder::DEFAULT_MAX_IMAGE_PIXELS)
    );
    let c = load("larder:\n  max_image_pixels: 1000\n");
    assert_eq!(c.datasets[0].max_image_pixels, Some(1000));
    // A dataset's own value wins over the section's.
    assert_eq!(c.datasets[1].max_image_pixels, Some(7));
    let c = load("larder:\n  max_image_pixels: 0\n");
    assert_eq!(c.datasets[0].max_image_pixels, None);
}

#[test]
fn dataloader_keys_warn_once_per_config_with_what_larder_does_instead() {
    // Regression: these keys were parsed and silently ignored while the docs said the loader
    // used them.
    let dir = tmp_with_images();
    let entry = "  - folder_path: imgs\n    num_workers: 4\n    persistent_workers: true\n    prefetch_factor: 3\n    gpu_prefetch_batches: 2\n";
    let path = file(
        dir.path(),
        "w.yaml",
        &format!(
            "datasets:\n{entry}{entry}  - folder_path: imgs\n    num_workers: 0\n    prefetch_factor: null\n"
        ),
    );
    let config = Config::load(&path).expect("valid");
    let got: Vec<(&str, u64)> = config
        .warnings
        .iter()
        .map(|w| (w.key.as_str(), w.line))
        .collect();
    assert_eq!(
        got,
        vec![
            ("datasets[0].num_workers", 3),
            ("datasets[0].persistent_workers", 4),
            ("datasets[0].prefetch_factor", 5),
            ("datasets[0].gpu_prefetch_batches", 6),
        ],
        "{:#?}",
        config.warnings
    );
    let says = |i: usize, what: &str| {
        let m = &config.warnings[i].message;
        assert!(
            m.contains("not read by larder's loader") && m.contains(what),
            "{m}"
        );
    };
    says(0, "`num_threads` of `larder.DataLoader`");
    says(1, "as long as the loader");
    says(2, "`prefetch` of `larder.DataLoader`");
    says(3, "`larder.torch.CudaPrefetcher(loader, depth=N)`");
    // The values are kept as written, for `larder diagnose`'s model of AI Toolkit's workers.
    let loader = &config.datasets[1].loader;
    assert_eq!(
        (
            loader.num_workers,
            loader.persistent_workers,
            loader.prefetch_factor,
            loader.gpu_prefetch_batches
        ),
        (4, true, 3, 2)
    );
    assert_eq!(config.datasets[2].loader.num_workers, 0);
    assert_eq!(
        config.datasets[2].loader.prefetch_factor,
        larder::DataloaderKeys::default().prefetch_factor
    );
}
