//! Errors a client call can end with: the node's `ErrorReply` as a typed
//! [`ClientError::Server`], and the local failures (I/O, protocol violations,
//! a closed connection, a timeout).

use std::fmt;

use chat_schema::fb;

/// The protocol's error codes (`ErrorCode` in `chat.fbs`). Codes this client
/// does not know are kept as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidCredentials,
    AlreadyOnline,
    NameTaken,
    NotLoggedIn,
    Forbidden,
    UnknownUser,
    UnknownGroup,
    NotAMember,
    AlreadyMember,
    AlreadyFriends,
    SelfFriend,
    TextTooLong,
    BadRequest,
    FrameTooLarge,
    AlreadyLoggedIn,
    InvalidName,
    Internal,
    Overloaded,
    /// A code outside the list above (0 = `None`, or a newer schema's code).
    Other(u16),
}

impl ErrorCode {
    /// Every known code, in protocol order.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::InvalidCredentials,
        ErrorCode::AlreadyOnline,
        ErrorCode::NameTaken,
        ErrorCode::NotLoggedIn,
        ErrorCode::Forbidden,
        ErrorCode::UnknownUser,
        ErrorCode::UnknownGroup,
        ErrorCode::NotAMember,
        ErrorCode::AlreadyMember,
        ErrorCode::AlreadyFriends,
        ErrorCode::SelfFriend,
        ErrorCode::TextTooLong,
        ErrorCode::BadRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::InvalidName,
        ErrorCode::Internal,
        ErrorCode::Overloaded,
    ];

    /// The code's number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::InvalidCredentials => fb::ErrorCode::InvalidCredentials.0,
            ErrorCode::AlreadyOnline => fb::ErrorCode::AlreadyOnline.0,
            ErrorCode::NameTaken => fb::ErrorCode::NameTaken.0,
            ErrorCode::NotLoggedIn => fb::ErrorCode::NotLoggedIn.0,
            ErrorCode::Forbidden => fb::ErrorCode::Forbidden.0,
            ErrorCode::UnknownUser => fb::ErrorCode::UnknownUser.0,
            ErrorCode::UnknownGroup => fb::ErrorCode::UnknownGroup.0,
            ErrorCode::NotAMember => fb::ErrorCode::NotAMember.0,
            ErrorCode::AlreadyMember => fb::ErrorCode::AlreadyMember.0,
            ErrorCode::AlreadyFriends => fb::ErrorCode::AlreadyFriends.0,
            ErrorCode::SelfFriend => fb::ErrorCode::SelfFriend.0,
            ErrorCode::TextTooLong => fb::ErrorCode::TextTooLong.0,
            ErrorCode::BadRequest => fb::ErrorCode::BadRequest.0,
            ErrorCode::FrameTooLarge => fb::ErrorCode::FrameTooLarge.0,
            ErrorCode::AlreadyLoggedIn => fb::ErrorCode::AlreadyLoggedIn.0,
            ErrorCode::InvalidName => fb::ErrorCode::InvalidName.0,
            ErrorCode::Internal => fb::ErrorCode::Internal.0,
            ErrorCode::Overloaded => fb::ErrorCode::Overloaded.0,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a number on the wire.
    pub fn from_u16(n: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_u16() == n)
            .unwrap_or(ErrorCode::Other(n))
    }

    /// The schema's name of the code (`"Forbidden"`), or `"Unknown"`.
    pub fn name(self) -> &'static str {
        fb::ErrorCode(self.as_u16())
            .variant_name()
            .unwrap_or("Unknown")
    }
}

impl From<fb::ErrorCode> for ErrorCode {
    fn from(c: fb::ErrorCode) -> Self {
        ErrorCode::from_u16(c.0)
    }
}

impl From<ErrorCode> for fb::ErrorCode {
    fn from(c: ErrorCode) -> Self {
        fb::ErrorCode(c.as_u16())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c.as_u16() as usize, i + 1);
            assert_eq!(ErrorCode::from_u16(c.as_u16()), c);
            assert_eq!(fb::ErrorCode::from(c).variant_name(), Some(c.name()));
        }
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Other(0));
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Other(999));
        assert_eq!(ErrorCode::Other(999).name(), "Unknown");
        assert_eq!(ErrorCode::Forbidden.to_string(), "Forbidden (5)");
    }
}
