//! Metrics: the loader's own counters, and what the Prometheus and dashboard endpoints serve.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use larder::load::Loader;
use larder::metrics::{Metrics, MetricsOptions, StepInput};

use crate::load::{options, store};

fn get(addr: SocketAddr, target: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .expect("a number")
}

#[test]
fn the_loader_counts_its_batches_and_bytes_and_the_endpoints_serve_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 9);
    let mut loader = Loader::new(store, options(2, 2)).expect("loader");
    let mut metrics = Metrics::new(MetricsOptions {
        listen: Some("127.0.0.1:0".into()),
        print_every: None,
        total_steps: Some(loader.len() as u64),
        ..MetricsOptions::default()
    })
    .expect("metrics");
    metrics.attach_loader(loader.metrics());
    let (mut steps, mut bytes, mut samples) = (0u64, 0u64, 0u64);
    while let Some(batch) = loader.next_batch() {
        let batch = batch.expect("batch");
        bytes += batch
            .fields
            .values()
            .map(|t| t.data.as_slice().len() as u64)
            .sum::<u64>();
        samples += batch.items.len() as u64;
        steps += 1;
        metrics
            .step(StepInput {
                loss: Some(1.0 / steps as f64),
                lr: Some(1e-4),
                batch_size: Some(batch.items.len() as u32),
                gpu: None,
            })
            .expect("step");
    }
    let counted = loader.metrics().snapshot();
    assert_eq!(counted.delivered, steps);
    assert_eq!(
        counted.assembled, steps,
        "one epoch assembles each of its batches once"
    );
    // The sample store's fields are raw u8: every stored byte read lands in a batch.
    assert_eq!(counted.bytes_read, bytes);
    assert!(counted.assemble_s > 0.0 && counted.decode_s <= counted.assemble_s);

    let last = metrics.last().clone();
    assert_eq!((last.step, last.samples), (steps, samples));
    assert_eq!(last.bytes_read, Some(bytes));
    assert!(last.rss_bytes.is_some_and(|b| b > 0));

    let addr = metrics.local_addr().expect("listening");
    let text = get(addr, "/metrics");
    assert_eq!(sample(&text, "larder_steps_total"), steps as f64);
    assert_eq!(sample(&text, "larder_samples_total"), samples as f64);
    assert_eq!(
        sample(&text, "larder_loader_read_bytes_total"),
        bytes as f64
    );
    assert_eq!(sample(&text, "larder_loss"), 1.0 / steps as f64);
    assert!(
        text.contains("# TYPE larder_loader_wait_seconds_total counter"),
        "{text}"
    );

    let page: serde_json::Value =
        serde_json::from_str(&get(addr, "/api/records?since=1")).expect("JSON");
    assert_eq!(page["next"], steps);
    let records = page["records"].as_array().expect("records");
    assert_eq!(
        records.len() as u64,
        steps - 1,
        "records from the second on"
    );
    assert_eq!(records[0]["step"], 2);
    assert!(get(addr, "/").contains("<canvas>"), "the dashboard page");
}
