//! `larder push`, `larder pull` and `larder bench-remote`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use larder::remote::RemoteOptions;

/// Arguments of `larder push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The local store folder.
    store: PathBuf,
    /// Where it goes: s3://bucket/prefix, gs://…, az://….
    url: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `larder pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The store's URL.
    url: String,
    /// The local folder to download it into (created; resumed when it holds part of it).
    dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `larder bench-remote`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A local store folder.
    store: PathBuf,
    /// The URL to serve the same store from (it is pushed there first; already uploaded shards
    /// are skipped).
    url: String,
    #[command(flatten)]
    serve: super::bench::ServeArgs,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let remote = RemoteOptions::from_env()?;
    let report = larder::remote::push(&args.store, &args.url, &remote)
        .with_context(|| format!("pushing {} to {}", args.store.display(), args.url))?;
    if args.json {
        super::print_json(&report)?;
    } else {
        writeln!(
            std::io::stdout(),
            "{}: {} shards uploaded ({:.1} MiB), {} already there, catalog last; {:.2}s",
            report.url,
            report.shards_uploaded,
            report.bytes_uploaded as f64 / (1 << 20) as f64,
            report.shards_present,
            report.seconds
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let remote = RemoteOptions::from_env()?;
    let report = larder::remote::pull(&args.url, &args.dir, &remote)
        .with_context(|| format!("pulling {} into {}", args.url, args.dir.display()))?;
    if args.json {
        super::print_json(&report)?;
    } else {
        writeln!(
            std::io::stdout(),
            "{}: {} shards downloaded and checked ({:.1} MiB), {} already there; {:.2}s",
            report.dir,
            report.shards_downloaded,
            report.bytes_downloaded as f64 / (1 << 20) as f64,
            report.shards_present,
            report.seconds
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The three runs of `bench-remote`, side by side.
#[derive(Debug, serde::Serialize)]
struct Comparison {
    local: super::bench::Report,
    remote_cold: super::bench::Report,
    remote_warm: super::bench::Report,
    cold_vs_local: f64,
    warm_vs_local: f64,
}

/// Serves the same store locally, then from `url` with an empty cache, then again with the
/// cache the cold run filled; prints samples/s and the ratios to local.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let base = RemoteOptions::from_env()?;
    larder::remote::push(&args.store, &args.url, &base)
        .with_context(|| format!("pushing {} to {}", args.store.display(), args.url))?;
    let local = super::bench::serve(&args.store.to_string_lossy(), &args.serve, &base)?;
    // A cache folder of this run's own: the cold run starts from nothing.
    let scratch = std::env::temp_dir().join(format!("larder-bench-remote-{}", std::process::id()));
    let remote = RemoteOptions {
        cache_dir: Some(scratch.clone()),
        ..base
    };
    let runs = super::bench::serve(&args.url, &args.serve, &remote)
        .and_then(|cold| Ok((cold, super::bench::serve(&args.url, &args.serve, &remote)?)));
    let _ = std::fs::remove_dir_all(&scratch);
    let (remote_cold, remote_warm) = runs?;
    let ratio = |r: &super::bench::Report| r.samples_per_s / local.samples_per_s.max(1e-9);
    let comparison = Comparison {
        cold_vs_local: ratio(&remote_cold),
        warm_vs_local: ratio(&remote_warm),
        local,
        remote_cold,
        remote_warm,
    };
    if args.json {
        super::print_json(&comparison)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<12} {:>10} {:>9} {:>12} {:>10} {:>9} {:>9}",
        "run", "samples/s", "MB/s", "first batch", "p99 wait", "fetched", "vs local"
    )?;
    for (name, r, ratio) in [
        ("local", &comparison.local, 1.0),
        ("s3 cold", &comparison.remote_cold, comparison.cold_vs_local),
        ("s3 warm", &comparison.remote_warm, comparison.warm_vs_local),
    ] {
        writeln!(
            out,
            "{:<12} {:>10.0} {:>9.1} {:>11.3}s {:>8.2}ms {:>9} {:>8.2}x",
            name,
            r.samples_per_s,
            r.mb_per_s,
            r.first_batch_s,
            r.latency_p99_ms,
            r.cache_misses,
            ratio
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
