//! `larder doctor`: checks of the machine a training run depends on.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use larder::doctor::{Check, DoctorOptions, Status};

/// Arguments of `larder doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A prepared store: test its disk's sequential read speed and the page cache on it.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    checks: Vec<Check>,
    /// The worst status of any check.
    worst: Status,
}

/// Exit code 1 when any check fails, so scripts can stop before a run that would break.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let checks = larder::doctor::run(&DoctorOptions {
        store: args.store.clone(),
    });
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    let code = if worst == Status::Fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    };
    let report = Report { checks, worst };
    if args.json {
        super::print_json(&report)?;
        return Ok(code);
    }
    let mut out = std::io::stdout().lock();
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        writeln!(
            out,
            "{:<6} {:<width$}  {}",
            format!("[{}]", c.status),
            c.name,
            c.detail
        )?;
        if let Some(advice) = &c.advice {
            writeln!(out, "{:<6} {:<width$}  -> {advice}", "", "")?;
        }
    }
    Ok(code)
}
