//! The connection to a node: [`Client`] and the two tasks behind it.
//!
//! Many requests may be in flight at once. Each gets a request id and a
//! oneshot channel registered in a shared table; a reader task verifies every
//! frame from the node, routes replies to their waiters by request id and
//! pushes to an unbounded event channel (a `LoginReply` is held back until the
//! `pending` message pushes that follow it have been collected into it). A
//! writer task owns the socket's write half: callers encode frames straight
//! into a shared buffer, and the writer takes whatever has accumulated and
//! writes it with one call, so frames queued together leave together.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chat_schema::fb;
use chat_schema::frame::{PREFIX_LEN, frame_len};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::{ClientError, Result};
use crate::model::{
    Conversation, Event, Friend, Group, GroupId, History, Incoming, LoadReport, Login, Message,
    MessageId, Reply, Sent, User, UserId, decode,
};
use crate::request::{Request, needs_leading_ping, with_encoded};

/// Default largest frame accepted from the node: 16 MiB, since a login reply
/// lists every friend and group with its members.
pub const DEFAULT_MAX_REPLY_FRAME: usize = 16 * 1024 * 1024;

/// How a [`Client`] behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Largest frame accepted from the node (prefix excluded); a bigger one
    /// closes the connection with [`ClientError::Protocol`].
    pub max_frame: usize,
    /// How long a request waits for its reply before failing with
    /// [`ClientError::Timeout`]; `None` waits as long as the connection lives.
    pub request_timeout: Option<Duration>,
    /// When set, a ping is sent at this interval so that the node does not
    /// close the connection as idle (it does after 300 s of silence).
    pub keepalive: Option<Duration>,
    /// Sets `TCP_NODELAY` on connections made by [`Client::connect_with`].
    pub nodelay: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_frame: DEFAULT_MAX_REPLY_FRAME,
            request_timeout: Some(Duration::from_secs(30)),
            keepalive: None,
            nodelay: true,
        }
    }
}

/// A connection to a chat node. Cheap to clone: clones share the connection,
/// its request ids and its event stream. The connection closes when the last
/// clone is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: AbortHandle,
    keepalive: Option<AbortHandle>,
    config: ClientConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer flushes what is queued, shuts the socket down and ends.
        self.shared.close_outbox();
        self.reader.abort();
        if let Some(k) = &self.keepalive {
            k.abort();
        }
        // Replies still awaited through a `PendingReply` will never come.
        self.shared.fail_all(CloseReason::Local);
    }
}

/// Why the connection ended, kept to tell waiters.
#[derive(Debug, Clone)]
enum CloseReason {
    Eof,
    Local,
    Io(io::ErrorKind, String),
    Protocol(String),
}

impl CloseReason {
    fn to_error(&self) -> ClientError {
        match self {
            CloseReason::Eof | CloseReason::Local => ClientError::Closed,
            CloseReason::Io(kind, msg) => ClientError::Io(io::Error::new(*kind, msg.clone())),
            CloseReason::Protocol(msg) => ClientError::Protocol(msg.clone()),
        }
    }
}

/// Frames waiting for the writer.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    /// Something has been queued already (the leading-ping rule applies to
    /// the first frame only).
    started: bool,
    /// No more frames are accepted; the writer ends once `buf` is written.
    closing: bool,
}

struct Waiters {
    map: HashMap<u64, oneshot::Sender<Reply>>,
    closed: Option<CloseReason>,
}

/// State shared by the client handles and its tasks.
struct Shared {
    outbox: Mutex<Outbox>,
    wake_writer: Notify,
    waiters: Mutex<Waiters>,
    next_id: AtomicU64,
    request_timeout: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(config: &ClientConfig) -> Shared {
        Shared {
            outbox: Mutex::new(Outbox::default()),
            wake_writer: Notify::new(),
            waiters: Mutex::new(Waiters {
                map: HashMap::new(),
                closed: None,
            }),
            next_id: AtomicU64::new(1),
            request_timeout: config.request_timeout,
        }
    }

    fn close_error(&self) -> ClientError {
        lock(&self.waiters)
            .closed
            .as_ref()
            .map_or(ClientError::Closed, CloseReason::to_error)
    }

    /// Registers a waiter under `id` (or a fresh id) and returns the id.
    fn register(&self, id: Option<u64>) -> Result<(u64, oneshot::Receiver<Reply>)> {
        let (tx, rx) = oneshot::channel();
        let mut w = lock(&self.waiters);
        if let Some(reason) = &w.closed {
            return Err(reason.to_error());
        }
        let id = match id {
            Some(id) if id == 0 || w.map.contains_key(&id) => {
                return Err(ClientError::RequestIdInUse(id));
            }
            Some(id) => id,
            None => self.fresh_id(&w),
        };
        w.map.insert(id, tx);
        Ok((id, rx))
    }

    /// The next request id no waiter in `w` holds (never 0).
    fn fresh_id(&self, w: &Waiters) -> u64 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 && !w.map.contains_key(&id) {
                return id;
            }
        }
    }

    fn unregister(&self, id: u64) {
        lock(&self.waiters).map.remove(&id);
    }

    /// Sends `request`, which gets no reply on success, under a fresh id no
    /// waiter holds: an error reply to it arrives as
    /// [`Event::Unsolicited`] instead of reaching another request's waiter.
    fn send_unanswered(&self, request: &Request<'_>) -> Result<()> {
        let id = {
            let w = lock(&self.waiters);
            if let Some(reason) = &w.closed {
                return Err(reason.to_error());
            }
            self.fresh_id(&w)
        };
        with_encoded(id, request, |frame| self.enqueue(frame, true))
    }

    /// Ends the connection for every waiter: records why (the first reason
    /// wins) and drops their senders.
    fn fail_all(&self, reason: CloseReason) {
        let map = {
            let mut w = lock(&self.waiters);
            w.closed.get_or_insert(reason);
            std::mem::take(&mut w.map)
        };
        drop(map);
    }

    /// Stops accepting frames; the writer ends after writing what is queued.
    fn close_outbox(&self) {
        lock(&self.outbox).closing = true;
        self.wake_writer.notify_one();
    }

    /// Queues one frame. `protocol_frame` applies the leading-ping rule when
    /// this is the connection's first frame.
    fn enqueue(&self, frame: &[u8], protocol_frame: bool) -> Result<()> {
        let mut out = lock(&self.outbox);
        if out.closing {
            drop(out);
            return Err(self.close_error());
        }
        let was_empty = out.buf.is_empty();
        if !out.started {
            out.started = true;
            if protocol_frame && needs_leading_ping(frame) {
                // The reply to this ping is dropped: nobody holds the receiver.
                let (id, _rx) = self.register(None)?;
                with_encoded(id, &Request::Ping, |ping| out.buf.extend_from_slice(ping));
            }
        }
        out.buf.extend_from_slice(frame);
        drop(out);
        if was_empty {
            self.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Sends `request` under `id` (or a fresh id) and returns its pending reply.
    fn start(self: &Arc<Self>, id: Option<u64>, request: &Request<'_>) -> Result<PendingReply> {
        let (id, rx) = self.register(id)?;
        if let Err(e) = with_encoded(id, request, |frame| self.enqueue(frame, true)) {
            self.unregister(id);
            return Err(e);
        }
        Ok(self.pending(id, rx))
    }

    fn pending(self: &Arc<Self>, request_id: u64, rx: oneshot::Receiver<Reply>) -> PendingReply {
        PendingReply {
            request_id,
            rx,
            shared: Arc::clone(self),
            timeout: self.request_timeout,
        }
    }
}

/// A request that has been queued; [`PendingReply::wait`] gives its reply.
/// Dropping it discards the reply when it comes.
#[derive(Debug)]
pub struct PendingReply {
    request_id: u64,
    rx: oneshot::Receiver<Reply>,
    shared: Arc<Shared>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl PendingReply {
    /// The request id the request was sent with.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Waits for the reply (an `ErrorReply` comes back as [`Reply::Error`]),
    /// up to the configured request timeout.
    pub async fn wait(self) -> Result<Reply> {
        let got = match self.timeout {
            Some(t) => match tokio::time::timeout(t, self.rx).await {
                Ok(got) => got,
                Err(_) => return Err(ClientError::Timeout),
            },
            None => self.rx.await,
        };
        got.map_err(|_| self.shared.close_error())
    }
}

impl Client {
    /// Connects to a node with the default [`ClientConfig`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects to a node.
    pub async fn connect_with(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        Client::from_stream(stream, config)
    }

    /// Runs the protocol over a TCP connection made elsewhere (bound to a
    /// chosen source address, say).
    pub fn from_stream(stream: TcpStream, config: ClientConfig) -> Result<Client> {
        if config.nodelay {
            stream.set_nodelay(true)?;
        }
        let (r, w) = stream.into_split();
        Ok(Client::start(r, w, config))
    }

    /// Runs the protocol over any byte stream (an in-memory duplex in tests,
    /// say). Must be called from within a tokio runtime.
    pub fn from_io<S>(io: S, config: ClientConfig) -> Client
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        Client::start(r, w, config)
    }

    fn start<R, W>(r: R, w: W, config: ClientConfig) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared::new(&config));
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            Arc::clone(&shared),
            r,
            Dispatch {
                shared: Arc::clone(&shared),
                events: tx,
                collecting: None,
            },
            config.max_frame,
        ))
        .abort_handle();
        let writer = tokio::spawn(write_loop(Arc::clone(&shared), w));
        let keepalive = config.keepalive.map(|every| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    if shared.start(None, &Request::Ping).is_err() {
                        break;
                    }
                }
            })
            .abort_handle()
        });
        Client {
            inner: Arc::new(Inner {
                shared,
                events: tokio::sync::Mutex::new(rx),
                writer: Mutex::new(Some(writer)),
                reader,
                keepalive,
                config,
            }),
        }
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Whether the connection has ended (closed by either side or broken).
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.shared.waiters).closed.is_some() || lock(&self.inner.shared.outbox).closing
    }

    /// Stops sending: writes what is queued, shuts the write side down and
    /// waits for that. Requests still in flight fail with
    /// [`ClientError::Closed`]; events already received can still be read.
    pub async fn close(&self) {
        self.inner.shared.close_outbox();
        let writer = lock(&self.inner.writer).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.inner.shared.fail_all(CloseReason::Local);
    }

    // ---- raw access ------------------------------------------------------

    /// Sends `request` with a fresh request id and returns a handle to await
    /// its reply later: lets one task keep many requests in flight.
    pub fn start_request(&self, request: &Request<'_>) -> Result<PendingReply> {
        self.inner.shared.start(None, request)
    }

    /// Sends `request` and waits for its reply. An `ErrorReply` is returned
    /// as [`Reply::Error`], not as an error (see [`Reply::into_result`]).
    pub async fn request(&self, request: &Request<'_>) -> Result<Reply> {
        self.start_request(request)?.wait().await
    }

    /// Like [`Client::request`] with a request id of the caller's choosing
    /// (non-zero, not in flight).
    pub async fn request_with_id(&self, request_id: u64, request: &Request<'_>) -> Result<Reply> {
        self.inner
            .shared
            .start(Some(request_id), request)?
            .wait()
            .await
    }

    /// Writes a hand-built frame (length prefix included; see
    /// [`chat_schema::frame::encode`]) and waits for the reply carrying
    /// `request_id`. The leading-ping rule applies as for any request.
    pub async fn request_frame(&self, request_id: u64, frame: &[u8]) -> Result<Reply> {
        let shared = &self.inner.shared;
        let (id, rx) = shared.register(Some(request_id))?;
        if let Err(e) = shared.enqueue(frame, true) {
            shared.unregister(id);
            return Err(e);
        }
        shared.pending(id, rx).wait().await
    }

    /// Sends `request` under `request_id` without waiting: its reply arrives
    /// as [`Event::Unsolicited`] (unless a waiter has that id). Any id is
    /// allowed, 0 and ids in flight included.
    pub fn send_request(&self, request_id: u64, request: &Request<'_>) -> Result<()> {
        with_encoded(request_id, request, |frame| {
            self.inner.shared.enqueue(frame, true)
        })
    }

    /// Writes arbitrary bytes to the connection, as they are (no leading
    /// ping even when they are the first bytes).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.inner.shared.enqueue(bytes, false)
    }

    // ---- events ----------------------------------------------------------

    /// The next push (or unsolicited reply); `None` once the connection has
    /// ended and every event has been read.
    pub async fn next_event(&self) -> Option<Event> {
        self.inner.events.lock().await.recv().await
    }

    /// The next event, waiting at most `timeout`: [`ClientError::Timeout`]
    /// when none came, the connection's error once it has ended.
    pub async fn next_event_timeout(&self, timeout: Duration) -> Result<Event> {
        match tokio::time::timeout(timeout, self.next_event()).await {
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => Err(self.inner.shared.close_error()),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// The next message, skipping other events, waiting at most `timeout` in
    /// all.
    pub async fn next_message_timeout(&self, timeout: Duration) -> Result<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Event::Message(m) = self.next_event_timeout(left).await? {
                return Ok(m);
            }
        }
    }

    /// An event already received, if any, without waiting.
    pub fn try_next_event(&self) -> Option<Event> {
        self.inner.events.try_lock().ok()?.try_recv().ok()
    }

    /// Waits for at least one event and appends up to `limit` of those
    /// received to `buf`; returns how many (0 once the connection has ended
    /// and every event has been read).
    pub async fn next_events(&self, buf: &mut Vec<Event>, limit: usize) -> usize {
        self.inner.events.lock().await.recv_many(buf, limit).await
    }

    // ---- requests --------------------------------------------------------

    /// Creates an account; returns its user id.
    pub async fn register(&self, name: &str, password: &str) -> Result<UserId> {
        match self.request(&Request::Register { name, password }).await? {
            Reply::Register { user_id } => Ok(user_id),
            other => Err(other.unexpected("RegisterReply")),
        }
    }

    /// Logs in; the result includes the messages stored while the user was
    /// away (the `MessagePush`es that follow the reply), oldest first.
    pub async fn login(&self, user_id: UserId, password: &str) -> Result<Login> {
        match self.request(&Request::Login { user_id, password }).await? {
            Reply::Login(login) => Ok(login),
            other => Err(other.unexpected("LoginReply")),
        }
    }

    /// Logs the session's user out (the connection stays open).
    pub async fn logout(&self) -> Result<()> {
        match self.request(&Request::Logout { user_id: 0 }).await? {
            Reply::Logout => Ok(()),
            other => Err(other.unexpected("LogoutReply")),
        }
    }

    /// Adds a friend; returns them.
    pub async fn add_friend(&self, friend_id: UserId) -> Result<Friend> {
        let req = Request::AddFriend {
            user_id: 0,
            friend_id,
        };
        match self.request(&req).await? {
            Reply::AddFriend(friend) => Ok(friend),
            other => Err(other.unexpected("AddFriendReply")),
        }
    }

    /// Creates a group (the session's user becomes its creator); returns its id.
    pub async fn create_group(&self, name: &str, description: &str) -> Result<GroupId> {
        let req = Request::CreateGroup {
            user_id: 0,
            name,
            description,
        };
        match self.request(&req).await? {
            Reply::CreateGroup { group_id } => Ok(group_id),
            other => Err(other.unexpected("CreateGroupReply")),
        }
    }

    /// Joins a group; returns it with its members.
    pub async fn join_group(&self, group_id: GroupId) -> Result<Group> {
        let req = Request::JoinGroup {
            user_id: 0,
            group_id,
        };
        match self.request(&req).await? {
            Reply::JoinGroup(group) => Ok(group),
            other => Err(other.unexpected("JoinGroupReply")),
        }
    }

    /// Ends the friendship with `friend_id`, both ways (they get
    /// [`Event::FriendRemoved`] if online). Fails with `NotFriends` when they
    /// are not a friend.
    pub async fn remove_friend(&self, friend_id: UserId) -> Result<()> {
        let req = Request::RemoveFriend {
            user_id: 0,
            friend_id,
        };
        match self.request(&req).await? {
            Reply::RemoveFriend => Ok(()),
            other => Err(other.unexpected("RemoveFriendReply")),
        }
    }

    /// Leaves a group. A creator who leaves hands the role to the
    /// longest-standing member; a group left empty is deleted.
    pub async fn leave_group(&self, group_id: GroupId) -> Result<()> {
        let req = Request::LeaveGroup {
            user_id: 0,
            group_id,
        };
        match self.request(&req).await? {
            Reply::LeaveGroup => Ok(()),
            other => Err(other.unexpected("LeaveGroupReply")),
        }
    }

    /// Removes `member_id` from a group the session's user created (they
    /// get [`Event::RemovedFromGroup`] if online). Fails with `NotCreator`
    /// for anyone else.
    pub async fn remove_member(&self, group_id: GroupId, member_id: UserId) -> Result<()> {
        let req = Request::RemoveMember {
            user_id: 0,
            group_id,
            member_id,
        };
        match self.request(&req).await? {
            Reply::RemoveMember => Ok(()),
            other => Err(other.unexpected("RemoveMemberReply")),
        }
    }

    /// A group's name, description and members (with role and online
    /// state); only for its members.
    pub async fn group_info(&self, group_id: GroupId) -> Result<Group> {
        let req = Request::GroupInfo {
            user_id: 0,
            group_id,
        };
        match self.request(&req).await? {
            Reply::GroupInfo(group) => Ok(group),
            other => Err(other.unexpected("GroupInfoReply")),
        }
    }

    /// The user named exactly `name`, with their online state.
    pub async fn find_user(&self, name: &str) -> Result<User> {
        match self.request(&Request::FindUser { name }).await? {
            Reply::FindUser(user) => Ok(user),
            other => Err(other.unexpected("FindUserReply")),
        }
    }

    /// A page of `conversation`'s history, newest first: at most `limit`
    /// messages (`None`: the node's default, 50; the node caps it at 200)
    /// with ids below `before` (`None`: from the newest). For the next,
    /// older page pass [`History::next_before`] as `before`. A direct
    /// conversation is both directions, with how far the other user has
    /// read it ([`History::read_up_to`]); a group's is what it had since
    /// the user joined (members only: `NotAMember`).
    pub async fn history(
        &self,
        conversation: Conversation,
        before: Option<MessageId>,
        limit: Option<u32>,
    ) -> Result<History> {
        let (peer_id, group_id) = conversation.ids();
        let req = Request::History {
            user_id: 0,
            peer_id,
            group_id,
            before: before.unwrap_or(0),
            limit: limit.unwrap_or(0),
        };
        match self.request(&req).await? {
            Reply::History(page) => Ok(page),
            other => Err(other.unexpected("HistoryReply")),
        }
    }

    /// Marks `conversation` read up to message `up_to` (read positions
    /// never move back: marking an older message is accepted and changes
    /// nothing). In a direct conversation the other user, if online, gets
    /// [`Event::ReadReceipt`].
    pub async fn mark_read(&self, conversation: Conversation, up_to: MessageId) -> Result<()> {
        let (peer_id, group_id) = conversation.ids();
        let req = Request::MarkRead {
            user_id: 0,
            peer_id,
            group_id,
            up_to,
        };
        match self.request(&req).await? {
            Reply::MarkRead => Ok(()),
            other => Err(other.unexpected("MarkReadReply")),
        }
    }

    /// How many members of `group_id` have read it up to `message_id` (or
    /// beyond), and how many members it has: `(readers, members)`. Members
    /// only.
    pub async fn readers(&self, group_id: GroupId, message_id: MessageId) -> Result<(u32, u32)> {
        let req = Request::Readers {
            user_id: 0,
            group_id,
            message_id,
        };
        match self.request(&req).await? {
            Reply::Readers { readers, members } => Ok((readers, members)),
            other => Err(other.unexpected("ReadersReply")),
        }
    }

    /// Sends a direct message.
    pub async fn send_direct(&self, to_id: UserId, text: &str) -> Result<Sent> {
        let req = Request::DirectMessage {
            user_id: 0,
            to_id,
            text,
        };
        match self.request(&req).await? {
            Reply::DirectMessage(sent) => Ok(sent),
            other => Err(other.unexpected("DirectMessageReply")),
        }
    }

    /// Posts a message to a group.
    pub async fn send_group(&self, group_id: GroupId, text: &str) -> Result<Sent> {
        let req = Request::GroupMessage {
            user_id: 0,
            group_id,
            text,
        };
        match self.request(&req).await? {
            Reply::GroupMessage(sent) => Ok(sent),
            other => Err(other.unexpected("GroupMessageReply")),
        }
    }

    /// Acknowledges every message pushed to this session up to `message_id`.
    pub async fn ack(&self, message_id: MessageId) -> Result<()> {
        let request = Request::DeliveryAck {
            message_id,
            quiet: false,
        };
        match self.request(&request).await? {
            Reply::DeliveryAck => Ok(()),
            other => Err(other.unexpected("DeliveryAckReply")),
        }
    }

    /// Acknowledges up to `message_id` without asking for a reply
    /// (`DeliveryAckRequest.quiet`): nothing to wait for, and the node
    /// writes one frame less. An error (not logged in, an id not delivered)
    /// comes as an [`Event::Unsolicited`].
    pub fn ack_quietly(&self, message_id: MessageId) -> Result<()> {
        self.inner.shared.send_unanswered(&Request::DeliveryAck {
            message_id,
            quiet: true,
        })
    }

    /// Asks the node for its load (no login needed): what a balancer's probe
    /// reads.
    pub async fn load(&self) -> Result<LoadReport> {
        match self.request(&Request::Load).await? {
            Reply::Load(report) => Ok(report),
            other => Err(other.unexpected("LoadReply")),
        }
    }

    /// Asks the balancer in redirect mode at `balancer` which node to use,
    /// then connects to that node directly; returns the node's address with
    /// the client.
    pub async fn connect_redirected(
        balancer: impl ToSocketAddrs,
        config: ClientConfig,
    ) -> Result<(Client, String)> {
        let asking = Client::connect_with(balancer, config.clone()).await?;
        let (address, _node) = asking.which_node().await?;
        asking.close().await;
        let client = Client::connect_with(address.as_str(), config).await?;
        Ok((client, address))
    }

    /// Asks a balancer in redirect mode which node to use; returns the node's
    /// client address and id.
    pub async fn which_node(&self) -> Result<(String, String)> {
        match self.request(&Request::WhichNode).await? {
            Reply::WhichNode { address, node_id } => Ok((address, node_id)),
            other => Err(other.unexpected("WhichNodeReply")),
        }
    }

    /// Pings the node; returns its clock (ms since the Unix epoch).
    pub async fn ping(&self) -> Result<u64> {
        match self.request(&Request::Ping).await? {
            Reply::Ping { time_ms } => Ok(time_ms),
            other => Err(other.unexpected("PingReply")),
        }
    }
}

/// A login reply waiting for the pushes that belong to it.
struct Collecting {
    request_id: u64,
    login: Login,
    remaining: u32,
}

/// The reader's routing of decoded frames.
struct Dispatch {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    collecting: Option<Collecting>,
}

impl Dispatch {
    fn handle(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Push(Event::Message(m)) if self.collecting.is_some() => {
                let c = self.collecting.as_mut().expect("checked");
                c.login.pending.push(m);
                c.remaining -= 1;
                if c.remaining == 0 {
                    let c = self.collecting.take().expect("checked");
                    self.deliver(c.request_id, Reply::Login(c.login));
                }
            }
            Incoming::Push(ev) => {
                let _ = self.events.send(ev);
            }
            Incoming::Reply {
                request_id,
                reply,
                login_pending,
            } => match reply {
                Reply::Login(login) if login_pending > 0 => {
                    // A second login reply ends the first one's collection.
                    if let Some(c) = self.collecting.take() {
                        self.deliver(c.request_id, Reply::Login(c.login));
                    }
                    self.collecting = Some(Collecting {
                        request_id,
                        login,
                        remaining: login_pending,
                    });
                }
                reply => self.deliver(request_id, reply),
            },
        }
    }

    fn deliver(&self, request_id: u64, reply: Reply) {
        let waiter = lock(&self.shared.waiters).map.remove(&request_id);
        match waiter {
            // The waiter may have given up (timeout, dropped): fine.
            Some(tx) => drop(tx.send(reply)),
            None => drop(self.events.send(Event::Unsolicited { request_id, reply })),
        }
    }
}

/// Verifies one whole frame from the node (see `chat_schema::frame::parse_frame`).
pub fn parse_frame(frame: &[u8], max_frame: usize) -> Result<fb::Envelope<'_>> {
    chat_schema::frame::parse_frame(frame, max_frame)
        .map_err(|e| ClientError::Protocol(format!("invalid frame from the node: {e}")))
}

const READ_CHUNK: usize = 64 * 1024;

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut r: R,
    mut dispatch: Dispatch,
    max_frame: usize,
) {
    let reason = read_frames(&mut r, &mut dispatch, max_frame).await;
    // Nothing more can be read: whatever the writer still does is pointless.
    shared.close_outbox();
    if let Some(c) = dispatch.collecting.take() {
        drop(c); // its waiter learns the reason below
    }
    shared.fail_all(reason);
}

async fn read_frames<R: AsyncRead + Unpin>(
    r: &mut R,
    dispatch: &mut Dispatch,
    max_frame: usize,
) -> CloseReason {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0;
    loop {
        // Take every complete frame off the buffer.
        let mut want = READ_CHUNK;
        loop {
            let len = match frame_len(&buf[start..], max_frame) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => return CloseReason::Protocol(format!("frame from the node: {e}")),
            };
            let end = start + PREFIX_LEN + len;
            if buf.len() < end {
                want = want.max(end - buf.len());
                break;
            }
            match parse_frame(&buf[start..end], max_frame).and_then(decode) {
                Ok(incoming) => dispatch.handle(incoming),
                Err(ClientError::Protocol(msg)) => return CloseReason::Protocol(msg),
                Err(e) => return CloseReason::Protocol(e.to_string()),
            }
            start = end;
        }
        // Keep only the partial frame, then read more.
        if start == buf.len() {
            buf.clear();
        } else if start > 0 {
            buf.drain(..start);
        }
        start = 0;
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        } else if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            buf = Vec::with_capacity(READ_CHUNK);
        }
        match r.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return CloseReason::Eof,
            Ok(0) => {
                return CloseReason::Protocol(format!(
                    "connection closed inside a frame ({} bytes left over)",
                    buf.len()
                ));
            }
            Ok(_) => {}
            Err(e) => return CloseReason::Io(e.kind(), e.to_string()),
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut w: W) {
    let mut batch: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let closing = {
            let mut out = lock(&shared.outbox);
            std::mem::swap(&mut out.buf, &mut batch);
            out.closing
        };
        if batch.is_empty() {
            if closing {
                break;
            }
            shared.wake_writer.notified().await;
            continue;
        }
        let written = async {
            w.write_all(&batch).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = written {
            lock(&shared.outbox).closing = true;
            shared.fail_all(CloseReason::Io(e.kind(), e.to_string()));
            return;
        }
        batch.clear();
        if batch.capacity() > 16 * READ_CHUNK {
            batch = Vec::with_capacity(READ_CHUNK);
        }
    }
    let _ = w.shutdown().await;
}
