//! `larder bench`: serve a store for a few epochs and report throughput, latency and memory.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use larder::Store;
use larder::load::order::{BucketTail, OrderOptions, RankTail};
use larder::load::{Loader, LoaderOptions};

/// Arguments of `larder bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store: a folder, or a URL (s3://, gs://, az://, http(s)://).
    store: String,
    #[command(flatten)]
    serve: ServeArgs,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// How the store is served.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Items per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: u32,
    /// Reader threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Batches assembled ahead.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Epochs to serve.
    #[arg(long, default_value_t = 3)]
    pub epochs: u64,
    /// Fields to load (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    fields: Option<Vec<String>>,
}

/// What `larder bench` measured.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    store: String,
    batch_size: u32,
    threads: usize,
    pub epochs: u64,
    batches: usize,
    samples: usize,
    /// Samples served more than once in their epoch: a bucket whose last batch is short is
    /// topped up with items of the same bucket (and ranks pad with repeated batches), so the
    /// figures count these again.
    repeated_samples: usize,
    seconds: f64,
    pub samples_per_s: f64,
    /// Samples/s over the epochs after the first (none with one epoch).
    pub steady_samples_per_s: Option<f64>,
    pub mb_per_s: f64,
    /// Opening the catalog.
    store_open_s: f64,
    /// Opening the catalog and building the loader (item table, order).
    open_s: f64,
    pub first_batch_s: f64,
    latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    epoch_switch_ms: Vec<f64>,
    rss_mb: Option<f64>,
    pss_mb: Option<f64>,
    /// Private anonymous memory: what the loader itself allocates, as opposed to the mapped
    /// store's page cache, which RSS also counts and every process on the machine shares.
    anon_mb: Option<f64>,
    /// For a remote store: entry reads served from the local cache, and fetched.
    cache_hits: u64,
    pub cache_misses: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let remote = larder::storage::RemoteOptions::from_env()?;
    let report = serve(&args.store, &args.serve, &remote)?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    print(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the store at `location` and serves it for `args.epochs` epochs.
pub fn serve(
    location: &str,
    args: &ServeArgs,
    remote: &larder::storage::RemoteOptions,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let store = Arc::new(Store::open_location(location, remote)?);
    let store_open_s = started.elapsed().as_secs_f64();
    let options = LoaderOptions {
        batch_size: args.batch_size,
        order: OrderOptions {
            seed: 0,
            shuffle: true,
            bucket_tail: BucketTail::Fill,
            rank_tail: RankTail::Pad,
        },
        threads: args.threads,
        prefetch: args.prefetch,
        fields: args.fields.clone(),
        ..LoaderOptions::default()
    }
    .with_env_ranks()?;
    let mut loader = Loader::new(store, options)?;
    let open_s = started.elapsed().as_secs_f64();

    let mut latencies = Vec::new();
    let (mut samples, mut bytes) = (0usize, 0usize);
    let mut first_batch_s = None;
    let mut epoch_switch_ms = Vec::new();
    let mut repeated_samples = 0usize;
    let serve = Instant::now();
    // Where the first epoch ended: what follows is the steady state a long run sees, without
    // one-time costs (page faults of a new map, a remote cache's first-use checksums).
    let mut after_first: Option<(Instant, usize)> = None;
    for epoch in 0..args.epochs {
        if epoch == 1 {
            after_first = Some((Instant::now(), samples));
        }
        let mut last = Instant::now();
        let mut first_of_epoch = true;
        let mut seen = std::collections::HashSet::new();
        for batch in loader.by_ref() {
            let batch = batch?;
            let now = Instant::now();
            let waited = now.duration_since(last).as_secs_f64() * 1e3;
            if first_of_epoch && epoch > 0 {
                epoch_switch_ms.push(waited);
            }
            first_of_epoch = false;
            first_batch_s.get_or_insert_with(|| started.elapsed().as_secs_f64());
            latencies.push(waited);
            samples += batch.len();
            repeated_samples += batch.items.iter().filter(|&&id| !seen.insert(id)).count();
            bytes += batch.tensor_bytes();
            last = Instant::now();
        }
    }
    let seconds = serve.elapsed().as_secs_f64();
    let steady_samples_per_s = after_first
        .map(|(at, before)| (samples - before) as f64 / at.elapsed().as_secs_f64().max(1e-9));
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let (rss_mb, pss_mb, anon_mb) = memory();
    let counters = loader.metrics().snapshot();
    Ok(Report {
        store: location.to_owned(),
        batch_size: args.batch_size,
        threads: args.threads,
        epochs: args.epochs,
        batches: latencies.len(),
        samples,
        repeated_samples,
        seconds,
        samples_per_s: samples as f64 / seconds.max(1e-9),
        steady_samples_per_s,
        mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        store_open_s,
        open_s,
        first_batch_s: first_batch_s.unwrap_or(0.0),
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        epoch_switch_ms,
        rss_mb,
        pss_mb,
        anon_mb,
        cache_hits: counters.cache_hits,
        cache_misses: counters.cache_misses,
    })
}

/// Prints `report` as text.
pub fn print(report: &Report) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "served {} batches ({} samples) of {} in {} epochs: {:.0} samples/s, {:.1} MB/s",
        report.batches,
        report.samples,
        report.store,
        report.epochs,
        report.samples_per_s,
        report.mb_per_s
    )?;
    writeln!(
        out,
        "open {:.3}s (catalog {:.3}s), first batch {:.3}s; batch wait p50 {:.3} ms, p99 {:.3} ms; epoch switch {}",
        report.open_s,
        report.store_open_s,
        report.first_batch_s,
        report.latency_p50_ms,
        report.latency_p99_ms,
        epoch_switch(&report.epoch_switch_ms)
    )?;
    if report.repeated_samples > 0 {
        writeln!(
            out,
            "repeats: {} of the {} samples were items already served in their epoch: a bucket's last batch, when short, is topped up with items of the same bucket",
            report.repeated_samples, report.samples
        )?;
    }
    match (report.rss_mb, report.pss_mb) {
        (Some(r), Some(p)) => writeln!(out, "memory: RSS {r:.1} MB, PSS {p:.1} MB")?,
        _ => writeln!(
            out,
            "memory: not available on this system (needs /proc/self/smaps_rollup)"
        )?,
    }
    if report.cache_hits + report.cache_misses > 0 {
        writeln!(
            out,
            "remote reads: {} from the local cache, {} fetched",
            report.cache_hits, report.cache_misses
        )?;
    }
    Ok(())
}

/// The epoch switches' batch waits, e.g. `1.250, 0.980 ms`; a single epoch has none.
fn epoch_switch(ms: &[f64]) -> String {
    if ms.is_empty() {
        return "n/a (one epoch)".to_owned();
    }
    let list = ms
        .iter()
        .map(|v| format!("{v:.3}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{list} ms")
}

/// Resident and proportional set size, and anonymous memory, of this process, in MiB.
fn memory() -> (Option<f64>, Option<f64>, Option<f64>) {
    let mib = |b: u64| Some(b as f64 / (1024.0 * 1024.0));
    match larder::diagnose::ProcessMemory::read() {
        Some(m) => (mib(m.rss), mib(m.pss), mib(m.anonymous)),
        None => (None, None, None),
    }
}
