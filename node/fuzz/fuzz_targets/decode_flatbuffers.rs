#![no_main]

#[path = "common.rs"]
mod common;

use chat_node::protocol::Wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::check(Wire::FlatBuffers, data));
