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
    /// Combine the parts of a distributed prepare (`prepare --shard I/N`) into one store.
    Merge(cmd::merge::Args),
    /// Import AI Toolkit's latent, text-embedding and CLIP caches into a store, without re-encoding.
    ImportAitk(cmd::import_aitk::Args),
    /// Show what a store holds: items, buckets, fields, codecs, sizes, findings.
    Inspect(cmd::store::StoreArgs),
    /// Check every shard checksum and catalog entry of a store; exit 1 when anything is broken.
    Verify(cmd::store::VerifyArgs),
    /// Remove entries and shards of a store that no item references.
    Gc(cmd::store::StoreArgs),
    /// Upload a local store to object storage (shards, then the catalog); resumable.
    Push(cmd::remote::PushArgs),
    /// Download a store from object storage into a folder, checking every shard; resumable.
    Pull(cmd::remote::PullArgs),
    /// Memory: what a dataset costs under a PyTorch DataLoader and under larder, measured on
    /// request, with advice.
    Diagnose(cmd::diagnose::Args),
    /// Check the machine: memory, /dev/shm, open files, disk, page cache, NVIDIA driver, GDS.
    Doctor(cmd::doctor::Args),
    /// Write an AI Toolkit job file for your GPU, RAM, dataset and model, saying why each
    /// value was chosen.
    Wizard(cmd::wizard::Args),
    /// Serve the live web dashboard of a training run (from its metrics file or its endpoint).
    Dashboard(cmd::dashboard::Args),
    /// Serve a store for a few epochs: samples/s, MB/s, batch latency, memory.
    Bench(cmd::bench::Args),
    /// Serve a store locally, then from object storage with a cold and a warm cache, side by side.
    BenchRemote(cmd::remote::BenchArgs),
    /// Benchmark the scan against AI Toolkit's way of reading image sizes (needs Python + Pillow).
    BenchScan(cmd::bench_scan::Args),
    /// Benchmark prepare against AI Toolkit's pixel path, and print codec sizes and errors.
    BenchPrepare(cmd::bench_prepare::Args),
    /// Benchmark latent caching against AI Toolkit's loop; codec and text-cache sizes.
    BenchEncode(cmd::bench_encode::Args),
    /// Benchmark the loader against a PyTorch DataLoader over one file per item (needs torch).
    BenchLoad(cmd::bench_load::Args),
    /// Time loading a safetensors checkpoint by each path (plain, O_DIRECT, pinned, cuFile),
    /// cold and warm, against the safetensors package.
    LoadBench(cmd::load_bench::Args),
    /// Measure what recording a training step's metrics costs.
    BenchMetrics(cmd::bench_metrics::Args),
    /// Benchmark `larder diagnose`'s memory estimate against measured RSS and PSS.
    BenchDiagnose(cmd::bench_diagnose::Args),
}

/// Log timestamps as `[YYYY-MM-DD HH:MM:SS.mmm]`, in UTC.
struct Timestamp;

impl tracing_subscriber::fmt::time::FormatTime for Timestamp {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, millis) = (since.as_secs(), since.subsec_millis());
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let t = secs % 86_400;
        write!(
            w,
            "[{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}]",
            t / 3600,
            t / 60 % 60,
            t % 60
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn main() -> ExitCode {
    // LARDER_LOG chooses what is logged (e.g. `info`, `larder=debug`); warnings by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_timer(Timestamp)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Scan(args) => cmd::scan::run(args),
        Command::Prepare(args) => cmd::store::prepare(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::ImportAitk(args) => cmd::import_aitk::run(args),
        Command::Inspect(args) => cmd::store::inspect(args),
        Command::Verify(args) => cmd::store::verify(args),
        Command::Gc(args) => cmd::store::gc(args),
        Command::Push(args) => cmd::remote::push(args),
        Command::Pull(args) => cmd::remote::pull(args),
        Command::BenchRemote(args) => cmd::remote::bench(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::BenchScan(args) => cmd::bench_scan::run(args),
        Command::BenchPrepare(args) => cmd::bench_prepare::run(args),
        Command::BenchLoad(args) => cmd::bench_load::run(args),
        Command::Dashboard(args) => cmd::dashboard::run(args),
        Command::BenchMetrics(args) => cmd::bench_metrics::run(args),
        Command::Diagnose(args) => cmd::diagnose::run(args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::BenchDiagnose(args) => cmd::bench_diagnose::run(args),
        Command::Wizard(args) => cmd::wizard::run(args),
        Command::BenchEncode(args) => cmd::bench_encode::run(args),
        Command::LoadBench(args) => cmd::load_bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
