//! A small HTTP/1.1 endpoint for `/metrics`, status pages and the
//! balancer's admin API, built on `hyper` (no hand-written HTTP parsing).
//!
//! It runs on a plain thread of its own with a tokio current-thread runtime,
//! so that the executors serving clients never wait on a scrape, and serves
//! connections concurrently: one silent or slow client does not delay the
//! others. Each connection carries one request (no keep-alive) and is held
//! to [`Limits`]:
//!
//! - the whole request head (line and headers) must arrive within
//!   `head_timeout` of the accept, however it trickles in; otherwise the
//!   client gets `408 Request Timeout` and the connection is closed;
//! - a head over `max_head_bytes` gets `431`, garbage `400` (both from hyper);
//! - the answer must be written within `response_timeout`;
//! - at most `max_connections` connections are open at once: past that, new
//!   ones are closed at once, counted in
//!   `chat_http_connections_refused_total{endpoint}` and logged at most every
//!   10 s, so a flood of idle sockets cannot use up the process's files.
//!
//! The answer is computed by a plain closure from a [`Request`] (method,
//! path, query, peer) to a [`Response`]; [`serve`] keeps the older
//! path-only form for read-only endpoints (GET and HEAD, else `405`).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{StatusCode, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// How much one endpoint lets its clients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// From the accept to the end of the request head.
    pub head_timeout: Duration,
    /// From the end of the request head to the last byte of the answer.
    pub response_timeout: Duration,
    /// The most bytes of request line and headers.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            head_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            max_head_bytes: 16 * 1024,
        }
    }
}

/// What the client asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, still percent-encoded, without the query string.
    pub path: &'a str,
    /// The query string without `?` (empty if none), still percent-encoded.
    pub query: &'a str,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Request<'_> {
    /// `GET` or `HEAD`.
    pub fn is_read(&self) -> bool {
        matches!(self.method, "GET" | "HEAD")
    }

    /// The first value of `key` in the query string, percent-decoded.
    pub fn query_value(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Further headers, e.g. `Allow`.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    /// `200 OK` in Prometheus's text exposition format.
    pub fn metrics(body: String) -> Response {
        Response::new(200, "text/plain; version=0.0.4; charset=utf-8", body)
    }

    pub fn ok(content_type: &'static str, body: String) -> Response {
        Response::new(200, content_type, body)
    }

    /// Plain text with this status; a newline is added.
    pub fn text(status: u16, message: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{message}\n"))
    }

    /// `404 Not Found` with a hint of what exists.
    pub fn not_found(hint: &str) -> Response {
        Response::text(404, hint)
    }

    /// `400 Bad Request` saying what is wrong.
    pub fn bad_request(message: &str) -> Response {
        Response::text(400, message)
    }

    /// `403 Forbidden` saying why.
    pub fn forbidden(message: &str) -> Response {
        Response::text(403, message)
    }

    /// `405 Method Not Allowed` with `Allow: allow` (e.g. `"GET, HEAD"`).
    pub fn method_not_allowed(allow: &str) -> Response {
        Response::text(405, &format!("method not allowed; allowed: {allow}"))
            .with_header("allow", allow.to_owned())
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// Serves a read-only endpoint: `answer` gets the request's path without its
/// query string and answers `GET` and `HEAD`; any other method gets `405`
/// (or the `404` `answer` gives for an unknown path). Default [`Limits`].
pub fn serve(
    listener: TcpListener,
    name: &str,
    answer: impl Fn(&str) -> Response + Send + 'static,
) -> std::io::Result<()> {
    serve_requests(listener, name, Limits::default(), move |req| {
        let response = answer(req.path);
        if req.is_read() || response.status == 404 {
            response
        } else {
            Response::method_not_allowed("GET, HEAD")
        }
    })
}

/// Answers every request on `listener` with `answer`, from a thread named
/// `name` (also the `endpoint` label of its metrics), within `limits`.
pub fn serve_requests(
    listener: TcpListener,
    name: &str,
    limits: Limits,
    answer: impl Fn(&Request) -> Response + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint: &'static str = Box::leak(name.to_owned().into_boxed_str());
    metrics::describe_counter!(
        "chat_http_connections_refused_total",
        "Connections to an HTTP endpoint (/metrics, admin) closed at once: too many open."
    );
    metrics::describe_counter!(
        "chat_http_request_timeouts_total",
        "HTTP requests whose head did not arrive in time (answered 408)."
    );
    for counter in [
        "chat_http_connections_refused_total",
        "chat_http_request_timeouts_total",
    ] {
        metrics::counter!(counter, "endpoint" => endpoint).increment(0);
    }
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, accept_loop(listener, endpoint, limits, answer));
        })?;
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    endpoint: &'static str,
    limits: Limits,
    answer: impl Fn(&Request) -> Response + 'static,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(endpoint, error = %e, "HTTP endpoint cannot use its listener");
            return;
        }
    };
    let answer = Rc::new(answer);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let started = Instant::now();
    let warned = AtomicU64::new(0);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::debug!(endpoint, error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            metrics::counter!("chat_http_connections_refused_total", "endpoint" => endpoint)
                .increment(1);
            // At most once every 10 s: under a flood every accept gets here.
            let period = started.elapsed().as_secs() / 10 + 1;
            if warned.swap(period, Ordering::Relaxed) != period {
                tracing::warn!(
                    endpoint,
                    max = limits.max_connections,
                    "HTTP connections over the limit closed at once (logged every 10 s at most; chat_http_connections_refused_total counts each)"
                );
            }
            continue;
        };
        let answer = answer.clone();
        tokio::task::spawn_local(async move {
            connection(stream, peer, endpoint, limits, answer).await;
            drop(slot);
        });
    }
}

/// One connection: one request, one answer, within the limits.
async fn connection<F: Fn(&Request) -> Response + 'static>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    endpoint: &'static str,
    limits: Limits,
    answer: Rc<F>,
) {
    let _ = stream.set_nodelay(true);
    let head_read = Rc::new(Cell::new(false));
    let service = {
        let head_read = head_read.clone();
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            head_read.set(true);
            let request = Request {
                method: req.method().as_str(),
                path: req.uri().path(),
                query: req.uri().query().unwrap_or(""),
                peer,
            };
            std::future::ready(Ok::<_, Infallible>(to_hyper(answer(&request))))
        })
    };
    let mut conn = http1::Builder::new()
        .keep_alive(false)
        .max_header_size(limits.max_head_bytes)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.head_timeout, &mut conn).await {
        Ok(_) => return,
        Err(_) if head_read.get() => {}
        Err(_) => {
            // The head is not complete: nothing was written yet, so the
            // socket can be taken back to say why it is closed.
            metrics::counter!("chat_http_request_timeouts_total", "endpoint" => endpoint)
                .increment(1);
            let mut stream = conn.into_parts().io.into_inner();
            let body = format!(
                "the request head did not arrive within {:?}\n",
                limits.head_timeout
            );
            let timeout = format!(
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(timeout.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            return;
        }
    }
    // The request was read: its answer gets `response_timeout` to be written.
    let _ = tokio::time::timeout(limits.response_timeout, conn).await;
}

fn to_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *out.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    for (name, value) in r.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_and_decoded() {
        let r = Request {
            method: "POST",
            path: "/x",
            query: "a=1&value=%5B%3A%3A1%5D+x&b",
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(r.query_value("value").as_deref(), Some("[::1] x"));
        assert_eq!(r.query_value("b").as_deref(), Some(""));
        assert_eq!(r.query_value("c"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("127.0.0.1%3A6000"), "127.0.0.1:6000");
    }
}
