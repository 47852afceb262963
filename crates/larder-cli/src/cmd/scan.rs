//! `larder scan`: the dataset summary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use larder::{Config, Plan, ScanOptions, Summary};

/// Arguments of `larder scan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An AI Toolkit job file, a YAML file with a `datasets:` list, or a folder of images.
    config: PathBuf,
    /// Print one JSON document (with a record per planned item) instead of the table.
    #[arg(long)]
    json: bool,
    /// List at most this many paths per kind of finding in the table (all with --json).
    #[arg(long, default_value_t = 10)]
    max_paths: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let scan = larder::scan_with(
        &config,
        &ScanOptions {
            progress: !args.json,
        },
    )
    .with_context(|| format!("scanning {}", args.config.display()))?;
    let plan = Plan::new(&config, &scan)?;
    let summary = Summary::new(&config, &scan, &plan);
    let mut out = std::io::stdout().lock();
    if args.json {
        super::print_json(&summary)?;
    } else {
        for w in &summary.warnings {
            eprintln!("warning: {w}");
        }
        print_table(&mut out, &summary, args.max_paths)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(out: &mut impl Write, s: &Summary, max_paths: usize) -> std::io::Result<()> {
    let arch = s
        .arch
        .as_deref()
        .map(|a| format!(" (model {a})"))
        .unwrap_or_default();
    writeln!(
        out,
        "{}: divisibility {}{arch}",
        s.source.display(),
        s.divisibility
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<4} {:<40} {:>6} {:>8} {:>8}",
        "#", "source", "res", "images", "items"
    )?;
    for d in &s.datasets {
        writeln!(
            out,
            "{:<4} {:<40} {:>6} {:>8} {:>8}",
            d.dataset,
            truncate(&d.source.display().to_string(), 40),
            d.resolution,
            d.images,
            d.items
        )?;
    }
    writeln!(out)?;
    writeln!(out, "{:<12} {:>8} {:>7}", "bucket", "items", "share")?;
    for b in &s.buckets {
        writeln!(
            out,
            "{:<12} {:>8} {:>6.1}%",
            b.bucket,
            b.count,
            100.0 * b.share
        )?;
    }
    writeln!(out, "{:<12} {:>8}", "total", s.items_total)?;
    writeln!(out)?;
    writeln!(
        out,
        "crops: mean aspect-ratio error {:.2}%, mean area cropped {:.2}%",
        s.mean_aspect_error_pct, s.mean_cropped_pct
    )?;
    let c = &s.captions;
    let images = c.file + c.metadata + c.default + c.none;
    writeln!(
        out,
        "captions: {} of {images} images from caption files, {} from metadata, {} default_caption, {} none",
        c.file, c.metadata, c.default, c.none
    )?;
    if s.findings.is_empty() {
        writeln!(out, "findings: none")?;
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "findings:")?;
    for (kind, list) in &s.findings {
        let what = if kind.excludes_image() {
            " (left out)"
        } else {
            ""
        };
        writeln!(out, "  {kind:?}{what}: {}", list.len())?;
        for f in list.iter().take(max_paths) {
            writeln!(out, "    {}: {}", f.path.display(), f.detail)?;
        }
        if list.len() > max_paths {
            writeln!(
                out,
                "    ... and {} more (--json lists all)",
                list.len() - max_paths
            )?;
        }
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        s.to_owned()
    } else {
        let tail: String = s.chars().skip(count - (n - 1)).collect();
        format!("…{tail}")
    }
}
