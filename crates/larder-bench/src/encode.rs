//! `larder-bench encode`: the encoding pipeline against AI Toolkit's latent-caching loop, codec
//! sizes and errors on encoder output, and the size of a text-embedding cache.
//!
//! Everything runs in one Python process (`peers/encode_bench.py`) that has the `larder`
//! package, Pillow and safetensors: larder is measured through its Python binding, with the
//! same encoder callable as the peer, so both pay the same per-call cost. The JPEGs are
//! `bench-prepare`'s, generated once and shared.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

const PEER_SCRIPT: &str = include_str!("../peers/encode_bench.py");

/// Arguments of `larder-bench encode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of JPEGs (1-3 MP) to generate and encode.
    #[arg(long, default_value_t = 300)]
    images: usize,
    /// Resolution to prepare at.
    #[arg(long, default_value_t = 1024)]
    resolution: u32,
    /// Images per encoder call in larder (AI Toolkit's loop calls with one).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Folder for the generated images and outputs.
    #[arg(long, default_value = "target/bench-prepare")]
    dir: PathBuf,
    /// Python interpreter with larder, Pillow, NumPy and safetensors installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Timed runs of the pipeline comparison; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.images == 0 || args.batch == 0 {
        bail!("--runs, --images and --batch must be at least 1");
    }
    let data = args.dir.join(format!("jpegs-{}", args.images));
    crate::prepare::generate(&data, args.images)?;
    // The peer's pixel path is bench-prepare's peer script, imported from beside this one.
    let shared = args.dir.join("aitk_prepare.py");
    std::fs::write(&shared, crate::prepare::PEER_SCRIPT)
        .with_context(|| format!("writing {}", shared.display()))?;
    let script = args.dir.join("encode_bench.py");
    std::fs::write(&script, PEER_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let work = args.dir.join("encode-work");
    let output = Command::new(&args.python)
        .arg(&script)
        .arg(&data)
        .arg(&work)
        .args([
            args.resolution.to_string(),
            "16".into(),
            args.batch.to_string(),
            args.runs.to_string(),
        ])
        .output()
        .with_context(|| {
            format!(
                "running {} (needs: pip install ./bindings/python pillow numpy safetensors)",
                args.python
            )
        })?;
    if !output.status.success() {
        bail!(
            "the benchmark script failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the script's JSON")?;
    let seconds = |key: &str| -> anyhow::Result<f64> {
        let runs = v["pipeline"][key]
            .as_array()
            .context("no timings")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        Ok(crate::median(runs))
    };
    let (l, l1, p) = (
        seconds("larder_seconds")?,
        seconds("larder_batch1_seconds")?,
        seconds("aitk_seconds")?,
    );
    let n = v["pipeline"]["images"].as_f64().unwrap_or(0.0);
    println!(
        "latent caching of {n} JPEGs (1-3 MP) at {} with an encoder that costs nothing (median of {} runs, {} cores)",
        args.resolution,
        args.runs,
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    println!("{:<58} {:>10} {:>10}", "contender", "images/s", "seconds");
    println!(
        "{:<58} {:>10.1} {:>10.2}",
        format!("larder.prepare, image_encoders, batch {}", args.batch),
        n / l,
        l
    );
    println!(
        "{:<58} {:>10.1} {:>10.2}",
        "larder.prepare, image_encoders, batch 1",
        n / l1,
        l1
    );
    println!(
        "{:<58} {:>10.1} {:>10.2}",
        "AI Toolkit caching loop (PIL, one file per image)",
        n / p,
        p
    );
    println!(
        "larder vs AI Toolkit: {:.1}x at batch {}, {:.1}x at batch 1 (goal >= 3x)",
        p / l,
        args.batch,
        p / l1
    );
    let (lb, pb) = (
        seconds("larder_busy_seconds")?,
        seconds("aitk_busy_seconds")?,
    );
    println!();
    println!("the same with an encoder that takes 20 ms per image (GIL released while it waits)");
    println!(
        "{:<58} {:>10.1} {:>10.2}",
        format!(
            "larder.prepare, batch {} (decode overlaps the call)",
            args.batch
        ),
        n / lb,
        lb
    );
    println!(
        "{:<58} {:>10.1} {:>10.2}",
        "AI Toolkit caching loop (decode, then the call)",
        n / pb,
        pb
    );
    println!("larder vs AI Toolkit: {:.1}x", pb / lb);
    println!();
    println!("latents of a 16-channel 8x8-patch encoder, stored with each codec and read back");
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>10}",
        "codec", "bytes/item", "max |error|", "rms error", "max |x|"
    );
    for row in v["codecs"].as_array().context("no codec rows")? {
        println!(
            "{:<12} {:>12.0} {:>12.5} {:>12.6} {:>10.2}",
            row["codec"].as_str().unwrap_or("?"),
            row["bytes_per_item"].as_f64().unwrap_or(0.0),
            row["max_abs_error"].as_f64().unwrap_or(0.0),
            row["rms_error"].as_f64().unwrap_or(0.0),
            row["max_abs_value"].as_f64().unwrap_or(0.0),
        );
    }
    println!();
    let text = &v["text"];
    println!(
        "text-embedding cache, CLIP-L shapes (77x768, 2-byte floats): {} items, {} distinct captions",
        text["items"], text["distinct"]
    );
    println!("{:<32} {:>12} {:>10}", "layout", "MB", "entries");
    if let Some(sizes) = text["sizes"].as_object() {
        for (name, s) in sizes {
            println!(
                "{:<32} {:>12.1} {:>10}",
                name,
                s["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                s["captions"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
