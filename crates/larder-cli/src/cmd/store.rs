//! `larder prepare`, `inspect`, `verify` and `gc`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use larder::store::codec::Codec;
use larder::{Config, Part, PrepareOptions, Store};

/// Arguments of `larder prepare`.
#[derive(Debug, clap::Args)]
pub struct PrepareArgs {
    /// An AI Toolkit job file, a YAML file with a `datasets:` list, or a folder of images.
    config: PathBuf,
    /// The store to create or update: a folder, or a URL (s3://, gs://, az://), which is
    /// prepared in a local staging folder and uploaded as shards complete, catalog last.
    #[arg(long)]
    out: String,
    /// Target shard size, e.g. 256MiB, 64KiB, 1GB.
    #[arg(long, default_value = "256MiB", value_parser = super::parse_size)]
    shard_size: u64,
    /// Codec of image fields (pixels, masks, controls): u8, u8+zstd, u8+zstd:LEVEL, u8+lz4.
    #[arg(long, default_value = "u8", value_parser = parse_codec)]
    image_codec: Codec,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Prepare only part I of N (0-based), e.g. 0/4, into OUT/parts/I-of-N; `larder merge OUT`
    /// combines the parts. Without it, torchrun's RANK/WORLD_SIZE choose the part; 0/1 is the
    /// whole prepare.
    #[arg(long, value_name = "I/N", value_parser = parse_part)]
    shard: Option<Part>,
}

/// Arguments of the commands that take a store.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The store: a folder, or a URL (s3://, gs://, az://, http(s)://).
    store: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `larder verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Forget broken shards (catalog rows and files) so the next `larder prepare` rebuilds them.
    #[arg(long)]
    repair: bool,
}

/// Opens the store at `location`, a folder or a URL.
fn open(location: &str) -> anyhow::Result<Store> {
    let remote = larder::storage::RemoteOptions::from_env()?;
    Store::open_location(location, &remote).with_context(|| format!("opening {location}"))
}

fn parse_part(s: &str) -> Result<Part, String> {
    Part::parse(s).map_err(|e| e.to_string())
}

pub fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::parse(s).map_err(|e| e.to_string())
}

pub fn prepare(args: PrepareArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let part = match args.shard {
        Some(part) => Some(part),
        None => {
            let part = Part::from_env()?;
            if let Some(p) = part {
                eprintln!(
                    "RANK and WORLD_SIZE are set: preparing part {p} into {} (`larder merge {}` combines the parts once all are done)",
                    p.location(&args.out),
                    args.out
                );
            }
            part
        }
    };
    let options = PrepareOptions {
        shard_bytes: args.shard_size,
        image_codec: args.image_codec,
        progress: !args.json,
        part,
        ..PrepareOptions::default()
    };
    let written = part.map_or(args.out.clone(), |p| p.location(&args.out));
    // A URL is prepared through the object storage the environment names (docs/remote.md).
    let report = larder::Prepare::new(&config)
        .options(options)
        .run(args.out.as_str())
        .with_context(|| format!("preparing {written}"))?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} items, {} entries ({} computed, {} already stored), {} sources hashed, {} shards written ({:.1} MiB), {:.2}s",
        written,
        report.items,
        report.entries,
        report.entries_computed,
        report.entries_reused,
        report.sources_hashed,
        report.shards_written,
        report.bytes_written as f64 / (1 << 20) as f64,
        report.seconds
    )?;
    if let Some(p) = part.filter(|p| !p.is_whole()) {
        writeln!(
            out,
            "part {p} done; when all {} parts are: larder merge {}",
            p.count, args.out
        )?;
    }
    if !report.findings.is_empty() {
        writeln!(
            out,
            "findings ({}; `larder inspect` lists them):",
            report.findings.len()
        )?;
        for f in report.findings.iter().take(10) {
            writeln!(out, "  {:?}: {}: {}", f.kind, f.path.display(), f.detail)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.store)?;
    let i = store.inspect()?;
    if args.json {
        super::print_json(&i)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "store {}", store.location())?;
    writeln!(
        out,
        "config {} (digest {})",
        i.config_source.as_deref().unwrap_or("?"),
        i.config_digest.as_deref().unwrap_or("?")
    )?;
    writeln!(
        out,
        "{} items in {} buckets; {} shards, {:.1} MiB",
        i.items,
        i.buckets.len(),
        i.shards,
        i.shard_bytes as f64 / (1 << 20) as f64
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:>8} {:<8} {:<14} {:>12} {:>12} {:>7}",
        "field", "entries", "dtype", "codec", "stored", "raw", "ratio"
    )?;
    for (name, f) in &i.fields {
        writeln!(
            out,
            "{:<10} {:>8} {:<8} {:<14} {:>12} {:>12} {:>6.2}x",
            name,
            f.entries,
            f.dtypes.join(","),
            f.codecs.join(","),
            f.stored_bytes,
            f.raw_bytes,
            f.compression_ratio
        )?;
    }
    writeln!(out)?;
    writeln!(out, "{:<12} {:>8}", "bucket", "items")?;
    for (b, n) in &i.buckets {
        writeln!(out, "{b:<12} {n:>8}")?;
    }
    if !i.findings.is_empty() {
        writeln!(out)?;
        writeln!(out, "findings:")?;
        for (kind, list) in &i.findings {
            writeln!(out, "  {kind}: {}", list.len())?;
            for f in list.iter().take(10) {
                writeln!(out, "    {f}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let repair = args.repair;
    let args = args.store;
    let mut store = open(&args.store)?;
    let report = if repair {
        store.repair()?
    } else {
        store.verify()?
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        super::print_json(&report)?;
    } else {
        for p in &report.problems {
            match &p.entry {
                Some(e) => writeln!(out, "BROKEN {} entry {e}: {}", p.path.display(), p.message)?,
                None => writeln!(out, "BROKEN {}: {}", p.path.display(), p.message)?,
            }
        }
        for s in &report.strays {
            writeln!(
                out,
                "stray file (not in the catalog; `larder gc` removes it): {}",
                s.display()
            )?;
        }
        writeln!(
            out,
            "{}: {} shards, {} entries, {} items checked, {} problems",
            args.store,
            report.shards,
            report.entries,
            report.items,
            report.problems.len()
        )?;
        if !report.problems.is_empty() {
            if repair {
                writeln!(
                    out,
                    "broken shards forgotten; run `larder prepare` with the same config to rebuild them"
                )?;
            } else {
                writeln!(
                    out,
                    "run `larder verify --repair`, then `larder prepare`, to rebuild what is broken"
                )?;
            }
        }
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn gc(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let mut store = open(&args.store)?;
    let report = store.gc()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        super::print_json(&report)?;
    } else {
        writeln!(
            out,
            "{}: removed {} entries and {} shards, freed {:.1} MiB",
            args.store,
            report.entries_removed,
            report.shards_removed,
            report.bytes_freed as f64 / (1 << 20) as f64
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
