//! `larder merge`: combine the parts of a distributed prepare into one store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `larder merge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The store folder or URL: where `larder prepare --out STORE --shard I/N` wrote its parts
    /// (STORE/parts/I-of-N), and where the merged store is written.
    store: String,
    /// Part folders to merge instead of STORE/parts/*; they are removed once merged.
    parts: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // A URL is merged in the object storage the environment names (docs/remote.md).
    let report = larder::merge(args.store.as_str(), &args.parts, None)
        .with_context(|| format!("merging into {}", args.store))?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        std::io::stdout().lock(),
        "{}: merged {} parts: {} items, {} entries ({} found in several parts, kept once), {} shards ({} moved), {:.2}s",
        args.store,
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
