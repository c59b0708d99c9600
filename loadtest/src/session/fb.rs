//! A virtual user over the FlatBuffers protocol: a thin layer on the client
//! library's [`Client`].

use std::time::Duration;

use chat_client::{
    Client, ClientConfig, Conversation, Event, GroupId, MessageId, PendingReply, Reply, Request,
    UserId,
};
use tokio::net::TcpStream;

use super::{Failure, Page, Received};

pub struct FbSession {
    client: Client,
}

fn received(m: chat_client::Message) -> Received {
    Received {
        text: m.text,
        message_id: Some(m.id),
    }
}

/// Waits for the reply to a chat send.
pub async fn wait_sent(p: PendingReply) -> Result<(), Failure> {
    match p.wait().await? {
        Reply::DirectMessage(_) | Reply::GroupMessage(_) => Ok(()),
        other => Err(other.unexpected("a message reply").into()),
    }
}

impl FbSession {
    pub fn start(stream: TcpStream, timeout: Duration) -> Result<FbSession, Failure> {
        let config = ClientConfig {
            request_timeout: Some(timeout),
            keepalive: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        Ok(FbSession {
            client: Client::from_stream(stream, config)?,
        })
    }

    pub async fn register(&self, name: &str, password: &str) -> Result<UserId, Failure> {
        Ok(self.client.register(name, password).await?)
    }

    pub async fn login(&self, id: UserId, password: &str) -> Result<Vec<Received>, Failure> {
        let login = self.client.login(id, password).await?;
        Ok(login.pending.into_iter().map(received).collect())
    }

    pub async fn logout(&self) -> Result<(), Failure> {
        Ok(self.client.logout().await?)
    }

    pub async fn add_friend(&self, friend: UserId) -> Result<(), Failure> {
        self.client.add_friend(friend).await?;
        Ok(())
    }

    pub async fn create_group(&self, name: &str) -> Result<GroupId, Failure> {
        Ok(self.client.create_group(name, "load test").await?)
    }

    pub async fn join_group(&self, group: GroupId) -> Result<(), Failure> {
        self.client.join_group(group).await?;
        Ok(())
    }

    pub fn send_direct(&self, to: UserId, text: &str) -> Result<PendingReply, Failure> {
        Ok(self.client.start_request(&Request::DirectMessage {
            user_id: 0,
            to_id: to,
            text,
        })?)
    }

    pub fn send_group(&self, group: GroupId, text: &str) -> Result<PendingReply, Failure> {
        Ok(self.client.start_request(&Request::GroupMessage {
            user_id: 0,
            group_id: group,
            text,
        })?)
    }

    pub async fn history(
        &self,
        conversation: Conversation,
        before: Option<MessageId>,
    ) -> Result<Page, Failure> {
        let page = self.client.history(conversation, before, None).await?;
        Ok(Page {
            messages: page.messages.len() as u64,
            next_before: page.next_before(),
        })
    }

    pub async fn mark_read(
        &self,
        conversation: Conversation,
        up_to: MessageId,
    ) -> Result<(), Failure> {
        Ok(self.client.mark_read(conversation, up_to).await?)
    }

    pub async fn next_received(&self) -> Option<Received> {
        loop {
            if let Event::Message(m) = self.client.next_event().await? {
                return Some(received(m));
            }
        }
    }

    pub fn try_received(&self) -> Option<Received> {
        loop {
            if let Event::Message(m) = self.client.try_next_event()? {
                return Some(received(m));
            }
        }
    }

    pub fn ack(&self, message_id: MessageId) {
        // Quiet: the node sends no reply to a good acknowledgement, so the
        // node writes one frame less per acknowledgement (docs/protocol.md).
        let _ = self.client.ack_quietly(message_id);
    }

    pub async fn ping(&self) -> Result<(), Failure> {
        self.client.ping().await?;
        Ok(())
    }

    pub async fn node_id(&self) -> Result<String, Failure> {
        Ok(self.client.load().await?.node_id)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub async fn close(&self) {
        self.client.close().await;
    }
}
