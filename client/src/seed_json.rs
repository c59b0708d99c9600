//! A minimal client for the seed's JSON protocol (the node's JSON mode, or the
//! seed's own C++ server): requests are written as JSON text followed by a
//! NUL byte, like the seed's client does; replies are split on NUL, on
//! whitespace and between back-to-back objects (the seed's server sends no
//! delimiter at all). Used by the benchmark's JSON mode and by tests.

use std::io;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

/// The seed JSON protocol's message ids (one table, in `chat-schema`).
pub use chat_schema::json_msgid as msgid;

/// Largest JSON object accepted from the server.
pub const MAX_OBJECT: usize = 16 * 1024 * 1024;

/// What [`split_next`] found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Split {
    /// One value, and the bytes it used (separators before it included).
    Value(Value, usize),
    /// Nothing complete yet; `usize` separator bytes may be dropped.
    Incomplete(usize),
    /// Bytes that are not JSON, up to and including the next NUL (or the end
    /// of the buffer when there is none).
    Invalid(String, usize),
}

fn is_separator(b: u8) -> bool {
    matches!(b, 0 | b' ' | b'\t' | b'\r' | b'\n')
}

/// Takes the first JSON value off `buf`.
pub fn split_next(buf: &[u8]) -> Split {
    let skip = buf.iter().take_while(|b| is_separator(**b)).count();
    let rest = &buf[skip..];
    if rest.is_empty() {
        return Split::Incomplete(skip);
    }
    let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
    match it.next() {
        Some(Ok(v)) => Split::Value(v, skip + it.byte_offset()),
        None => Split::Incomplete(skip),
        Some(Err(e)) if e.is_eof() => Split::Incomplete(skip),
        Some(Err(e)) => {
            let bad = rest
                .iter()
                .position(|b| *b == 0)
                .map_or(rest.len(), |p| p + 1);
            Split::Invalid(e.to_string(), skip + bad)
        }
    }
}

/// The reading side: yields JSON values one by one.
#[derive(Debug)]
pub struct JsonReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> JsonReader<R> {
    pub fn new(r: R) -> Self {
        JsonReader {
            r,
            buf: Vec::with_capacity(16 * 1024),
            start: 0,
        }
    }

    /// The next value; `None` when the server closed the connection. Bytes
    /// that are not JSON give an `InvalidData` error, after which reading can
    /// go on.
    pub async fn recv(&mut self) -> io::Result<Option<Value>> {
        loop {
            match split_next(&self.buf[self.start..]) {
                Split::Value(v, used) => {
                    self.start += used;
                    return Ok(Some(v));
                }
                Split::Invalid(msg, used) => {
                    self.start += used;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
                Split::Incomplete(skip) => self.start += skip,
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if self.buf.len() > MAX_OBJECT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "JSON object from the server exceeds 16 MiB",
                ));
            }
            self.buf.reserve(16 * 1024);
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a JSON object",
                    ))
                };
            }
        }
    }

    /// The next value whose `msgid` is `id`, skipping others; `None` on close.
    pub async fn recv_msgid(&mut self, id: u64) -> io::Result<Option<Value>> {
        while let Some(v) = self.recv().await? {
            if v.get("msgid").and_then(Value::as_u64) == Some(id) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

/// The writing side: NUL-terminated JSON texts.
#[derive(Debug)]
pub struct JsonWriter<W> {
    w: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> JsonWriter<W> {
    pub fn new(w: W) -> Self {
        JsonWriter {
            w,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Writes `v` followed by a NUL byte.
    pub async fn send(&mut self, v: &Value) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, v)?;
        self.buf.push(0);
        self.w.write_all(&self.buf).await
    }

    /// Writes bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes).await
    }

    /// Shuts the write side down.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.w.shutdown().await
    }
}

/// A JSON connection over TCP.
#[derive(Debug)]
pub struct JsonConnection {
    pub reader: JsonReader<OwnedReadHalf>,
    pub writer: JsonWriter<OwnedWriteHalf>,
}

impl JsonConnection {
    /// Connects (with `TCP_NODELAY`).
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<JsonConnection> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(JsonConnection {
            reader: JsonReader::new(r),
            writer: JsonWriter::new(w),
        })
    }

    pub async fn send(&mut self, v: &Value) -> io::Result<()> {
        self.writer.send(v).await
    }

    pub async fn recv(&mut self) -> io::Result<Option<Value>> {
        self.reader.recv().await
    }

    pub async fn recv_msgid(&mut self, id: u64) -> io::Result<Option<Value>> {
        self.reader.recv_msgid(id).await
    }

    /// Registers `name` (sending the password as both `pwd` and `password`,
    /// which the seed's forks disagree on) and returns the reply (msgid 5).
    pub async fn register(&mut self, name: &str, password: &str) -> io::Result<Value> {
        self.send(&serde_json::json!({
            "msgid": msgid::REGISTER, "name": name, "pwd": password, "password": password,
        }))
        .await?;
        self.expect(msgid::REGISTER_ACK).await
    }

    /// Logs in and returns the reply (msgid 2).
    pub async fn login(&mut self, id: u64, password: &str) -> io::Result<Value> {
        self.send(&serde_json::json!({
            "msgid": msgid::LOGIN, "id": id, "pwd": password, "password": password,
        }))
        .await?;
        self.expect(msgid::LOGIN_ACK).await
    }

    async fn expect(&mut self, id: u64) -> io::Result<Value> {
        self.recv_msgid(id).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed before the msgid {id} reply"),
            )
        })
    }

    pub fn into_split(self) -> (JsonReader<OwnedReadHalf>, JsonWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }
}

/// `errno` of a reply (0 when absent).
pub fn errno(v: &Value) -> i64 {
    v.get("errno").and_then(Value::as_i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_on_nul_newline_and_back_to_back() {
        let buf = b"\0{\"a\":1}\0\n{\"b\":2}{\"c\":3}  {\"d\"";
        let mut at = 0;
        let mut got = vec![];
        loop {
            match split_next(&buf[at..]) {
                Split::Value(v, used) => {
                    got.push(v);
                    at += used;
                }
                Split::Incomplete(skip) => {
                    at += skip;
                    break;
                }
                Split::Invalid(..) => panic!("valid input"),
            }
        }
        assert_eq!(got, vec![json!({"a":1}), json!({"b":2}), json!({"c":3})]);
        assert_eq!(&buf[at..], b"{\"d\"");
    }

    #[test]
    fn garbage_skips_to_the_next_nul() {
        let buf = b"{oops}\0{\"ok\":true}\0";
        let Split::Invalid(_, used) = split_next(buf) else {
            panic!("invalid expected")
        };
        assert_eq!(used, 7);
        assert_eq!(
            split_next(&buf[used..]),
            Split::Value(json!({"ok": true}), 11)
        );
    }

    #[tokio::test]
    async fn reader_and_writer_over_a_pipe() {
        let (a, b) = tokio::io::duplex(64);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut w = JsonWriter::new(aw);
        let mut r = JsonReader::new(br);
        let big = "x".repeat(1000);
        let send = async {
            w.send(&json!({"msgid": 6, "msg": big})).await.unwrap();
            w.send_raw(b"{\"msgid\":12}\0{\"msgid\":5,\"id\":3}")
                .await
                .unwrap();
            w.shutdown().await.unwrap();
        };
        let recv = async {
            let first = r.recv().await.unwrap().unwrap();
            assert_eq!(first["msg"].as_str().unwrap().len(), 1000);
            let five = r.recv_msgid(msgid::REGISTER_ACK).await.unwrap().unwrap();
            assert_eq!(five["id"], 3);
            assert!(r.recv().await.unwrap().is_none());
        };
        tokio::join!(send, recv);
        drop((ar, bw));
    }
}
