//! A small HTTP/1.1 server on one thread, for the Prometheus endpoint and the dashboard.
//!
//! The requests it answers are a Prometheus scrape every few seconds and a dashboard poll
//! every second: one thread that answers one connection at a time serves them with room to
//! spare, and keeps an async runtime (tokio, for axum or hyper) out of a library that runs
//! inside training processes. Every connection closes after its response.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Error, Result};

/// An answer to a GET request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 response.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text error response.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: message.into().into_bytes(),
        }
    }
}

/// A request's path and query string (without the `?`).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The path, e.g. `/api/records`.
    pub path: String,
    /// The query string, e.g. `since=10`; empty when there is none.
    pub query: String,
}

impl Request {
    /// The value of query parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A running server; dropping it stops the thread.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and answers GET requests with `handler` on a
    /// thread of its own.
    ///
    /// A port another process holds is reported as such, since that is by far the most common
    /// reason a bind fails; [`serve`](Self::serve) takes a listener bound by the caller, for a
    /// caller that reports bind errors in its own words (the CLI names its `--port` flag).
    pub fn start(
        addr: &str,
        handler: impl Fn(&Request) -> Response + Send + 'static,
    ) -> Result<HttpServer> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::InvalidArgument {
            name: "listen",
            message: if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "cannot listen on {addr}: the port is in use ({e}); choose another port, or 0 for a free one"
                )
            } else {
                format!("cannot listen on {addr}: {e}")
            },
        })?;
        HttpServer::serve(listener, handler)
    }

    /// Answers GET requests arriving at `listener` with `handler`, on a thread of its own.
    pub fn serve(
        listener: TcpListener,
        handler: impl Fn(&Request) -> Response + Send + 'static,
    ) -> Result<HttpServer> {
        let addr = listener.local_addr().map_err(|e| Error::InvalidArgument {
            name: "listen",
            message: format!("cannot read the address the listener is bound to: {e}"),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("larder-http".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // A client that misbehaves costs at most the timeouts, never the thread.
                        if let Ok(stream) = conn {
                            let _ = answer(stream, &handler);
                        }
                    }
                })
                .map_err(|e| Error::InvalidArgument {
                    name: "listen",
                    message: format!("cannot start the HTTP thread: {e}"),
                })?
        };
        Ok(HttpServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (it does not, until the process ends): for a command
    /// whose only job is serving.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Relaxed);
            // The thread sits in accept(); a connection wakes it to see the flag.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
    }
}

/// Time one request may take to arrive, whole: the server has one thread, so a client that
/// trickles its request a byte at a time must not hold it longer than this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes a request's line and headers may take.
const REQUEST_HEAD_BYTES: u64 = 16 << 10;

/// A socket whose every read must finish by `ends`: a deadline for a whole request, not for
/// each read.
struct Deadline {
    stream: TcpStream,
    ends: std::time::Instant,
}

impl std::io::Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .ends
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"))?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Reads one request from `stream` and writes the handler's response.
fn answer(stream: TcpStream, handler: &impl Fn(&Request) -> Response) -> std::io::Result<()> {
    answer_within(stream, handler, REQUEST_DEADLINE)
}

/// [`answer`], the request having `deadline` to arrive.
fn answer_within(
    stream: TcpStream,
    handler: &impl Fn(&Request) -> Response,
    deadline: Duration,
) -> std::io::Result<()> {
    stream.set_write_timeout(Some(deadline))?;
    let mut reader = BufReader::new(Deadline {
        stream: stream.try_clone()?,
        ends: std::time::Instant::now() + deadline,
    });
    let mut budget = REQUEST_HEAD_BYTES;
    // One line of the request head, within what is left of the budget.
    let mut next_line = |line: &mut String| -> std::io::Result<usize> {
        let n = std::io::Read::take(&mut reader, budget).read_line(line)?;
        budget -= n as u64;
        if budget == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        Ok(n)
    };
    let mut line = String::new();
    next_line(&mut line)?;
    // Headers are read and ignored: nothing here depends on them.
    let mut header = String::new();
    while next_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let response = match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            handler(&Request {
                path: path.to_owned(),
                query: query.to_owned(),
            })
        }
        (Some(_), Some(_)) => Response::error(405, "only GET is served"),
        _ => Response::error(400, "not an HTTP request"),
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let mut out = std::io::BufWriter::new(stream);
    write!(
        out,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    )?;
    out.write_all(&response.body)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, target: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    }

    #[test]
    fn a_client_trickling_its_request_is_cut_off_at_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).expect("connect");
            // One byte every 100 ms: each read is quick, the request never ends.
            for _ in 0..30 {
                if c.write_all(b"G").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (stream, _) = listener.accept().expect("accept");
        let started = std::time::Instant::now();
        let result = super::answer_within(
            stream,
            &|_| Response::error(404, "none"),
            Duration::from_millis(500),
        );
        assert!(result.is_err(), "the request never ended");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let _ = client.join();
    }

    #[test]
    fn a_port_in_use_is_reported_as_such() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = HttpServer::start(&addr, |_| Response::error(404, "none"))
            .expect_err("the port is taken");
        let text = err.to_string();
        assert!(
            text.contains(&format!("cannot listen on {addr}: the port is in use")),
            "{text}"
        );
    }

    #[test]
    fn answers_get_with_the_handler_and_stops_on_drop() {
        let server = HttpServer::start("127.0.0.1:0", |r| {
            if r.path == "/echo" {
                Response::ok("text/plain", r.param("x").unwrap_or("none"))
            } else {
                Response::error(404, "no such page")
            }
        })
        .expect("start");
        let addr = server.local_addr();
        let ok = get(addr, "/echo?a=1&x=42");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 2\r\n") && ok.ends_with("\r\n\r\n42"),
            "{ok}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "the port is closed after drop"
        );
    }
}
