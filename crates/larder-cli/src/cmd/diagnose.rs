//! `larder diagnose`: the memory a dataset costs under a PyTorch DataLoader and under larder,
//! from the real plan or a prepared store, optionally measured, with advice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use larder::diagnose::{
    Advice, Estimate, EstimateOptions, MeasureOptions, Measurement, ModelFigures, SystemMemory,
    Workload, advise, estimate, family, human, measure, name_or_path_of, resolve,
};
use larder::store::CATALOG_FILE;
use larder::store::codec::Codec;
use larder::{Config, Plan, Store, scan};

/// Arguments of `larder diagnose`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A config (AI Toolkit job file, `datasets:` file or image folder), or a prepared store.
    input: PathBuf,
    /// A prepared store of this config: its real sizes replace the plan's.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Model family (sd15, sd2, sdxl, ssd, vega, pixart, sd3, sd35-medium, sd35-large, flux,
    /// lumina2, chroma, hidream, qwen-image, wan21-14b, wan22-14b, wan22-5b); by default the one
    /// the config's `model.arch` and `model.name_or_path` name.
    #[arg(long = "model", value_name = "FAMILY")]
    model: Option<String>,
    /// Items per batch.
    #[arg(long, default_value_t = 1)]
    batch_size: u32,
    /// DataLoader workers, and larder reader threads; by default the config's `num_workers`
    /// (AI Toolkit's default, 2).
    #[arg(long)]
    workers: Option<u32>,
    /// Codec of cached latents (bf16, int8+zstd, fp8_e4m3, ...).
    #[arg(long, default_value = "bf16")]
    latent_codec: String,
    /// Size the advice for this much RAM (GB) instead of this machine's.
    #[arg(long, value_name = "GB")]
    ram_gb: Option<f64>,
    /// Serve the store with larder's loader and report measured RSS, PSS and page-cache
    /// residency next to the estimate (needs a store).
    #[arg(long)]
    measure: bool,
    /// Batches to serve when measuring; one epoch by default.
    #[arg(long)]
    batches: Option<u64>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// An estimate set against what was measured.
#[derive(Debug, serde::Serialize)]
struct Comparison {
    what: &'static str,
    estimated: u64,
    measured: u64,
    /// (estimated − measured) / measured, in percent.
    error_percent: f64,
}

/// Everything `larder diagnose` found.
#[derive(Debug, serde::Serialize)]
struct Report {
    input: PathBuf,
    store: Option<PathBuf>,
    ram: Option<u64>,
    /// The model figures the estimate uses: a family, or an arch larder has no figures for.
    model: Option<ModelFigures>,
    estimate: Estimate,
    advice: Vec<Advice>,
    measurement: Option<Measurement>,
    comparison: Vec<Comparison>,
}

fn is_store(path: &Path) -> bool {
    path.join(CATALOG_FILE).is_file()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store_path = match (&args.store, is_store(&args.input)) {
        (Some(s), _) => Some(s.clone()),
        (None, true) => Some(args.input.clone()),
        (None, false) => None,
    };
    if args.measure && store_path.is_none() {
        bail!(
            "--measure serves a prepared store: give one with --store DIR (make it with `larder prepare {} --out DIR`)",
            args.input.display()
        );
    }
    let workers_default = |c: Option<&Config>| {
        c.and_then(|c| c.datasets.first())
            .map_or(2, |d| d.loader.num_workers)
    };
    let latent_codec = Codec::parse(&args.latent_codec)?;
    // Measure first, while this process holds nothing else: its memory before opening the
    // store is the baseline the loader's cost is read against.
    let config = if is_store(&args.input) {
        None
    } else {
        Some(Config::load(&args.input)?)
    };
    let workers = args
        .workers
        .unwrap_or_else(|| workers_default(config.as_ref()));
    let measure_options = MeasureOptions {
        batch_size: args.batch_size,
        threads: workers.max(1) as usize,
        prefetch: 4,
        batches: args.batches,
    };
    let measurement = match (&store_path, args.measure) {
        (Some(store), true) => Some(
            measure(store, &measure_options)
                .with_context(|| format!("measuring {}", store.display()))?,
        ),
        _ => None,
    };

    // A family typed with --model must be one larder knows (a typo is an error); an arch
    // from the config is one the config reader accepted, so it is always diagnosed, with the
    // model figures marked unknown when larder's table has none for it.
    let model = match (&args.model, config.as_ref().and_then(|c| c.arch.as_deref())) {
        (Some(name), _) => Some(ModelFigures::Known {
            family: family(name).with_context(|| {
                format!(
                    "unknown model family {name:?}: expected one of {}",
                    larder::diagnose::FAMILIES
                        .iter()
                        .map(|f| f.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
            assumed: None,
        }),
        (None, Some(arch)) => Some(resolve(arch, name_or_path_of(&args.input).as_deref())),
        (None, None) => None,
    };
    let fam = model.as_ref().and_then(ModelFigures::family);
    let options = EstimateOptions {
        family: fam,
        batch_size: args.batch_size.max(1),
        workers,
        prefetch: measure_options.prefetch as u32,
        latent_codec,
        ..EstimateOptions::default()
    };
    let workload = if let Some(store) = &store_path {
        Workload::from_store(
            &Store::open(store).with_context(|| format!("opening {}", store.display()))?,
        )?
    } else if let Some(config) = &config {
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
        let scanned = scan(config)?;
        let plan = Plan::new(config, &scanned)?;
        Workload::from_plan(config, &scanned, &plan, &options)
    } else {
        bail!("{} is neither a config nor a store", args.input.display());
    };
    let breakdown = estimate(workload, &options);
    let ram = match args.ram_gb {
        Some(gb) => Some((gb * 1e9) as u64),
        None => SystemMemory::read().map(|m| m.total),
    };
    let advice: Vec<Advice> = model
        .as_ref()
        .and_then(ModelFigures::advice)
        .into_iter()
        .chain(advise(&breakdown, ram))
        .collect();
    let comparison = measurement
        .as_ref()
        .map(|m| compare(&breakdown, m))
        .unwrap_or_default();
    let report = Report {
        input: args.input.clone(),
        store: store_path,
        ram,
        model,
        estimate: breakdown,
        advice,
        measurement,
        comparison,
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        print_report(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The estimate of what the loader adds, against the measured growth of this process.
fn compare(e: &Estimate, m: &Measurement) -> Vec<Comparison> {
    // A partial epoch maps the share of the store its items live in.
    let served = (m.items as f64 / e.workload.items.max(1) as f64).min(1.0);
    let mapped = (e.larder.mapped_store as f64 * served).round() as u64;
    let row = |what, estimated: u64, measured: u64| Comparison {
        what,
        estimated,
        measured,
        error_percent: 100.0 * (estimated as f64 - measured as f64) / measured.max(1) as f64,
    };
    let grown = |after: u64, before: u64| after.saturating_sub(before);
    vec![
        row(
            "private (item table, batch buffers, catalog)",
            e.larder.private,
            grown(m.after.anonymous, m.before.anonymous),
        ),
        row("mapped store (file-backed RSS)", mapped, m.mapped_store),
        row(
            "RSS added by the loader",
            e.larder.private + mapped,
            grown(m.after.rss, m.before.rss),
        ),
        row(
            "PSS added by the loader",
            e.larder.private + mapped,
            grown(m.after.pss, m.before.pss),
        ),
    ]
}

fn print_report(r: &Report) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let e = &r.estimate;
    let w = &e.workload;
    let source = match &r.store {
        Some(s) => format!("store {}", s.display()),
        None => format!("plan of {}", r.input.display()),
    };
    let fam = match &r.model {
        Some(ModelFigures::Known {
            family,
            assumed: None,
        }) => format!("{} ({})", family.title, family.name),
        Some(ModelFigures::Known { family, .. }) => {
            format!("{} ({}), assumed", family.title, family.name)
        }
        Some(ModelFigures::Unknown { arch }) => {
            format!("arch {arch:?}, model figures unknown (pass --model to assume a family)")
        }
        None => "no model family (pass --model)".to_owned(),
    };
    writeln!(out, "diagnose: {source}")?;
    writeln!(
        out,
        "model: {fam}; batch size {}; {} DataLoader workers / larder threads",
        e.batch_size, e.dataloader.workers
    )?;
    writeln!(
        out,
        "items: {} in {} buckets; {} distinct captions; largest batch {}",
        w.items,
        w.buckets.len(),
        w.distinct_captions,
        human(e.largest_batch_bytes)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<22} {:>9} {:>12} {:>12}  source",
        "data", "entries", "at rest", "decoded"
    )?;
    for f in &w.fields {
        writeln!(
            out,
            "{:<22} {:>9} {:>12} {:>12}  {}{}",
            f.name,
            f.entries,
            human(f.stored_bytes),
            human(f.decoded_bytes),
            match f.origin {
                larder::diagnose::Origin::Store => "store",
                larder::diagnose::Origin::Plan => "plan",
            },
            if f.in_memory { ", in memory" } else { "" }
        )?;
    }
    writeln!(
        out,
        "{:<22} {:>9} {:>12}               (page cache to keep the store hot)",
        "total",
        "",
        human(e.store_bytes)
    )?;
    if let Some(f) = e.family.as_deref().and_then(family) {
        writeln!(out)?;
        writeln!(out, "model weights, bf16: {}", human(e.model_bytes))?;
        for c in f.components {
            writeln!(out, "  {:<40} {:>10}", c.name, human(c.bytes()))?;
        }
    }
    let dl = &e.dataloader;
    let la = &e.larder;
    writeln!(out)?;
    writeln!(
        out,
        "{:<40} {:>18} {:>18}",
        "memory",
        format!("DataLoader ({}w)", dl.workers),
        format!("larder ({}t)", la.threads)
    )?;
    let rows: [(&str, String, String); 10] = [
        (
            "per worker: Python + torch",
            human(dl.runtime_per_worker),
            "-".into(),
        ),
        (
            "per worker: dataset object",
            human(dl.dataset_state_per_worker),
            "-".into(),
        ),
        (
            "per worker: largest image decode",
            human(dl.decode_per_worker),
            "-".into(),
        ),
        (
            "per worker: in-memory caches",
            human(dl.caches_per_worker),
            "-".into(),
        ),
        (
            "per worker: prefetched batches",
            human(dl.batches_per_worker),
            "-".into(),
        ),
        (
            "main process: in-memory caches",
            human(dl.main_caches),
            "-".into(),
        ),
        ("item table", "-".into(), human(la.item_table)),
        ("batch buffers", "-".into(), human(la.batch_buffers)),
        ("catalog cache", "-".into(), human(la.catalog_cache)),
        (
            "private memory, all processes",
            human(dl.total),
            human(la.private),
        ),
    ];
    for (what, a, b) in rows {
        writeln!(out, "{what:<40} {a:>18} {b:>18}")?;
    }
    writeln!(
        out,
        "{:<40} {:>18} {:>18}",
        "page cache, shared (store hot)",
        human(e.store_bytes),
        human(la.mapped_store)
    )?;
    if let Some(m) = &r.measurement {
        writeln!(out)?;
        writeln!(
            out,
            "measured: {} batches ({} items) in {:.2}s; page cache held {} of {} shard bytes before, {} after",
            m.batches,
            m.items,
            m.seconds,
            human(m.page_cache_before.resident),
            human(m.page_cache_before.bytes),
            human(m.page_cache_after.resident)
        )?;
        writeln!(
            out,
            "process: RSS {} -> {}, PSS {} -> {}, anonymous {} -> {}",
            human(m.before.rss),
            human(m.after.rss),
            human(m.before.pss),
            human(m.after.pss),
            human(m.before.anonymous),
            human(m.after.anonymous)
        )?;
        writeln!(
            out,
            "{:<46} {:>12} {:>12} {:>8}",
            "larder loader", "estimated", "measured", "error"
        )?;
        for c in &r.comparison {
            writeln!(
                out,
                "{:<46} {:>12} {:>12} {:>+7.1}%",
                c.what,
                human(c.estimated),
                human(c.measured),
                c.error_percent
            )?;
        }
    }
    writeln!(out)?;
    match r.ram {
        Some(ram) => writeln!(out, "advice (for {} of RAM):", human(ram))?,
        None => writeln!(out, "advice:")?,
    }
    if r.advice.is_empty() {
        writeln!(out, "  nothing to change")?;
    }
    for a in &r.advice {
        let level = match a.level {
            larder::diagnose::Level::Info => "info",
            larder::diagnose::Level::Warn => "warn",
        };
        writeln!(out, "  [{level}] {}: {}", a.rule, a.advice)?;
        writeln!(out, "         why: {}", a.reason)?;
    }
    Ok(())
}
