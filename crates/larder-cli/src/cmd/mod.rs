//! One module per subcommand.
pub mod bench;
pub mod bench_diagnose;
pub mod bench_encode;
pub mod bench_load;
pub mod bench_metrics;
pub mod bench_prepare;
pub mod bench_scan;
pub mod dashboard;
pub mod diagnose;
pub mod doctor;
pub mod import_aitk;
pub mod load_bench;
pub mod merge;
pub mod remote;
pub mod scan;
pub mod store;
pub mod wizard;

use std::io::Write;

/// Parses a byte size argument such as 256MiB, 64K, 1.5G or 20GB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    larder::parse_size(text).map_err(|e| e.to_string())
}

/// Prints `value` on standard output as one pretty JSON document (every `--json` flag).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    // A failed write comes back as the io::Error itself, not inside serde_json's error (whose
    // chain skips it): main tells a closed pipe (`| head`) from a failure by its kind.
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
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
