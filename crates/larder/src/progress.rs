//! Progress bars on long work: shown on a terminal, silent otherwise.

use std::io::IsTerminal;
use std::time::Duration;

/// A bar for `len` steps drawn with `template`, or a hidden one when `enabled` is false, the
/// work is shorter than `min_len` steps, or standard error is not a terminal (logs and pipes
/// get no bar noise).
pub(crate) fn bar(
    enabled: bool,
    len: usize,
    min_len: usize,
    template: &str,
) -> indicatif::ProgressBar {
    if !enabled || len < min_len || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(150));
    bar
}
