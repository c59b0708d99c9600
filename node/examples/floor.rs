//! A yardstick for the node's message path: the same exchange with a client
//! (FlatBuffers frames decoded and encoded by `chat_node::protocol`; a
//! direct message answered to its sender and pushed to its recipient, a
//! group message to every other member; quiet
//! acknowledgements read and dropped) on the leanest loop there is: one
//! thread, one `mio` poll (epoll), every connection's replies written once
//! per wake-up. With `--store DIR` each message is also appended to the
//! node's SQLite store, one commit per wake-up before anything is written
//! (the node's group commit, and its promise: committed before the sender
//! hears of it); without it nothing is stored.
//!
//! It is not a chat server: any password logs in, users live in memory,
//! every request but register, login, logout, add friend (not remembered),
//! create and join group, direct and group message, delivery
//! acknowledgement and ping is refused, a client that stops reading makes it
//! buffer without limit. It only answers "what does this machine charge for
//! the exchange itself?", beside the node, under the same load generator
//! (`docs/benchmarks.md`, "The floor"):
//!
//! ```text
//! cargo build --release -p chat-node --example floor
//! target/release/examples/floor --listen 127.0.0.1:7000 --metrics-listen 127.0.0.1:7001 [--store /tmp/floor]
//! chat-loadtest --target 127.0.0.1:7000 --server-metrics http://127.0.0.1:7001/metrics \
//!     --protocol fb --users 100 --rate 5000 --duration 8s --warmup 2s
//! ```

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chat_node::command::{Command, ErrorCode, Failure, LoginInfo, Push, Reply, RequestKind};
use chat_node::model::{
    Contact, GroupId, GroupInfo, NewMessage, StoredMessage, Target, UserId, now_ms,
};
use chat_node::protocol::{Decoded, Decoder, Encoder, Wire};
use chat_node::store::sqlite::{SqliteStore, SyncPolicy};
use chat_node::store::{Store, StoreError};
use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

#[derive(Parser)]
#[command(about = "The node's message exchange on one epoll thread, with or without its store")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7001")]
    metrics_listen: SocketAddr,
    /// Append every message to a SQLite store in this directory (the node's
    /// own, `--sync normal`), one commit per wake-up.
    #[arg(long)]
    store: Option<PathBuf>,
}

const LISTENER: Token = Token(usize::MAX);
const MAX_FRAME: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    decoder: Decoder,
    encoder: Encoder,
    user: Option<(UserId, String)>,
}

struct Floor {
    conns: HashMap<usize, Conn>,
    online: HashMap<UserId, usize>,
    names: Vec<String>,
    /// Members of each group (index = group id - 1), in join order.
    groups: Vec<Vec<UserId>>,
    next_message: u64,
    store: Option<SqliteStore>,
    /// Connections with bytes to write after this wake-up's commit.
    dirty: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    chat_node::metrics::serve(
        chat_node::metrics::bind(args.metrics_listen)?,
        chat_node::metrics::install(),
    );
    let store = match &args.store {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(SqliteStore::open(&dir.join("chat.db"), SyncPolicy::Normal)?)
        }
        None => None,
    };
    let mut floor = Floor {
        conns: HashMap::new(),
        online: HashMap::new(),
        names: Vec::new(),
        groups: Vec::new(),
        next_message: 0,
        store,
        dirty: Vec::new(),
    };
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut next_token = 0usize;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let token = next_token;
                    next_token += 1;
                    poll.registry().register(
                        &mut stream,
                        Token(token),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    floor.conns.insert(
                        token,
                        Conn {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            decoder: Decoder::new(Wire::FlatBuffers, MAX_FRAME),
                            encoder: Encoder::new(Wire::FlatBuffers),
                            user: None,
                        },
                    );
                }
                continue;
            }
            let token = event.token().0;
            if event.is_readable() && !floor.read(token, &mut scratch) {
                floor.close(token);
                continue;
            }
            if event.is_writable() {
                floor.dirty.push(token);
            }
        }
        if let Some(store) = &mut floor.store {
            store.commit()?;
        }
        floor.flush();
    }
}

impl Floor {
    /// Reads what `token` sent and handles every whole frame; false when the
    /// connection ended.
    fn read(&mut self, token: usize, scratch: &mut [u8]) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else {
            return true;
        };
        loop {
            match conn.stream.read(scratch) {
                Ok(0) => return false,
                Ok(n) => conn.input.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let mut at = 0;
        let mut requests = Vec::new();
        loop {
            let (used, unit) = conn.decoder.decode(&conn.input[at..]);
            at += used;
            match unit {
                Some(Decoded::Request(r)) => requests.push(r),
                Some(Decoded::Invalid { .. }) => continue,
                Some(Decoded::Fatal(_)) => return false,
                None => break,
            }
        }
        conn.input.drain(..at);
        for request in requests {
            let kind = RequestKind::from(&request.command);
            let quiet = matches!(request.command, Command::DeliveryAck { quiet: true, .. });
            let reply = self.handle(token, request.command);
            if !quiet {
                let conn = self.conns.get_mut(&token).expect("the reading connection");
                conn.encoder
                    .reply(request.id, kind, &reply, &mut conn.output);
                self.dirty.push(token);
            }
        }
        true
    }

    fn handle(&mut self, token: usize, command: Command) -> Reply {
        match command {
            Command::Register { name, .. } => {
                let user = match &mut self.store {
                    Some(store) => match store.create_user(&name, "floor") {
                        Ok(user) => user,
                        Err(e) => return refused(e),
                    },
                    None => self.names.len() as UserId + 1,
                };
                if self.names.len() < user as usize {
                    self.names.resize(user as usize, String::new());
                }
                self.names[user as usize - 1] = name;
                Reply::Registered { user }
            }
            Command::Login { user, .. } => {
                let Some(name) = self.name(user).cloned() else {
                    return refused("unknown user");
                };
                self.online.insert(user, token);
                let conn = self.conns.get_mut(&token).expect("the reading connection");
                conn.user = Some((user, name.clone()));
                Reply::LoggedIn(Box::new(LoginInfo {
                    user,
                    name,
                    friends: Vec::new(),
                    groups: Vec::new(),
                    pending: Vec::new(),
                    unread: Vec::new(),
                    more_groups: 0,
                }))
            }
            Command::Logout { .. } => {
                if let Some((user, _)) = self.conns.get_mut(&token).and_then(|c| c.user.take()) {
                    self.online.remove(&user);
                }
                Reply::LoggedOut
            }
            Command::DirectMessage { to, text, .. } => {
                let stored = match self.message(token, Target::User(to), text) {
                    Ok(stored) => stored,
                    Err(refusal) => return refusal,
                };
                let (id, time_ms) = (stored.id, stored.time_ms);
                self.push(to, &Push::Message(stored));
                Reply::MessageSent { id, time_ms }
            }
            Command::CreateGroup {
                name, description, ..
            } => {
                let Some((creator, _)) = self.conns.get(&token).and_then(|c| c.user.clone()) else {
                    return refused("log in first");
                };
                let group = match &mut self.store {
                    Some(store) => match store.create_group(creator, &name, &description) {
                        Ok(group) => group,
                        Err(e) => return refused(e),
                    },
                    None => self.groups.len() as GroupId + 1,
                };
                if self.groups.len() < group as usize {
                    self.groups.resize(group as usize, Vec::new());
                }
                self.groups[group as usize - 1] = vec![creator];
                Reply::GroupCreated { group }
            }
            Command::JoinGroup { group, .. } => {
                let Some((user, _)) = self.conns.get(&token).and_then(|c| c.user.clone()) else {
                    return refused("log in first");
                };
                let info = match &mut self.store {
                    Some(store) => match store.join_group(group, user) {
                        Ok(info) => Some(info),
                        Err(e) => return refused(e),
                    },
                    None => None,
                };
                let Some(members) = self.members(group) else {
                    return refused("unknown group");
                };
                members.push(user);
                Reply::GroupJoined(info.unwrap_or(GroupInfo {
                    id: group,
                    name: String::new(),
                    description: String::new(),
                    members: Vec::new(),
                }))
            }
            Command::GroupMessage { group, text, .. } => {
                if self.members(group).is_none() {
                    return refused("unknown group");
                }
                let stored = match self.message(token, Target::Group(group), text) {
                    Ok(stored) => stored,
                    Err(refusal) => return refusal,
                };
                let from = stored.sender_id;
                let (id, time_ms) = (stored.id, stored.time_ms);
                let push = Push::Message(stored);
                let members = std::mem::take(&mut self.groups[group as usize - 1]);
                for &member in &members {
                    if member != from {
                        self.push(member, &push);
                    }
                }
                self.groups[group as usize - 1] = members;
                Reply::MessageSent { id, time_ms }
            }
            // Remembered nowhere: the exchange under measure has no presence.
            Command::AddFriend { friend, .. } => match self.name(friend) {
                Some(name) => Reply::FriendAdded(Contact {
                    id: friend,
                    name: name.clone(),
                    online: self.online.contains_key(&friend),
                }),
                None => refused("unknown user"),
            },
            Command::DeliveryAck { .. } => Reply::Acked,
            Command::Ping => Reply::Pong { time_ms: now_ms() },
            _ => refused("not in the floor server"),
        }
    }

    /// The message `token`'s user sends to `target`, stored; the reply to
    /// send instead when it can not be.
    fn message(
        &mut self,
        token: usize,
        target: Target,
        text: String,
    ) -> Result<Arc<StoredMessage>, Reply> {
        let Some((sender_id, sender_name)) = self.conns.get(&token).and_then(|c| c.user.clone())
        else {
            return Err(refused("log in first"));
        };
        let message = NewMessage {
            sender_id,
            sender_name,
            target,
            time_ms: now_ms(),
            text,
        };
        self.stored(message).map(Arc::new).map_err(refused)
    }

    /// Appends `message` to the store, or gives it the next id in memory.
    fn stored(&mut self, message: NewMessage) -> Result<StoredMessage, StoreError> {
        if let Some(store) = &mut self.store {
            return store.append(&message);
        }
        self.next_message += 1;
        let (recipient_id, group_id) = match message.target {
            Target::User(user) => (user, 0),
            Target::Group(group) => (0, group),
        };
        Ok(StoredMessage {
            id: self.next_message,
            sender_id: message.sender_id,
            sender_name: message.sender_name,
            recipient_id,
            group_id,
            time_ms: message.time_ms,
            text: message.text,
        })
    }

    /// Queues `push` on `user`'s connection, if online.
    fn push(&mut self, user: UserId, push: &Push) {
        if let Some(&peer) = self.online.get(&user)
            && let Some(conn) = self.conns.get_mut(&peer)
        {
            conn.encoder.push(push, &mut conn.output);
            self.dirty.push(peer);
        }
    }

    fn members(&mut self, group: GroupId) -> Option<&mut Vec<UserId>> {
        self.groups.get_mut(group.checked_sub(1)? as usize)
    }

    fn name(&self, user: UserId) -> Option<&String> {
        self.names.get(user.checked_sub(1)? as usize)
    }

    /// Writes what each connection touched since the last flush has queued.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for token in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            let mut written = 0;
            let mut failed = false;
            while written < conn.output.len() {
                match conn.stream.write(&conn.output[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            conn.output.drain(..written);
            if failed {
                self.close(token);
            }
        }
        self.dirty = dirty;
    }

    fn close(&mut self, token: usize) {
        if let Some(conn) = self.conns.remove(&token)
            && let Some((user, _)) = conn.user
            && self.online.get(&user) == Some(&token)
        {
            self.online.remove(&user);
        }
    }
}

fn refused(why: impl std::fmt::Display) -> Reply {
    Reply::Error(Failure::new(ErrorCode::BadRequest, why.to_string()))
}
