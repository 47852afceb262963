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
}

fn main() -> ExitCode {
    // LARDER_LOG chooses what is logged (e.g. `info`, `larder=debug`); warnings by default.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        // Timestamps as `[YYYY-MM-DD HH:MM:SS.mmm]`, in UTC.
        .with_timer(tracing_subscriber::fmt::time::ChronoUtc::new(
            "[%Y-%m-%d %H:%M:%S%.3f]".to_owned(),
        ))
        .with_writer(std::io::stderr)
        .init();
    quiet_on_closed_stdout();
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
        Command::Bench(args) => cmd::bench::run(args),
        Command::Dashboard(args) => cmd::dashboard::run(args),
        Command::Diagnose(args) => cmd::diagnose::run(args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Wizard(args) => cmd::wizard::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away (`larder scan --json | head`): it has what it
        // wanted, so there is nothing to report and nothing failed.
        Err(err) if is_broken_pipe(&err) && stdout_closed() => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::from(2)
        }
    }
}

/// The error with its chain of causes, each said once. larder's messages already include their
/// source's words (Python shows the message alone), so a cause whose words are already there is
/// not repeated, as anyhow's `{:#}` would.
fn report(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

/// Returns true if and only if `err` was caused by writing to a pipe whose reader is gone.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Makes `println!` on a closed standard output end the process quietly with status 0, as a
/// returned broken-pipe error does: `println!` panics instead of returning the error, and many
/// commands print with it.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && stdout_closed() {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Returns true if and only if standard output is a pipe or socket whose reading end is closed.
///
/// A broken-pipe error alone does not say which pipe broke: a command that feeds a child
/// process or talks to a server can get one too, and that is a failure to report, not a
/// reader that has had enough. The kernel says which: polling a pipe whose reader is gone
/// reports an error (Linux) or a hang-up (BSD, macOS) at once.
#[cfg(unix)]
fn stdout_closed() -> bool {
    // POLLERR and POLLHUP are reported whether asked for or not, so no events are requested.
    let mut fd = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: `fd` is a valid, exclusively borrowed pollfd array of length 1 that outlives the
    // call, and a timeout of 0 makes poll return at once. Polling a descriptor has no effect
    // on it; a closed descriptor 1 is reported as POLLNVAL, not as an error here.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Elsewhere a broken pipe is reported like any other error.
#[cfg(not(unix))]
fn stdout_closed() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn report_says_each_cause_once() {
        let text = "{ not: yaml";
        let err = larder::Config::from_yaml(text, std::path::Path::new("job.yaml"))
            .expect_err("not YAML");
        let source = std::error::Error::source(&err)
            .expect("the parser's error")
            .to_string();
        let said = report(&anyhow::Error::from(err));
        assert_eq!(said.matches(&source).count(), 1, "{said}");
        assert!(said.starts_with("job.yaml: invalid YAML: "), "{said}");

        // A cause the message does not include is added after it.
        let outer = anyhow::anyhow!("std io").context("reading the store");
        assert_eq!(report(&outer), "reading the store: std io");
    }
}
