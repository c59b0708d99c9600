//! A virtual user over the seed's JSON protocol, raw on the socket, so that
//! the same scenarios drive our node in JSON mode and the seed's C++ server.
//!
//! JSON replies carry no request id: the node answers a connection's
//! requests in order. Each request that expects a reply queues a waiter
//! (with the reply's msgid) in a FIFO before its bytes go to the writer
//! task; the reader task hands each reply to the oldest waiter for that
//! msgid and each push (msgid 6, 10) to the inbox. The seed's server does
//! not answer chat, friend or group requests: with `chat_replies` off those
//! return at once, unacknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chat_client::seed_json::{JsonReader, errno, msgid};
use chat_client::{Conversation, ErrorCode, GroupId, MessageId, UserId};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::{Ack, Failure, Page, Received};

/// Whether the JSON server at the other end of `stream` answers requests
/// the seed left unanswered: a ping (msgid 18) answered within `wait` means
/// our node, silence the seed's server.
pub async fn server_replies_to_chat(stream: TcpStream, wait: Duration) -> bool {
    let (r, mut w) = stream.into_split();
    let mut ping = json!({ "msgid": msgid::PING }).to_string().into_bytes();
    ping.push(0);
    if w.write_all(&ping).await.is_err() {
        return false;
    }
    let mut reader = JsonReader::new(r);
    matches!(
        tokio::time::timeout(wait, reader.recv_msgid(msgid::PING_ACK)).await,
        Ok(Ok(Some(_)))
    )
}

type Waiters = Mutex<VecDeque<(u64, oneshot::Sender<Value>)>>;

pub struct JsonSession {
    out: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Arc<Waiters>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    closed: Arc<AtomicBool>,
    reader: tokio::task::AbortHandle,
    timeout: Duration,
    chat_replies: bool,
    /// Acknowledges with msgid 50 (`--json-acks explicit` to our node).
    explicit_acks: bool,
}

impl Drop for JsonSession {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A reply still to come.
pub struct PendingJson {
    rx: oneshot::Receiver<Value>,
    timeout: Duration,
}

impl PendingJson {
    /// The reply; an `errno` other than 0 is a failure named by its `errcode`.
    pub async fn wait(self) -> Result<Value, Failure> {
        let v = match tokio::time::timeout(self.timeout, self.rx).await {
            Err(_) => return Err(Failure("timeout".into())),
            Ok(Err(_)) => return Err(Failure("closed".into())),
            Ok(Ok(v)) => v,
        };
        if errno(&v) == 0 {
            return Ok(v);
        }
        let code = v.get("errcode").and_then(Value::as_u64).unwrap_or(0);
        Err(Failure(match code {
            0 if errno(&v) == 2 => ErrorCode::AlreadyOnline.name().to_string(),
            0 => "error".into(),
            n => ErrorCode::from_u16(n as u16).name().to_string(),
        }))
    }
}

fn lock(w: &Waiters) -> std::sync::MutexGuard<'_, VecDeque<(u64, oneshot::Sender<Value>)>> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

fn push_of(v: &Value) -> Option<Received> {
    let id = v.get("msgid")?.as_u64()?;
    if id != msgid::ONE_CHAT && id != msgid::GROUP_CHAT {
        return None;
    }
    Some(Received {
        text: v.get("msg")?.as_str()?.to_string(),
        message_id: v.get("messageid").and_then(Value::as_u64),
    })
}

impl JsonSession {
    pub fn start(
        stream: TcpStream,
        timeout: Duration,
        chat_replies: bool,
        explicit_acks: bool,
    ) -> JsonSession {
        let (r, mut w) = stream.into_split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let waiters: Arc<Waiters> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let closed = Arc::clone(&closed);
            async move {
                let mut batch = Vec::new();
                let mut buf = Vec::new();
                while out_rx.recv_many(&mut batch, 256).await > 0 {
                    buf.clear();
                    batch.drain(..).for_each(|b| buf.extend_from_slice(&b));
                    if w.write_all(&buf).await.is_err() {
                        break;
                    }
                }
                closed.store(true, Ordering::Relaxed);
                let _ = w.shutdown().await;
            }
        });
        let reader = tokio::spawn({
            let waiters = Arc::clone(&waiters);
            let closed = Arc::clone(&closed);
            async move {
                let mut reader = JsonReader::new(r);
                loop {
                    let v = match reader.recv().await {
                        Ok(Some(v)) => v,
                        Ok(None) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                        Err(_) => break,
                    };
                    if let Some(m) = push_of(&v) {
                        let _ = inbox_tx.send(m);
                        continue;
                    }
                    let Some(id) = v.get("msgid").and_then(Value::as_u64) else {
                        continue;
                    };
                    let waiter = {
                        let mut w = lock(&waiters);
                        w.iter()
                            .position(|(want, _)| *want == id)
                            .and_then(|i| w.remove(i))
                    };
                    if let Some((_, tx)) = waiter {
                        let _ = tx.send(v);
                    }
                }
                closed.store(true, Ordering::Relaxed);
                lock(&waiters).clear();
            }
        })
        .abort_handle();
        JsonSession {
            out,
            waiters,
            inbox: tokio::sync::Mutex::new(inbox),
            closed,
            reader,
            timeout,
            chat_replies,
            explicit_acks,
        }
    }

    /// Queues `v`; with `reply` set, registers a waiter for that msgid first.
    fn send(&self, v: &Value, reply: Option<u64>) -> Result<Option<PendingJson>, Failure> {
        if self.is_closed() {
            return Err(Failure("closed".into()));
        }
        let mut bytes = serde_json::to_vec(v).expect("JSON values serialize");
        bytes.push(0);
        let mut waiters = lock(&self.waiters);
        let pending = reply.map(|id| {
            let (tx, rx) = oneshot::channel();
            waiters.push_back((id, tx));
            PendingJson {
                rx,
                timeout: self.timeout,
            }
        });
        self.out.send(bytes).map_err(|_| Failure("closed".into()))?;
        Ok(pending)
    }

    async fn request(&self, v: Value, reply: u64) -> Result<Value, Failure> {
        let pending = self
            .send(&v, Some(reply))?
            .expect("a waiter was registered");
        pending.wait().await
    }

    /// Sends a request the seed leaves unanswered: awaited only when the
    /// server answers such requests.
    async fn maybe_request(&self, v: Value, reply: u64) -> Result<Option<Value>, Failure> {
        if self.chat_replies {
            self.request(v, reply).await.map(Some)
        } else {
            self.send(&v, None).map(|_| None)
        }
    }

    pub async fn register(&self, name: &str, password: &str) -> Result<UserId, Failure> {
        let v = self
            .request(
                json!({"msgid": msgid::REGISTER, "name": name, "pwd": password, "password": password}),
                msgid::REGISTER_ACK,
            )
            .await?;
        v.get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| Failure("protocol".into()))
    }

    pub async fn login(&self, id: UserId, password: &str) -> Result<Vec<Received>, Failure> {
        // Our node: switch the connection to explicit acknowledgements
        // before the login (answered `NotLoggedIn`, ignored here). A login
        // this session abandons (timeout, failure) then closes its socket
        // cleanly without that close crediting the reply's `offlinemsg`
        // page, which the implicit rule would count as read.
        self.ack(0);
        let v = self
            .request(
                json!({"msgid": msgid::LOGIN, "id": id, "pwd": password, "password": password}),
                msgid::LOGIN_ACK,
            )
            .await?;
        let pending: Vec<Received> = v
            .get("offlinemsg")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|s| serde_json::from_str::<Value>(s.as_str()?).ok())
                    .filter_map(|m| push_of(&m))
                    .collect()
            })
            .unwrap_or_default();
        // Our node: acknowledge explicitly from the start (msgid 50), before
        // any other request could be taken as proof of reading a push that
        // crossed it.
        let highest = pending.iter().filter_map(|m| m.message_id).max();
        self.ack(highest.unwrap_or(0));
        Ok(pending)
    }

    /// Tells our node everything pushed up to `message_id` arrived (msgid
    /// 50, not waited for). The seed's server has no acknowledgement, nor
    /// do users with `--json-acks implicit`: there this does nothing, and
    /// the next request stands for one.
    pub fn ack(&self, message_id: MessageId) {
        if self.explicit_acks {
            let _ = self.send(
                &json!({"msgid": msgid::DELIVERY_ACK, "messageid": message_id}),
                None,
            );
        }
    }

    pub async fn logout(&self) -> Result<(), Failure> {
        self.maybe_request(json!({"msgid": msgid::LOGOUT}), msgid::LOGOUT_ACK)
            .await
            .map(|_| ())
    }

    pub async fn add_friend(&self, friend: UserId) -> Result<(), Failure> {
        self.maybe_request(
            json!({"msgid": msgid::ADD_FRIEND, "friendid": friend}),
            msgid::ADD_FRIEND_ACK,
        )
        .await
        .map(|_| ())
    }

    pub async fn create_group(&self, name: &str) -> Result<GroupId, Failure> {
        let v = self
            .maybe_request(
                json!({"msgid": msgid::CREATE_GROUP, "groupname": name, "groupdesc": "load test"}),
                msgid::CREATE_GROUP_ACK,
            )
            .await?
            // The seed does not say which id the new group got.
            .ok_or_else(|| Failure("no_group_id_from_server".into()))?;
        v.get("groupid")
            .and_then(Value::as_u64)
            .ok_or_else(|| Failure("protocol".into()))
    }

    pub async fn join_group(&self, group: GroupId) -> Result<(), Failure> {
        self.maybe_request(
            json!({"msgid": msgid::JOIN_GROUP, "groupid": group}),
            msgid::JOIN_GROUP_ACK,
        )
        .await
        .map(|_| ())
    }

    fn chat(&self, v: Value, reply: u64) -> Result<Ack, Failure> {
        if self.chat_replies {
            Ok(Ack::Json(self.send(&v, Some(reply))?.expect("a waiter")))
        } else {
            self.send(&v, None).map(|_| Ack::Never)
        }
    }

    pub fn send_direct(&self, to: UserId, text: &str) -> Result<Ack, Failure> {
        self.chat(
            json!({"msgid": msgid::ONE_CHAT, "toid": to, "msg": text}),
            msgid::ONE_CHAT_ACK,
        )
    }

    pub fn send_group(&self, group: GroupId, text: &str) -> Result<Ack, Failure> {
        self.chat(
            json!({"msgid": msgid::GROUP_CHAT, "groupid": group, "msg": text}),
            msgid::GROUP_CHAT_ACK,
        )
    }

    /// One page of history (msgid 40, ours; the seed has none).
    pub async fn history(
        &self,
        conversation: Conversation,
        before: Option<MessageId>,
    ) -> Result<Page, Failure> {
        if !self.chat_replies {
            return Err(super::unsupported());
        }
        let mut v = conversation_json(conversation);
        v["msgid"] = json!(msgid::HISTORY);
        if let Some(before) = before {
            v["before"] = json!(before);
        }
        let r = self.request(v, msgid::HISTORY_ACK).await?;
        let messages = r
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| Failure("protocol".into()))?;
        let more = r.get("more").and_then(Value::as_bool).unwrap_or(false);
        Ok(Page {
            messages: messages.len() as u64,
            next_before: if more {
                messages
                    .last()
                    .and_then(|m| m.get("messageid"))
                    .and_then(Value::as_u64)
            } else {
                None
            },
        })
    }

    /// Marks a conversation read (msgid 42, ours; the seed has none).
    pub async fn mark_read(
        &self,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<(), Failure> {
        if !self.chat_replies {
            return Err(super::unsupported());
        }
        let mut v = conversation_json(conversation);
        v["msgid"] = json!(msgid::MARK_READ);
        v["upto"] = json!(up_to);
        self.request(v, msgid::MARK_READ_ACK).await.map(|_| ())
    }

    pub async fn next_received(&self) -> Option<Received> {
        self.inbox.lock().await.recv().await
    }

    pub fn try_received(&self) -> Option<Received> {
        self.inbox.try_lock().ok()?.try_recv().ok()
    }

    /// Pings the server (msgid 18); the seed does not answer, so against
    /// it the ping is only written.
    pub async fn ping(&self) -> Result<(), Failure> {
        self.maybe_request(json!({"msgid": msgid::PING}), msgid::PING_ACK)
            .await
            .map(|_| ())
    }

    pub async fn node_id(&self) -> Result<String, Failure> {
        if !self.chat_replies {
            return Err(Failure("no_load_probe".into()));
        }
        let v = self
            .request(json!({"msgid": msgid::LOAD}), msgid::LOAD_ACK)
            .await?;
        v.get("nodeid")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Failure("protocol".into()))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.reader.abort();
        lock(&self.waiters).clear();
    }
}

/// A conversation's field: `peer` or `groupid`.
fn conversation_json(conversation: Conversation) -> Value {
    match conversation {
        Conversation::Direct(peer) => json!({ "peer": peer }),
        Conversation::Group(group) => json!({ "groupid": group }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_chat_messages_only() {
        let m = push_of(&json!({"msgid":6,"id":1,"name":"a","toid":2,"msg":"hi","messageid":9}));
        assert_eq!(
            m,
            Some(Received {
                text: "hi".into(),
                message_id: Some(9)
            })
        );
        let seed = push_of(&json!({"msgid":10,"id":1,"groupid":3,"msg":"yo"})).unwrap();
        assert_eq!(seed.message_id, None);
        assert_eq!(push_of(&json!({"msgid":12,"errno":0})), None);
    }
}
