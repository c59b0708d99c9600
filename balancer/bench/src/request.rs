//! The bytes this tool sends to an echo upstream, through a proxy or not.
//!
//! Every request starts with the 4 bytes `tcpb` (or is bulk filler `xxxx`),
//! so that an upstream can tell them apart from a chat frame (a 4-byte
//! little-endian length of at most 64 KiB): the echo upstream treats a
//! connection that starts with a chat frame as chat-balancer's load probe
//! (see [`crate::echo`]).

/// First 4 bytes of every request: no chat frame starts like this (as a
/// little-endian length it is far above the 64 KiB frame limit).
pub const MAGIC: &[u8; 4] = b"tcpb";
/// Size of every small request and of its echo.
pub const REQ_LEN: usize = 16;
/// Bulk write size, and the echo upstream's read buffer.
pub const CHUNK: usize = 64 * 1024;
