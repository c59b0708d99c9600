//! Errors a client call can end with: the node's `ErrorReply` as a typed
//! [`ClientError::Server`], and the local failures (I/O, protocol violations,
//! a closed connection, a timeout).

pub use chat_schema::ErrorCode;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with `ErrorReply`.
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// Reading from or writing to the connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The node sent something that breaks the protocol (an oversized or
    /// unverifiable frame, a reply of the wrong type, a missing field).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection is closed (by the node, or by [`crate::Client::close`]).
    #[error("connection closed")]
    Closed,
    /// No answer within the configured time.
    #[error("timed out")]
    Timeout,
    /// [`crate::Client::request_with_id`] was given 0 or an id that is still
    /// waiting for its reply.
    #[error("request id {0} is 0 or already in flight")]
    RequestIdInUse(u64),
}

impl ClientError {
    /// The server's error code, when this is a [`ClientError::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The result of a client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
