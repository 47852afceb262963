//! `larder diagnose` over every kind of model a config may name: families with figures,
//! SD3 variants told apart by name, and archs larder has no figures for.

use std::path::{Path, PathBuf};

use crate::{larder, s};

/// A job file over three small captioned images, with the given `model` section lines.
fn job(root: &Path, model: &str) -> PathBuf {
    let imgs = root.join("imgs");
    std::fs::create_dir_all(&imgs).expect("mkdir");
    for i in 0..3u32 {
        let path = imgs.join(format!("i{i}.png"));
        larder_synth::write_image(&path, 96, 64, u64::from(i)).expect("image");
        std::fs::write(path.with_extension("txt"), format!("picture {i}")).expect("caption");
    }
    let path = root.join("job.yaml");
    std::fs::write(
        &path,
        format!(
            "job: extension\nconfig:\n  process:\n    - datasets:\n        - folder_path: {}\n          resolution: [64]\n          cache_latents_to_disk: true\n      model:\n{model}",
            imgs.display()
        ),
    )
    .expect("write job");
    path
}

fn diagnose(config: &Path) -> serde_json::Value {
    let out = larder(&["diagnose", s(config), "--ram-gb", "64", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn rules(v: &serde_json::Value) -> Vec<String> {
    v["advice"]
        .as_array()
        .expect("advice")
        .iter()
        .map(|a| a["rule"].as_str().expect("rule").to_owned())
        .collect()
}

#[test]
fn diagnose_refused_chroma_hidream_and_lumina2_jobs() {
    for (arch, family, weights) in [
        // 8.9B transformer + 84M VAE + 4.762B T5, two bytes each.
        ("chroma", "chroma", 2 * (8_900 + 84 + 4_762) * 1_000_000u64),
        // 17B + VAE + CLIP-L 123M + CLIP-G 695M + T5 4.762B + Llama 8.03B.
        (
            "hidream",
            "hidream",
            2 * (17_000 + 84 + 123 + 695 + 4_762 + 8_030) * 1_000_000u64,
        ),
        // 2.6B + VAE + Gemma-2-2B 2.614B.
        (
            "lumina2",
            "lumina2",
            2 * (2_600 + 84 + 2_614) * 1_000_000u64,
        ),
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let config = job(tmp.path(), &format!("        arch: {arch}\n"));
        let v = diagnose(&config);
        assert_eq!(v["estimate"]["family"], family, "{arch}");
        assert_eq!(v["estimate"]["model_bytes"], weights, "{arch}");
        assert_eq!(v["model"]["figures"], "known");
        let fields: Vec<&str> = v["estimate"]["workload"]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .map(|f| f["name"].as_str().expect("name"))
            .collect();
        assert_eq!(fields, ["latent"], "{arch}");
    }
}

#[test]
fn diagnose_named_sd35_large_sd3_medium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = job(
        tmp.path(),
        "        name_or_path: stabilityai/stable-diffusion-3.5-large\n        arch: sd3\n",
    );
    let v = diagnose(&config);
    assert_eq!(v["estimate"]["family"], "sd35-large");
    assert!(!rules(&v).contains(&"model-assumed".to_owned()));
    let out = larder(&["diagnose", s(&config), "--ram-gb", "64"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("model: Stable Diffusion 3.5 Large (sd35-large)"),
        "{text}"
    );
    // The 8.1B transformer: 16.2 GB in bf16, not SD3 Medium's 4.1 GB.
    assert!(text.contains("16.2 GB"), "{text}");

    // A name that does not tell: SD3 Medium is assumed, and the report says so.
    let tmp = tempfile::tempdir().expect("tmp");
    let config = job(
        tmp.path(),
        "        name_or_path: /models/mine\n        arch: sd3\n",
    );
    let v = diagnose(&config);
    assert_eq!(v["estimate"]["family"], "sd3");
    assert_eq!(rules(&v)[0], "model-assumed");
}

#[test]
fn diagnose_runs_for_an_arch_without_figures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = job(tmp.path(), "        arch: ltx2\n");
    let v = diagnose(&config);
    assert_eq!(v["model"]["figures"], "unknown");
    assert_eq!(v["model"]["arch"], "ltx2");
    assert!(v["estimate"]["family"].is_null());
    assert_eq!(rules(&v)[0], "model-figures-unknown");
    // The data side is still estimated: 3 images of 96x64 at resolution 64 as RGB pixels.
    let fields = v["estimate"]["workload"]["fields"]
        .as_array()
        .expect("fields");
    assert_eq!(fields[0]["name"], "pixels");
    assert_eq!(fields[0]["entries"], 3);
    assert!(v["estimate"]["store_bytes"].as_u64() > Some(0));
    let out = larder(&["diagnose", s(&config), "--ram-gb", "64"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("model: arch \"ltx2\", model figures unknown"),
        "{text}"
    );
}
