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
    /// Benchmark the scan against AI Toolkit's way of reading image sizes (needs Python + Pillow).
    BenchScan(cmd::bench_scan::Args),
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
        Command::BenchScan(args) => cmd::bench_scan::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
