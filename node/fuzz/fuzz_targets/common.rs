//! Shared by both targets: the first input byte picks the frame limit and
//! how the rest arrives (chunk size), the rest is the byte stream. Checks the
//! decoder contract of `chat_node::protocol::Decoder::decode`.

use chat_node::protocol::{Decoded, Decoder, Wire};

/// Runs the decoder over `data`; returns the units it produced.
fn decode(wire: Wire, max_frame: usize, stream: &[u8], chunk: usize) -> Vec<Decoded> {
    let mut d = Decoder::new(wire, max_frame);
    let mut buf = Vec::new();
    let mut units = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        for _ in 0..=buf.len() + 1 {
            let (consumed, unit) = d.decode(&buf);
            assert!(consumed <= buf.len());
            match unit {
                Some(Decoded::Fatal(f)) => {
                    assert_eq!(consumed, 0);
                    assert_eq!(d.decode(&buf), (0, Some(Decoded::Fatal(f.clone()))));
                    units.push(Decoded::Fatal(f));
                    return units;
                }
                Some(unit) => {
                    assert!(consumed > 0);
                    buf.drain(..consumed);
                    units.push(unit);
                }
                None => {
                    buf.drain(..consumed);
                    assert_eq!(d.decode(&buf), (0, None));
                    break;
                }
            }
        }
    }
    units
}

pub fn check(wire: Wire, data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max_frame = match control & 0x3 {
        0 => 64,
        1 => 1024,
        _ => 64 * 1024,
    };
    let chunk = usize::from(control >> 2) + 1;
    let whole = decode(wire, max_frame, stream, stream.len().max(1));
    let chunked = decode(wire, max_frame, stream, chunk);
    assert_eq!(whole, chunked, "units depend on chunking");
}
