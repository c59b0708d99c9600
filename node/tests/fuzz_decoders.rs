//! A deterministic mutation fuzzer for both wire decoders.
//!
//! Each case builds a byte stream from valid FlatBuffers frames or JSON
//! objects, mutates it (bit flips, random bytes, truncation, deletion,
//! splicing, duplicated ranges, random length prefixes, stray structural JSON
//! bytes), then feeds it to a decoder in random chunks, the way a socket
//! delivers it. Checked on every call:
//!
//! - no panic;
//! - `consumed` never exceeds the bytes handed over;
//! - every unit other than `Fatal` consumes at least one byte (progress), and
//!   `None` means the decoder has looked at everything: asked again with the
//!   same bytes it returns `(0, None)`;
//! - `Fatal` is final: asked again, it returns `Fatal` and consumes nothing;
//! - the units do not depend on how the stream was chunked.
//!
//! The seed is fixed so a failure reproduces; `FUZZ_CASES` and `FUZZ_SEED`
//! override the defaults.

use chat_node::command::{Push, Reply, RequestKind};
use chat_node::protocol::flatbuf::FrameEncoder;
use chat_node::protocol::{Decoded, Decoder, Wire};
use chat_node::store::{Contact, StoredMessage};
use chat_schema::request::{Request as WireRequest, encode_request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flatbuffer_seeds() -> Vec<Vec<u8>> {
    let long = "x".repeat(600);
    let requests = [
        WireRequest::Register {
            name: "alice",
            password: "123456",
        },
        WireRequest::Login {
            user_id: 1,
            password: "123456",
        },
        WireRequest::Logout { user_id: 0 },
        WireRequest::Logout { user_id: 7 },
        WireRequest::AddFriend {
            user_id: 1,
            friend_id: 2,
        },
        WireRequest::CreateGroup {
            user_id: 0,
            name: "rustaceans",
            description: "crabs",
        },
        WireRequest::JoinGroup {
            user_id: 1,
            group_id: 9,
        },
        WireRequest::DirectMessage {
            user_id: 0,
            to_id: 2,
            text: "hello \"bob\" 你好 🦀",
        },
        WireRequest::DirectMessage {
            user_id: 1,
            to_id: u64::MAX,
            text: &long,
        },
        WireRequest::GroupMessage {
            user_id: 0,
            group_id: 9,
            text: "hi all",
        },
        WireRequest::DeliveryAck {
            message_id: 12345,
            quiet: true,
        },
        WireRequest::Ping,
    ];
    let mut e = FrameEncoder::new();
    let mut seeds: Vec<Vec<u8>> = requests
        .iter()
        .enumerate()
        .map(|(i, request)| encode_request(i as u64 + 1, request))
        .collect();
    // Replies and pushes are valid envelopes that are not requests.
    let mut out = Vec::new();
    e.reply(
        3,
        RequestKind::AddFriend,
        &Reply::FriendAdded(Contact {
            id: 2,
            name: "bob".into(),
            online: true,
        }),
        &mut out,
    );
    seeds.push(out);
    let mut out = Vec::new();
    let message = StoredMessage {
        id: 5,
        sender_id: 1,
        sender_name: "alice".into(),
        recipient_id: 2,
        group_id: 0,
        time_ms: 1_700_000_000_000,
        text: "pushed".into(),
    };
    e.push(&Push::Message(message.into()), &mut out);
    seeds.push(out);
    seeds
}

fn json_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"msgid":1,"id":3,"pwd":"123456"}"#,
        r#"{"msgid":1,"id":3,"password":"123456"}"#,
        r#"{"msgid":4,"name":"alice","pwd":"123456"}"#,
        r#"{"msgid":4,"id":2,"pwd":"123456"}"#,
        r#"{"msgid":6,"id":1,"from":"cmf","toid":2,"msg":" xxxxxxoooooo!"}"#,
        r#"{"msgid":6,"id":1,"name":"a","to":2,"msg":"q\"uote\\ 你好 \u00e9","time":"2024-01-01 10:00:00"}"#,
        r#"{"msgid":7,"id":2,"friendid":1}"#,
        r#"{"msgid":8,"id":1,"groupname":"test","groupdesc":"test"}"#,
        r#"{"msgid":9,"id":3,"groupid":1}"#,
        r#"{"msgid":10,"id":1,"name":"mmm","groupid":1,"msg":"hello every one"}"#,
        r#"{"msgid":3,"id":1}"#,
        r#"{"msgid":18}"#,
        r#"{"msgid":1,"id":"3","pwd":"x"}"#,
        r#"{"msgid":42,"nested":{"a":[1,{"b":"}"}],"c":null}}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

const JSON_SEPARATORS: [&[u8]; 6] = [b"\0", b"\n", b"", b"\r\n", b" \t", b"\0\0"];
const JSON_SPECIALS: [u8; 8] = [b'{', b'}', b'"', b'\\', 0, b'\n', b'[', b':'];

/// Concatenates a few seeds into one stream.
fn stream(rng: &mut StdRng, wire: Wire, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..rng.random_range(1..=4) {
        s.extend_from_slice(&seeds[rng.random_range(0..seeds.len())]);
        if wire == Wire::Json {
            s.extend_from_slice(JSON_SEPARATORS[rng.random_range(0..JSON_SEPARATORS.len())]);
        }
    }
    s
}

fn mutate(rng: &mut StdRng, wire: Wire, s: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..rng.random_range(0..=4) {
        let len = s.len();
        if len == 0 {
            s.extend_from_slice(&seeds[rng.random_range(0..seeds.len())]);
            continue;
        }
        let at = rng.random_range(0..len);
        match rng.random_range(0..9) {
            // flip one bit
            0 => s[at] ^= 1 << rng.random_range(0..8),
            // set one byte
            1 => s[at] = rng.random(),
            // truncate
            2 => s.truncate(at),
            // delete a range
            3 => {
                let end = rng.random_range(at..=len.min(at + 16));
                s.drain(at..end);
            }
            // insert random bytes
            4 => {
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                s.splice(at..at, bytes);
            }
            // splice in part of another seed
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..other.len());
                let to = rng.random_range(from..=other.len());
                s.splice(at..at, other[from..to].iter().copied());
            }
            // duplicate a range
            6 => {
                let end = rng.random_range(at..=len.min(at + 32));
                let copy = s[at..end].to_vec();
                s.splice(at..at, copy);
            }
            // a random length prefix / a structural JSON byte
            7 => match wire {
                Wire::FlatBuffers => {
                    let value: u32 = match rng.random_range(0..4) {
                        0 => rng.random(),
                        1 => rng.random_range(0..64),
                        2 => rng.random_range(0..70_000),
                        _ => 0,
                    };
                    let at = at.min(len.saturating_sub(4));
                    let end = (at + 4).min(len);
                    s[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                }
                Wire::Json => s.insert(at, JSON_SPECIALS[rng.random_range(0..JSON_SPECIALS.len())]),
            },
            // overwrite a little-endian word (FlatBuffers offsets)
            _ => {
                let value: u32 = rng.random_range(0..256);
                let end = (at + 4).min(len);
                s[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            }
        }
    }
}

/// Feeds `stream` to a fresh decoder, `chunks` giving how many bytes arrive
/// each time, and returns the units in order. Checks the contract on every
/// call.
fn run(
    wire: Wire,
    max_frame: usize,
    stream: &[u8],
    chunks: &mut dyn FnMut() -> usize,
) -> Vec<Decoded> {
    let mut d = Decoder::new(wire, max_frame);
    let mut buf: Vec<u8> = Vec::new();
    let mut units = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = chunks().clamp(1, stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        // Every unit but Fatal consumes a byte, so this bounds the loop.
        for _ in 0..=buf.len() + 1 {
            let (consumed, unit) = d.decode(&buf);
            assert!(
                consumed <= buf.len(),
                "consumed {consumed} of {} bytes",
                buf.len()
            );
            match unit {
                Some(Decoded::Fatal(f)) => {
                    assert_eq!(consumed, 0, "Fatal consumes nothing");
                    let (again, unit) = d.decode(&buf);
                    assert_eq!(again, 0);
                    assert_eq!(unit, Some(Decoded::Fatal(f.clone())), "Fatal is final");
                    units.push(Decoded::Fatal(f));
                    return units;
                }
                Some(unit) => {
                    assert!(consumed > 0, "no progress with {unit:?}");
                    buf.drain(..consumed);
                    units.push(unit);
                }
                None => {
                    buf.drain(..consumed);
                    assert_eq!(
                        d.decode(&buf),
                        (0, None),
                        "None means every byte has been looked at"
                    );
                    break;
                }
            }
        }
    }
    units
}

fn fuzz(wire: Wire, seeds: &[Vec<u8>], cases: u64, seed: u64) -> [u64; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    // requests, invalid units, fatal streams
    let mut tally = [0u64; 3];
    for case in 0..cases {
        let mut s = stream(&mut rng, wire, seeds);
        mutate(&mut rng, wire, &mut s, seeds);
        let max_frame = match rng.random_range(0..8) {
            0 => rng.random_range(1..128),
            1 => rng.random_range(128..1024),
            _ => 64 * 1024,
        };
        let whole = run(wire, max_frame, &s, &mut || usize::MAX);
        let mut chunk_rng = StdRng::seed_from_u64(seed ^ case);
        let small = chunk_rng.random_bool(0.5);
        let chunked = run(wire, max_frame, &s, &mut || {
            if small {
                chunk_rng.random_range(1..=3)
            } else {
                chunk_rng.random_range(1..=64)
            }
        });
        assert_eq!(
            whole,
            chunked,
            "case {case}: units depend on chunking; stream {:?}",
            String::from_utf8_lossy(&s)
        );
        for unit in &whole {
            match unit {
                Decoded::Request(_) => tally[0] += 1,
                Decoded::Invalid { .. } => tally[1] += 1,
                Decoded::Fatal(_) => tally[2] += 1,
            }
        }
    }
    tally
}

#[test]
fn flatbuffers_decoder_survives_mutated_frames() {
    let cases = env_or("FUZZ_CASES", 100_000);
    let tally = fuzz(
        Wire::FlatBuffers,
        &flatbuffer_seeds(),
        cases,
        env_or("FUZZ_SEED", 0x5eed_f1a7),
    );
    eprintln!("flatbuffers: {tally:?} (requests, invalid, fatal)");
    // The mutations must leave plenty of each outcome to be worth running.
    assert!(tally.iter().all(|&n| n > cases / 50), "{tally:?}");
}

#[test]
fn json_decoder_survives_mutated_objects() {
    let cases = env_or("FUZZ_CASES", 100_000);
    let tally = fuzz(
        Wire::Json,
        &json_seeds(),
        cases,
        env_or("FUZZ_SEED", 0x5eed_0150),
    );
    eprintln!("json: {tally:?} (requests, invalid, fatal)");
    assert!(tally[0] > cases / 10 && tally[1] > cases / 10, "{tally:?}");
    assert!(tally[2] > 0, "{tally:?}");
}
