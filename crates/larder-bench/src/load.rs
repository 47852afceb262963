//! `larder-bench load`: the loader against a PyTorch DataLoader reading one safetensors file per
//! item (AI Toolkit's disk cache), side by side; assembly bandwidth against memcpy; memory by
//! thread or worker count.
//!
//! The store holds 5,000 items whose `pixels` field (3×416×416 u8, 519,168 bytes) is the size
//! of a Flux latent at 1024² (16×128×128 bf16, 524,288 bytes): serving cost is bytes moved,
//! and cached latents come with the encoders milestone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use larder::{Config, PrepareOptions};
use rayon::prelude::*;

use crate::json_of;

const PEER_SCRIPT: &str = include_str!("../peers/torch_loader.py");

/// Arguments of `larder-bench load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Items in the store.
    #[arg(long, default_value_t = 5_000)]
    items: usize,
    /// Side of the square items.
    #[arg(long, default_value_t = 416)]
    resolution: u32,
    /// Items per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: u32,
    /// Folder for the data (kept between runs).
    #[arg(long, default_value = "target/bench-load")]
    dir: PathBuf,
    /// Python with torch, numpy and safetensors.
    #[arg(long, default_value = "python3")]
    python: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = args
        .dir
        .join(format!("store-{}-{}", args.items, args.resolution));
    let files = args
        .dir
        .join(format!("files-{}-{}", args.items, args.resolution));
    make_store(&args, &store)?;
    let script = args.dir.join("torch_loader.py");
    std::fs::write(&script, PEER_SCRIPT)?;
    if !files.join(".complete").exists() {
        eprintln!(
            "writing one safetensors file per item in {} (once)...",
            files.display()
        );
        json_of(
            Command::new(&args.python)
                .arg(&script)
                .arg("setup")
                .arg(&store)
                .arg(&files)
                .output()?,
            "the peer's setup",
        )?;
        std::fs::write(files.join(".complete"), "")?;
    }
    let exe = crate::larder_exe()?;
    let larder = |threads: usize| -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&exe)
            .args([
                "bench",
                &store.to_string_lossy(),
                "--epochs",
                "1",
                "--fields",
                "pixels",
                "--json",
            ])
            .args([
                "--batch-size",
                &args.batch_size.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .output()?;
        json_of(out, "larder bench")
    };
    let peer = |workers: usize| -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&args.python)
            .arg(&script)
            .arg("run")
            .arg(&files)
            .arg(args.batch_size.to_string())
            .arg(workers.to_string())
            .output()
            .with_context(|| {
                format!(
                    "running {} (pip install torch numpy safetensors)",
                    args.python
                )
            })?;
        json_of(out, "the PyTorch DataLoader")
    };
    let rate = |v: &serde_json::Value| {
        v["samples_per_s"].as_f64().unwrap_or_else(|| {
            v["samples"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(1.0)
        })
    };
    // Warm the page cache for both sides, then measure (median of three).
    larder(2)?;
    peer(0)?;
    let l2 = crate::median_of(3, || larder(2).map(|v| rate(&v)))?;
    let p2 = crate::median_of(3, || peer(2).map(|v| rate(&v)))?;
    let p0 = crate::median_of(3, || peer(0).map(|v| rate(&v)))?;
    println!(
        "serving {} items of {} bytes (3x{}x{} u8), batch {}, one epoch, warm page cache, median of 3 ({} cores)",
        args.items,
        3 * args.resolution * args.resolution,
        args.resolution,
        args.resolution,
        args.batch_size,
        rayon::current_num_threads()
    );
    println!("{:<58} {:>12}", "contender", "samples/s");
    println!("{:<58} {:>12.0}", "larder Loader, 2 reader threads", l2);
    println!(
        "{:<58} {:>12.0}",
        "PyTorch DataLoader, 2 persistent workers, file per item", p2
    );
    println!(
        "{:<58} {:>12.0}",
        "PyTorch DataLoader, 0 workers, file per item", p0
    );
    println!(
        "larder vs DataLoader(2 workers): {:.1}x (goal >= 10x)",
        l2 / p2
    );
    println!(
        "larder vs DataLoader(0 workers): {:.1}x (goal >= 4x)",
        l2 / p0
    );

    let one = larder(1)?;
    let assembly = one["mb_per_s"].as_f64().unwrap_or(0.0);
    let memcpy = memcpy_mb_per_s(&store)?;
    println!();
    println!(
        "batch assembly, 1 reader thread: {assembly:.0} MB/s; memcpy of the same bytes: {memcpy:.0} MB/s; {:.0}% (goal >= 50%)",
        100.0 * assembly / memcpy
    );

    println!();
    println!(
        "memory after one epoch, MB (RSS and PSS include the page cache of mapped files; private = anonymous memory):"
    );
    println!(
        "{:<8} {:>11} {:>11} {:>13} {:>15} {:>15} {:>17}",
        "threads",
        "larder RSS",
        "larder PSS",
        "larder priv.",
        "DataLoader RSS",
        "DataLoader PSS",
        "DataLoader priv."
    );
    for n in [1usize, 2, 4, 8] {
        let l = larder(n)?;
        let p = peer(n)?;
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<8} {:>11.1} {:>11.1} {:>13.1} {:>15.1} {:>15.1} {:>17.1}",
            n,
            f(&l, "rss_mb"),
            f(&l, "pss_mb"),
            f(&l, "anon_mb"),
            f(&p, "rss_mb"),
            f(&p, "pss_mb"),
            f(&p, "anon_mb")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies every shard of the store into one buffer, after a warm-up pass: the bandwidth of
/// moving the same bytes with memcpy.
fn memcpy_mb_per_s(store: &Path) -> anyhow::Result<f64> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(store.join("shards"))? {
        let path = entry?.path();
        maps.push(std::fs::read(&path)?);
    }
    let total: usize = maps.iter().map(Vec::len).sum();
    let mut dst = vec![0u8; maps.iter().map(Vec::len).max().unwrap_or(0)];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        for m in &maps {
            dst[..m.len()].copy_from_slice(m);
            std::hint::black_box(&dst);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(total as f64 / 1e6 / best)
}

/// Generates square JPEGs and prepares them into `store`, once.
fn make_store(args: &Args, store: &Path) -> anyhow::Result<()> {
    if store.join(".complete").exists() {
        return Ok(());
    }
    let images = args
        .dir
        .join(format!("images-{}-{}", args.items, args.resolution));
    std::fs::create_dir_all(&images)?;
    eprintln!(
        "generating {} images and preparing {} (once)...",
        args.items,
        store.display()
    );
    let r = args.resolution;
    (0..args.items)
        .into_par_iter()
        .try_for_each(|i| -> anyhow::Result<()> {
            larder_synth::write_image(&images.join(format!("item_{i:06}.jpg")), r, r, i as u64)?;
            Ok(())
        })?;
    let mut config = Config::for_folder(&images);
    config.datasets[0].resolutions = vec![r];
    larder::prepare(&config, store, &PrepareOptions::default())?;
    std::fs::write(store.join(".complete"), "")?;
    Ok(())
}
