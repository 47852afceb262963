//! `larder dashboard`: the live web dashboard of a training run, from its metrics file or from
//! the training process's own endpoint.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use larder::metrics::{History, serve_dashboard};

/// Records of a metrics file kept for the page (about 400 bytes each).
const KEPT: usize = 200_000;
/// Time the training process has to accept a connection: on a LAN, more means it is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a poll of the training process may take in all.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a poll's answer may take: the whole history a training process keeps (20,000
/// records by default, about 400 bytes each) with room to spare.
const POLL_BYTES: u64 = 64 << 20;

/// Arguments of `larder dashboard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A metrics file (JSON lines, as `larder.Metrics(jsonl=...)` writes it) or the endpoint of
    /// a training process (`http://host:port`, as `larder.Metrics(listen=...)` serves it).
    source: String,
    /// Port to serve the page on (0 picks a free one).
    #[arg(long, default_value_t = 8050)]
    port: u16,
    /// Address to serve the page on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

/// Where the records come from.
#[derive(Debug)]
enum Source {
    /// A JSON-lines file, read further at every poll.
    File(Mutex<Tail>),
    /// A training process's endpoint; polls are passed on to it.
    Endpoint {
        /// `http://host:port/prefix`, without a trailing slash.
        base: String,
        agent: ureq::Agent,
    },
}

/// A metrics file read up to `offset`, its complete lines in `history`.
#[derive(Debug)]
struct Tail {
    path: PathBuf,
    offset: u64,
    /// A last line not yet ended by a newline (the writer is mid-line).
    partial: Vec<u8>,
    history: History,
    /// When the file was last written, as of the last refresh.
    modified: Option<SystemTime>,
}

impl Tail {
    fn new(path: PathBuf) -> Tail {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            history: History::new(KEPT),
            modified: None,
        }
    }

    /// Seconds since the file was last written: the page says "no update for ..." once a
    /// run stops writing without an end record (killed, crashed, hung).
    fn age_s(&self) -> Option<f64> {
        let modified = self.modified?;
        Some(
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default()
                .as_secs_f64(),
        )
    }

    /// Reads what was appended since the last call; a file that shrank (a new run) is read
    /// from its start again.
    fn refresh(&mut self) -> anyhow::Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            // Not written yet: the training run has not started. The page shows no data.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        let meta = file.metadata()?;
        let len = meta.len();
        if len < self.offset {
            *self = Tail::new(std::mem::take(&mut self.path));
        }
        self.modified = meta.modified().ok();
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            // Only JSON objects reach the page: a stray line cannot break its parsing.
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line).is_ok() {
                self.history.push(line.to_owned());
            }
        }
        Ok(())
    }
}

impl Source {
    fn parse(source: &str) -> anyhow::Result<Source> {
        if let Some(rest) = source.strip_prefix("http://") {
            let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.to_socket_addrs().is_err() {
                bail!("cannot resolve {authority:?} in {source}: expected http://host:port");
            }
            let prefix = prefix.trim_end_matches('/');
            let agent = ureq::Agent::config_builder()
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_global(Some(POLL_TIMEOUT))
                // A refusal's status and message are passed on to the page, not turned into
                // an error without them.
                .http_status_as_error(false)
                .build()
                .new_agent();
            return Ok(Source::Endpoint {
                base: if prefix.is_empty() {
                    format!("http://{authority}")
                } else {
                    format!("http://{authority}/{prefix}")
                },
                agent,
            });
        }
        if source.contains("://") {
            bail!("{source}: only http:// endpoints and metrics files are supported");
        }
        let path = PathBuf::from(source);
        if path.is_dir() {
            bail!(
                "{} is a folder; give the metrics file (JSON lines) that larder.Metrics(jsonl=...) writes",
                path.display()
            );
        }
        if !path.exists() {
            eprintln!(
                "note: {} does not exist yet; the page fills in once the training run writes it",
                path.display()
            );
        }
        Ok(Source::File(Mutex::new(Tail::new(path))))
    }

    /// The answer to the page's `/api/records?since=N`, or what went wrong (the page shows
    /// it).
    fn records(&self, since: u64) -> Result<String, String> {
        match self {
            Source::File(tail) => {
                let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                match tail.refresh() {
                    Ok(()) => Ok(with_age(tail.history.since_json(since), tail.age_s())),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            Source::Endpoint { base, agent } => {
                let url = format!("{base}/api/records?since={since}");
                get(agent, &url).map_err(|e| format!("{url}: {e:#}"))
            }
        }
    }
}

/// Adds `"age_s": seconds since the source was last written` to a records answer (a JSON
/// object), when that is known.
fn with_age(mut body: String, age_s: Option<f64>) -> String {
    if let (Some(age), true) = (age_s, body.starts_with('{')) {
        body.replace_range(..1, &format!("{{\"age_s\":{age:.3},"));
    }
    body
}

/// GETs `url` and returns the body of a 200 response.
fn get(agent: &ureq::Agent, url: &str) -> anyhow::Result<String> {
    let mut response = agent
        .get(url)
        .call()
        .context("the training process does not answer")?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(POLL_BYTES)
        .read_to_string()
        .context("the training process's answer could not be read")?;
    if status != 200 {
        bail!("{status}: {}", body.trim());
    }
    Ok(body)
}

/// Binds the page's address, saying which flag to change when the port is taken.
fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "port {port} is in use (address already in use); choose another with --port (0 picks a free one)"
            )
        } else {
            format!("cannot serve the dashboard on {host}:{port}")
        };
        anyhow::Error::new(e).context(what)
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = Source::parse(&args.source)?;
    let listener = bind(&args.host, args.port)?;
    let server = serve_dashboard(listener, move |since| source.records(since))?;
    // The first line says where the page is (tests read the port from it when it is 0).
    println!(
        "dashboard: http://{}/ (source: {})",
        server.local_addr(),
        args.source
    );
    std::io::stdout().flush()?;
    server.wait();
    Ok(ExitCode::SUCCESS)
}
