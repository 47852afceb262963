//! The HTTP side of the metrics: axum routes on hyper HTTP/1.1 connections, run by a tokio
//! runtime on a thread of its own.
//!
//! The requests are a Prometheus scrape every few seconds and a dashboard poll every second, so
//! the runtime has one thread (a current-thread runtime): a training process gets one extra
//! thread for its endpoint, as it did when the server was written by hand, and the parsing, the
//! status lines and the limits on slow or oversized requests are hyper's.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::{Error, Result};

/// Time a request's line and headers may take to arrive, whole: a client that trickles its
/// request a byte at a time must not hold a connection open longer than this.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes a request's line and headers may take (hyper answers 431 beyond them).
const HEAD_BYTES: usize = 16 << 10;
/// Time a connection may stay open in all, response included: a client that stops reading
/// the response cannot keep its connection, and the memory behind it, forever.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// The live dashboard: one self-contained page (no network beyond its own origin) that polls
/// `api/records?since=N` and plots loss, throughput, memory and loader wait.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The query of `/api/records?since=N`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Since {
    since: Option<u64>,
}

impl Since {
    /// The record number asked for (0 when absent), or the 400 answer to a query that is not
    /// one.
    pub(crate) fn parse(
        query: Result<Query<Since>, QueryRejection>,
    ) -> Result<u64, (StatusCode, &'static str)> {
        match query {
            Ok(Query(Since { since })) => Ok(since.unwrap_or(0)),
            Err(_) => Err((
                StatusCode::BAD_REQUEST,
                "since must be a record number, e.g. since=0",
            )),
        }
    }
}

/// A JSON answer whose body is already written.
pub(crate) fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The dashboard page.
pub(crate) async fn page() -> Html<&'static str> {
    Html(DASHBOARD_HTML)
}

/// Every answer is for now only: a browser or proxy that cached one would show stale records.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A running server; dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and serves `router` on a thread of its own.
    ///
    /// A port another process holds is reported as such, since that is by far the most common
    /// reason a bind fails; [`serve`](Self::serve) takes a listener bound by the caller, for a
    /// caller that reports bind errors in its own words (the CLI names its `--port` flag).
    pub(crate) fn start(addr: &str, router: Router) -> Result<Server> {
        let listener = TcpListener::bind(addr).map_err(|source| Error::Listen {
            addr: addr.to_owned(),
            source,
        })?;
        Server::serve(listener, router)
    }

    /// Serves `router` to the connections arriving at `listener`, on a thread of its own.
    pub(crate) fn serve(listener: TcpListener, router: Router) -> Result<Server> {
        Server::serve_within(listener, router, HEAD_DEADLINE)
    }

    /// [`serve`](Self::serve), a request's head having `head_deadline` to arrive.
    fn serve_within(
        listener: TcpListener,
        router: Router,
        head_deadline: Duration,
    ) -> Result<Server> {
        let failed = |what: &str, e: std::io::Error| Error::InvalidArgument {
            name: "listen",
            message: format!("cannot serve HTTP: {what}: {e}"),
        };
        let addr = listener
            .local_addr()
            .map_err(|e| failed("the listener's address", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| failed("the runtime", e))?;
        // Registered with the runtime here, not on the thread, so that a failure is the caller's
        // error rather than a thread that quietly ends.
        let listener = {
            let _in_runtime = runtime.enter();
            listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener))
                .map_err(|e| failed("the listener", e))?
        };
        let (stop, stopped) = oneshot::channel();
        let router = router.layer(axum::middleware::map_response(no_store));
        let thread = std::thread::Builder::new()
            .name("larder-http".into())
            .spawn(move || {
                runtime.block_on(accept(listener, router, head_deadline, stopped));
                // A dashboard poll still reading its source is not waited for.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| failed("the HTTP thread", e))?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it does not, until the process ends): for a command
    /// whose only job is serving.
    pub(crate) fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections until `stopped`, each answered on a task of its own; the connections
/// still open are dropped when it returns.
async fn accept(
    listener: tokio::net::TcpListener,
    router: Router,
    head_deadline: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_deadline)
        .max_buf_size(HEAD_BYTES)
        // One request per connection: a poll a second costs a connection a second, and no
        // idle connection is left to hold.
        .keep_alive(false);
    let http = Arc::new(http);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        // Finished connections are collected here, so that the set does not grow with them.
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was accepted: the next
            // accept may succeed; a pause keeps a persistent failure from spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        connections.spawn(async move {
            let connection = http.serve_connection(TokioIo::new(stream), service);
            // A client that misbehaves costs at most the deadlines, never the server.
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// A running `larder dashboard` server (see [`serve_dashboard`]); dropping it stops it.
#[derive(Debug)]
pub struct DashboardServer(Server);

impl DashboardServer {
    /// The address the page is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Blocks until the server stops (it does not, until the process ends): for a command
    /// whose only job is serving.
    pub fn wait(self) {
        self.0.wait();
    }
}

/// Serves the live dashboard page at `/` and the records it polls at `/api/records?since=N`,
/// on a thread of its own, to the connections arriving at `listener`.
///
/// `records(since)` returns the answer to a poll: the JSON object that
/// [`History::since_json`](super::History::since_json) writes, to which fields may be added
/// (`larder dashboard` adds `age_s`, the seconds since its metrics file was written, which the
/// page shows as "no update for ..."). An `Err(message)` is answered `502 Bad Gateway` with the
/// message, which the page shows: the records come from a file or a training process that
/// could not be read. `records` runs on a thread where it may block (read a file, ask another
/// server).
///
/// A training process serves the same page itself (`MetricsOptions::listen`); this is for a
/// process that shows another's records, as `larder dashboard` does.
///
/// ```no_run
/// use larder::metrics::{History, serve_dashboard};
///
/// let mut history = History::new(100);
/// history.push(r#"{"step":1,"loss":0.5}"#.to_owned());
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
/// let server = serve_dashboard(listener, move |since| Ok(history.since_json(since)))?;
/// println!("http://{}/", server.local_addr());
/// server.wait();
/// # Ok::<(), larder::Error>(())
/// ```
pub fn serve_dashboard<F>(listener: TcpListener, records: F) -> Result<DashboardServer>
where
    F: Fn(u64) -> std::result::Result<String, String> + Send + Sync + 'static,
{
    let records = Arc::new(records);
    let poll = move |query: Result<Query<Since>, QueryRejection>| {
        let records = records.clone();
        async move {
            let since = match Since::parse(query) {
                Ok(since) => since,
                Err(bad) => return bad.into_response(),
            };
            match tokio::task::spawn_blocking(move || (*records)(since)).await {
                Ok(Ok(body)) => json(body),
                Ok(Err(message)) => (StatusCode::BAD_GATEWAY, message).into_response(),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "reading the records failed (a panic); see the server's output",
                )
                    .into_response(),
            }
        }
    };
    let router = Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/api/records", get(poll))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the dashboard is at /") });
    Server::serve(listener, router).map(DashboardServer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn send(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    }

    fn echo() -> Router {
        Router::new().route(
            "/echo",
            get(|q: Result<Query<Since>, QueryRejection>| async move {
                match Since::parse(q) {
                    Ok(since) => json(format!("{{\"since\":{since}}}")),
                    Err(bad) => bad.into_response(),
                }
            }),
        )
    }

    #[test]
    fn a_client_trickling_its_request_is_cut_off_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server =
            Server::serve_within(listener, echo(), Duration::from_millis(500)).expect("serve");
        let mut c = TcpStream::connect(server.local_addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let started = Instant::now();
        // One byte every 100 ms: each read is quick, the request never ends.
        let cut_off = (0..30).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let mut buf = [0; 256];
            c.write_all(b"G").is_err() || c.read(&mut buf).is_ok()
        });
        assert!(cut_off, "the server waited for the whole trickle");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_request_head_over_the_limit_is_refused() {
        let server = Server::start("127.0.0.1:0", echo()).expect("start");
        let big = "x".repeat(HEAD_BYTES * 2);
        let text = send(
            server.local_addr(),
            &format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
        );
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }

    #[test]
    fn a_port_in_use_is_reported_as_such() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = Server::start(&addr, echo()).expect_err("the port is taken");
        assert!(
            matches!(&err, Error::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("cannot listen on {addr}: the port is in use")),
            "{text}"
        );
    }

    #[test]
    fn answers_get_and_refuses_the_rest_and_stops_on_drop() {
        let server = Server::start("127.0.0.1:0", echo()).expect("start");
        let addr = server.local_addr();
        let ok = send(addr, "GET /echo?a=1&since=42 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let lower = ok.to_ascii_lowercase();
        assert!(
            lower.contains("cache-control: no-store\r\n")
                && lower.contains("connection: close\r\n")
                && ok.ends_with("\r\n\r\n{\"since\":42}"),
            "{ok}"
        );
        let bad = send(addr, "GET /echo?since=x HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            bad.starts_with("HTTP/1.1 400")
                && bad.ends_with("since must be a record number, e.g. since=0"),
            "{bad}"
        );
        let post = send(
            addr,
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let nope = send(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(nope.starts_with("HTTP/1.1 404"), "{nope}");
        let garbage = send(addr, "hello\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "the port is closed after drop"
        );
    }

    #[test]
    fn the_dashboard_serves_the_page_and_the_records_it_is_given() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = serve_dashboard(listener, |since| {
            if since < 10 {
                Ok(format!("{{\"next\":{since}}}"))
            } else {
                Err(format!("no record {since}"))
            }
        })
        .expect("serve");
        let addr = server.local_addr();
        let page = send(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            page.starts_with("HTTP/1.1 200") && page.contains("plot-loss"),
            "{page}"
        );
        let ok = send(addr, "GET /api/records?since=3 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            ok.to_ascii_lowercase()
                .contains("content-type: application/json")
                && ok.ends_with("{\"next\":3}"),
            "{ok}"
        );
        let gone = send(
            addr,
            "GET /api/records?since=12 HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(
            gone.starts_with("HTTP/1.1 502") && gone.ends_with("no record 12"),
            "{gone}"
        );
        let nope = send(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            nope.starts_with("HTTP/1.1 404") && nope.ends_with("the dashboard is at /"),
            "{nope}"
        );
    }
}
