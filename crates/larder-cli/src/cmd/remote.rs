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
    /// The store is at URL already (for example its folder served over HTTP): do not push.
    #[arg(long)]
    no_push: bool,
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

/// The four runs of `bench-remote`, side by side.
#[derive(Debug, serde::Serialize)]
struct Comparison {
    /// How the page cache was emptied before the cold runs.
    eviction: String,
    local_cold: super::bench::Report,
    remote_cold: super::bench::Report,
    local_warm: super::bench::Report,
    remote_warm: super::bench::Report,
    /// Samples/s from object storage with an empty cache over local with an empty page cache.
    cold_vs_local: f64,
    /// Samples/s from object storage with a warm cache over local with a warm page cache.
    warm_vs_local: f64,
    /// The same over the warm runs' epochs after their first (which, for the remote store,
    /// includes checking each cached chunk's checksum once).
    steady_vs_local: Option<f64>,
}

/// Serves the same store locally and from `url`: one epoch each with nothing cached (the page
/// cache emptied, the remote cache folder new), then `--epochs` epochs each with everything
/// cached; prints samples/s side by side with the ratios.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let base = RemoteOptions::from_env()?;
    if !args.no_push {
        larder::remote::push(&args.store, &args.url, &base)
            .with_context(|| format!("pushing {} to {}", args.store.display(), args.url))?;
    }
    let local = args.store.to_string_lossy().into_owned();
    let shards: Vec<PathBuf> = std::fs::read_dir(args.store.join("shards"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let evict = || -> anyhow::Result<String> {
        let mut how = "nothing to evict".to_owned();
        for shard in &shards {
            how = larder::fastload::evict(shard)?.describe().to_owned();
        }
        Ok(how)
    };
    let mut cold = args.serve.clone();
    cold.epochs = 1;
    // A cache folder of this run's own: the cold run starts from nothing.
    let scratch = std::env::temp_dir().join(format!("larder-bench-remote-{}", std::process::id()));
    let remote = RemoteOptions {
        cache_dir: Some(scratch.clone()),
        ..base
    };
    let runs = (|| -> anyhow::Result<_> {
        // Each cold run right after an eviction, each warm run right after its cold run (an
        // eviction in between would make the warm run's first epoch cold again).
        let eviction = evict()?;
        let local_cold = super::bench::serve(&local, &cold, &remote)?;
        let local_warm = super::bench::serve(&local, &args.serve, &remote)?;
        evict()?;
        let remote_cold = super::bench::serve(&args.url, &cold, &remote)?;
        let remote_warm = super::bench::serve(&args.url, &args.serve, &remote)?;
        Ok((eviction, local_cold, remote_cold, local_warm, remote_warm))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (eviction, local_cold, remote_cold, local_warm, remote_warm) = runs?;
    let ratio = |a: &super::bench::Report, b: &super::bench::Report| {
        a.samples_per_s / b.samples_per_s.max(1e-9)
    };
    let comparison = Comparison {
        cold_vs_local: ratio(&remote_cold, &local_cold),
        warm_vs_local: ratio(&remote_warm, &local_warm),
        steady_vs_local: remote_warm
            .steady_samples_per_s
            .zip(local_warm.steady_samples_per_s)
            .map(|(r, l)| r / l.max(1e-9)),
        eviction,
        local_cold,
        remote_cold,
        local_warm,
        remote_warm,
    };
    if args.json {
        super::print_json(&comparison)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "cold runs: one epoch, page cache emptied ({}), remote cache empty",
        comparison.eviction
    )?;
    writeln!(
        out,
        "{:<12} {:>6} {:>10} {:>9} {:>12} {:>10} {:>9} {:>9}",
        "run", "epochs", "samples/s", "MB/s", "first batch", "p99 wait", "fetched", "vs local"
    )?;
    for (name, r, ratio) in [
        ("local cold", &comparison.local_cold, 1.0),
        (
            "remote cold",
            &comparison.remote_cold,
            comparison.cold_vs_local,
        ),
        ("local warm", &comparison.local_warm, 1.0),
        (
            "remote warm",
            &comparison.remote_warm,
            comparison.warm_vs_local,
        ),
    ] {
        writeln!(
            out,
            "{:<12} {:>6} {:>10.0} {:>9.1} {:>11.3}s {:>8.2}ms {:>9} {:>8.2}x",
            name,
            r.epochs,
            r.samples_per_s,
            r.mb_per_s,
            r.first_batch_s,
            r.latency_p99_ms,
            r.cache_misses,
            ratio
        )?;
    }
    if let (Some(r), Some(l), Some(x)) = (
        comparison.remote_warm.steady_samples_per_s,
        comparison.local_warm.steady_samples_per_s,
        comparison.steady_vs_local,
    ) {
        writeln!(
            out,
            "warm, epochs after the first: local {l:.0}, remote {r:.0} samples/s: {x:.2}x"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
