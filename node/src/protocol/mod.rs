//! The two wire protocols a client may speak on the node's port, and the
//! choice between them: a connection that starts (after optional
//! whitespace) with a JSON object speaks the seed's JSON protocol (`json`),
//! any other speaks length-prefixed FlatBuffers (`flatbuf`); see
//! [`Wire::detect`].
//!
//! Data flow: the session appends bytes read from the socket to a buffer and
//! calls [`Decoder::decode`] until it returns `None`, draining the bytes it
//! reports consumed; each [`Decoded`] goes to the handlers. Replies and pushes
//! go back through [`Encoder`], which appends the bytes to write to a buffer.

mod decoded;
pub mod flatbuf;
pub mod json;

pub use decoded::Decoded;

use crate::command::{Push, Reply, RequestKind};

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    FlatBuffers,
    Json,
}

impl Wire {
    /// Decides the protocol from the first bytes a client sends, or `None`
    /// while they do not tell yet.
    ///
    /// JSON: the first byte that is not JSON whitespace is `{`, and the
    /// byte after it can follow `{` in JSON (whitespace, `"` or `}`). A
    /// FlatBuffers frame starts with its length, little-endian: a frame of
    /// 123 bytes starts with `{` too, but then a NUL (a length under 64 KiB
    /// has 0 in its upper bytes), which no JSON has there. Leading
    /// whitespace is skipped only to decide; the decoder gets every byte.
    pub fn detect(start: &[u8]) -> Option<Wire> {
        let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let at = start.iter().position(|b| !is_space(b))?;
        if start[at] != b'{' {
            return Some(Wire::FlatBuffers);
        }
        match start.get(at + 1) {
            None => None,
            Some(next) if is_space(next) || matches!(next, b'"' | b'}') => Some(Wire::Json),
            Some(_) => Some(Wire::FlatBuffers),
        }
    }

    /// A stable lowercase name, used as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Wire::FlatBuffers => "flatbuffers",
            Wire::Json => "json",
        }
    }
}

/// Splits a byte stream into [`Decoded`] units.
#[derive(Debug)]
pub enum Decoder {
    FlatBuffers(flatbuf::FrameDecoder),
    Json(json::JsonDecoder),
}

impl Decoder {
    /// A decoder for `wire` that refuses units over `max_frame` bytes.
    pub fn new(wire: Wire, max_frame: usize) -> Decoder {
        match wire {
            Wire::FlatBuffers => Decoder::FlatBuffers(flatbuf::FrameDecoder::new(max_frame)),
            Wire::Json => Decoder::Json(json::JsonDecoder::new(max_frame)),
        }
    }

    /// Looks at the unread bytes `buf` (everything not yet consumed) and
    /// returns how many bytes it consumed and the unit they formed, or
    /// `(consumed, None)` when more bytes are needed. The caller drains the
    /// consumed bytes before calling again. After `Fatal` it must not call again.
    pub fn decode(&mut self, buf: &[u8]) -> (usize, Option<Decoded>) {
        match self {
            Decoder::FlatBuffers(d) => d.decode(buf),
            Decoder::Json(d) => d.decode(buf),
        }
    }
}

/// Turns replies and pushes into bytes for one connection.
pub enum Encoder {
    FlatBuffers(flatbuf::FrameEncoder),
    Json(json::JsonEncoder),
}

impl Encoder {
    pub fn new(wire: Wire) -> Encoder {
        match wire {
            Wire::FlatBuffers => Encoder::FlatBuffers(flatbuf::FrameEncoder::new()),
            Wire::Json => Encoder::Json(json::JsonEncoder::new()),
        }
    }

    /// Appends the reply to request `request_id` of kind `kind`. A successful
    /// login's pending messages are part of it: FlatBuffers writes them as
    /// pushes right after the reply, JSON inside the reply's `offlinemsg`.
    pub fn reply(&mut self, request_id: u64, kind: RequestKind, reply: &Reply, out: &mut Vec<u8>) {
        match self {
            Encoder::FlatBuffers(e) => e.reply(request_id, kind, reply, out),
            Encoder::Json(e) => e.reply(kind, reply, out),
        }
    }

    /// Appends a push. Returns false when this protocol has no form for it
    /// (the seed's JSON has no presence push) and nothing was written.
    pub fn push(&mut self, push: &Push, out: &mut Vec<u8>) -> bool {
        match self {
            Encoder::FlatBuffers(e) => e.push(push, out),
            Encoder::Json(e) => e.push(push, out),
        }
    }
}

/// Feeds `stream` to `decoder` in pieces of `chunk` bytes, decoding all it can
/// after each piece, the way a session reads a socket; stops at `Fatal`.
#[cfg(test)]
pub(crate) fn decode_in_chunks(mut decoder: Decoder, stream: &[u8], chunk: usize) -> Vec<Decoded> {
    let mut buf = Vec::new();
    let mut units = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let (n, unit) = decoder.decode(&buf);
            assert!(n <= buf.len(), "consumed more than it was given");
            buf.drain(..n);
            match unit {
                Some(Decoded::Fatal(f)) => {
                    units.push(Decoded::Fatal(f));
                    return units;
                }
                Some(u) => units.push(u),
                None => break,
            }
        }
    }
    units
}

#[cfg(test)]
mod detect_tests {
    use super::*;

    #[test]
    fn the_protocol_is_told_from_the_first_bytes() {
        assert_eq!(Wire::detect(br#"{"msgid":1}"#), Some(Wire::Json));
        assert_eq!(Wire::detect(b" \r\n\t{ \"msgid\":1}"), Some(Wire::Json));
        assert_eq!(Wire::detect(b"{}"), Some(Wire::Json));
        // A FlatBuffers frame of 123 bytes, and of 123 + 256.
        assert_eq!(Wire::detect(&[123, 0, 0, 0, 8]), Some(Wire::FlatBuffers));
        assert_eq!(Wire::detect(&[123, 1, 0, 0, 8]), Some(Wire::FlatBuffers));
        // Lengths whose first byte is whitespace: 32, then 32 + 123 * 256.
        assert_eq!(Wire::detect(&[32, 0, 0, 0]), Some(Wire::FlatBuffers));
        assert_eq!(Wire::detect(&[32, 123, 0, 0]), Some(Wire::FlatBuffers));
        assert_eq!(Wire::detect(&[16, 0, 0, 0]), Some(Wire::FlatBuffers));
        // Not enough to tell yet.
        assert_eq!(Wire::detect(b""), None);
        assert_eq!(Wire::detect(b"  \n"), None);
        assert_eq!(Wire::detect(b"{"), None);
        assert_eq!(Wire::detect(b" {"), None);
    }
}
