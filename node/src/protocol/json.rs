//! STUB: being written (JSON codec).
use super::Decoded;
use crate::command::{Push, Reply};
#[derive(Debug)]
pub struct JsonDecoder;
impl JsonDecoder {
    pub fn new(_max: usize) -> Self { JsonDecoder }
    pub fn decode(&mut self, _buf: &[u8]) -> (usize, Option<Decoded>) { todo!() }
}
pub struct JsonEncoder;
impl JsonEncoder {
    pub fn new() -> Self { JsonEncoder }
    pub fn reply(&mut self, _k: crate::command::RequestKind, _r: &Reply, _out: &mut Vec<u8>) { todo!() }
    pub fn push(&mut self, _p: &Push, _out: &mut Vec<u8>) -> bool { todo!() }
}
