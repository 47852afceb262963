//! `larder-bench scan`: larder's scan against AI Toolkit's size reading, side by side.
//!
//! Generates a folder of images of mixed sizes and formats once (kept for later runs), then
//! times, in one run and over the same files with the same warm page cache:
//! - larder's scan (sizes from headers with EXIF orientation, captions, completeness checks);
//! - AI Toolkit's cold path: Pillow `Image.open` + `exif_transpose` + `.size` per image;
//! - AI Toolkit's warm path: `.aitk_size.json` read back and checked against `os.stat`.
//!
//! Prints the median items/s of each and the ratios.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use larder::{Config, Plan, ScanOptions};

const PEER_SCRIPT: &str = include_str!("../peers/aitk_scan.py");

/// Arguments of `larder-bench scan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of images to generate and scan.
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// Folder for the generated images (reused when it already holds them).
    #[arg(long, default_value = "target/bench-scan")]
    dir: PathBuf,
    /// Python interpreter with Pillow installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Timed runs of each contender; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip AI Toolkit's cold path, which decodes every image and takes minutes (the warm path
    /// then needs a size file from an earlier run).
    #[arg(long)]
    skip_cold: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.images == 0 {
        bail!("--runs and --images must be at least 1");
    }
    let data = args.dir.join(format!("images-{}", args.images));
    generate(&data, args.images)?;
    let script = args.dir.join("aitk_scan.py");
    std::fs::write(&script, PEER_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let db = args.dir.join(".aitk_size.json");
    let repeat = |f: &dyn Fn() -> anyhow::Result<f64>| crate::median_of(args.runs, f);
    let peer = |mode: &str| time_peer(&args.python, &script, mode, &data, &db, args.images);

    let larder_s = repeat(&|| time_larder(&data, args.images))?;
    // The warm path reads the size file that the cold path writes.
    let cold_s = if args.skip_cold && db.exists() {
        None
    } else {
        Some(repeat(&|| peer("cold"))?)
    };
    let warm_s = repeat(&|| peer("warm"))?;

    println!(
        "scan of {} images in {} (median of {} runs, warm page cache)",
        args.images,
        data.display(),
        args.runs
    );
    println!("{:<44} {:>12} {:>10}", "contender", "items/s", "seconds");
    let row = |name: &str, secs: f64| {
        println!(
            "{name:<44} {:>12.0} {secs:>10.4}",
            args.images as f64 / secs
        );
    };
    row("larder scan (headers + EXIF + captions)", larder_s);
    if let Some(cold_s) = cold_s {
        row("AI Toolkit cold (PIL open + exif_transpose)", cold_s);
    }
    row("AI Toolkit warm (.aitk_size.json + stat)", warm_s);
    if let Some(cold_s) = cold_s {
        println!("larder vs cold: {:.1}x (goal >= 100x)", cold_s / larder_s);
    }
    println!(
        "larder vs warm: {:.2}x (goal >= 5x), with no size file kept",
        warm_s / larder_s
    );
    Ok(ExitCode::SUCCESS)
}

fn time_larder(data: &Path, expected: usize) -> anyhow::Result<f64> {
    let start = Instant::now();
    let config = Config::for_folder(data);
    let scan = larder::scan_with(&config, &ScanOptions { progress: false })?;
    let plan = Plan::new(&config, &scan)?;
    let secs = start.elapsed().as_secs_f64();
    if plan.items.len() != expected {
        bail!(
            "larder planned {} items, expected {expected}: {:?}",
            plan.items.len(),
            scan.findings.first()
        );
    }
    Ok(secs)
}

fn time_peer(
    python: &str,
    script: &Path,
    mode: &str,
    data: &Path,
    db: &Path,
    expected: usize,
) -> anyhow::Result<f64> {
    let out = Command::new(python)
        .arg(script)
        .arg(mode)
        .arg(data)
        .arg(db)
        .output()
        .with_context(|| {
            format!("running {python} (install Pillow: `{python} -m pip install pillow`)")
        })?;
    if !out.status.success() {
        bail!(
            "{python} {} {mode} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the peer's JSON line")?;
    let items = v["items"].as_u64().unwrap_or(0) as usize;
    if items != expected {
        bail!("the peer ({mode}) read {items} images, expected {expected}");
    }
    v["seconds"].as_f64().context("the peer printed no time")
}

/// Writes `n` images of mixed formats and sizes, with captions, unless already there.
fn generate(dir: &Path, n: usize) -> anyhow::Result<()> {
    crate::generate_once(dir, n, "images", |dir, i| {
        let seed = i as u64;
        // A spread of shapes: square, landscape, portrait and a few extreme ones.
        let (ext, long) = match i % 20 {
            0..=11 => ("jpg", 512 + (seed * 7919 % 1537) as u32),
            12..=16 => ("png", 256 + (seed * 104_729 % 769) as u32),
            _ => ("webp", 256 + (seed * 1299 % 385) as u32),
        };
        let aspect = [1.0, 1.5, 0.667, 1.777, 0.5625, 1.333, 0.75, 3.0][i % 8];
        let (w, h) = if aspect >= 1.0 {
            (long, (long as f64 / aspect) as u32)
        } else {
            ((long as f64 * aspect) as u32, long)
        };
        let path = dir.join(format!("img_{i:06}.{ext}"));
        if ext == "jpg" && i % 10 == 3 {
            // Every tenth JPEG carries an EXIF rotation, as phone photos do.
            let jpeg = larder_synth::encode(
                &larder_synth::render(w, h, seed),
                larder_synth::Format::Jpeg,
            )?;
            std::fs::write(&path, larder_synth::with_jpeg_orientation(&jpeg, 6))?;
        } else {
            larder_synth::write_image(&path, w, h, seed)?;
        }
        std::fs::write(
            path.with_extension("txt"),
            format!("photo {i}, [trigger], synthetic gradient"),
        )?;
        Ok(())
    })
}
