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

/// The seed's message ids.
pub mod msgid {
    pub const LOGIN: i64 = 1;
    pub const LOGIN_ACK: i64 = 2;
    pub const LOGINOUT: i64 = 3;
    pub const REG: i64 = 4;
    pub const REG_ACK: i64 = 5;
    pub const ONE_CHAT: i64 = 6;
    pub const ADD_FRIEND: i64 = 7;
    pub const CREATE_GROUP: i64 = 8;
    pub const ADD_GROUP: i64 = 9;
    pub const GROUP_CHAT: i64 = 10;

    // Ours, not the seed's: friend and group management.

    /// Remove a friend: `id` (optional), `friendid`.
    pub const REMOVE_FRIEND: i64 = 30;
    pub const REMOVE_FRIEND_ACK: i64 = 31;
    /// Leave a group: `id` (optional), `groupid`.
    pub const LEAVE_GROUP: i64 = 32;
    pub const LEAVE_GROUP_ACK: i64 = 33;
    /// Remove a member from a group one created: `id` (optional),
    /// `groupid`, `userid`.
    pub const REMOVE_MEMBER: i64 = 34;
    pub const REMOVE_MEMBER_ACK: i64 = 35;
    /// A group's details: `id` (optional), `groupid`.
    pub const GROUP_INFO: i64 = 36;
    pub const GROUP_INFO_ACK: i64 = 37;
    /// Look a user up by name: `name`.
    pub const FIND_USER: i64 = 38;
    pub const FIND_USER_ACK: i64 = 39;
    /// Message history.
    pub const HISTORY: i64 = 40;
    pub const HISTORY_ACK: i64 = 41;
    /// Mark messages read.
    pub const MARK_READ: i64 = 42;
    pub const MARK_READ_ACK: i64 = 43;
    /// Who has read a message.
    pub const READERS: i64 = 44;
    pub const READERS_ACK: i64 = 45;
    /// Push: a read receipt.
    pub const READ_RECEIPT: i64 = 46;
    /// Push: the group's creator removed this user,
    /// `{"msgid":47,"groupid":G}`.
    pub const REMOVED_FROM_GROUP: i64 = 47;
    /// Push: a friend ended the friendship, `{"msgid":48,"friendid":U}`.
    pub const FRIEND_REMOVED: i64 = 48;
}

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
    pub async fn recv_msgid(&mut self, id: i64) -> io::Result<Option<Value>> {
        while let Some(v) = self.recv().await? {
            if v.get("msgid").and_then(Value::as_i64) == Some(id) {
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

    pub async fn recv_msgid(&mut self, id: i64) -> io::Result<Option<Value>> {
        self.reader.recv_msgid(id).await
    }

    /// Registers `name` (sending the password as both `pwd` and `password`,
    /// which the seed's forks disagree on) and returns the reply (msgid 5).
    pub async fn register(&mut self, name: &str, password: &str) -> io::Result<Value> {
        self.send(&serde_json::json!({
            "msgid": msgid::REG, "name": name, "pwd": password, "password": password,
        }))
        .await?;
        self.expect(msgid::REG_ACK).await
    }

    /// Logs in and returns the reply (msgid 2).
    pub async fn login(&mut self, id: u64, password: &str) -> io::Result<Value> {
        self.send(&serde_json::json!({
            "msgid": msgid::LOGIN, "id": id, "pwd": password, "password": password,
        }))
        .await?;
        self.expect(msgid::LOGIN_ACK).await
    }

    async fn expect(&mut self, id: i64) -> io::Result<Value> {
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
    fn msgids_are_distinct() {
        use msgid::*;
        let all = [
            LOGIN,
            LOGIN_ACK,
            LOGINOUT,
            REG,
            REG_ACK,
            ONE_CHAT,
            ADD_FRIEND,
            CREATE_GROUP,
            ADD_GROUP,
            GROUP_CHAT,
            REMOVE_FRIEND,
            REMOVE_FRIEND_ACK,
            LEAVE_GROUP,
            LEAVE_GROUP_ACK,
            REMOVE_MEMBER,
            REMOVE_MEMBER_ACK,
            GROUP_INFO,
            GROUP_INFO_ACK,
            FIND_USER,
            FIND_USER_ACK,
            HISTORY,
            HISTORY_ACK,
            MARK_READ,
            MARK_READ_ACK,
            READERS,
            READERS_ACK,
            READ_RECEIPT,
            REMOVED_FROM_GROUP,
            FRIEND_REMOVED,
        ];
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert_eq!(sorted[10..], (30..=48).collect::<Vec<i64>>());
    }

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
            let five = r.recv_msgid(msgid::REG_ACK).await.unwrap().unwrap();
            assert_eq!(five["id"], 3);
            assert!(r.recv().await.unwrap().is_none());
        };
        tokio::join!(send, recv);
        drop((ar, bw));
    }
}
