//! One virtual user's connection, in either protocol, behind one interface:
//! the scenarios call [`Session`] and never see FlatBuffers or JSON.
//!
//! Requests that set a user up (`register`, `login`, ...) are awaited; chat
//! sends are queued at once and return an [`Ack`] to await separately, so
//! that the schedule never waits for the server (open model). Messages the
//! node pushes come out of [`Session::next_received`]. History pages and
//! read marks ([`Session::history`], [`Session::mark_read`]) go as msgids
//! 40 and 42 over JSON: our node answers them, the seed's server has
//! neither (they fail as `unsupported` there). Over JSON to our node, users
//! acknowledge what they receive with msgid 50, from right after login, so
//! that no request of theirs is taken for proof of reading a push it
//! crossed (see docs/protocol.md).

mod fb;
mod json;

use std::time::Duration;

use chat_client::{ClientError, Conversation, GroupId, MessageId, UserId};
use tokio::net::TcpStream;

use crate::config::{JsonAcks, Protocol};
use crate::target::io_kind;

pub use json::server_replies_to_chat;

/// Why a request failed, as a short bounded kind for error counts: the
/// node's error code name (`AlreadyOnline`), `timeout`, `closed`,
/// `protocol`, or an I/O kind (`reset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure(match e {
            ClientError::Server { code, .. } => code.name().to_string(),
            ClientError::Io(e) => io_kind(&e),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Closed => "closed".into(),
            ClientError::Timeout => "timeout".into(),
            ClientError::RequestIdInUse(_) => "request_id".into(),
        })
    }
}

/// What a request the seed's JSON server does not have fails with.
fn unsupported() -> Failure {
    Failure("unsupported".into())
}

/// A message the node pushed (or listed as pending at login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub text: String,
    /// The server's id; absent from the seed's JSON pushes.
    pub message_id: Option<MessageId>,
}

/// A page of history, as much as a browsing user needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Messages on the page.
    pub messages: u64,
    /// The id to ask the next (older) page before, when there is one.
    pub next_before: Option<MessageId>,
}

/// A connection speaking one protocol.
pub enum Session {
    Fb(fb::FbSession),
    Json(json::JsonSession),
}

/// The node's answer to a chat send, still to come.
pub enum Ack {
    Fb(chat_client::PendingReply),
    Json(json::PendingJson),
    /// The server does not acknowledge chat messages (the seed).
    Never,
}

impl Ack {
    /// Waits for the acknowledgement: `Ok(true)` when acknowledged,
    /// `Ok(false)` when the server never acknowledges.
    pub async fn wait(self) -> Result<bool, Failure> {
        match self {
            Ack::Fb(p) => fb::wait_sent(p).await.map(|()| true),
            Ack::Json(p) => p.wait().await.map(|_| true),
            Ack::Never => Ok(false),
        }
    }
}

impl Session {
    /// Starts speaking `protocol` on a connected stream. `chat_replies`:
    /// whether a JSON server answers chat requests (ours does, the seed
    /// does not; see [`server_replies_to_chat`]); `json_acks`: whether a
    /// JSON user sends msgid 50 to such a server.
    pub fn start(
        stream: TcpStream,
        protocol: Protocol,
        timeout: Duration,
        chat_replies: bool,
        json_acks: JsonAcks,
    ) -> Result<Session, Failure> {
        Ok(match protocol {
            Protocol::Fb => Session::Fb(fb::FbSession::start(stream, timeout)?),
            Protocol::Json => Session::Json(json::JsonSession::start(
                stream,
                timeout,
                chat_replies,
                chat_replies && json_acks == JsonAcks::Explicit,
            )),
        })
    }

    pub async fn register(&self, name: &str, password: &str) -> Result<UserId, Failure> {
        match self {
            Session::Fb(s) => s.register(name, password).await,
            Session::Json(s) => s.register(name, password).await,
        }
    }

    /// Logs in; returns the pending (offline) messages.
    pub async fn login(&self, id: UserId, password: &str) -> Result<Vec<Received>, Failure> {
        match self {
            Session::Fb(s) => s.login(id, password).await,
            Session::Json(s) => s.login(id, password).await,
        }
    }

    pub async fn logout(&self) -> Result<(), Failure> {
        match self {
            Session::Fb(s) => s.logout().await,
            Session::Json(s) => s.logout().await,
        }
    }

    pub async fn add_friend(&self, friend: UserId) -> Result<(), Failure> {
        match self {
            Session::Fb(s) => s.add_friend(friend).await,
            Session::Json(s) => s.add_friend(friend).await,
        }
    }

    pub async fn create_group(&self, name: &str) -> Result<GroupId, Failure> {
        match self {
            Session::Fb(s) => s.create_group(name).await,
            Session::Json(s) => s.create_group(name).await,
        }
    }

    pub async fn join_group(&self, group: GroupId) -> Result<(), Failure> {
        match self {
            Session::Fb(s) => s.join_group(group).await,
            Session::Json(s) => s.join_group(group).await,
        }
    }

    /// Queues a direct message; the ack comes later.
    pub fn send_direct(&self, to: UserId, text: &str) -> Result<Ack, Failure> {
        match self {
            Session::Fb(s) => s.send_direct(to, text).map(Ack::Fb),
            Session::Json(s) => s.send_direct(to, text),
        }
    }

    /// Queues a group message; the ack comes later.
    pub fn send_group(&self, group: GroupId, text: &str) -> Result<Ack, Failure> {
        match self {
            Session::Fb(s) => s.send_group(group, text).map(Ack::Fb),
            Session::Json(s) => s.send_group(group, text),
        }
    }

    /// One page of `conversation`'s history, below `before` (`None`: the
    /// newest), the node's default page size.
    pub async fn history(
        &self,
        conversation: Conversation,
        before: Option<MessageId>,
    ) -> Result<Page, Failure> {
        match self {
            Session::Fb(s) => s.history(conversation, before).await,
            Session::Json(s) => s.history(conversation, before).await,
        }
    }

    /// Marks `conversation` read up to `up_to`.
    pub async fn mark_read(
        &self,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<(), Failure> {
        match self {
            Session::Fb(s) => s.mark_read(conversation, up_to).await,
            Session::Json(s) => s.mark_read(conversation, up_to).await,
        }
    }

    /// The next message pushed; `None` once the connection is closed.
    pub async fn next_received(&self) -> Option<Received> {
        match self {
            Session::Fb(s) => s.next_received().await,
            Session::Json(s) => s.next_received().await,
        }
    }

    /// A message pushed, if one is already waiting.
    pub fn try_received(&self) -> Option<Received> {
        match self {
            Session::Fb(s) => s.try_received(),
            Session::Json(s) => s.try_received(),
        }
    }

    /// Tells the node everything up to `message_id` arrived (FlatBuffers,
    /// or our JSON msgid 50; the seed's JSON server has no acknowledgement).
    /// Does not wait.
    pub fn ack(&self, message_id: MessageId) {
        match self {
            Session::Fb(s) => s.ack(message_id),
            Session::Json(s) => s.ack(message_id),
        }
    }

    /// One ping, answered (our node) or only written (the seed's server,
    /// which does not answer pings).
    pub async fn ping(&self) -> Result<(), Failure> {
        match self {
            Session::Fb(s) => s.ping().await,
            Session::Json(s) => s.ping().await,
        }
    }

    /// The id of the node serving this connection (asked with a load probe).
    pub async fn node_id(&self) -> Result<String, Failure> {
        match self {
            Session::Fb(s) => s.node_id().await,
            Session::Json(s) => s.node_id().await,
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Session::Fb(s) => s.is_closed(),
            Session::Json(s) => s.is_closed(),
        }
    }

    pub async fn close(&self) {
        match self {
            Session::Fb(s) => s.close().await,
            Session::Json(s) => s.close(),
        }
    }
}
