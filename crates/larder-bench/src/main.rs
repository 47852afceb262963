//! `larder-bench`: larder measured side by side with the tools it replaces.
//!
//! Each subcommand generates its own data, runs larder and its peer (AI Toolkit's code paths,
//! a PyTorch DataLoader, the safetensors package) in the same run, and prints both with their
//! ratio; `all` runs every one whose peer this machine has. The figures in docs/benchmarks.md
//! come from here. These are programs, not tests: nothing here asserts a speed.
//!
//! Benchmarks that time `larder` commands in their own processes run the `larder` binary built
//! beside this one (`cargo build --release --workspace`).

mod aitk;
mod diagnose;
mod encode;
mod fastload;
mod load;
mod memory;
mod metrics;
mod prepare;
mod remote;
mod scan;
mod video;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Benchmarks of larder against its peers, side by side.
#[derive(Debug, Parser)]
#[command(name = "larder-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every benchmark below with its defaults, one after the other; those whose peer is not
    /// installed (Pillow, torch, safetensors) say so and are left out.
    All(AllArgs),
    /// The scan against AI Toolkit's way of reading image sizes (needs Python + Pillow).
    Scan(scan::Args),
    /// Prepare against AI Toolkit's pixel path, and codec sizes and errors.
    Prepare(prepare::Args),
    /// Latent caching against AI Toolkit's loop; codec and text-cache sizes (needs the larder
    /// Python package, Pillow, safetensors).
    Encode(encode::Args),
    /// The loader against a PyTorch DataLoader over one file per item (needs torch).
    Load(load::Args),
    /// What recording a training step's metrics costs, by output.
    Metrics(metrics::Args),
    /// `larder diagnose`'s memory estimate against measured RSS and PSS.
    Diagnose(diagnose::Args),
    /// Loading a safetensors checkpoint by each path (plain, O_DIRECT, pinned, cuFile), cold
    /// and warm, against the safetensors package.
    Fastload(fastload::Args),
    /// Serving a store locally, then from object storage with a cold and a warm cache.
    Remote(remote::Args),
    /// AI Toolkit's trainer fed by its own loader against the same trainer fed by larder's
    /// drop-in: time to the first step, data wait per step, memory (needs an AI Toolkit
    /// checkout and its Python packages).
    Aitk(aitk::Args),
    /// Preparing video clips against AI Toolkit's own per-clip video path: frames/s and peak
    /// memory (needs an AI Toolkit checkout and its Python packages).
    Video(video::Args),
}

/// Arguments of `larder-bench all`.
#[derive(Debug, clap::Args)]
struct AllArgs {
    /// The Python with the peers' packages (Pillow, torch, safetensors, larder).
    #[arg(long, default_value = "python3")]
    python: String,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::All(args) => all(&args),
        Command::Scan(args) => scan::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Load(args) => load::run(args),
        Command::Metrics(args) => metrics::run(args),
        Command::Diagnose(args) => diagnose::run(args),
        Command::Fastload(args) => fastload::run(args),
        Command::Remote(args) => remote::run(args),
        Command::Aitk(args) => aitk::run(args),
        Command::Video(args) => video::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every benchmark whose peer is installed, with its defaults (`remote` needs a URL and
/// is left to its own command).
fn all(args: &AllArgs) -> anyhow::Result<ExitCode> {
    let has = |modules: &[&str]| -> bool {
        let import = format!("import {}", modules.join(", "));
        std::process::Command::new(&args.python)
            .args(["-c", &import])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let python = args.python.clone();
    type Bench = Box<dyn FnOnce() -> anyhow::Result<ExitCode>>;
    let mut benches: Vec<(&str, &[&str], Bench)> = vec![
        (
            "scan",
            &["PIL"],
            Box::new({
                let python = python.clone();
                move || scan::run(parse(&["scan", "--python", &python]))
            }),
        ),
        (
            "prepare",
            &["PIL", "numpy"],
            Box::new({
                let python = python.clone();
                move || prepare::run(parse(&["prepare", "--python", &python]))
            }),
        ),
        (
            "encode",
            &["larder", "PIL", "safetensors", "numpy"],
            Box::new({
                let python = python.clone();
                move || encode::run(parse(&["encode", "--python", &python]))
            }),
        ),
        (
            "load",
            &["torch", "safetensors"],
            Box::new({
                let python = python.clone();
                move || load::run(parse(&["load", "--python", &python]))
            }),
        ),
        (
            "metrics",
            &[],
            Box::new(|| metrics::run(parse(&["metrics"]))),
        ),
        (
            "diagnose",
            &[],
            Box::new(|| diagnose::run(parse(&["diagnose"]))),
        ),
        (
            "fastload",
            &["safetensors", "numpy"],
            Box::new({
                let python = python.clone();
                move || {
                    fastload::run(parse(&[
                        "fastload",
                        "--generate",
                        "1GiB",
                        "--python",
                        &python,
                        "target/bench-fastload",
                    ]))
                }
            }),
        ),
    ];
    // AI Toolkit's trainer needs its checkout as well as its packages.
    let has_aitk = aitk::checkout(None).is_some();
    if has_aitk {
        benches.push((
            "aitk",
            &["larder", "torch", "diffusers", "transformers", "yaml"],
            Box::new({
                let python = python.clone();
                move || aitk::run(parse(&["aitk", "--python", &python]))
            }),
        ));
        benches.push((
            "video",
            &["cv2", "torch", "torchvision", "safetensors"],
            Box::new({
                let python = python.clone();
                move || video::run(parse(&["video", "--python", &python]))
            }),
        ));
    }
    let mut failed = Vec::new();
    for (name, modules, bench) in benches {
        println!("\n== larder-bench {name}");
        std::io::stdout().flush()?;
        if !modules.is_empty() && !has(modules) {
            println!(
                "left out: {} cannot import {}",
                args.python,
                modules.join(", ")
            );
            continue;
        }
        if let Err(e) = bench() {
            eprintln!("larder-bench {name} failed: {e:#}");
            failed.push(name);
        }
    }
    if !has_aitk {
        println!(
            "\n== larder-bench aitk, video\nleft out: set AITK_PATH to an AI Toolkit checkout"
        );
    }
    println!("\n== remote: run `larder-bench remote <store> <url>` against your object store");
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!("{} failed", failed.join(", "))
    }
}

/// The arguments of one subcommand, parsed as if typed after `larder-bench`.
fn parse<T: clap::FromArgMatches>(words: &[&str]) -> T {
    let matches = <Cli as clap::CommandFactory>::command()
        .get_matches_from(std::iter::once("larder-bench").chain(words.iter().copied()));
    let (_, sub) = matches.subcommand().unwrap_or(("", &matches));
    match T::from_arg_matches(sub) {
        Ok(args) => args,
        Err(e) => e.exit(),
    }
}

/// The `larder` binary built beside this one: the benchmarks that time a `larder` command run
/// it in a process of its own, so its memory and page faults are its own.
pub fn larder_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LARDER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name(format!("larder{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        Ok(beside)
    } else {
        anyhow::bail!(
            "no `larder` binary beside {}: build both with `cargo build --release --workspace` (or set LARDER_BIN)",
            exe.display()
        )
    }
}

/// Parses a byte size argument such as 256MiB, 64K, 1.5G or 20GB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    larder::parse_size(text).map_err(|e| e.to_string())
}

/// Prints `value` on standard output as one pretty JSON document (every `--json` flag).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Reads the JSON a command printed, or fails with what it said on standard error.
pub fn json_of(out: std::process::Output, what: &str) -> anyhow::Result<serde_json::Value> {
    if !out.status.success() {
        anyhow::bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading {what}'s JSON"))
}

/// The median of `runs` measurements taken by `measure` (benchmarks report medians: this
/// machine is noisy).
pub fn median_of(
    runs: usize,
    mut measure: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<f64> {
    let v = (0..runs.max(1))
        .map(|_| measure())
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(median(v))
}

/// The median of measurements (the upper one of an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Writes `n` generated files into `dir` with `write(dir, i)` for each index, in parallel,
/// unless an earlier run finished it (a marker file says so): benchmark data is made once.
pub fn generate_once(
    dir: &std::path::Path,
    n: usize,
    what: &str,
    write: impl Fn(&std::path::Path, usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    use rayon::prelude::*;

    let marker = dir.join(".complete");
    if marker.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("generating {n} {what} in {} (once)...", dir.display());
    (0..n).into_par_iter().try_for_each(|i| write(dir, i))?;
    std::fs::write(&marker, n.to_string())?;
    Ok(())
}
