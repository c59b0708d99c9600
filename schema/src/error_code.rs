//! Why a request failed, as a Rust enum over the schema's `ErrorCode`: the
//! node answers with these and clients match on them. The numbers are the
//! protocol's (`chat.fbs`); 1 and 2 are also the seed's `errno` values.

use std::fmt;

use crate::fb;

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
    /// The user sends faster than `--send-rate` allows; retry later.
    RateLimited,
    /// The recipient has `--max-pending-per-user` undelivered messages.
    MailboxFull,
    /// A per-user or per-group limit (friends, groups, members) is reached.
    LimitReached,
    /// Removing a friend who is not one.
    NotFriends,
    /// Something only the group's creator may do (removing a member).
    NotCreator,
    /// A code outside the list above (0 = `None`, or a newer schema's code).
    Other(u16),
}

impl ErrorCode {
    /// Every known code, in protocol order.
    pub const ALL: [ErrorCode; 23] = [
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
        ErrorCode::RateLimited,
        ErrorCode::MailboxFull,
        ErrorCode::LimitReached,
        ErrorCode::NotFriends,
        ErrorCode::NotCreator,
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
            ErrorCode::RateLimited => fb::ErrorCode::RateLimited.0,
            ErrorCode::MailboxFull => fb::ErrorCode::MailboxFull.0,
            ErrorCode::LimitReached => fb::ErrorCode::LimitReached.0,
            ErrorCode::NotFriends => fb::ErrorCode::NotFriends.0,
            ErrorCode::NotCreator => fb::ErrorCode::NotCreator.0,
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

    /// A stable snake_case name (`"not_a_member"`), used as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::AlreadyOnline => "already_online",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::AlreadyMember => "already_member",
            ErrorCode::AlreadyFriends => "already_friends",
            ErrorCode::SelfFriend => "self_friend",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::AlreadyLoggedIn => "already_logged_in",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::Internal => "internal",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MailboxFull => "mailbox_full",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::NotFriends => "not_friends",
            ErrorCode::NotCreator => "not_creator",
            ErrorCode::Other(_) => "other",
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for (i, c) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(c.as_u16() as usize, i + 1);
            assert!(
                c.label()
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_')
            );
            assert_eq!(ErrorCode::from_u16(c.as_u16()), c);
            assert_eq!(fb::ErrorCode::from(c).variant_name(), Some(c.name()));
        }
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Other(0));
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Other(999));
        assert_eq!(ErrorCode::Other(999).name(), "Unknown");
        assert_eq!(ErrorCode::Forbidden.to_string(), "Forbidden (5)");
    }
}
