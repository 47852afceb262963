//! `larder-bench diagnose`: how close `larder diagnose`'s estimate of the loader's memory comes
//! to what /proc measures, on the sample store and on a generated store of many items.
//!
//! Each measurement runs `larder diagnose <store> --measure --json` in its own process, so
//! that the "before" reading is a fresh process's and nothing else in it allocates.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use larder::{Config, PrepareOptions};
use rayon::prelude::*;

/// Arguments of `larder-bench diagnose`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Items of the generated store.
    #[arg(long, default_value_t = 20_000)]
    items: usize,
    /// Resolution of the generated store.
    #[arg(long, default_value_t = 128)]
    resolution: u32,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batch_sizes: Vec<u32>,
    /// Folder for the data (kept between runs).
    #[arg(long, default_value = "target/bench-diagnose")]
    dir: PathBuf,
    /// The sample config, prepared into the folder as a second store.
    #[arg(long, default_value = "examples/sample/config.yaml")]
    sample: PathBuf,
}

/// Source sizes of the generated images: five aspect ratios, so the store has several buckets.
const SHAPES: [(u32, u32); 5] = [(160, 160), (192, 144), (144, 192), (224, 128), (128, 224)];

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let generated = args
        .dir
        .join(format!("store-{}-{}", args.items, args.resolution));
    make_store(&args, &generated)?;
    let sample = args.dir.join("sample-store");
    if !sample.join(".complete").exists() {
        larder::prepare(
            &Config::load(&args.sample)?,
            &sample,
            &PrepareOptions::default(),
        )?;
        std::fs::write(sample.join(".complete"), "")?;
    }
    let exe = crate::larder_exe()?;
    println!(
        "larder diagnose --measure: the loader's memory, estimated and measured after one epoch (2 reader threads, prefetch 4; median of 3 runs)"
    );
    println!(
        "{:<34} {:>5} {:>12} {:>12} {:>8} {:>12} {:>8}",
        "store", "batch", "estimated", "RSS added", "error", "PSS added", "error"
    );
    for (name, store) in [
        ("sample".to_owned(), &sample),
        (format!("generated, {} items", args.items), &generated),
    ] {
        for &b in &args.batch_sizes {
            let run = || -> anyhow::Result<(f64, f64, f64)> {
                let out = Command::new(&exe)
                    .arg("diagnose")
                    .arg(store)
                    .args(["--measure", "--json", "--workers", "2", "--batch-size"])
                    .arg(b.to_string())
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "larder diagnose failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).context("reading diagnose's JSON")?;
                let rows = v["comparison"].as_array().context("no comparison")?;
                let pick = |what: &str, key: &str| {
                    rows.iter()
                        .find(|r| r["what"].as_str().is_some_and(|w| w.starts_with(what)))
                        .and_then(|r| r[key].as_f64())
                        .unwrap_or(f64::NAN)
                };
                Ok((
                    pick("RSS", "estimated"),
                    pick("RSS", "measured"),
                    pick("PSS", "measured"),
                ))
            };
            // Which buffers live at once depends on thread timing: the median of three runs.
            let runs = (0..3).map(|_| run()).collect::<anyhow::Result<Vec<_>>>()?;
            let est = crate::median(runs.iter().map(|r| r.0).collect());
            let rss = crate::median(runs.iter().map(|r| r.1).collect());
            let pss = crate::median(runs.iter().map(|r| r.2).collect());
            let err = |m: f64| 100.0 * (est - m) / m;
            println!(
                "{:<34} {:>5} {:>9.1} MB {:>9.1} MB {:>+7.1}% {:>9.1} MB {:>+7.1}%",
                name,
                b,
                est / 1e6,
                rss / 1e6,
                err(rss),
                pss / 1e6,
                err(pss)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Generates `items` JPEGs with captions and prepares them into `store`, once.
fn make_store(args: &Args, store: &Path) -> anyhow::Result<()> {
    if store.join(".complete").exists() {
        return Ok(());
    }
    let images = args.dir.join(format!("images-{}", args.items));
    std::fs::create_dir_all(&images)?;
    eprintln!(
        "generating {} images and preparing {} (once)...",
        args.items,
        store.display()
    );
    (0..args.items)
        .into_par_iter()
        .try_for_each(|i| -> anyhow::Result<()> {
            let (w, h) = SHAPES[i % SHAPES.len()];
            let path = images.join(format!("item_{i:06}.jpg"));
            larder_synth::write_image(&path, w, h, i as u64)?;
            std::fs::write(
                path.with_extension("txt"),
                format!("a photo of item {}", i % 97),
            )?;
            Ok(())
        })?;
    let mut config = Config::for_folder(&images);
    config.datasets[0].resolutions = vec![args.resolution];
    larder::prepare(&config, store, &PrepareOptions::default())?;
    std::fs::write(store.join(".complete"), "")?;
    Ok(())
}
