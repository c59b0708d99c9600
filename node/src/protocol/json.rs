//! The seed's JSON protocol (`docs/protocol.md`, "JSON protocol").
//!
//! A request is one JSON object. Objects may be separated by NUL bytes (the
//! seed's client ends each request with one), newlines, other whitespace, or
//! follow each other directly. [`JsonDecoder`] finds the end of an object with
//! an incremental scanner (nesting depth, inside-a-string and escape state kept
//! across calls, so a slowly arriving object is scanned once), then parses the
//! complete object with serde_json and maps it to a [`Command`] with strict
//! types: ids are JSON integers >= 0, text fields are strings.
//!
//! [`JsonEncoder`] writes the reply shapes the seed's client reads, each object
//! followed by one NUL byte.

use serde::Serialize;
use serde_json::{Map, Value};

use chat_schema::json_msgid as msgid;
use chat_schema::time::UtcTime;

use super::decoded::{Decoded, Refusal, refuse};
use crate::command::{Command, ErrorCode, Failure, LoginInfo, Push, Reply, Request, RequestKind};
use crate::model::{Contact, Conversation, GroupInfo, Role, StoredMessage, UserId};

/// Where the scanner is between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Between units: separators are skipped.
    Idle,
    /// Inside an object that starts at the first unread byte; `pos` bytes of
    /// it have been scanned.
    Object {
        pos: usize,
        depth: usize,
        in_string: bool,
        escape: bool,
    },
    /// Inside junk, or the rest of a broken object, that has been reported
    /// already: skipped up to the next NUL, newline or `{`.
    Junk,
}

/// Splits a byte stream into JSON objects and decodes the requests.
#[derive(Debug)]
pub struct JsonDecoder {
    max_frame: usize,
    scan: Scan,
    /// Set once the stream can not be followed; every later call repeats it.
    fatal: Option<Failure>,
}

fn is_separator(b: u8) -> bool {
    b == 0 || b == 0x0b || b.is_ascii_whitespace()
}

fn ends_junk(b: u8) -> bool {
    matches!(b, 0 | b'\n' | b'{')
}

fn bad(kind: RequestKind, message: impl Into<String>) -> Decoded {
    Decoded::Invalid {
        request_id: 0,
        kind,
        failure: Failure::new(ErrorCode::BadRequest, message),
    }
}

/// How scanning an object ended.
enum Outcome {
    /// The object is the first `len` bytes.
    Complete(usize),
    /// A NUL or newline at `len - 1` broke the object off.
    Broken(usize, &'static str),
    /// More bytes are needed.
    Incomplete,
    /// More than `max_frame` bytes without the object ending.
    TooLong,
}

impl JsonDecoder {
    /// A decoder that refuses objects longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        JsonDecoder {
            max_frame,
            scan: Scan::Idle,
            fatal: None,
        }
    }

    /// See [`super::Decoder::decode`]. Returns `None` only once every byte of
    /// `buf` has been looked at: separators and reported junk are consumed,
    /// the start of an unfinished object is kept.
    pub fn decode(&mut self, buf: &[u8]) -> (usize, Option<Decoded>) {
        if let Some(failure) = &self.fatal {
            return (0, Some(Decoded::Fatal(failure.clone())));
        }
        let mut consumed = 0;
        loop {
            match self.scan {
                Scan::Idle => {
                    consumed += buf[consumed..]
                        .iter()
                        .take_while(|&&b| is_separator(b))
                        .count();
                    match buf.get(consumed) {
                        None => return (consumed, None),
                        Some(b'{') => {
                            self.scan = Scan::Object {
                                pos: 0,
                                depth: 0,
                                in_string: false,
                                escape: false,
                            };
                        }
                        Some(_) => {
                            let junk = buf[consumed..].iter().take_while(|&&b| !ends_junk(b));
                            let end = consumed + junk.count();
                            if end == buf.len() {
                                self.scan = Scan::Junk;
                            }
                            return (
                                end,
                                Some(bad(
                                    RequestKind::Unknown,
                                    "malformed JSON: bytes outside an object (a request is one JSON object)",
                                )),
                            );
                        }
                    }
                }
                Scan::Junk => {
                    let junk = buf[consumed..].iter().take_while(|&&b| !ends_junk(b));
                    consumed += junk.count();
                    if consumed == buf.len() {
                        return (consumed, None);
                    }
                    self.scan = Scan::Idle;
                }
                Scan::Object { .. } => {
                    let object = &buf[consumed..];
                    return match self.scan_object(object) {
                        Outcome::Complete(len) => {
                            self.scan = Scan::Idle;
                            (consumed + len, Some(decode_object(&object[..len])))
                        }
                        Outcome::Broken(len, by) => {
                            // What follows up to the next separator or `{` is
                            // the rest of this object: skipped, not reported
                            // a second time.
                            self.scan = Scan::Junk;
                            let message = format!(
                                "malformed JSON: object broken off by {by} before its closing brace"
                            );
                            (consumed + len, Some(bad(RequestKind::Unknown, message)))
                        }
                        Outcome::Incomplete => (consumed, None),
                        Outcome::TooLong => {
                            let failure = Failure::new(
                                ErrorCode::FrameTooLarge,
                                format!(
                                    "JSON object longer than the limit of {} bytes",
                                    self.max_frame
                                ),
                            );
                            self.fatal = Some(failure.clone());
                            (0, Some(Decoded::Fatal(failure)))
                        }
                    };
                }
            }
        }
    }

    /// Scans `object` (which starts with the object's `{`) from where the
    /// last call stopped.
    fn scan_object(&mut self, object: &[u8]) -> Outcome {
        let Scan::Object {
            mut pos,
            mut depth,
            mut in_string,
            mut escape,
        } = self.scan
        else {
            return Outcome::Incomplete;
        };
        // A caller that handed over fewer bytes than before breaks the
        // contract; start over rather than index out of bounds.
        if pos > object.len() {
            (pos, depth, in_string, escape) = (0, 0, false, false);
        }
        let limit = object.len().min(self.max_frame);
        while pos < limit {
            let b = object[pos];
            pos += 1;
            if in_string {
                match b {
                    // Raw, even after a backslash: JSON has no such escape.
                    0 => return Outcome::Broken(pos, "a NUL byte inside a string"),
                    b'\n' => return Outcome::Broken(pos, "a newline inside a string"),
                    _ if escape => escape = false,
                    b'\\' => escape = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Outcome::Complete(pos);
                    }
                }
                0 => return Outcome::Broken(pos, "a NUL byte"),
                b'\n' => return Outcome::Broken(pos, "a newline"),
                _ => {}
            }
        }
        if object.len() > self.max_frame {
            return Outcome::TooLong;
        }
        self.scan = Scan::Object {
            pos,
            depth,
            in_string,
            escape,
        };
        Outcome::Incomplete
    }
}

/// Decodes one complete object.
fn decode_object(bytes: &[u8]) -> Decoded {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return bad(RequestKind::Unknown, format!("malformed JSON: {e}")),
    };
    let Value::Object(mut fields) = value else {
        return bad(RequestKind::Unknown, "malformed JSON: not an object");
    };
    match command(&mut fields) {
        Ok(command) => Decoded::Request(Request { id: 0, command }),
        Err(r) => bad(r.kind, r.message),
    }
}

/// The fields of one request, taken out as they are read.
struct Fields<'a> {
    kind: RequestKind,
    map: &'a mut Map<String, Value>,
}

impl Fields<'_> {
    /// The first of `names` that is present and not null.
    fn take(&mut self, names: &[&'static str]) -> Option<(&'static str, Value)> {
        names.iter().find_map(|&name| match self.map.remove(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some((name, v)),
        })
    }

    fn optional_id(&mut self, names: &[&'static str]) -> Result<Option<u64>, Refusal> {
        let Some((name, value)) = self.take(names) else {
            return Ok(None);
        };
        match &value {
            Value::Number(n) if n.is_u64() => Ok(n.as_u64()),
            Value::Number(n) if n.is_i64() => Err(refuse(
                self.kind,
                format!("field `{name}` must be an integer >= 0"),
            )),
            _ => Err(refuse(
                self.kind,
                format!("field `{name}` must be an integer"),
            )),
        }
    }

    /// A required id; `names` are accepted spellings, the first is the one
    /// an error names.
    fn id(&mut self, names: &[&'static str]) -> Result<u64, Refusal> {
        self.optional_id(names)?
            .ok_or_else(|| refuse(self.kind, format!("missing field `{}`", names[0])))
    }

    /// The sender id a client wrote: absent, null or 0 mean the session's user.
    fn actor(&mut self) -> Result<Option<UserId>, Refusal> {
        Ok(self.optional_id(&["id"])?.filter(|&id| id != 0))
    }

    fn optional_text(&mut self, names: &[&'static str]) -> Result<Option<String>, Refusal> {
        match self.take(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s)),
            Some((name, _)) => Err(refuse(
                self.kind,
                format!("field `{name}` must be a string"),
            )),
        }
    }

    /// `peer` or `groupid`, exactly one of them (0 counts as absent).
    fn conversation(&mut self) -> Result<Conversation, Refusal> {
        let peer = self.optional_id(&["peer"])?.filter(|&id| id != 0);
        let group = self.optional_id(&["groupid"])?.filter(|&id| id != 0);
        match (peer, group) {
            (Some(peer), None) => Ok(Conversation::Direct(peer)),
            (None, Some(group)) => Ok(Conversation::Group(group)),
            _ => Err(refuse(
                self.kind,
                "give exactly one of `peer` (a user id) and `groupid`",
            )),
        }
    }

    fn text(&mut self, names: &[&'static str]) -> Result<String, Refusal> {
        self.optional_text(names)?
            .ok_or_else(|| refuse(self.kind, format!("missing field `{}`", names[0])))
    }
}

fn command(map: &mut Map<String, Value>) -> Result<Command, Refusal> {
    let unknown = RequestKind::Unknown;
    let id = match map.get("msgid") {
        None | Some(Value::Null) => return Err(refuse(unknown, "missing field `msgid`")),
        Some(Value::Number(n)) if n.is_f64() => {
            return Err(refuse(unknown, "field `msgid` must be an integer"));
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) => id,
            None => return Err(refuse(unknown, format!("unknown msgid {n}"))),
        },
        Some(_) => return Err(refuse(unknown, "field `msgid` must be an integer")),
    };
    Ok(match id {
        msgid::LOGIN => {
            let mut f = Fields {
                kind: RequestKind::Login,
                map,
            };
            Command::Login {
                user: f.id(&["id"])?,
                password: f.text(&["pwd", "password"])?,
            }
        }
        msgid::REGISTER => {
            let mut f = Fields {
                kind: RequestKind::Register,
                map,
            };
            Command::Register {
                name: f.text(&["name"])?,
                password: f.text(&["pwd", "password"])?,
            }
        }
        msgid::LOGOUT => Command::Logout {
            actor: Fields {
                kind: RequestKind::Logout,
                map,
            }
            .actor()?,
        },
        msgid::ADD_FRIEND => {
            let mut f = Fields {
                kind: RequestKind::AddFriend,
                map,
            };
            Command::AddFriend {
                actor: f.actor()?,
                friend: f.id(&["friendid"])?,
            }
        }
        msgid::CREATE_GROUP => {
            let mut f = Fields {
                kind: RequestKind::CreateGroup,
                map,
            };
            Command::CreateGroup {
                actor: f.actor()?,
                name: f.text(&["groupname"])?,
                description: f.optional_text(&["groupdesc"])?.unwrap_or_default(),
            }
        }
        msgid::JOIN_GROUP => {
            let mut f = Fields {
                kind: RequestKind::JoinGroup,
                map,
            };
            Command::JoinGroup {
                actor: f.actor()?,
                group: f.id(&["groupid"])?,
            }
        }
        msgid::ONE_CHAT => {
            let mut f = Fields {
                kind: RequestKind::DirectMessage,
                map,
            };
            Command::DirectMessage {
                actor: f.actor()?,
                to: f.id(&["toid", "to"])?,
                text: f.text(&["msg"])?,
            }
        }
        msgid::GROUP_CHAT => {
            let mut f = Fields {
                kind: RequestKind::GroupMessage,
                map,
            };
            Command::GroupMessage {
                actor: f.actor()?,
                group: f.id(&["groupid"])?,
                text: f.text(&["msg"])?,
            }
        }
        msgid::REMOVE_FRIEND => {
            let mut f = Fields {
                kind: RequestKind::RemoveFriend,
                map,
            };
            Command::RemoveFriend {
                actor: f.actor()?,
                friend: f.id(&["friendid"])?,
            }
        }
        msgid::LEAVE_GROUP => {
            let mut f = Fields {
                kind: RequestKind::LeaveGroup,
                map,
            };
            Command::LeaveGroup {
                actor: f.actor()?,
                group: f.id(&["groupid"])?,
            }
        }
        msgid::REMOVE_MEMBER => {
            let mut f = Fields {
                kind: RequestKind::RemoveMember,
                map,
            };
            Command::RemoveMember {
                actor: f.actor()?,
                group: f.id(&["groupid"])?,
                member: f.id(&["userid"])?,
            }
        }
        msgid::GROUP_INFO => {
            let mut f = Fields {
                kind: RequestKind::GroupInfo,
                map,
            };
            Command::GroupInfo {
                actor: f.actor()?,
                group: f.id(&["groupid"])?,
            }
        }
        msgid::FIND_USER => Command::FindUser {
            name: Fields {
                kind: RequestKind::FindUser,
                map,
            }
            .text(&["name"])?,
        },
        msgid::HISTORY => {
            let mut f = Fields {
                kind: RequestKind::History,
                map,
            };
            Command::History {
                actor: f.actor()?,
                conversation: f.conversation()?,
                before: f.optional_id(&["before"])?.filter(|&id| id != 0),
                limit: f
                    .optional_id(&["limit"])?
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            }
        }
        msgid::MARK_READ => {
            let mut f = Fields {
                kind: RequestKind::MarkRead,
                map,
            };
            Command::MarkRead {
                actor: f.actor()?,
                conversation: f.conversation()?,
                up_to: f.id(&["upto"])?,
            }
        }
        msgid::READERS => {
            let mut f = Fields {
                kind: RequestKind::Readers,
                map,
            };
            Command::Readers {
                actor: f.actor()?,
                group: f.id(&["groupid"])?,
                message: f.id(&["messageid"])?,
            }
        }
        msgid::DELIVERY_ACK => Command::DeliveryAck {
            up_to: Fields {
                kind: RequestKind::DeliveryAck,
                map,
            }
            .optional_id(&["messageid"])?
            .unwrap_or(0),
            // The seed's JSON has no way to say it; its reply is msgid 17.
            quiet: false,
        },
        msgid::PING => Command::Ping,
        msgid::LOAD => Command::Load,
        _ => return Err(refuse(unknown, format!("unknown msgid {id}"))),
    })
}

// ---- encoding --------------------------------------------------------------

/// Writes a [`UtcTime`] as the string the seed's client expects.
fn as_text<S: serde::Serializer>(t: &UtcTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

#[derive(Serialize)]
struct Status {
    msgid: u64,
    errno: u8,
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    msgid: u64,
    errno: u8,
    errcode: u16,
    errmsg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryafter: Option<u32>,
}

#[derive(Serialize)]
struct RegisterAck {
    msgid: u64,
    errno: u8,
    id: UserId,
}

#[derive(Serialize)]
struct LoginAck<'a> {
    msgid: u64,
    errno: u8,
    id: UserId,
    name: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    offlinemsg: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    friends: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unread: Vec<UnreadJson>,
    /// Groups that follow as msgid 49 pushes.
    #[serde(skip_serializing_if = "is_zero")]
    moregroups: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct FriendJson<'a> {
    id: UserId,
    name: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    id: u64,
    groupname: &'a str,
    groupdesc: &'a str,
    users: Vec<String>,
}

#[derive(Serialize)]
struct MemberJson<'a> {
    id: UserId,
    name: &'a str,
    state: &'static str,
    role: &'static str,
}

#[derive(Serialize)]
struct MessageAck {
    msgid: u64,
    errno: u8,
    messageid: u64,
}

#[derive(Serialize)]
struct FriendAck<'a> {
    msgid: u64,
    errno: u8,
    friendid: UserId,
    name: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct GroupAck {
    msgid: u64,
    errno: u8,
    groupid: u64,
}

#[derive(Serialize)]
struct GroupInfoAck<'a> {
    msgid: u64,
    errno: u8,
    groupid: u64,
    groupname: &'a str,
    groupdesc: &'a str,
    users: Vec<String>,
}

#[derive(Serialize)]
struct FindUserAck<'a> {
    msgid: u64,
    errno: u8,
    userid: UserId,
    name: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
struct HistoryAck<'a> {
    msgid: u64,
    errno: u8,
    /// Pushes as msgid 6 / 10, newest first.
    messages: Vec<MessagePush<'a>>,
    more: bool,
    readupto: u64,
}

#[derive(Serialize)]
struct ReadersAck {
    msgid: u64,
    errno: u8,
    readers: u64,
    members: u64,
}

#[derive(Serialize)]
struct ReadReceiptPush {
    msgid: u64,
    id: UserId,
    peer: UserId,
    upto: u64,
}

/// One element of a login reply's `unread`: `peer` or `groupid`.
#[derive(Serialize)]
struct UnreadJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groupid: Option<u64>,
    count: u64,
}

/// A group that did not fit in the login reply: the login's group shape.
#[derive(Serialize)]
struct GroupInfoPush<'a> {
    msgid: u64,
    #[serde(flatten)]
    group: GroupJson<'a>,
}

#[derive(Serialize)]
struct RemovedFromGroupPush {
    msgid: u64,
    groupid: u64,
}

#[derive(Serialize)]
struct FriendRemovedPush {
    msgid: u64,
    friendid: UserId,
}

#[derive(Serialize)]
struct LoadAck<'a> {
    msgid: u64,
    errno: u8,
    nodeid: &'a str,
    address: &'a str,
    connections: u32,
    capacity: u32,
    shardbusy: &'a [f32],
    outboundbytes: u64,
    draining: bool,
}

#[derive(Serialize)]
struct PingAck {
    msgid: u64,
    errno: u8,
    #[serde(serialize_with = "as_text")]
    time: UtcTime,
}

#[derive(Serialize)]
struct DirectPush<'a> {
    msgid: u64,
    id: UserId,
    name: &'a str,
    toid: UserId,
    msg: &'a str,
    #[serde(serialize_with = "as_text")]
    time: UtcTime,
    messageid: u64,
}

#[derive(Serialize)]
struct GroupPush<'a> {
    msgid: u64,
    id: UserId,
    name: &'a str,
    groupid: u64,
    msg: &'a str,
    #[serde(serialize_with = "as_text")]
    time: UtcTime,
    messageid: u64,
}

/// The msgid that answers a request of `kind`, success or failure.
pub fn reply_msgid(kind: RequestKind) -> u64 {
    match kind {
        RequestKind::Login => msgid::LOGIN_ACK,
        RequestKind::Register => msgid::REGISTER_ACK,
        RequestKind::Logout => msgid::LOGOUT_ACK,
        RequestKind::DirectMessage => msgid::ONE_CHAT_ACK,
        RequestKind::AddFriend => msgid::ADD_FRIEND_ACK,
        RequestKind::CreateGroup => msgid::CREATE_GROUP_ACK,
        RequestKind::JoinGroup => msgid::JOIN_GROUP_ACK,
        RequestKind::GroupMessage => msgid::GROUP_CHAT_ACK,
        RequestKind::Ping => msgid::PING_ACK,
        RequestKind::Load => msgid::LOAD_ACK,
        RequestKind::RemoveFriend => msgid::REMOVE_FRIEND_ACK,
        RequestKind::LeaveGroup => msgid::LEAVE_GROUP_ACK,
        RequestKind::RemoveMember => msgid::REMOVE_MEMBER_ACK,
        RequestKind::GroupInfo => msgid::GROUP_INFO_ACK,
        RequestKind::FindUser => msgid::FIND_USER_ACK,
        RequestKind::History => msgid::HISTORY_ACK,
        RequestKind::MarkRead => msgid::MARK_READ_ACK,
        RequestKind::Readers => msgid::READERS_ACK,
        RequestKind::DeliveryAck | RequestKind::Unknown => msgid::GENERIC_ACK,
    }
}

/// Appends `value` and its NUL terminator; on the (impossible) failure to
/// serialize, appends nothing.
fn write(value: &impl Serialize, out: &mut Vec<u8>) {
    let start = out.len();
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(0);
    } else {
        out.truncate(start);
    }
}

/// `value` as a JSON string (for the seed's arrays of JSON-encoded strings).
fn encoded(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Writes replies and pushes in the seed's shapes, each object followed by
/// one NUL byte.
#[derive(Debug, Default)]
pub struct JsonEncoder;

impl JsonEncoder {
    pub fn new() -> Self {
        JsonEncoder
    }

    /// Appends the reply to a request of kind `kind`.
    pub fn reply(&mut self, kind: RequestKind, reply: &Reply, out: &mut Vec<u8>) {
        let msgid = reply_msgid(kind);
        match reply {
            Reply::Error(failure) => {
                let (errno, errmsg) = match failure.code {
                    ErrorCode::AlreadyOnline => (2, "this account is using, input another!"),
                    ErrorCode::InvalidCredentials => (1, "id or password is invalid!"),
                    _ => (1, failure.message.as_str()),
                };
                write(
                    &ErrorJson {
                        msgid,
                        errno,
                        errcode: failure.code.as_u16(),
                        errmsg,
                        retryafter: failure.retry_after_ms,
                    },
                    out,
                );
            }
            Reply::Registered { user } => write(
                &RegisterAck {
                    msgid: msgid::REGISTER_ACK,
                    errno: 0,
                    id: *user,
                },
                out,
            ),
            Reply::LoggedIn(info) => write(&login_ack(info), out),
            Reply::LoggedOut => write(
                &Status {
                    msgid: msgid::LOGOUT_ACK,
                    errno: 0,
                },
                out,
            ),
            Reply::FriendAdded(Contact { id, name, online }) => write(
                &FriendAck {
                    msgid: msgid::ADD_FRIEND_ACK,
                    errno: 0,
                    friendid: *id,
                    name,
                    state: state(*online),
                },
                out,
            ),
            Reply::GroupCreated { group } => write(
                &GroupAck {
                    msgid: msgid::CREATE_GROUP_ACK,
                    errno: 0,
                    groupid: *group,
                },
                out,
            ),
            Reply::GroupJoined(info) => write(
                &GroupAck {
                    msgid: msgid::JOIN_GROUP_ACK,
                    errno: 0,
                    groupid: info.id,
                },
                out,
            ),
            Reply::MessageSent { id, .. } => write(
                &MessageAck {
                    msgid: if kind == RequestKind::GroupMessage {
                        msgid::GROUP_CHAT_ACK
                    } else {
                        msgid::ONE_CHAT_ACK
                    },
                    errno: 0,
                    messageid: *id,
                },
                out,
            ),
            Reply::History(page) => write(
                &HistoryAck {
                    msgid: msgid::HISTORY_ACK,
                    errno: 0,
                    messages: page.messages.iter().map(message_push).collect(),
                    more: page.more,
                    readupto: page.read_up_to,
                },
                out,
            ),
            Reply::Readers { readers, members } => write(
                &ReadersAck {
                    msgid: msgid::READERS_ACK,
                    errno: 0,
                    readers: *readers,
                    members: *members,
                },
                out,
            ),
            Reply::FriendRemoved | Reply::GroupLeft | Reply::MemberRemoved | Reply::MarkedRead => {
                write(&Status { msgid, errno: 0 }, out)
            }
            Reply::Group(info) => {
                let g = group_json(info);
                write(
                    &GroupInfoAck {
                        msgid: msgid::GROUP_INFO_ACK,
                        errno: 0,
                        groupid: g.id,
                        groupname: g.groupname,
                        groupdesc: g.groupdesc,
                        users: g.users,
                    },
                    out,
                )
            }
            Reply::UserFound(Contact { id, name, online }) => write(
                &FindUserAck {
                    msgid: msgid::FIND_USER_ACK,
                    errno: 0,
                    userid: *id,
                    name,
                    state: state(*online),
                },
                out,
            ),
            Reply::Acked => write(
                &Status {
                    msgid: msgid::GENERIC_ACK,
                    errno: 0,
                },
                out,
            ),
            Reply::Pong { time_ms } => write(
                &PingAck {
                    msgid: msgid::PING_ACK,
                    errno: 0,
                    time: UtcTime(*time_ms),
                },
                out,
            ),
            Reply::Load(report) => write(
                &LoadAck {
                    msgid: msgid::LOAD_ACK,
                    errno: 0,
                    nodeid: &report.node_id,
                    address: &report.address,
                    connections: report.connections,
                    capacity: report.capacity,
                    shardbusy: &report.shard_busy,
                    outboundbytes: report.outbound_bytes,
                    draining: report.draining,
                },
                out,
            ),
        }
    }

    /// Appends a push. A presence push has no form in the seed's protocol:
    /// nothing is written and the result is false.
    pub fn push(&mut self, push: &Push, out: &mut Vec<u8>) -> bool {
        match push {
            Push::Message(m) => write_message(m, out),
            Push::Presence { .. } => return false,
            Push::RemovedFromGroup { group } => write(
                &RemovedFromGroupPush {
                    msgid: msgid::REMOVED_FROM_GROUP,
                    groupid: *group,
                },
                out,
            ),
            Push::FriendRemoved { friend } => write(
                &FriendRemovedPush {
                    msgid: msgid::FRIEND_REMOVED,
                    friendid: *friend,
                },
                out,
            ),
            Push::Group(info) => write(
                &GroupInfoPush {
                    msgid: msgid::GROUP,
                    group: group_json(info),
                },
                out,
            ),
            Push::ReadReceipt {
                reader,
                peer,
                up_to,
            } => write(
                &ReadReceiptPush {
                    msgid: msgid::READ_RECEIPT,
                    id: *reader,
                    peer: *peer,
                    upto: *up_to,
                },
                out,
            ),
        }
        true
    }
}

/// A stored message as its push: msgid 10 for a group message, 6 for a
/// direct one.
#[derive(Serialize)]
#[serde(untagged)]
enum MessagePush<'a> {
    Direct(DirectPush<'a>),
    Group(GroupPush<'a>),
}

fn message_push(m: &StoredMessage) -> MessagePush<'_> {
    if m.group_id != 0 {
        MessagePush::Group(group_push(m))
    } else {
        MessagePush::Direct(direct_push(m))
    }
}

fn write_message(m: &StoredMessage, out: &mut Vec<u8>) {
    write(&message_push(m), out);
}

fn direct_push(m: &StoredMessage) -> DirectPush<'_> {
    DirectPush {
        msgid: msgid::ONE_CHAT,
        id: m.sender_id,
        name: &m.sender_name,
        toid: m.recipient_id,
        msg: &m.text,
        time: UtcTime(m.time_ms),
        messageid: m.id,
    }
}

fn group_push(m: &StoredMessage) -> GroupPush<'_> {
    GroupPush {
        msgid: msgid::GROUP_CHAT,
        id: m.sender_id,
        name: &m.sender_name,
        groupid: m.group_id,
        msg: &m.text,
        time: UtcTime(m.time_ms),
        messageid: m.id,
    }
}

fn login_ack(info: &LoginInfo) -> LoginAck<'_> {
    LoginAck {
        msgid: msgid::LOGIN_ACK,
        errno: 0,
        id: info.user,
        name: &info.name,
        offlinemsg: info
            .pending
            .iter()
            .map(|m| encoded(&message_push(m)))
            .collect(),
        friends: info
            .friends
            .iter()
            .map(|c| {
                encoded(&FriendJson {
                    id: c.id,
                    name: &c.name,
                    state: state(c.online),
                })
            })
            .collect(),
        groups: info
            .groups
            .iter()
            .map(|g| encoded(&group_json(g)))
            .collect(),
        moregroups: info.more_groups,
        unread: info
            .unread
            .iter()
            .map(|u| match u.conversation {
                Conversation::Direct(peer) => UnreadJson {
                    peer: Some(peer),
                    groupid: None,
                    count: u.count,
                },
                Conversation::Group(group) => UnreadJson {
                    peer: None,
                    groupid: Some(group),
                    count: u.count,
                },
            })
            .collect(),
    }
}

fn group_json(g: &GroupInfo) -> GroupJson<'_> {
    GroupJson {
        id: g.id,
        groupname: &g.name,
        groupdesc: &g.description,
        users: g
            .members
            .iter()
            .map(|m| {
                encoded(&MemberJson {
                    id: m.id,
                    name: &m.name,
                    state: state(m.online),
                    role: match m.role {
                        Role::Creator => "creator",
                        Role::Normal => "normal",
                    },
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::Member;

    const MAX: usize = 64 * 1024;

    /// Feeds `stream` to a decoder in pieces of `chunk` bytes, decoding all it
    /// can after each piece, like a session reading a socket.
    fn session(stream: &[u8], chunk: usize) -> Vec<Decoded> {
        session_with(JsonDecoder::new(MAX), stream, chunk)
    }

    fn session_with(d: JsonDecoder, stream: &[u8], chunk: usize) -> Vec<Decoded> {
        crate::protocol::decode_in_chunks(crate::protocol::Decoder::Json(d), stream, chunk)
    }

    /// The one unit `text` decodes to.
    fn one(text: &str) -> Decoded {
        let units = session(text.as_bytes(), text.len());
        assert_eq!(units.len(), 1, "{units:?}");
        units.into_iter().next().unwrap()
    }

    fn request(command: Command) -> Decoded {
        Decoded::Request(Request { id: 0, command })
    }

    fn invalid(kind: RequestKind, message: &str) -> Decoded {
        Decoded::Invalid {
            request_id: 0,
            kind,
            failure: Failure::new(ErrorCode::BadRequest, message),
        }
    }

    fn reply(kind: RequestKind, r: &Reply) -> String {
        let mut out = Vec::new();
        JsonEncoder::new().reply(kind, r, &mut out);
        assert_eq!(out.pop(), Some(0), "every object ends with one NUL");
        assert!(!out.contains(&0));
        String::from_utf8(out).unwrap()
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn the_seeds_test_messages_decode() {
        assert_eq!(
            one(r#"{"msgid":1,"id":3,"pwd":"123456"}"#),
            request(Command::Login {
                user: 3,
                password: "123456".into()
            })
        );
        // The seed's test register message has no name.
        assert_eq!(
            one(r#"{"msgid":4,"id":2,"pwd":"123456"}"#),
            invalid(RequestKind::Register, "missing field `name`")
        );
        // `from` is ignored, `toid` is the recipient.
        assert_eq!(
            one(r#"{"msgid":6,"id":1,"from":"cmf","toid":2,"msg":" xxxxxxoooooo!"}"#),
            request(Command::DirectMessage {
                actor: Some(1),
                to: 2,
                text: " xxxxxxoooooo!".into()
            })
        );
        assert_eq!(
            one(r#"{"msgid":7,"id":2,"friendid":1}"#),
            request(Command::AddFriend {
                actor: Some(2),
                friend: 1
            })
        );
        assert_eq!(
            one(r#"{"msgid":8,"id":1,"groupname":"test","groupdesc":"test"}"#),
            request(Command::CreateGroup {
                actor: Some(1),
                name: "test".into(),
                description: "test".into()
            })
        );
        assert_eq!(
            one(r#"{"msgid":9,"id":3,"groupid":1}"#),
            request(Command::JoinGroup {
                actor: Some(3),
                group: 1
            })
        );
        assert_eq!(
            one(r#"{"msgid":10,"id":1,"name":"mmm","groupid":1,"msg":"hello every one"}"#),
            request(Command::GroupMessage {
                actor: Some(1),
                group: 1,
                text: "hello every one".into()
            })
        );
        assert_eq!(
            one(r#"{"msgid":3,"id":1}"#),
            request(Command::Logout { actor: Some(1) })
        );
    }

    #[test]
    fn every_spelling_the_seeds_clients_use_is_accepted() {
        // The C++ client sends `password`, the README `pwd`.
        assert_eq!(
            one(r#"{"msgid":1,"id":3,"password":"pw"}"#),
            request(Command::Login {
                user: 3,
                password: "pw".into()
            })
        );
        assert_eq!(
            one(r#"{"msgid":4,"name":"alice","password":"pw"}"#),
            request(Command::Register {
                name: "alice".into(),
                password: "pw".into()
            })
        );
        // The README's format section says `to`, its test message `toid`.
        assert_eq!(
            one(r#"{"msgid":6,"id":1,"name":"a","to":2,"msg":"x","time":"2024-01-01 10:00:00"}"#),
            request(Command::DirectMessage {
                actor: Some(1),
                to: 2,
                text: "x".into()
            })
        );
        // Optional fields: no `id` means the session's user, no `groupdesc`
        // an empty description; 18 is our ping.
        assert_eq!(
            one(r#"{"msgid":3}"#),
            request(Command::Logout { actor: None })
        );
        assert_eq!(
            one(r#"{"msgid":7,"id":null,"friendid":5}"#),
            request(Command::AddFriend {
                actor: None,
                friend: 5
            })
        );
        assert_eq!(
            one(r#"{"msgid":8,"id":0,"groupname":"g"}"#),
            request(Command::CreateGroup {
                actor: None,
                name: "g".into(),
                description: String::new()
            })
        );
        assert_eq!(one(r#"{"msgid":18}"#), request(Command::Ping));
    }

    #[test]
    fn wrong_types_are_refused_with_the_requests_kind() {
        let cases = [
            (
                r#"{"msgid":1,"id":"3","pwd":"x"}"#,
                RequestKind::Login,
                "field `id` must be an integer",
            ),
            (
                r#"{"msgid":1,"id":3.0,"pwd":"x"}"#,
                RequestKind::Login,
                "field `id` must be an integer",
            ),
            (
                r#"{"msgid":1,"id":3,"pwd":123456}"#,
                RequestKind::Login,
                "field `pwd` must be a string",
            ),
            (
                r#"{"msgid":1,"pwd":"x"}"#,
                RequestKind::Login,
                "missing field `id`",
            ),
            (
                r#"{"msgid":1,"id":3}"#,
                RequestKind::Login,
                "missing field `pwd`",
            ),
            (
                r#"{"msgid":4,"name":"a"}"#,
                RequestKind::Register,
                "missing field `pwd`",
            ),
            (
                r#"{"msgid":4,"name":["a"],"pwd":"x"}"#,
                RequestKind::Register,
                "field `name` must be a string",
            ),
            (
                r#"{"msgid":3,"id":-1}"#,
                RequestKind::Logout,
                "field `id` must be an integer >= 0",
            ),
            (
                r#"{"msgid":7,"id":1}"#,
                RequestKind::AddFriend,
                "missing field `friendid`",
            ),
            (
                r#"{"msgid":7,"friendid":true}"#,
                RequestKind::AddFriend,
                "field `friendid` must be an integer",
            ),
            (
                r#"{"msgid":8,"id":1}"#,
                RequestKind::CreateGroup,
                "missing field `groupname`",
            ),
            (
                r#"{"msgid":8,"groupname":"g","groupdesc":1}"#,
                RequestKind::CreateGroup,
                "field `groupdesc` must be a string",
            ),
            (
                r#"{"msgid":9,"groupid":"1"}"#,
                RequestKind::JoinGroup,
                "field `groupid` must be an integer",
            ),
            (
                r#"{"msgid":6,"id":1,"msg":"x"}"#,
                RequestKind::DirectMessage,
                "missing field `toid`",
            ),
            (
                r#"{"msgid":6,"toid":2}"#,
                RequestKind::DirectMessage,
                "missing field `msg`",
            ),
            (
                r#"{"msgid":6,"to":"2","msg":"x"}"#,
                RequestKind::DirectMessage,
                "field `to` must be an integer",
            ),
            (
                r#"{"msgid":10,"groupid":1,"msg":{}}"#,
                RequestKind::GroupMessage,
                "field `msg` must be a string",
            ),
            (
                r#"{"msgid":10,"groupid":18446744073709551616,"msg":"x"}"#,
                RequestKind::GroupMessage,
                "field `groupid` must be an integer",
            ),
        ];
        for (text, kind, message) in cases {
            assert_eq!(one(text), invalid(kind, message), "{text}");
        }
    }

    #[test]
    fn unknown_or_missing_msgids_are_refused() {
        let u = RequestKind::Unknown;
        assert_eq!(one(r#"{"msgid":99}"#), invalid(u, "unknown msgid 99"));
        assert_eq!(
            one(r#"{"msgid":2,"errno":0}"#),
            invalid(u, "unknown msgid 2")
        );
        assert_eq!(one(r#"{"msgid":-1}"#), invalid(u, "unknown msgid -1"));
        assert_eq!(one(r#"{"id":1}"#), invalid(u, "missing field `msgid`"));
        assert_eq!(
            one(r#"{"msgid":"1"}"#),
            invalid(u, "field `msgid` must be an integer")
        );
        assert_eq!(
            one(r#"{"msgid":1.5}"#),
            invalid(u, "field `msgid` must be an integer")
        );
        let Decoded::Invalid { kind, failure, .. } = one(r#"{"msgid":1,}"#) else {
            panic!("expected Invalid");
        };
        assert_eq!(kind, u);
        assert!(
            failure.message.starts_with("malformed JSON: "),
            "{}",
            failure.message
        );
    }

    #[test]
    fn objects_separated_by_nul_newline_or_nothing_all_decode() {
        let stream = concat!(
            "{\"msgid\":18}\0",
            "{\"msgid\":3}\n",
            "{\"msgid\":18}\r\n",
            "{\"msgid\":3}{\"msgid\":18}",
            " \t\0\0\n {\"msgid\":3}\0"
        );
        let expected = [
            request(Command::Ping),
            request(Command::Logout { actor: None }),
            request(Command::Ping),
            request(Command::Logout { actor: None }),
            request(Command::Ping),
            request(Command::Logout { actor: None }),
        ];
        for chunk in 1..=stream.len() {
            assert_eq!(session(stream.as_bytes(), chunk), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn an_object_arriving_byte_by_byte_is_scanned_once() {
        let text = br#"{"msgid":6,"toid":2,"msg":"a } inside { a string \" with quotes"}"#;
        let mut d = JsonDecoder::new(MAX);
        for end in 1..text.len() {
            assert_eq!(d.decode(&text[..end]), (0, None));
            // The scanner remembers how far it got.
            assert!(matches!(d.scan, Scan::Object { pos, .. } if pos == end));
        }
        assert_eq!(
            d.decode(text),
            (
                text.len(),
                Some(request(Command::DirectMessage {
                    actor: None,
                    to: 2,
                    text: "a } inside { a string \" with quotes".into()
                }))
            )
        );
        // Separators are consumed as they arrive.
        assert_eq!(d.decode(b"\0\n"), (2, None));
    }

    #[test]
    fn a_newline_or_nul_breaks_an_unfinished_object_and_the_next_one_decodes() {
        let broken = |by: &str| {
            invalid(
                RequestKind::Unknown,
                &format!("malformed JSON: object broken off by {by} before its closing brace"),
            )
        };
        let stream =
            b"{\"msgid\":1,\"id\":3\n{\"msgid\":18}\0{\"msgid\":6,\"msg\":\"a\0b\"}{\"msgid\":18}";
        for chunk in [1, 2, 5, stream.len()] {
            assert_eq!(
                session(stream, chunk),
                [
                    broken("a newline"),
                    request(Command::Ping),
                    // The rest of the broken object, `b"}`, is skipped.
                    broken("a NUL byte inside a string"),
                    request(Command::Ping),
                ],
                "chunk {chunk}"
            );
        }
        assert_eq!(one("{\"msgid\":18,\0"), broken("a NUL byte"));
        assert_eq!(
            one("{\"msgid\":6,\"msg\":\"two\nlines\"}"),
            broken("a newline inside a string")
        );
        // A backslash does not escape a raw newline: an nc user's unfinished
        // line never swallows the next one.
        assert_eq!(
            session(b"{\"msgid\":6,\"msg\":\"abc\\\n{\"msgid\":18}\n", 1),
            [broken("a newline inside a string"), request(Command::Ping)]
        );
    }

    #[test]
    fn junk_between_objects_is_reported_once_and_skipped() {
        let junk = invalid(
            RequestKind::Unknown,
            "malformed JSON: bytes outside an object (a request is one JSON object)",
        );
        let stream = b"hello there\n{\"msgid\":18}]]]]{\"msgid\":18}x\0";
        for chunk in [1, 3, stream.len()] {
            assert_eq!(
                session(stream, chunk),
                [
                    junk.clone(),
                    request(Command::Ping),
                    junk.clone(),
                    request(Command::Ping),
                    junk.clone()
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_endless_object_is_fatal() {
        let mut stream = br#"{"msgid":6,"toid":2,"msg":""#.to_vec();
        stream.resize(200, b'a');
        for chunk in [1, 7, 200] {
            let units = session_with(JsonDecoder::new(100), &stream, chunk);
            let [Decoded::Fatal(f)] = units.as_slice() else {
                panic!("expected one Fatal, got {units:?}");
            };
            assert_eq!(f.code, ErrorCode::FrameTooLarge);
        }
        // Fatal is final.
        let mut d = JsonDecoder::new(10);
        assert!(matches!(d.decode(&stream), (0, Some(Decoded::Fatal(_)))));
        assert!(matches!(d.decode(b"{}"), (0, Some(Decoded::Fatal(_)))));
        // An object of exactly the limit is fine.
        let ping = br#"{"msgid":18}"#;
        let mut d = JsonDecoder::new(ping.len());
        assert_eq!(d.decode(ping), (ping.len(), Some(request(Command::Ping))));
    }

    #[test]
    fn quotes_and_unicode_in_text_survive_the_round_trip() {
        let text = r#"she said "hi" \ back\slash, 你好, 🦀, tab	end"#;
        let object = serde_json::json!({"msgid":6,"id":1,"toid":2,"msg":text}).to_string();
        let Decoded::Request(Request {
            command: Command::DirectMessage { text: decoded, .. },
            ..
        }) = one(&object)
        else {
            panic!("expected a direct message");
        };
        assert_eq!(decoded, text);

        let message = StoredMessage {
            id: 7,
            sender_id: 1,
            sender_name: "\"alice\"".into(),
            recipient_id: 2,
            group_id: 0,
            time_ms: 1_700_000_000_123,
            text: decoded,
        };
        let mut out = Vec::new();
        assert!(JsonEncoder::new().push(&Push::Message(Arc::new(message)), &mut out));
        assert_eq!(out.pop(), Some(0));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["msg"], text);
        assert_eq!(v["name"], "\"alice\"");
    }

    #[test]
    fn register_and_login_replies_have_the_seeds_shapes() {
        assert_eq!(
            reply(RequestKind::Register, &Reply::Registered { user: 7 }),
            r#"{"msgid":5,"errno":0,"id":7}"#
        );
        assert_eq!(
            reply(
                RequestKind::Register,
                &Reply::Error(Failure::new(ErrorCode::BadRequest, "missing field `name`"))
            ),
            r#"{"msgid":5,"errno":1,"errcode":13,"errmsg":"missing field `name`"}"#
        );
        assert_eq!(
            reply(
                RequestKind::Login,
                &Reply::Error(Failure::new(ErrorCode::AlreadyOnline, "user 3 is online"))
            ),
            r#"{"msgid":2,"errno":2,"errcode":2,"errmsg":"this account is using, input another!"}"#
        );
        assert_eq!(
            reply(
                RequestKind::Login,
                &Reply::Error(Failure::new(ErrorCode::InvalidCredentials, "bad"))
            ),
            r#"{"msgid":2,"errno":1,"errcode":1,"errmsg":"id or password is invalid!"}"#
        );

        let bare = LoginInfo {
            user: 3,
            name: "carol".into(),
            friends: vec![],
            groups: vec![],
            pending: vec![],
            unread: vec![],
            more_groups: 0,
        };
        assert_eq!(
            reply(RequestKind::Login, &Reply::LoggedIn(Box::new(bare.clone()))),
            r#"{"msgid":2,"errno":0,"id":3,"name":"carol"}"#
        );

        let full = LoginInfo {
            friends: vec![Contact {
                id: 1,
                name: "alice".into(),
                online: true,
            }],
            groups: vec![GroupInfo {
                id: 4,
                name: "g\"1".into(),
                description: "d".into(),
                members: vec![
                    Member {
                        id: 1,
                        name: "alice".into(),
                        online: true,
                        role: Role::Creator,
                    },
                    Member {
                        id: 3,
                        name: "carol".into(),
                        online: false,
                        role: Role::Normal,
                    },
                ],
            }],
            pending: vec![
                StoredMessage {
                    id: 10,
                    sender_id: 1,
                    sender_name: "alice".into(),
                    recipient_id: 3,
                    group_id: 0,
                    time_ms: 0,
                    text: "hi".into(),
                },
                StoredMessage {
                    id: 11,
                    sender_id: 1,
                    sender_name: "alice".into(),
                    recipient_id: 0,
                    group_id: 4,
                    time_ms: 1000,
                    text: "all".into(),
                },
            ],
            ..bare
        };
        let text = reply(RequestKind::Login, &Reply::LoggedIn(Box::new(full)));
        let v = parse(&text);
        assert_eq!(
            (v["msgid"].as_u64(), v["errno"].as_u64()),
            (Some(2), Some(0))
        );
        // The seed's client converts each array to vector<string> and parses
        // every string: they must be strings, not objects.
        let strings = |v: &Value| -> Vec<Value> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| parse(s.as_str().expect("an array of strings")))
                .collect()
        };
        assert_eq!(
            strings(&v["offlinemsg"]),
            [
                parse(
                    r#"{"msgid":6,"id":1,"name":"alice","toid":3,"msg":"hi","time":"1970-01-01 00:00:00","messageid":10}"#
                ),
                parse(
                    r#"{"msgid":10,"id":1,"name":"alice","groupid":4,"msg":"all","time":"1970-01-01 00:00:01","messageid":11}"#
                ),
            ]
        );
        assert_eq!(
            strings(&v["friends"]),
            [parse(r#"{"id":1,"name":"alice","state":"online"}"#)]
        );
        let groups = strings(&v["groups"]);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (
                &groups[0]["id"],
                &groups[0]["groupname"],
                &groups[0]["groupdesc"]
            ),
            (&Value::from(4), &Value::from("g\"1"), &Value::from("d"))
        );
        assert_eq!(
            strings(&groups[0]["users"]),
            [
                parse(r#"{"id":1,"name":"alice","state":"online","role":"creator"}"#),
                parse(r#"{"id":3,"name":"carol","state":"offline","role":"normal"}"#),
            ]
        );
    }

    #[test]
    fn the_acks_the_seed_never_sent() {
        use RequestKind as K;
        let cases = [
            (K::Logout, Reply::LoggedOut, r#"{"msgid":11,"errno":0}"#),
            (
                K::DirectMessage,
                Reply::MessageSent { id: 8, time_ms: 0 },
                r#"{"msgid":12,"errno":0,"messageid":8}"#,
            ),
            (
                K::AddFriend,
                Reply::FriendAdded(Contact {
                    id: 2,
                    name: "bob".into(),
                    online: false,
                }),
                r#"{"msgid":13,"errno":0,"friendid":2,"name":"bob","state":"offline"}"#,
            ),
            (
                K::CreateGroup,
                Reply::GroupCreated { group: 4 },
                r#"{"msgid":14,"errno":0,"groupid":4}"#,
            ),
            (
                K::JoinGroup,
                Reply::GroupJoined(GroupInfo {
                    id: 4,
                    name: "g".into(),
                    description: String::new(),
                    members: vec![],
                }),
                r#"{"msgid":15,"errno":0,"groupid":4}"#,
            ),
            (
                K::GroupMessage,
                Reply::MessageSent { id: 9, time_ms: 0 },
                r#"{"msgid":16,"errno":0,"messageid":9}"#,
            ),
            (K::DeliveryAck, Reply::Acked, r#"{"msgid":17,"errno":0}"#),
            (
                K::Ping,
                Reply::Pong {
                    time_ms: 1_700_000_000_000,
                },
                r#"{"msgid":19,"errno":0,"time":"2023-11-14 22:13:20"}"#,
            ),
        ];
        for (kind, r, expected) in cases {
            assert_eq!(reply(kind, &r), expected);
        }
    }

    #[test]
    fn errors_answer_with_the_ack_of_the_requests_kind() {
        use RequestKind as K;
        let failure = Reply::Error(Failure::new(ErrorCode::NotLoggedIn, "log in first"));
        for (kind, msgid) in [
            (K::Login, 2),
            (K::Register, 5),
            (K::Logout, 11),
            (K::DirectMessage, 12),
            (K::AddFriend, 13),
            (K::CreateGroup, 14),
            (K::JoinGroup, 15),
            (K::GroupMessage, 16),
            (K::DeliveryAck, 17),
            (K::Unknown, 17),
            (K::Ping, 19),
        ] {
            assert_eq!(
                reply(kind, &failure),
                format!(r#"{{"msgid":{msgid},"errno":1,"errcode":4,"errmsg":"log in first"}}"#)
            );
        }
    }

    #[test]
    fn pushes_have_the_seeds_shapes_and_presence_has_none() {
        let mut e = JsonEncoder::new();
        let mut out = Vec::new();
        let direct = StoredMessage {
            id: 21,
            sender_id: 1,
            sender_name: "alice".into(),
            recipient_id: 2,
            group_id: 0,
            time_ms: 951_782_400_000,
            text: "hi".into(),
        };
        let group = StoredMessage {
            id: 22,
            recipient_id: 0,
            group_id: 4,
            ..direct.clone()
        };
        assert!(e.push(&Push::Message(Arc::new(direct)), &mut out));
        assert!(e.push(&Push::Message(Arc::new(group)), &mut out));
        assert!(!e.push(
            &Push::Presence {
                user: 1,
                name: "alice".into(),
                online: true
            },
            &mut out
        ));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"msgid":6,"id":1,"name":"alice","toid":2,"msg":"hi","time":"2000-02-29 00:00:00","messageid":21}"#,
                "\0",
                r#"{"msgid":10,"id":1,"name":"alice","groupid":4,"msg":"hi","time":"2000-02-29 00:00:00","messageid":22}"#,
                "\0"
            )
        );
    }
}
