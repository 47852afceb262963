//! One module per subcommand.
pub mod bench;
pub mod dashboard;
pub mod diagnose;
pub mod doctor;
pub mod import_aitk;
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
