//! `larder-bench metrics`: what recording a training step costs, by output.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::metrics::{GpuMemory, LoaderMetrics, MemoryUsage, Metrics, MetricsOptions, StepInput};

use crate::median_of;

/// The per-step budget the metrics are built to stay under.
const GOAL_US: f64 = 50.0;

/// Arguments of `larder-bench metrics`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Steps per run.
    #[arg(long, default_value_t = 100_000)]
    steps: u64,
    /// Runs per configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    outputs: &'static str,
    us_per_step: f64,
    within_goal: bool,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    steps: u64,
    runs: usize,
    goal_us: f64,
    rows: Vec<Row>,
    loader_hook_ns_per_batch: f64,
    memory_read_us: f64,
}

/// Microseconds per step of `steps` steps recorded with `options`, with a loader attached and
/// GPU memory reported, as a training loop under `larder.Metrics` would.
fn per_step_us(options: &MetricsOptions, steps: u64) -> anyhow::Result<f64> {
    let loader = Arc::new(LoaderMetrics::default());
    let mut metrics = Metrics::new(options.clone())?;
    metrics.print_to(Box::new(std::io::sink()));
    metrics.attach_loader(loader.clone());
    let started = Instant::now();
    for k in 0..steps {
        loader.record_delivery(Duration::from_micros(3), 4);
        metrics.step(StepInput {
            loss: Some(1.0 / (k + 1) as f64),
            lr: Some(1e-4),
            batch_size: Some(16),
            gpu: Some(GpuMemory {
                allocated_bytes: 20 << 30,
                reserved_bytes: 22 << 30,
                peak_bytes: 21 << 30,
                total_bytes: Some(80 << 30),
            }),
        })?;
    }
    metrics.flush()?;
    Ok(started.elapsed().as_secs_f64() / steps as f64 * 1e6)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile_dir()?;
    let jsonl = dir.join("metrics.jsonl");
    let base = MetricsOptions {
        print_every: None,
        ..MetricsOptions::default()
    };
    let configs: [(&str, MetricsOptions); 3] = [
        ("record only (memory sampled each second)", base.clone()),
        (
            "+ JSON lines",
            MetricsOptions {
                jsonl: Some(jsonl.clone()),
                ..base.clone()
            },
        ),
        (
            "+ JSON lines, Prometheus/dashboard endpoint, terminal each second",
            MetricsOptions {
                jsonl: Some(jsonl.clone()),
                listen: Some("127.0.0.1:0".into()),
                print_every: Some(Duration::from_secs(1)),
                ..base
            },
        ),
    ];
    let mut rows = Vec::new();
    for (outputs, options) in configs {
        let us = median_of(args.runs, || {
            let _ = std::fs::remove_file(&jsonl);
            per_step_us(&options, args.steps)
        })?;
        rows.push(Row {
            outputs,
            us_per_step: us,
            within_goal: us < GOAL_US,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);

    // What the loader adds per batch: two clock reads and three atomic updates.
    let loader = LoaderMetrics::default();
    let hook_ns = median_of(args.runs, || {
        let started = Instant::now();
        for _ in 0..args.steps {
            let asked = Instant::now();
            loader.record_delivery(asked.elapsed(), 2);
        }
        Ok(started.elapsed().as_secs_f64() / args.steps as f64 * 1e9)
    })?;
    let memory_us = median_of(args.runs, || {
        let started = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(MemoryUsage::of_this_process());
        }
        Ok(started.elapsed().as_secs_f64() / 100.0 * 1e6)
    })?;

    let report = Report {
        steps: args.steps,
        runs: args.runs,
        goal_us: GOAL_US,
        rows,
        loader_hook_ns_per_batch: hook_ns,
        memory_read_us: memory_us,
    };
    if args.json {
        crate::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "metrics overhead per training step (median of {} runs of {} steps; goal < {GOAL_US} µs)",
        report.runs, report.steps
    );
    println!("{:<68} {:>10} {:>8}", "outputs", "µs/step", "goal");
    for r in &report.rows {
        let mark = if r.within_goal { "met" } else { "MISSED" };
        println!("{:<68} {:>10.2} {:>8}", r.outputs, r.us_per_step, mark);
    }
    println!(
        "loader hook (clock + counters, per batch): {:.0} ns; reading RSS/PSS from /proc: {:.1} µs (sampled once a second)",
        report.loader_hook_ns_per_batch, report.memory_read_us
    );
    Ok(ExitCode::SUCCESS)
}

/// A fresh folder for the benchmark's file.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("larder-bench-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
