//! larder's log events, forwarded to Python's `logging` under the logger name "larder".
//!
//! The engine logs with `tracing`; in Python those events become `logging` records, so they
//! appear wherever the training script sends its logs. `LARDER_LOG` (e.g. `info`,
//! `larder=debug`) chooses what is forwarded; the default is warnings and errors.

use std::fmt::Write as _;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Collects an event's message and fields into one line.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// A `tracing` layer that hands each event to `logging.getLogger("larder")`.
struct PythonLogging;

impl<S: tracing::Subscriber> Layer<S> for PythonLogging {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => 40,
            tracing::Level::WARN => 30,
            tracing::Level::INFO => 20,
            _ => 10,
        };
        // Events come from Rust threads as well as Python's; attaching takes the GIL, which no
        // thread holds while it waits on larder (every call releases it).
        Python::attach(|py| {
            let result = py
                .import("logging")
                .and_then(|logging| logging.call_method1("getLogger", ("larder",)))
                .and_then(|logger| logger.call_method1("log", (level, line.0.as_str())));
            if let Err(e) = result {
                e.print(py);
            }
        });
    }
}

/// Installs the forwarding once per process; later calls (a re-import) change nothing.
pub fn install() {
    let filter = EnvFilter::try_from_env("LARDER_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(PythonLogging.with_filter(filter))
        .try_init();
}
