//! [`Metrics`]: turns the training loop's steps and the loader's counters into records, and
//! sends each record to the outputs that are switched on.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::history::History;
use super::http::{self, Server, Since};
use super::loader::{LoaderMetrics, LoaderSnapshot};
use super::memory::MemoryUsage;
use super::prometheus::{self, Exporter};
use super::record::{Event, GpuMemory, Record, SCHEMA_VERSION};
use super::terminal;
use crate::{Error, Result};

/// Steps in the throughput window.
const WINDOW: usize = 32;
/// Losses in the terminal's running average.
const LOSS_WINDOW: usize = 100;

/// Where [`Metrics`] sends its records, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsOptions {
    /// Append one JSON line per step to this file (created with its folder if missing).
    pub jsonl: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus), `/api/records` and the dashboard page on this address,
    /// e.g. `127.0.0.1:9100` (port 0 picks a free one).
    pub listen: Option<String>,
    /// Print the terminal dashboard to standard error this often.
    pub print_every: Option<Duration>,
    /// Read this process's RSS and PSS at most this often (reading them costs tens of
    /// microseconds or more, so records in between repeat the last reading).
    pub memory_every: Duration,
    /// Steps the run will take: the terminal shows progress and time left.
    pub total_steps: Option<u64>,
    /// Records kept in memory for `/api/records`.
    pub history: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            jsonl: None,
            listen: None,
            print_every: Some(Duration::from_secs(10)),
            memory_every: Duration::from_secs(1),
            total_steps: None,
            history: 20_000,
        }
    }
}

/// What the training loop reports for one step; every part is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepInput {
    /// The step's loss.
    pub loss: Option<f64>,
    /// The step's learning rate.
    pub lr: Option<f64>,
    /// Items in the step's batch.
    pub batch_size: Option<u32>,
    /// GPU memory now.
    pub gpu: Option<GpuMemory>,
}

/// The JSON-lines file, appended to through a buffer.
#[derive(Debug)]
struct LineFile {
    path: PathBuf,
    out: BufWriter<File>,
    written_at: Instant,
}

impl LineFile {
    /// Opens `path` for appending, creating it and its folder if missing.
    fn open(path: PathBuf) -> Result<LineFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(LineFile {
            path,
            out: BufWriter::new(file),
            written_at: Instant::now(),
        })
    }

    /// Appends one line. Readers tail the file (`larder dashboard`): the buffer is written out
    /// at the first line a second or more after the last write, not with a system call per step.
    fn append(&mut self, line: &str, now: Instant) -> Result<()> {
        writeln!(self.out, "{line}").map_err(|e| Error::io(&self.path, e))?;
        if now.duration_since(self.written_at) >= Duration::from_secs(1) {
            self.flush()?;
            self.written_at = now;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// What the HTTP thread reads: the records kept and the Prometheus registry.
#[derive(Debug)]
struct Shared {
    history: Mutex<History>,
    exporter: Exporter,
}

/// Training metrics: one [`Record`] per step, to a JSON-lines file, a Prometheus endpoint, the
/// live dashboard's endpoint and a terminal dashboard.
///
/// ```no_run
/// use larder::metrics::{Metrics, MetricsOptions, StepInput};
///
/// let mut metrics = Metrics::new(MetricsOptions {
///     jsonl: Some("runs/metrics.jsonl".into()),
///     listen: Some("127.0.0.1:9100".into()),
///     ..MetricsOptions::default()
/// })?;
/// for step in 0..100 {
///     let loss = 1.0 / (step as f64 + 1.0); // a training step
///     metrics.step(StepInput { loss: Some(loss), lr: Some(1e-4), batch_size: Some(8), gpu: None })?;
/// }
/// # Ok::<(), larder::Error>(())
/// ```
pub struct Metrics {
    options: MetricsOptions,
    loader: Option<Arc<LoaderMetrics>>,
    started: Instant,
    last_step: Instant,
    last: Record,
    last_loader: LoaderSnapshot,
    window: VecDeque<(Instant, u64)>,
    losses: VecDeque<f64>,
    memory: MemoryUsage,
    memory_at: Option<Instant>,
    jsonl: Option<LineFile>,
    printer: Option<Box<dyn Write + Send + Sync>>,
    printed: (Instant, Record),
    shared: Arc<Shared>,
    server: Option<Server>,
    /// The end record was written: [`close`](Metrics::close) ran.
    ended: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("options", &self.options)
            .field("step", &self.last.step)
            .field("listening", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Starts recording: opens the JSON-lines file (appending) and starts the HTTP thread.
    pub fn new(options: MetricsOptions) -> Result<Metrics> {
        let jsonl = options.jsonl.clone().map(LineFile::open).transpose()?;
        let shared = Arc::new(Shared {
            history: Mutex::new(History::new(options.history)),
            exporter: Exporter::new(),
        });
        let server = match &options.listen {
            Some(addr) => Some(Server::start(addr, routes(shared.clone()))?),
            None => None,
        };
        let now = Instant::now();
        Ok(Metrics {
            printer: options
                .print_every
                .map(|_| Box::new(std::io::stderr()) as Box<dyn Write + Send + Sync>),
            options,
            loader: None,
            started: now,
            last_step: now,
            last: Record::default(),
            last_loader: LoaderSnapshot::default(),
            window: VecDeque::with_capacity(WINDOW + 1),
            losses: VecDeque::with_capacity(LOSS_WINDOW + 1),
            memory: MemoryUsage::default(),
            memory_at: None,
            jsonl,
            printed: (now, Record::default()),
            shared,
            server,
            ended: false,
        })
    }

    /// Includes a loader's own counters (wait time, queue depth, bytes read, assembly and
    /// decode time) in the records; see [`Loader::metrics`](crate::load::Loader::metrics).
    pub fn attach_loader(&mut self, loader: Arc<LoaderMetrics>) {
        self.last_loader = loader.snapshot();
        self.loader = Some(loader);
    }

    /// Sends the terminal dashboard to `out` instead of standard error (when `print_every` is
    /// set).
    pub fn print_to(&mut self, out: Box<dyn Write + Send + Sync>) {
        self.printer = Some(out);
    }

    /// The address of the HTTP endpoint, when listening.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(Server::local_addr)
    }

    /// The last record.
    pub fn last(&self) -> &Record {
        &self.last
    }

    /// Records one training step and sends the record to every output; the terminal dashboard
    /// is printed when `print_every` has passed since it last was.
    pub fn step(&mut self, input: StepInput) -> Result<&Record> {
        let now = Instant::now();
        let record = self.record(now, input);
        self.send(&record, now)?;
        self.shared.exporter.update(&self.last, &record);
        self.last = record;
        if let Some(every) = self.options.print_every
            && now.duration_since(self.printed.0) >= every
        {
            self.print_dashboard(now);
        }
        Ok(&self.last)
    }

    /// Writes `record` to the JSON-lines file and the endpoint's history.
    fn send(&mut self, record: &Record, now: Instant) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::InvalidArgument {
            name: "metrics",
            message: format!("a record cannot be written as JSON: {e}"),
        })?;
        if let Some(file) = &mut self.jsonl {
            file.append(&line, now)?;
        }
        if self.server.is_some() {
            self.shared
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
        Ok(())
    }

    /// Ends the run: appends the end record ([`Event::End`]), which tells `larder dashboard`
    /// that no step follows, writes the buffered lines and stops the endpoint. Dropping the
    /// metrics does the same, without reporting an error.
    pub fn close(mut self) -> Result<()> {
        self.end()
    }

    /// Sends the end record once and flushes the file.
    fn end(&mut self) -> Result<()> {
        if !self.ended {
            self.ended = true;
            let now = Instant::now();
            let elapsed_s = now.duration_since(self.started).as_secs_f64();
            let record = Record {
                v: SCHEMA_VERSION,
                time: unix_time(),
                step: self.last.step,
                total_steps: self.options.total_steps,
                elapsed_s,
                samples: self.last.samples,
                step_s: now.duration_since(self.last_step).as_secs_f64(),
                samples_per_s: self.last.samples as f64 / elapsed_s.max(1e-9),
                event: Some(Event::End),
                ..Record::default()
            };
            self.send(&record, now)?;
        }
        self.flush()
    }

    /// The terminal dashboard for the last record, over the interval since it was last printed.
    pub fn dashboard(&self) -> String {
        terminal::render(&self.printed.1, &self.last, self.average_loss())
    }

    /// Writes buffered lines to the JSON-lines file.
    pub fn flush(&mut self) -> Result<()> {
        self.jsonl.as_mut().map_or(Ok(()), LineFile::flush)
    }

    fn print_dashboard(&mut self, now: Instant) {
        let text = self.dashboard();
        if let Some(out) = &mut self.printer {
            // The dashboard is a courtesy: a closed terminal must not stop training.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
        self.printed = (now, self.last.clone());
    }

    fn average_loss(&self) -> Option<f64> {
        (!self.losses.is_empty())
            .then(|| self.losses.iter().sum::<f64>() / self.losses.len() as f64)
    }

    /// Builds the record of a step that ended at `now`.
    fn record(&mut self, now: Instant, input: StepInput) -> Record {
        let step_s = now.duration_since(self.last_step).as_secs_f64();
        self.last_step = now;
        let samples = self.last.samples + u64::from(input.batch_size.unwrap_or(0));
        self.window.push_back((now, samples));
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        let samples_per_s = match self.window.front() {
            Some(&(t0, s0)) if self.window.len() > 1 => {
                (samples - s0) as f64 / now.duration_since(t0).as_secs_f64().max(1e-9)
            }
            _ => f64::from(input.batch_size.unwrap_or(0)) / step_s.max(1e-9),
        };
        if let Some(loss) = input.loss.filter(|l| l.is_finite()) {
            self.losses.push_back(loss);
            if self.losses.len() > LOSS_WINDOW {
                self.losses.pop_front();
            }
        }
        if self
            .memory_at
            .is_none_or(|t| now.duration_since(t) >= self.options.memory_every)
        {
            self.memory = MemoryUsage::of_this_process();
            self.memory_at = Some(now);
        }
        let loader = self.loader.as_ref().map(|l| l.snapshot());
        let wait_s = loader.map(|l| (l.wait_s - self.last_loader.wait_s).max(0.0));
        if let Some(l) = loader {
            self.last_loader = l;
        }
        Record {
            v: SCHEMA_VERSION,
            time: unix_time(),
            step: self.last.step + 1,
            total_steps: self.options.total_steps,
            elapsed_s: now.duration_since(self.started).as_secs_f64(),
            loss: input.loss,
            lr: input.lr,
            batch_size: input.batch_size,
            samples,
            step_s,
            samples_per_s,
            wait_s,
            queue_depth: loader.map(|l| l.queue_depth),
            bytes_read: loader.map(|l| l.bytes_read),
            assemble_s: loader.map(|l| l.assemble_s),
            decode_s: loader.map(|l| l.decode_s),
            batches_assembled: loader.map(|l| l.assembled),
            cache_hits: loader.map(|l| l.cache_hits),
            cache_misses: loader.map(|l| l.cache_misses),
            rss_bytes: self.memory.rss_bytes,
            pss_bytes: self.memory.pss_bytes,
            gpu: input.gpu,
            event: None,
        }
    }
}

/// Seconds since the Unix epoch, now.
fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Drop for Metrics {
    fn drop(&mut self) {
        // A training loop that ends without calling close still tells the dashboard so; a
        // write that fails here has no one to report to.
        let _ = self.end();
    }
}

/// The training process's HTTP endpoints: Prometheus, the dashboard's records and its page.
fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(prometheus_text))
        .route("/api/records", get(records))
        .route("/", get(http::page))
        .route("/index.html", get(http::page))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics or /api/records?since=0",
            )
        })
        .with_state(shared)
}

/// `/metrics`: the Prometheus text format.
async fn prometheus_text(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        shared.exporter.encode(),
    )
        .into_response()
}

/// `/api/records?since=N`: the records kept, from record `N` on. The lock is held for the
/// copy only; the training thread takes it once a step.
async fn records(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Since>, QueryRejection>,
) -> Response {
    match Since::parse(query) {
        Ok(since) => http::json(
            shared
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .since_json(since),
        ),
        Err(bad) => bad.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet(options: MetricsOptions) -> Metrics {
        Metrics::new(MetricsOptions {
            print_every: None,
            ..options
        })
        .expect("metrics")
    }

    #[test]
    fn records_count_steps_samples_and_loader_wait() {
        let loader = Arc::new(LoaderMetrics::default());
        let mut m = quiet(MetricsOptions::default());
        m.attach_loader(loader.clone());
        loader.record_delivery(Duration::from_millis(5), 3);
        let first = m
            .step(StepInput {
                loss: Some(0.5),
                lr: Some(1e-3),
                batch_size: Some(4),
                gpu: None,
            })
            .expect("step")
            .clone();
        assert_eq!((first.step, first.samples, first.v), (1, 4, SCHEMA_VERSION));
        assert!((first.wait_s.expect("wait") - 0.005).abs() < 1e-9);
        assert_eq!(first.queue_depth, Some(3));
        let second = m
            .step(StepInput {
                batch_size: Some(2),
                ..StepInput::default()
            })
            .expect("step");
        assert_eq!((second.step, second.samples), (2, 6));
        assert_eq!(
            second.wait_s,
            Some(0.0),
            "the wait is per step, not a total"
        );
        assert!(second.samples_per_s > 0.0);
        assert_eq!(second.loss, None);
    }

    #[test]
    fn jsonl_file_gets_one_record_per_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/metrics.jsonl");
        let mut m = quiet(MetricsOptions {
            jsonl: Some(path.clone()),
            ..MetricsOptions::default()
        });
        for k in 0..3 {
            m.step(StepInput {
                loss: Some(f64::from(k)),
                ..StepInput::default()
            })
            .expect("step");
        }
        drop(m);
        let text = std::fs::read_to_string(&path).expect("read");
        let records: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record per line"))
            .collect();
        assert_eq!(records.len(), 4, "three steps and the end: {text}");
        assert_eq!(records[2].loss, Some(2.0));
        assert!(records[..3].iter().all(|r| r.event.is_none()));
        assert!(
            !text.contains("null"),
            "unknown fields are left out: {text}"
        );
    }

    #[test]
    fn closing_or_dropping_the_metrics_appends_one_end_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let read = || -> Vec<Record> {
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .map(|l| serde_json::from_str(l).expect("a record per line"))
                .collect()
        };
        let mut m = quiet(MetricsOptions {
            jsonl: Some(path.clone()),
            total_steps: Some(10),
            ..MetricsOptions::default()
        });
        for _ in 0..2 {
            m.step(StepInput {
                batch_size: Some(3),
                ..StepInput::default()
            })
            .expect("step");
        }
        m.close().expect("close");
        let records = read();
        assert_eq!(records.len(), 3);
        let end = &records[2];
        assert_eq!(end.event, Some(Event::End));
        assert_eq!((end.step, end.samples, end.total_steps), (2, 6, Some(10)));
        assert_eq!(end.loss, None, "the end is not a step: nothing to plot");
        let line = std::fs::read_to_string(&path).expect("read");
        assert!(
            line.lines()
                .last()
                .is_some_and(|l| l.contains(r#""event":"end""#)),
            "{line}"
        );

        // A second run appends to the same file and is ended by drop alone.
        let mut m = quiet(MetricsOptions {
            jsonl: Some(path.clone()),
            ..MetricsOptions::default()
        });
        m.step(StepInput::default()).expect("step");
        drop(m);
        let events: Vec<_> = read().iter().map(|r| r.event).collect();
        assert_eq!(
            events,
            [None, None, Some(Event::End), None, Some(Event::End)]
        );
    }

    #[test]
    fn the_endpoint_serves_prometheus_the_records_and_the_page_until_closed() {
        use std::io::{Read, Write};
        let get = |addr: std::net::SocketAddr, target: &str| -> String {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            let mut text = String::new();
            s.read_to_string(&mut text).expect("read");
            text
        };
        let mut m = quiet(MetricsOptions {
            listen: Some("127.0.0.1:0".into()),
            ..MetricsOptions::default()
        });
        for _ in 0..3 {
            m.step(StepInput {
                loss: Some(0.5),
                batch_size: Some(2),
                ..StepInput::default()
            })
            .expect("step");
        }
        let addr = m.local_addr().expect("listening");
        let scrape = get(addr, "/metrics");
        assert!(
            scrape.starts_with("HTTP/1.1 200")
                && scrape.to_ascii_lowercase().contains(
                    &format!("content-type: {}", prometheus::CONTENT_TYPE).to_ascii_lowercase()
                )
                && scrape.contains("larder_steps_total 3"),
            "{scrape}"
        );
        let records = get(addr, "/api/records?since=1");
        let body = records
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_str(body).expect(&records);
        assert_eq!(
            (answer["first"].as_u64(), answer["next"].as_u64()),
            (Some(1), Some(3))
        );
        assert_eq!(answer["records"][1]["step"], 3);
        assert!(get(addr, "/").contains("plot-loss"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        m.close().expect("close");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the endpoint stops when the metrics close"
        );
    }

    #[test]
    fn the_terminal_dashboard_is_printed_every_interval() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let mut m = Metrics::new(MetricsOptions {
            print_every: Some(Duration::ZERO),
            total_steps: Some(10),
            ..MetricsOptions::default()
        })
        .expect("metrics");
        m.print_to(Box::new(sink.clone()));
        m.step(StepInput {
            loss: Some(0.25),
            lr: Some(2e-4),
            batch_size: Some(8),
            gpu: None,
        })
        .expect("step");
        let text = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(text.contains("step 1/10"), "{text}");
        assert!(
            text.contains("0.2500") && text.contains("2.00e-4"),
            "{text}"
        );
    }
}
