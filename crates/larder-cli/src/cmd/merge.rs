//! `larder merge`: combine the parts of a distributed prepare into one store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `larder merge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store folder: where `larder prepare --out STORE --shard I/N` wrote its parts
    /// (STORE/parts/I-of-N), and where the merged store is written.
    store: PathBuf,
    /// Part folders to merge instead of STORE/parts/*; they are removed once merged.
    parts: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = larder::merge_parts(&args.store, &args.parts)
        .with_context(|| format!("merging into {}", args.store.display()))?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        std::io::stdout().lock(),
        "{}: merged {} parts: {} items, {} entries ({} found in several parts, kept once), {} shards ({} moved), {:.2}s",
        args.store.display(),
        report.parts,
        report.items,
        report.entries,
        report.duplicate_entries,
        report.shards,
        report.shards_moved,
        report.seconds
    )?;
    Ok(ExitCode::SUCCESS)
}
