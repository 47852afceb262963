//! `larder push` and `larder pull`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use larder::storage::RemoteOptions;

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

pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let remote = RemoteOptions::from_env()?;
    let report = larder::transfer::push(&args.store, &args.url, &remote)
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
    let report = larder::transfer::pull(&args.url, &args.dir, &remote)
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
