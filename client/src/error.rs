//! Errors a client call can end with: the node's `ErrorReply` as a typed
//! [`ClientError::Server`], and the local failures (I/O, protocol violations,
//! a closed connection, a timeout).

use std::time::Duration;

pub use chat_schema::ErrorCode;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with `ErrorReply`. `retry_after` is the reply's
    /// `retry_after_ms` (`None` when it is 0): with
    /// [`ErrorCode::RateLimited`], how long to wait before the request would
    /// be accepted. See [`ClientError::retry_after`].
    #[error("server error {code}: {message}")]
    Server {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
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

    /// When the node says the request would be accepted if sent again: the
    /// `retry_after_ms` of its `ErrorReply` (set with
    /// [`ErrorCode::RateLimited`]). `None` for other errors and for error
    /// replies without a hint.
    ///
    /// ```no_run
    /// # async fn demo(client: &chat_client::Client) -> chat_client::Result<()> {
    /// let sent = loop {
    ///     match client.send_direct(2, "hi").await {
    ///         Err(e) if e.retry_after().is_some() => {
    ///             tokio::time::sleep(e.retry_after().unwrap_or_default()).await;
    ///         }
    ///         other => break other?,
    ///     }
    /// };
    /// println!("sent as message {}", sent.message_id);
    /// # Ok(()) }
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The result of a client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
