//! A one-thread HTTP/1.1 endpoint for `/metrics` and status pages: each
//! connection sends one GET, gets one response, and is closed. Requests are
//! read with a timeout and a size bound, so a client that sends nothing or
//! too much cannot hold the thread. It runs on a plain thread so that the
//! executors serving clients never wait on a scrape.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The most bytes of request (line and headers) read.
const MAX_REQUEST: u64 = 16 * 1024;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// `200 OK` in Prometheus's text exposition format.
    pub fn metrics(body: String) -> Response {
        Response {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body,
        }
    }

    pub fn ok(content_type: &'static str, body: String) -> Response {
        Response {
            status: "200 OK",
            content_type,
            body,
        }
    }

    /// `404 Not Found` with a hint of what exists.
    pub fn not_found(hint: &str) -> Response {
        Response {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: format!("{hint}\n"),
        }
    }
}

/// Answers every request on `listener` from a thread named `name`:
/// `answer` gets the request's path without its query string.
pub fn serve(
    listener: TcpListener,
    name: &str,
    answer: impl Fn(&str) -> Response + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = respond(stream, &answer);
            }
        })?;
    Ok(())
}

fn respond(mut stream: TcpStream, answer: &impl Fn(&str) -> Response) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_REQUEST));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let r = answer(path);
    write!(
        stream,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        r.content_type,
        r.body.len(),
        r.body
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn one_request_one_response_by_path() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, "test-http", |path| match path {
            "/metrics" => Response::metrics("up 1\n".into()),
            _ => Response::not_found("see /metrics"),
        })
        .unwrap();
        let ok = get(addr, "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Length: 5\r\n") && ok.ends_with("up 1\n"),
            "{ok}"
        );
        let missing = get(addr, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404 Not Found"), "{missing}");
        // Garbage gets an answer too, and the endpoint goes on.
        let junk = get(addr, "\u{1}\u{2}\r\n\r\n");
        assert!(junk.starts_with("HTTP/1.1 404"), "{junk}");
        assert!(get(addr, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
    }
}
