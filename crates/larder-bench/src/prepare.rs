//! `larder-bench prepare`: larder's prepare against AI Toolkit's pixel path, side by side, and
//! the size and error of each codec on a latent-shaped field.
//!
//! Generates 1–3 megapixel JPEGs once (kept for later runs), then times, over the same files
//! with a warm page cache:
//! - `larder prepare` of `pixels` at the resolution into a fresh store;
//! - AI Toolkit's way (`peers/aitk_prepare.py`): PIL open, exif_transpose, convert RGB, resize
//!   BICUBIC, crop, one safetensors file per image, in a pool of processes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use larder::store::codec::{self, Codec, Values};
use larder::{Config, PrepareOptions};

pub(crate) const PEER_SCRIPT: &str = include_str!("../peers/aitk_prepare.py");

/// Arguments of `larder-bench prepare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of JPEGs to generate and prepare.
    #[arg(long, default_value_t = 2_000)]
    images: usize,
    /// Resolution to prepare at.
    #[arg(long, default_value_t = 1024)]
    resolution: u32,
    /// Folder for the generated images and outputs (images are reused when already there).
    #[arg(long, default_value = "target/bench-prepare")]
    dir: PathBuf,
    /// Python interpreter with Pillow, NumPy and safetensors installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Worker processes of the Python peer (AI Toolkit's DataLoader workers).
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Timed runs of each contender; the median is reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.images == 0 {
        bail!("--runs and --images must be at least 1");
    }
    print_codec_table()?;
    let data = args.dir.join(format!("jpegs-{}", args.images));
    generate(&data, args.images)?;
    let script = args.dir.join("aitk_prepare.py");
    std::fs::write(&script, PEER_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let divisibility = 16;

    let mut larder_runs = Vec::new();
    let mut peer_runs = Vec::new();
    for run in 0..args.runs {
        let store = args.dir.join(format!("store-{run}"));
        let _ = std::fs::remove_dir_all(&store);
        let mut config = Config::for_folder(&data);
        config.datasets[0].resolutions = vec![args.resolution];
        config.divisibility = divisibility;
        let start = Instant::now();
        let report = larder::prepare(&config, &store, &PrepareOptions::default())?;
        larder_runs.push(start.elapsed().as_secs_f64());
        if report.items != args.images {
            bail!(
                "larder prepared {} items, expected {}",
                report.items,
                args.images
            );
        }
        let _ = std::fs::remove_dir_all(&store);

        let out = args.dir.join(format!("aitk-{run}"));
        let _ = std::fs::remove_dir_all(&out);
        let output = Command::new(&args.python)
            .arg(&script)
            .arg(&data)
            .arg(&out)
            .arg(args.resolution.to_string())
            .arg(divisibility.to_string())
            .arg(args.processes.to_string())
            .output()
            .with_context(|| {
                format!(
                    "running {} (install: pip install pillow numpy safetensors)",
                    args.python
                )
            })?;
        if !output.status.success() {
            bail!(
                "the peer failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("reading the peer's JSON")?;
        if v["items"].as_u64() != Some(args.images as u64) {
            bail!(
                "the peer prepared {} items, expected {}",
                v["items"],
                args.images
            );
        }
        peer_runs.push(v["seconds"].as_f64().context("the peer printed no time")?);
        let _ = std::fs::remove_dir_all(&out);
    }
    let (l, p) = (crate::median(larder_runs), crate::median(peer_runs));
    println!();
    println!(
        "prepare pixels of {} JPEGs (1-3 MP) at {} (median of {} runs, warm page cache, {} cores)",
        args.images,
        args.resolution,
        args.runs,
        rayon::current_num_threads()
    );
    println!("{:<52} {:>10} {:>10}", "contender", "images/s", "seconds");
    println!(
        "{:<52} {:>10.1} {:>10.2}",
        "larder prepare (threads, one shard writer)",
        args.images as f64 / l,
        l
    );
    println!(
        "{:<52} {:>10.1} {:>10.2}",
        format!(
            "AI Toolkit way (PIL, {} processes, file per image)",
            args.processes
        ),
        args.images as f64 / p,
        p
    );
    println!("larder vs AI Toolkit: {:.1}x (goal >= 5x)", p / l);
    Ok(ExitCode::SUCCESS)
}

/// A latent-shaped field (Flux at 1024²: 16×128×128) with spatially smooth values of unit
/// scale, as VAE latents are, and the size and error of each codec on it.
fn print_codec_table() -> anyhow::Result<()> {
    let (c, h, w) = (16usize, 128usize, 128usize);
    let latent: Vec<f32> = (0..c * h * w)
        .map(|i| {
            let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
            let (fy, fx, fc) = (y as f32 / 9.0, x as f32 / 7.0, ch as f32);
            (fy + fc).sin() * 1.7
                + (fx * 0.8 - fc * 0.3).cos() * 0.9
                + ((x * 31 + y * 17 + ch * 7) % 13) as f32 * 0.01
        })
        .collect();
    let shape = [c, h, w];
    let max_abs = latent.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!(
        "latent-shaped field {c}x{h}x{w} f32 ({} bytes raw), values within ±{max_abs:.2}",
        latent.len() * 4
    );
    println!(
        "{:<14} {:>12} {:>8} {:>12} {:>12}",
        "codec", "bytes/item", "vs f32", "max |error|", "rms error"
    );
    for name in [
        "f32",
        "f16",
        "bf16",
        "fp8_e4m3",
        "fp8_e5m2",
        "int8",
        "int8+zstd",
        "bf16+zstd",
        "fp8_e4m3+lz4",
    ] {
        let codec = Codec::parse(name)?;
        let enc = codec::encode(codec, Values::F32(&latent), &shape)?;
        let elements = codec::decompress(codec, &enc.bytes, enc.raw_len)?;
        let back = codec::decode_f32(codec, &elements, &shape, &enc.scale, &enc.offset)?;
        let (mut max_err, mut sq) = (0f32, 0f64);
        for (a, b) in latent.iter().zip(&back) {
            let e = (a - b).abs();
            max_err = max_err.max(e);
            sq += f64::from(e) * f64::from(e);
        }
        let stored = enc.bytes.len() + 4 * (enc.scale.len() + enc.offset.len());
        println!(
            "{:<14} {:>12} {:>7.2}x {:>12.5} {:>12.6}",
            name,
            stored,
            (latent.len() * 4) as f64 / stored as f64,
            max_err,
            (sq / latent.len() as f64).sqrt()
        );
    }
    Ok(())
}

/// Writes `n` JPEGs of 1 to 3 megapixels, some with EXIF rotation, unless already there.
pub fn generate(dir: &Path, n: usize) -> anyhow::Result<()> {
    crate::generate_once(dir, n, "JPEGs of 1-3 MP", |dir, i| {
        let mp = 1.0 + (i % 21) as f64 / 10.0;
        let aspect = [1.0, 1.5, 0.667, 1.333, 0.75, 1.777][i % 6];
        let w = (mp * 1e6 * aspect).sqrt() as u32;
        let h = (mp * 1e6 / aspect).sqrt() as u32;
        let jpeg = larder_synth::encode(
            &larder_synth::render(w, h, i as u64),
            larder_synth::Format::Jpeg,
        )?;
        let bytes = if i % 10 == 7 {
            larder_synth::with_jpeg_orientation(&jpeg, 6)
        } else {
            jpeg
        };
        std::fs::write(dir.join(format!("photo_{i:05}.jpg")), bytes)?;
        Ok(())
    })
}
