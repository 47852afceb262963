//! `larder-bench remote`: one store served from local disk and from object storage, cold and
//! warm, side by side.
//!
//! Each run is `larder bench <store> --json` in a process of its own, so a run's cache and
//! mappings are its own; the page cache is emptied before each cold run.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use larder::storage::RemoteOptions;

/// Arguments of `larder-bench remote`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A local store folder.
    store: PathBuf,
    /// The URL to serve the same store from (it is pushed there first; already uploaded shards
    /// are skipped).
    url: String,
    /// The store is at URL already (for example its folder served over HTTP): do not push.
    #[arg(long)]
    no_push: bool,
    /// Items per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: u32,
    /// Reader threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Epochs of the warm runs (the cold runs serve one).
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// What one `larder bench` run measured (the figures compared here).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Run {
    epochs: u64,
    samples_per_s: f64,
    steady_samples_per_s: Option<f64>,
    mb_per_s: f64,
    first_batch_s: f64,
    latency_p99_ms: f64,
    cache_misses: u64,
}

/// The four runs, side by side.
#[derive(Debug, serde::Serialize)]
struct Comparison {
    /// How the page cache was emptied before the cold runs.
    eviction: String,
    local_cold: Run,
    remote_cold: Run,
    local_warm: Run,
    remote_warm: Run,
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
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = RemoteOptions::from_env()?;
    if !args.no_push {
        larder::transfer::push(&args.store, &args.url, &base)
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
    let exe = crate::larder_exe()?;
    // A cache folder of this run's own: the cold run starts from nothing.
    let scratch = std::env::temp_dir().join(format!("larder-bench-remote-{}", std::process::id()));
    let serve = |location: &str, epochs: u64| -> anyhow::Result<Run> {
        let out = Command::new(&exe)
            .args(["bench", location, "--json", "--epochs", &epochs.to_string()])
            .args(["--batch-size", &args.batch_size.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .env("LARDER_CACHE_DIR", &scratch)
            .output()?;
        let v = crate::json_of(out, &format!("larder bench {location}"))?;
        serde_json::from_value(v).context("reading larder bench's report")
    };
    let runs = (|| -> anyhow::Result<_> {
        // Each cold run right after an eviction, each warm run right after its cold run (an
        // eviction in between would make the warm run's first epoch cold again).
        let eviction = evict()?;
        let local_cold = serve(&local, 1)?;
        let local_warm = serve(&local, args.epochs)?;
        evict()?;
        let remote_cold = serve(&args.url, 1)?;
        let remote_warm = serve(&args.url, args.epochs)?;
        Ok((eviction, local_cold, remote_cold, local_warm, remote_warm))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (eviction, local_cold, remote_cold, local_warm, remote_warm) = runs?;
    let ratio = |a: &Run, b: &Run| a.samples_per_s / b.samples_per_s.max(1e-9);
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
        crate::print_json(&comparison)?;
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
