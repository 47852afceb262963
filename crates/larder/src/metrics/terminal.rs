//! The terminal dashboard: a block of text printed every few seconds during training.

use std::fmt::Write;

use super::record::Record;

const BAR: usize = 24;

/// The dashboard for record `now`; rates (throughput, read bandwidth, the timing breakdown)
/// are over the interval since `before`, the record at the previous print.
pub(crate) fn render(before: &Record, now: &Record, average_loss: Option<f64>) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; the results are ignored throughout.
    let _ = write!(out, "── larder · step {}", now.step);
    if let Some(total) = now.total_steps.filter(|t| *t > 0) {
        let done = (now.step as f64 / total as f64).min(1.0);
        let filled = (done * BAR as f64).round() as usize;
        let left = now.elapsed_s / done.max(1e-9) - now.elapsed_s;
        let _ = write!(
            out,
            "/{total} [{}{}] {:.1}% · eta {}",
            "█".repeat(filled),
            "░".repeat(BAR - filled),
            done * 100.0,
            clock(left)
        );
    }
    let _ = writeln!(out, " · elapsed {}", clock(now.elapsed_s));

    let _ = write!(
        out,
        "  loss     {}",
        now.loss.map_or("-".into(), |l| format!("{l:.4}"))
    );
    if let Some(avg) = average_loss {
        let _ = write!(out, " (avg {avg:.4})");
    }
    let _ = write!(
        out,
        "   lr {}",
        now.lr.map_or("-".into(), |l| format!("{l:.2e}"))
    );
    let _ = writeln!(
        out,
        "   batch {}",
        now.batch_size.map_or("-".into(), |b| b.to_string())
    );

    let span = (now.elapsed_s - before.elapsed_s).max(1e-9);
    let steps = now.step.saturating_sub(before.step).max(1);
    let _ = writeln!(
        out,
        "  speed    {:.1} samples/s   {:.2} steps/s   {:.1} ms/step",
        now.samples_per_s,
        steps as f64 / span,
        span / steps as f64 * 1e3
    );

    let _ = write!(
        out,
        "  memory   RSS {}   PSS {}",
        bytes(now.rss_bytes),
        bytes(now.pss_bytes)
    );
    if let Some(gpu) = &now.gpu {
        let _ = write!(
            out,
            "   GPU {} alloc · {} reserved · peak {}",
            bytes(Some(gpu.allocated_bytes)),
            bytes(Some(gpu.reserved_bytes)),
            bytes(Some(gpu.peak_bytes))
        );
        if let Some(total) = gpu.total_bytes {
            let _ = write!(out, " of {}", bytes(Some(total)));
        }
    }
    out.push('\n');

    let delta = |a: Option<f64>, b: Option<f64>| (a.unwrap_or(0.0) - b.unwrap_or(0.0)).max(0.0);
    if now.queue_depth.is_some() {
        // Waits are per step in the records; the interval's total is rebuilt from the average.
        let wait = now.wait_s.unwrap_or(0.0);
        let batches = now
            .batches_assembled
            .unwrap_or(0)
            .saturating_sub(before.batches_assembled.unwrap_or(0));
        let assemble = delta(now.assemble_s, before.assemble_s);
        let decode = delta(now.decode_s, before.decode_s);
        let read = now
            .bytes_read
            .unwrap_or(0)
            .saturating_sub(before.bytes_read.unwrap_or(0));
        let per_batch = |s: f64| {
            if batches > 0 {
                s / batches as f64 * 1e3
            } else {
                0.0
            }
        };
        let _ = writeln!(
            out,
            "  loader   wait {:.2} ms (last step)   queue {}   read {:.1} MB/s   assemble {:.2} ms/batch (decode {:.2})   cache {}/{} hit/miss",
            wait * 1e3,
            now.queue_depth.unwrap_or(0),
            read as f64 / span / 1e6,
            per_batch(assemble),
            per_batch(decode),
            now.cache_hits.unwrap_or(0),
            now.cache_misses.unwrap_or(0)
        );
        let wait_share = (wait / now.step_s.max(1e-9)).min(1.0);
        let _ = writeln!(
            out,
            "  timing   data wait {:.1}% · compute and the rest {:.1}% of the last step ({:.1} ms)",
            wait_share * 100.0,
            (1.0 - wait_share) * 100.0,
            now.step_s * 1e3
        );
    } else {
        let _ = writeln!(out, "  loader   not attached");
    }
    out
}

/// `h:mm:ss`.
fn clock(seconds: f64) -> String {
    let s = if seconds.is_finite() {
        seconds.max(0.0) as u64
    } else {
        0
    };
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Bytes in binary units, `-` when unknown.
fn bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::GpuMemory;

    #[test]
    fn shows_progress_loss_memory_throughput_loader_and_timing() {
        let before = Record {
            step: 100,
            elapsed_s: 10.0,
            bytes_read: Some(0),
            batches_assembled: Some(0),
            assemble_s: Some(0.0),
            ..Record::default()
        };
        let now = Record {
            step: 200,
            total_steps: Some(1000),
            elapsed_s: 20.0,
            loss: Some(0.125),
            lr: Some(1e-4),
            batch_size: Some(16),
            samples_per_s: 160.0,
            step_s: 0.1,
            wait_s: Some(0.01),
            queue_depth: Some(4),
            bytes_read: Some(50_000_000),
            batches_assembled: Some(100),
            assemble_s: Some(1.0),
            decode_s: Some(0.5),
            rss_bytes: Some(3 << 30),
            pss_bytes: Some(512 << 20),
            gpu: Some(GpuMemory {
                allocated_bytes: 20 << 30,
                reserved_bytes: 22 << 30,
                peak_bytes: 21 << 30,
                total_bytes: Some(80 << 30),
            }),
            ..Record::default()
        };
        let text = render(&before, &now, Some(0.25));
        for want in [
            "step 200/1000",
            "20.0%",
            "eta 0:01:20",
            "elapsed 0:00:20",
            "loss     0.1250 (avg 0.2500)",
            "lr 1.00e-4",
            "batch 16",
            "160.0 samples/s",
            "10.00 steps/s",
            "RSS 3.00 GiB",
            "PSS 512.0 MiB",
            "GPU 20.00 GiB alloc",
            "of 80.00 GiB",
            "queue 4",
            "read 5.0 MB/s",
            "assemble 10.00 ms/batch (decode 5.00)",
            "data wait 10.0%",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
