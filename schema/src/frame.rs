//! Framing of the FlatBuffers protocol: a frame is a 4-byte little-endian
//! length followed by that many bytes holding one `Envelope`.
//!
//! Reading is split in two steps so that no allocation depends on untrusted
//! input: [`frame_len`] looks at the 4-byte prefix and refuses a length over
//! the limit before anything is buffered, and [`parse_frame`] runs the
//! FlatBuffers verifier with limits tightened for network input.

use crate::fb;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Default largest frame a peer may send (64 KiB), prefix excluded.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Why bytes on the wire are not a usable frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("invalid FlatBuffers envelope: {0}")]
    Invalid(String),
}

/// Looks at the start of `buf`: `Ok(None)` while fewer than 4 bytes are
/// there, otherwise the length of the frame body that follows the prefix.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(Some(len))
}

/// Verifier limits for buffers that come from the network: a few levels of
/// nesting, no more tables than the frame could hold (a table takes at least
/// 8 bytes), nothing larger than the frame limit.
pub fn verifier_options(max_frame: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 16,
        max_tables: (max_frame / 8).max(64),
        max_apparent_size: max_frame,
        ignore_missing_null_terminator: false,
    }
}

/// Verifies one whole frame (prefix included) and returns its envelope.
///
/// A size-prefixed FlatBuffer (`finish_size_prefixed`) is aligned with its
/// prefix, so it is verified as such. A client that finished a plain buffer
/// and prepended its length by hand has the opposite alignment; such a frame
/// is verified again without its prefix, so both are accepted (the verifier's
/// alignment rule is about well-formedness: reads never assume alignment).
pub fn parse_frame(frame: &[u8], max_frame: usize) -> Result<fb::Envelope<'_>, FrameError> {
    let mut opts = verifier_options(max_frame);
    opts.max_apparent_size = max_frame.saturating_add(PREFIX_LEN);
    let invalid = |e: flatbuffers::InvalidFlatbuffer| {
        // The verifier's message carries a multi-line trace; the first line says it.
        let msg = e.to_string();
        FrameError::Invalid(msg.lines().next().unwrap_or(&msg).trim_end().to_owned())
    };
    match flatbuffers::size_prefixed_root_with_opts::<fb::Envelope>(&opts, frame) {
        Ok(envelope) => Ok(envelope),
        Err(flatbuffers::InvalidFlatbuffer::Unaligned { .. }) if frame.len() > PREFIX_LEN => {
            flatbuffers::root_with_opts::<fb::Envelope>(
                &verifier_options(max_frame),
                &frame[PREFIX_LEN..],
            )
            .map_err(invalid)
        }
        Err(e) => Err(invalid(e)),
    }
}

/// Finishes `builder` with `envelope` as a size-prefixed frame and returns the
/// bytes to write.
pub fn finish<'a>(
    builder: &'a mut flatbuffers::FlatBufferBuilder<'_>,
    envelope: flatbuffers::WIPOffset<fb::Envelope<'_>>,
) -> &'a [u8] {
    builder.finish_size_prefixed(envelope, None);
    builder.finished_data()
}

/// Builds one envelope frame: `build` adds the body to the builder and returns
/// its union type and offset.
pub fn encode(
    request_id: u64,
    build: impl FnOnce(
        &mut flatbuffers::FlatBufferBuilder<'_>,
    ) -> (
        fb::Body,
        flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
    ),
) -> Vec<u8> {
    let mut b = flatbuffers::FlatBufferBuilder::with_capacity(128);
    let (body_type, body) = build(&mut b);
    let env = fb::Envelope::create(
        &mut b,
        &fb::EnvelopeArgs {
            request_id,
            body_type,
            body: Some(body),
        },
    );
    finish(&mut b, env).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(request_id: u64) -> Vec<u8> {
        encode(request_id, |b| {
            let p = fb::PingRequest::create(b, &fb::PingRequestArgs {});
            (fb::Body::PingRequest, p.as_union_value())
        })
    }

    #[test]
    fn round_trip() {
        let frame = ping(7);
        let len = frame_len(&frame, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(len + PREFIX_LEN, frame.len());
        let env = parse_frame(&frame, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(env.request_id(), 7);
        assert_eq!(env.body_type(), fb::Body::PingRequest);
    }

    #[test]
    fn eight_byte_fields_verify_in_both_alignments() {
        // Size-prefixed, as `encode` builds it.
        let frame = ping(u64::MAX - 1);
        assert_eq!(
            parse_frame(&frame, DEFAULT_MAX_FRAME).unwrap().request_id(),
            u64::MAX - 1
        );
        // A plain buffer with its length prepended by hand.
        let mut b = flatbuffers::FlatBufferBuilder::new();
        let p = fb::PingRequest::create(&mut b, &fb::PingRequestArgs {});
        let env = fb::Envelope::create(
            &mut b,
            &fb::EnvelopeArgs {
                request_id: 9,
                body_type: fb::Body::PingRequest,
                body: Some(p.as_union_value()),
            },
        );
        b.finish(env, None);
        let body = b.finished_data();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body);
        assert_eq!(
            parse_frame(&frame, DEFAULT_MAX_FRAME).unwrap().request_id(),
            9
        );
    }

    #[test]
    fn short_prefix_waits() {
        assert_eq!(frame_len(&[1, 0], 10).unwrap(), None);
    }

    #[test]
    fn oversized_length_refused_before_body() {
        let err = frame_len(&(1_000_000u32).to_le_bytes(), DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 1_000_000,
                max: DEFAULT_MAX_FRAME
            }
        );
    }

    #[test]
    fn garbage_fails_verification() {
        assert!(matches!(
            parse_frame(&[0xff; 32], DEFAULT_MAX_FRAME),
            Err(FrameError::Invalid(_))
        ));
    }
}
