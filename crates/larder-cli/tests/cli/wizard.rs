//! `larder wizard`: driven through a pseudo-terminal as a user answers it, and with flags.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use expectrl::{Eof, Expect, Session};

use crate::{larder, s};

/// A dataset folder of a few 800x600 and 600x800 images with captions.
fn dataset(root: &Path) -> PathBuf {
    let dir = root.join("photos");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..6u32 {
        let (w, h) = if i % 2 == 0 { (800, 600) } else { (600, 800) };
        let path = dir.join(format!("p{i}.jpg"));
        larder_synth::write_image(&path, w, h, u64::from(i)).expect("image");
        std::fs::write(path.with_extension("txt"), format!("photo {i}")).expect("caption");
    }
    dir
}

/// Loads the written file with larder's parser, as any later command would.
fn load(path: &Path) -> larder::Config {
    larder::Config::load(path).expect("the written file is a valid config")
}

#[test]
fn wizard_through_a_terminal_writes_the_answered_config() {
    let tmp = tempfile::tempdir().expect("tmp");
    let photos = dataset(tmp.path());
    let out = tmp.path().join("job.yaml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.args(["wizard", "--out", s(&out)]);
    let mut p = Session::spawn(cmd).expect("spawn in a pty");
    p.set_expect_timeout(Some(Duration::from_secs(60)));
    // Keys as a terminal sends them: text, then Enter (carriage return in raw mode).
    p.expect("GPU model or its memory in GB")
        .expect("GPU question");
    p.send("24\r").expect("answer");
    p.expect("System RAM in GB").expect("RAM question");
    p.send("128\r").expect("answer");
    p.expect("Dataset folder").expect("dataset question");
    p.send(format!("{}\r", photos.display())).expect("answer");
    p.expect("6 images").expect("the scan's summary");
    p.expect("Training goal").expect("goal question");
    p.send("\r").expect("LoRA, the first choice");
    p.expect("Model family").expect("model question");
    // Typing filters the list; Enter takes the first match.
    p.send("sdxl").expect("filter");
    p.expect("(sdxl)").expect("filtered");
    p.send("\r").expect("pick");
    p.expect("Write the job file to").expect("output question");
    p.send("\r").expect("the default, --out");
    p.expect("wrote").expect("written");
    p.expect(Eof).expect("exits");

    let config = load(&out);
    assert_eq!(config.arch.as_deref(), Some("sdxl"));
    assert_eq!(config.datasets.len(), 1);
    let d = &config.datasets[0];
    assert_eq!(
        d.source.path(),
        std::fs::canonicalize(&photos).expect("abs")
    );
    // 800x600 images (equal-area side 693 px): all larger than 512, none larger than 768, so
    // 512 and 768 of the 512/768/1024 ladder.
    assert_eq!(d.resolutions, [512, 768]);
    assert!(d.cache.latents_to_disk && d.cache.text_embeddings);
    // Two workers (no model copies in them) take far less than a tenth of 128 GB.
    assert_eq!(d.loader.num_workers, 2);
    let text = std::fs::read_to_string(&out).expect("read");
    // SDXL's 5.1 GB UNet fits in half of 24 GB: no quantization; 24 - 5.1 = 18.9 GB, 2.5 GB a
    // 1024 px sample, 9/16 of it at 768: 13 fit, rounded down to 8.
    assert!(text.contains("quantize: false"), "{text}");
    assert!(text.contains("batch_size: 8"), "{text}");
    assert!(text.contains("network:\n        type: lora"), "{text}");
}

#[test]
fn wizard_without_a_terminal_points_to_the_flags() {
    let out = larder(&["wizard"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--non-interactive"), "{err}");
}

#[test]
fn wizard_non_interactive_writes_a_full_fine_tune() {
    let tmp = tempfile::tempdir().expect("tmp");
    let photos = dataset(tmp.path());
    let out = tmp.path().join("ft.yaml");
    let run = larder(&[
        "wizard",
        "--non-interactive",
        "--gpu",
        "A100 80GB",
        "--ram-gb",
        "64",
        "--dataset",
        s(&photos),
        "--goal",
        "full",
        "--model",
        "flux",
        "--out",
        s(&out),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("wrote"), "{stdout}");
    // The reasons are printed, not only written.
    assert!(
        stdout.contains("a full fine-tune updates every weight"),
        "{stdout}"
    );
    let config = load(&out);
    assert_eq!(config.arch.as_deref(), Some("flux"));
    assert_eq!(config.divisibility, 32);
    // Workers do not copy Flux's 33.7 GB of weights: AI Toolkit's 2 fit in 64 GB.
    assert_eq!(config.datasets[0].loader.num_workers, 2);
    let text = std::fs::read_to_string(&out).expect("read");
    assert!(
        !text.contains("network:"),
        "a full fine-tune has no LoRA network"
    );
    assert!(text.contains("lr: 0.00001"), "{text}");
    // Running it again does not overwrite without --force.
    let again = larder(&[
        "wizard",
        "--non-interactive",
        "--gpu",
        "24",
        "--dataset",
        s(&photos),
        "--model",
        "flux",
        "--out",
        s(&out),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn wizard_rejects_unknown_answers_with_what_it_accepts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let photos = dataset(tmp.path());
    let base = ["wizard", "--non-interactive", "--dataset", s(&photos)];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        larder(&args)
    };
    let out = run(&["--gpu", "a potato", "--model", "flux"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("give its memory in GB"));
    let out = run(&["--gpu", "24", "--model", "dalle"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of sd15"));
    let out = larder(&[
        "wizard",
        "--non-interactive",
        "--gpu",
        "24",
        "--model",
        "flux",
        "--dataset",
        s(&tmp.path().join("none")),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a folder"));
    let out = run(&["--gpu", "24"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--non-interactive needs --model"));
}
