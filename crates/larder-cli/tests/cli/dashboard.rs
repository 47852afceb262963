//! `larder dashboard`, checked in a real headless Chromium: the page plots the points of a
//! metrics file and picks up points appended to it.
//!
//! Chromium is required (Debian's `chromium` package; `.ci/run` installs it): without it this
//! test fails, it does not skip.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::s;

const GIB: f64 = (1u64 << 30) as f64;

/// Kills the dashboard when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `larder dashboard <file> --port 0` and returns it with the page's URL.
fn dashboard(metrics: &Path) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["dashboard", s(metrics), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start larder dashboard");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the dashboard's first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (Running(child), url)
}

/// The loss, throughput, RSS and wait of step `k` of the synthetic run.
fn point(k: u64) -> (f64, f64, u64, f64) {
    (
        1.0 / k as f64,
        40.0 + k as f64,
        (1 << 30) + k * (1 << 20),
        0.001 * k as f64,
    )
}

/// The metrics record of step `k`, one JSON line as `larder.Metrics` writes it.
fn line(k: u64) -> String {
    let (loss, speed, rss, wait) = point(k);
    format!(
        r#"{{"v":1,"time":{},"step":{k},"total_steps":60,"elapsed_s":{},"loss":{loss},"lr":0.0001,"batch_size":4,"samples":{},"step_s":0.5,"samples_per_s":{speed},"wait_s":{wait},"queue_depth":3,"rss_bytes":{rss},"pss_bytes":{rss}}}"#,
        1.8e9 + k as f64,
        k as f64 * 0.5,
        4 * k
    ) + "\n"
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("append to the metrics file");
}

fn lines(steps: std::ops::RangeInclusive<u64>) -> String {
    steps.map(line).collect()
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its standard output.
fn chromium(url: &str, profile: &Path, extra: &[&str]) -> String {
    let found = Command::new("chromium").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs Chromium: `apt-get install -y chromium` (.ci/run installs it); running it failed: {found:?}"
    );
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text).map(|_| text)
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader").expect("chromium's output")
}

/// The value of attribute `name` on the element whose attributes include `anchor`
/// (e.g. `id="plot-loss"`) in a serialized DOM.
fn attr(dom: &str, anchor: &str, name: &str) -> String {
    let at = dom
        .find(anchor)
        .unwrap_or_else(|| panic!("no element with {anchor} in the page:\n{dom}"));
    let start = dom[..=at].rfind('<').expect("tag start");
    let tag = &dom[start..start + dom[start..].find('>').expect("tag end")];
    let key = format!("{name}=\"");
    let from = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    tag[from..from + tag[from..].find('"').expect("closing quote")].to_owned()
}

fn number(dom: &str, anchor: &str, name: &str) -> f64 {
    let v = attr(dom, anchor, name);
    v.parse()
        .unwrap_or_else(|_| panic!("{name} of {anchor} is {v:?}, not a number"))
}

/// Checks that every plot drew `steps` points ending at step `steps`'s values.
fn assert_plotted(dom: &str, steps: u64) {
    let (loss, speed, rss, wait) = point(steps);
    let n = steps as f64;
    assert_eq!(number(dom, "<body", "data-records"), n, "records received");
    for (plot, last) in [
        ("id=\"plot-loss\"", loss),
        ("id=\"plot-throughput\"", speed),
        ("id=\"plot-memory\"", rss as f64 / GIB),
        ("id=\"plot-wait\"", wait * 1e3),
    ] {
        assert_eq!(number(dom, plot, "data-points"), n, "{plot} points");
        let drawn = number(dom, plot, "data-last");
        assert!(
            (drawn - last).abs() <= 1e-9 * last.abs().max(1.0),
            "{plot}: last {drawn}, want {last}"
        );
    }
    // The memory plot's second series, and the loss plot's running average, are drawn too.
    assert_eq!(number(dom, "data-series=\"PSS\"", "data-points"), n);
    assert_eq!(number(dom, "data-series=\"avg of 20\"", "data-points"), n);
    assert!(
        dom.contains(&format!("{steps} / 60")),
        "the header shows the step"
    );
}

/// Where this test leaves its screenshots for a person to look at.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-output/dashboard");
    std::fs::create_dir_all(&dir).expect("create the test output folder");
    dir
}

#[test]
fn the_dashboard_plots_a_metrics_file_in_chromium_and_follows_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = tmp.path().join("metrics.jsonl");
    append(&metrics, &lines(1..=40));
    let (_server, url) = dashboard(&metrics);
    let profile = tmp.path().join("chromium-profile");

    let dom = chromium(&url, &profile, &["--dump-dom"]);
    assert_plotted(&dom, 40);
    assert!(
        dom.contains("live · 40 records"),
        "a run being written is live"
    );
    let shot = output_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &profile,
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot: {} bytes",
        png.len()
    );

    // The training run goes on: new points, the last of them still half-written.
    let last = line(60);
    let (head, tail) = last.split_at(last.len() / 2);
    append(&metrics, &(lines(41..=59) + head));
    let dom = chromium(&format!("{url}?interval=100"), &profile, &["--dump-dom"]);
    assert_plotted(&dom, 59);
    // The writer finishes the line: the next poll has it.
    append(&metrics, tail);
    let dom = chromium(&url, &profile, &["--dump-dom"]);
    assert_plotted(&dom, 60);
    let shot = output_dir().join("dashboard-updated.png");
    chromium(
        &url,
        &profile,
        &[&format!("--screenshot={}", shot.display())],
    );
}

/// The text of the page's status (`<span id="state">status <b>...</b>`).
fn status(dom: &str) -> String {
    let at = dom.find("id=\"state\"").expect("the status element");
    let from = at + dom[at..].find("<b>").expect("<b>") + 3;
    dom[from..from + dom[from..].find("</b>").expect("</b>")].to_owned()
}

#[test]
fn the_dashboard_says_ended_for_a_run_that_closed_its_metrics() {
    use larder::metrics::{Metrics, MetricsOptions};

    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = tmp.path().join("metrics.jsonl");
    let mut training = Metrics::new(MetricsOptions {
        jsonl: Some(metrics.clone()),
        print_every: None,
        ..MetricsOptions::default()
    })
    .expect("metrics");
    record_steps(&mut training, 7);
    training.close().expect("close");
    let (_server, url) = dashboard(&metrics);
    let dom = chromium(&url, &tmp.path().join("profile"), &["--dump-dom"]);
    assert_eq!(status(&dom), "ended · 7 records");
    assert_eq!(
        number(&dom, "id=\"plot-loss\"", "data-points"),
        7.0,
        "the end record is not a step: nothing more is plotted"
    );
    assert_eq!(number(&dom, "<body", "data-records"), 7.0);
}

#[test]
fn the_dashboard_says_no_update_for_a_file_no_longer_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = tmp.path().join("metrics.jsonl");
    append(&metrics, &lines(1..=12));
    // The run was killed five minutes ago: no end record, and the file untouched since.
    std::fs::File::options()
        .append(true)
        .open(&metrics)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(300)))
        .expect("age the metrics file");
    let (_server, url) = dashboard(&metrics);
    let profile = tmp.path().join("profile");
    let dom = chromium(&url, &profile, &["--dump-dom"]);
    assert_plotted(&dom, 12);
    assert_eq!(status(&dom), "no update for 5 min · 12 records");
    // The threshold is the page's `stale` parameter (60 s by default).
    let dom = chromium(&format!("{url}?stale=600"), &profile, &["--dump-dom"]);
    assert_eq!(status(&dom), "live · 12 records");
}

#[test]
fn a_busy_port_is_named_with_the_flag_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("address").port().to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = tmp.path().join("metrics.jsonl");
    append(&metrics, &lines(1..=2));
    let child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["dashboard", s(&metrics), "--port", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start larder dashboard");
    let out = exit_within_20s(child, "larder dashboard started on a port that is in use");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "port {port} is in use (address already in use); choose another with --port"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("invalid argument"),
        "a busy port is not a bad argument: {stderr}"
    );
}

#[test]
fn a_folder_or_an_unknown_scheme_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = crate::larder(&["dashboard", s(tmp.path()), "--port", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a folder"));
    let out = crate::larder(&["dashboard", "s3://bucket/metrics.jsonl", "--port", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
}

/// GETs `target` from `addr`; returns the status line and the body.
fn get(addr: &str, target: &str) -> (String, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn the_dashboard_follows_a_training_process_through_its_endpoint() {
    use larder::metrics::{Metrics, MetricsOptions};

    let mut training = Metrics::new(MetricsOptions {
        listen: Some("127.0.0.1:0".into()),
        print_every: None,
        ..MetricsOptions::default()
    })
    .expect("metrics");
    record_steps(&mut training, 5);
    let endpoint = format!("http://{}", training.local_addr().expect("listening"));
    let (_server, url) = dashboard(Path::new(&endpoint));
    let page = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let (status, body) = get(&page, "/api/records?since=3");
    assert!(status.contains("200"), "{status}: {body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["next"], 5);
    assert_eq!(answer["records"][1]["step"], 5);

    let tmp = tempfile::tempdir().expect("tempdir");
    let dom = chromium(&url, &tmp.path().join("profile"), &["--dump-dom"]);
    assert_eq!(number(&dom, "id=\"plot-loss\"", "data-points"), 5.0);
    assert_eq!(number(&dom, "id=\"plot-loss\"", "data-last"), 0.2);

    // The training process ends: the page is told why it has no new data.
    drop(training);
    let (status, body) = get(&page, "/api/records?since=5");
    assert!(
        status.contains("502") && body.contains("does not answer"),
        "{status}: {body}"
    );
}

#[test]
fn the_page_takes_new_records_while_it_is_open() {
    use larder::metrics::{History, serve_dashboard};
    use std::sync::{Arc, Mutex};

    // A stand-in for a training process: three more steps are recorded at its third poll,
    // while the page is open.
    struct Upstream {
        history: History,
        polls: Vec<String>,
    }
    let upstream = Arc::new(Mutex::new(Upstream {
        history: History::new(100),
        polls: Vec::new(),
    }));
    for k in 1..=5 {
        let text = line(k);
        upstream
            .lock()
            .expect("lock")
            .history
            .push(text.trim_end().to_owned());
    }
    let server = {
        let upstream = upstream.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        serve_dashboard(listener, move |since| {
            let mut u = upstream.lock().expect("lock");
            u.polls.push(format!("since={since}"));
            if u.polls.len() == 3 {
                for k in 6..=8 {
                    u.history.push(line(k).trim_end().to_owned());
                }
            }
            Ok(u.history.since_json(since))
        })
        .expect("upstream")
    };
    let endpoint = format!("http://{}", server.local_addr());
    let (_dashboard, url) = dashboard(Path::new(&endpoint));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dom = chromium(
        &format!("{url}?interval=200"),
        &tmp.path().join("profile"),
        &["--dump-dom"],
    );
    assert_plotted(&dom, 8);
    let polls = upstream.lock().expect("lock").polls.clone();
    assert_eq!(polls[0], "since=0");
    assert!(
        polls.iter().any(|q| q == "since=5") && polls.last().is_some_and(|q| q == "since=8"),
        "each poll asks only for what is new: {polls:?}"
    );
}

#[test]
fn a_closed_stdout_ends_a_command_that_prints_with_println_quietly() {
    // `larder dashboard` prints its address with println!, which panics on a closed pipe
    // instead of returning the error.
    let tmp = tempfile::tempdir().expect("tempdir");
    let metrics = tmp.path().join("metrics.jsonl");
    append(&metrics, &lines(1..=2));
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["dashboard", s(&metrics), "--port", "0"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start larder dashboard");
    let out = exit_within_20s(child, "larder dashboard went on with its output closed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Waits for `child` to exit on its own, for at most 20 s (a dashboard that did start would
/// serve for ever), and returns its output; kills it and fails with `otherwise` past that.
fn exit_within_20s(mut child: std::process::Child, otherwise: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{otherwise}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Records `n` training steps (loss 1/k, batch size 2) into `training`.
fn record_steps(training: &mut larder::metrics::Metrics, n: u32) {
    for k in 1..=n {
        training
            .step(larder::metrics::StepInput {
                loss: Some(1.0 / f64::from(k)),
                batch_size: Some(2),
                ..Default::default()
            })
            .expect("step");
    }
}
