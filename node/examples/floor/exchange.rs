//! The exchange itself, with no sockets: what a connection sent goes in
//! ([`Floor::received`]), replies and pushes come out as bytes per
//! connection, written by the driver after [`Floor::commit`].

use std::collections::HashMap;
use std::sync::Arc;

use chat_node::command::{Command, ErrorCode, Failure, LoginInfo, Push, Reply, RequestKind};
use chat_node::model::{
    Contact, GroupId, GroupInfo, NewMessage, StoredMessage, Target, UserId, now_ms,
};
use chat_node::protocol::{Decoded, Decoder, Encoder, Wire};
use chat_node::store::sqlite::SqliteStore;
use chat_node::store::{Store, StoreError};

const MAX_FRAME: usize = 64 * 1024;

/// What the exchange keeps per connection (the driver keeps its socket).
struct Conn {
    input: Vec<u8>,
    output: Vec<u8>,
    decoder: Decoder,
    encoder: Encoder,
    user: Option<(UserId, String)>,
}

/// The whole server's state: connections by token, users, groups, store.
pub struct Floor {
    conns: HashMap<usize, Conn>,
    online: HashMap<UserId, usize>,
    names: Vec<String>,
    /// Members of each group (index = group id - 1), in join order.
    groups: Vec<Vec<UserId>>,
    next_message: u64,
    store: Option<SqliteStore>,
    /// Connections with bytes to write once the store has committed.
    dirty: Vec<usize>,
}

impl Floor {
    /// An empty server; every message goes to `store` when there is one.
    pub fn new(store: Option<SqliteStore>) -> Floor {
        Floor {
            conns: HashMap::new(),
            online: HashMap::new(),
            names: Vec::new(),
            groups: Vec::new(),
            next_message: 0,
            store,
            dirty: Vec::new(),
        }
    }

    /// A connection was accepted.
    pub fn open(&mut self, token: usize) {
        self.conns.insert(
            token,
            Conn {
                input: Vec::new(),
                output: Vec::new(),
                decoder: Decoder::new(Wire::FlatBuffers, MAX_FRAME),
                encoder: Encoder::new(Wire::FlatBuffers),
                user: None,
            },
        );
    }

    /// Handles every whole frame of what `token` sent so far plus `bytes`;
    /// false when the connection must close.
    pub fn received(&mut self, token: usize, bytes: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else {
            return false;
        };
        conn.input.extend_from_slice(bytes);
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

    /// Commits what was stored since the last call (nothing without a
    /// store), then hands over the connections with bytes to write.
    pub fn commit(&mut self, dirty: &mut Vec<usize>) -> Result<(), StoreError> {
        if let Some(store) = &mut self.store {
            store.commit()?;
        }
        dirty.append(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        Ok(())
    }

    /// The bytes waiting to be written to `token`; the driver drains what it
    /// wrote.
    pub fn output(&mut self, token: usize) -> Option<&mut Vec<u8>> {
        self.conns.get_mut(&token).map(|c| &mut c.output)
    }

    /// A connection ended.
    pub fn close(&mut self, token: usize) {
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
