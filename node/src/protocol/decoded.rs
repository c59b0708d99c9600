//! What a decoder takes off the byte stream ([`Decoded`]), and the refusal
//! both decoders build on the way; shared by `json` and `flatbuf` without
//! either reaching back into `protocol`.

use crate::command::{Failure, Request, RequestKind};

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
pub(crate) struct Refusal {
    pub(crate) kind: RequestKind,
    pub(crate) message: String,
}

pub(crate) fn refuse(kind: RequestKind, message: impl Into<String>) -> Refusal {
    Refusal {
        kind,
        message: message.into(),
    }
}
