//! STUB: being written (FlatBuffers codec).
use super::Decoded;
use crate::command::{Push, Reply};
#[derive(Debug)]
pub struct FrameDecoder;
impl FrameDecoder {
    pub fn new(_max: usize) -> Self { FrameDecoder }
    pub fn decode(&mut self, _buf: &[u8]) -> (usize, Option<Decoded>) { todo!() }
}
pub struct FrameEncoder;
impl FrameEncoder {
    pub fn new() -> Self { FrameEncoder }
    pub fn reply(&mut self, _id: u64, _r: &Reply, _out: &mut Vec<u8>) { todo!() }
    pub fn push(&mut self, _p: &Push, _out: &mut Vec<u8>) -> bool { todo!() }
}
