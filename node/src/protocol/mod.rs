//! The two wire protocols a client may speak on the node's port, and the
//! choice between them: a connection whose first byte is `{` speaks the seed's
//! JSON protocol (`json`), any other speaks length-prefixed FlatBuffers
//! (`flatbuf`).
//!
//! Data flow: the session appends bytes read from the socket to a buffer and
//! calls [`Decoder::decode`] until it returns `None`, draining the bytes it
//! reports consumed; each [`Decoded`] goes to the handlers. Replies and pushes
//! go back through [`Encoder`], which appends the bytes to write to a buffer.

pub mod flatbuf;
pub mod json;

use crate::command::{Failure, Push, Reply, Request, RequestKind};

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    FlatBuffers,
    Json,
}

impl Wire {
    /// Decides the protocol from the first byte a client sends.
    pub fn detect(first_byte: u8) -> Wire {
        if first_byte == b'{' {
            Wire::Json
        } else {
            Wire::FlatBuffers
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

/// One unit taken off the byte stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A well-formed request.
    Request(Request),
    /// A complete unit that is not a valid request (invalid FlatBuffers,
    /// broken JSON, wrong field types, unknown msgid, ...): the session answers
    /// with the failure and reads on.
    Invalid {
        request_id: u64,
        kind: RequestKind,
        failure: Failure,
    },
    /// The stream can not be followed any more (a length over the limit, an
    /// endless JSON object): the session answers with the failure and closes.
    Fatal(Failure),
}

/// Why a complete unit is not a usable request: the kind it was meant to
/// be (so the reply has the right shape) and what is wrong with it.
struct Refusal {
    kind: RequestKind,
    message: String,
}

fn refuse(kind: RequestKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
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
