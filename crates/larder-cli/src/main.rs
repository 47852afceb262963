//! `larder`: prepare and serve diffusion fine-tuning data from the command line.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The data engine for diffusion-model fine-tuning.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scan a dataset: sizes, buckets, captions and problems, without decoding any image.
    Scan(cmd::scan::Args),
    /// Prepare a dataset into a store: decode, resize, crop and pack into shards; resumable.
    Prepare(cmd::store::PrepareArgs),
    /// Show what a store holds: items, buckets, fields, codecs, sizes, findings.
    Inspect(cmd::store::StoreArgs),
    /// Check every shard checksum and catalog entry of a store; exit 1 when anything is broken.
    Verify(cmd::store::VerifyArgs),
    /// Remove entries and shards of a store that no item references.
    Gc(cmd::store::StoreArgs),
    /// Serve a store for a few epochs: samples/s, MB/s, batch latency, memory.
    Bench(cmd::bench::Args),
    /// Benchmark the scan against AI Toolkit's way of reading image sizes (needs Python + Pillow).
    BenchScan(cmd::bench_scan::Args),
    /// Benchmark prepare against AI Toolkit's pixel path, and print codec sizes and errors.
    BenchPrepare(cmd::bench_prepare::Args),
    /// Benchmark the loader against a PyTorch DataLoader over one file per item (needs torch).
    BenchLoad(cmd::bench_load::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Scan(args) => cmd::scan::run(args),
        Command::Prepare(args) => cmd::store::prepare(args),
        Command::Inspect(args) => cmd::store::inspect(args),
        Command::Verify(args) => cmd::store::verify(args),
        Command::Gc(args) => cmd::store::gc(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::BenchScan(args) => cmd::bench_scan::run(args),
        Command::BenchPrepare(args) => cmd::bench_prepare::run(args),
        Command::BenchLoad(args) => cmd::bench_load::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
