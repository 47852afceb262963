//! The Prometheus view of the records: counters and gauges in a prometheus-client registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::record::Record;

type Real = Gauge<f64, AtomicU64>;
type RealTotal = Counter<f64, AtomicU64>;

/// The metrics a scrape of `/metrics` returns; updated with each record (a few atomic stores).
#[derive(Debug)]
pub(crate) struct Exporter {
    registry: Registry,
    steps: Counter,
    samples: Counter,
    loss: Real,
    lr: Real,
    batch_size: Gauge,
    samples_per_s: Real,
    step_s: Real,
    wait_s: RealTotal,
    queue_depth: Gauge,
    bytes_read: Counter,
    assemble_s: RealTotal,
    decode_s: RealTotal,
    cache_hits: Counter,
    cache_misses: Counter,
    rss: Gauge,
    pss: Gauge,
    gpu_allocated: Gauge,
    gpu_reserved: Gauge,
    gpu_peak: Gauge,
}

/// The Content-Type of [`Exporter::encode`]'s text.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

impl Exporter {
    pub(crate) fn new() -> Exporter {
        let mut registry = Registry::with_prefix("larder");
        macro_rules! metric {
            ($name:literal, $help:literal) => {{
                let m = Default::default();
                registry.register($name, $help, Clone::clone(&m));
                m
            }};
        }
        Exporter {
            steps: metric!("steps", "Training steps recorded"),
            samples: metric!("samples", "Items trained on"),
            loss: metric!("loss", "Training loss of the last step"),
            lr: metric!("learning_rate", "Learning rate of the last step"),
            batch_size: metric!("batch_size", "Items in the last step's batch"),
            samples_per_s: metric!("samples_per_second", "Throughput over the last steps"),
            step_s: metric!("step_seconds", "Duration of the last step"),
            wait_s: metric!(
                "loader_wait_seconds",
                "Time the training loop waited for batches"
            ),
            queue_depth: metric!(
                "loader_queue_depth",
                "Batches ready when the loop last asked"
            ),
            bytes_read: metric!("loader_read_bytes", "Stored bytes the loader read"),
            assemble_s: metric!(
                "loader_assemble_seconds",
                "Reader-thread time assembling batches"
            ),
            decode_s: metric!(
                "loader_decode_seconds",
                "Reader-thread time decoding fields"
            ),
            cache_hits: metric!(
                "loader_cache_hits",
                "Remote-store reads served from the cache"
            ),
            cache_misses: metric!("loader_cache_misses", "Remote-store reads fetched"),
            rss: metric!(
                "memory_rss_bytes",
                "Resident set size of the training process"
            ),
            pss: metric!(
                "memory_pss_bytes",
                "Proportional set size of the training process"
            ),
            gpu_allocated: metric!("gpu_memory_allocated_bytes", "GPU memory held by tensors"),
            gpu_reserved: metric!(
                "gpu_memory_reserved_bytes",
                "GPU memory held by the allocator"
            ),
            gpu_peak: metric!("gpu_memory_peak_bytes", "Peak GPU memory held by tensors"),
            registry,
        }
    }

    /// Brings the metrics to `record`; `previous` is the record before it (counters advance by
    /// the difference of the totals).
    pub(crate) fn update(&self, previous: &Record, record: &Record) {
        let gauge = |g: &Gauge, v: Option<u64>| {
            if let Some(v) = v {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        };
        let real = |g: &Real, v: Option<f64>| {
            if let Some(v) = v {
                g.set(v);
            }
        };
        let count = |c: &Counter, now: Option<u64>, before: Option<u64>| {
            c.inc_by(now.unwrap_or(0).saturating_sub(before.unwrap_or(0)));
        };
        let total = |c: &RealTotal, now: Option<f64>, before: Option<f64>| {
            c.inc_by((now.unwrap_or(0.0) - before.unwrap_or(0.0)).max(0.0));
        };
        count(&self.steps, Some(record.step), Some(previous.step));
        count(&self.samples, Some(record.samples), Some(previous.samples));
        real(&self.loss, record.loss);
        real(&self.lr, record.lr);
        gauge(&self.batch_size, record.batch_size.map(u64::from));
        real(&self.samples_per_s, Some(record.samples_per_s));
        real(&self.step_s, Some(record.step_s));
        self.wait_s.inc_by(record.wait_s.unwrap_or(0.0));
        gauge(&self.queue_depth, record.queue_depth);
        count(&self.bytes_read, record.bytes_read, previous.bytes_read);
        total(&self.assemble_s, record.assemble_s, previous.assemble_s);
        total(&self.decode_s, record.decode_s, previous.decode_s);
        count(&self.cache_hits, record.cache_hits, previous.cache_hits);
        count(
            &self.cache_misses,
            record.cache_misses,
            previous.cache_misses,
        );
        gauge(&self.rss, record.rss_bytes);
        gauge(&self.pss, record.pss_bytes);
        if let Some(gpu) = &record.gpu {
            gauge(&self.gpu_allocated, Some(gpu.allocated_bytes));
            gauge(&self.gpu_reserved, Some(gpu.reserved_bytes));
            gauge(&self.gpu_peak, Some(gpu.peak_bytes));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
