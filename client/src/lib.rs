//! An async (tokio) client for the chat node's FlatBuffers protocol, plus a
//! small client for the seed's JSON protocol.
//!
//! ```no_run
//! # async fn demo() -> chat_client::Result<()> {
//! use std::time::Duration;
//! use chat_client::{Client, Event};
//!
//! let alice = Client::connect("127.0.0.1:6000").await?;
//! let id = alice.register("alice", "secret").await?;
//! let login = alice.login(id, "secret").await?;
//! println!("{} has {} offline messages", login.name, login.pending.len());
//! alice.send_direct(id, "a note to myself").await?;
//! if let Event::Message(m) = alice.next_event_timeout(Duration::from_secs(5)).await? {
//!     alice.ack(m.id).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! History and read state: [`Client::history`] pages back through a
//! [`Conversation`] (a direct one with a user, or a group's), newest first;
//! [`Client::mark_read`] moves the user's read position (the other user of a
//! direct conversation gets [`Event::ReadReceipt`]); [`Client::readers`]
//! counts a group's members who read up to a message; a [`Login`] lists the
//! conversations with [`Unread`] messages.
//!
//! For tests that need to break the rules: [`Client::request`] sends any
//! [`Request`] with any field values (say, a message whose `user_id` is
//! someone else) and returns the raw [`Reply`]; [`Client::request_with_id`]
//! also picks the request id; [`Client::request_frame`] sends a hand-built
//! frame and waits for its reply; [`Client::send_request`] and
//! [`Client::send_raw`] write without waiting (replies then arrive as
//! [`Event::Unsolicited`]). [`Client::from_io`] runs over any byte stream.
//!
//! Modules by concept:
//! - [`connection`]: [`Client`], one connection with many requests in flight;
//! - [`request`]: [`Request`], every request with every field, and its encoding
//!   (re-exported from `chat-schema`, where the node's tests use it too);
//! - [`model`]: the owned values the node sends back ([`Reply`], [`Event`], ...);
//! - [`error`]: [`ClientError`] and the protocol's [`ErrorCode`];
//! - [`dedup`]: dropping re-sent messages by id;
//! - [`reconnect`]: [`ReconnectingClient`], a session that reconnects with
//!   backoff when its connection drops, logs in again and resumes without
//!   handing a message out twice;
//! - [`seed_json`]: the seed's NUL-delimited JSON protocol;
//! - [`duration`]: `10s`-style durations for the command-line tools.

pub mod connection;
pub mod dedup;
pub mod duration;
pub mod error;
pub mod model;
pub mod reconnect;
pub mod seed_json;

pub use chat_schema::fb;
/// The requests as values and their encoding into frames, shared with the
/// node's tests (they live in `chat-schema`).
pub use chat_schema::request;
pub use connection::{Client, ClientConfig, DEFAULT_MAX_REPLY_FRAME, PendingReply};
pub use dedup::Dedup;
pub use error::{ClientError, ErrorCode, Result};
pub use model::{
    Conversation, Event, Friend, Group, GroupId, GroupMember, History, LoadReport, Login, Message,
    MessageId, Reply, Role, Sent, Unread, User, UserId,
};
pub use reconnect::{Backoff, Endpoint, ReconnectingClient, SessionEvent};
pub use request::{Request, encode_request, needs_leading_ping};

#[cfg(test)]
mod tests;
