//! Cross-node delivery over NATS: how the store thread of one node wakes the
//! sessions that other nodes serve.
//!
//! NATS is never the only copy of anything. A message is committed to the
//! store first; what travels here is a wake-up ("user 42 has something new")
//! or a presence change, and a woken session reads what it has not seen from
//! the store. So a lost wake-up delays a message, it never loses it, and this
//! module's job is to notice every loss and wake everyone it may have hit.
//!
//! # Subjects
//!
//! One subject per node, `chat.node.<node-id>` ([`node_subject`], in
//! `chat-schema` so that tools watching a cluster name it alike), which only
//! that node subscribes to. The routing table is the session claims in the
//! store: the store thread reads the recipient's claim (it does so anyway,
//! inside the transaction that stores the message) and publishes to the node
//! that holds it. So a node hears only about the users it hosts, a login
//! costs no subscription change, and NATS's interest graph has one subject
//! per node, whatever the number of users.
//!
//! # Data flow
//!
//! ```text
//! store thread ──Publisher::publish (try_send)──▶ bounded channel ──▶ tokio task ──▶ NATS
//! NATS ──▶ subscription ──▶ tokio task: check sequence ──▶ router inbox of the user's home shard
//! ```
//!
//! The bus runs a current-thread tokio runtime on a thread of its own (not
//! on a shard, whose runtime must not wait on NATS) and meets the rest of
//! the node only through flume channels. The store
//! thread never blocks on NATS: when the outgoing channel is full (NATS down,
//! the client's buffer full) the wake-up is dropped and counted.
//!
//! # Finding gaps
//!
//! Core NATS delivers at most once. Every envelope a node sends to a peer
//! carries a sequence number per (sender, receiver) pair and the sender's
//! incarnation; once a second the sender also sends each peer a heartbeat
//! with the last number it used. The receiver treats as a gap: a jump in the
//! numbers, a heartbeat ahead of what arrived, a peer that restarted or went
//! silent, its own reconnection to NATS, and async-nats's slow-consumer
//! event. On a gap it resyncs: every shard wakes every online session, each
//! of which reads from the store past the last message it pushed. Gaps are
//! counted in `chat_node_nats_gaps_total{reason}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_schema::nats::node_subject;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::command::Push;
use crate::event::RouterEvent;
use crate::metric_names;
use crate::model::{GroupId, UserId};

/// How long a starting node waits for NATS before it starts without it.
const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// Settings of the bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub url: String,
    pub node_id: String,
    /// Distinguishes this run of the node from its earlier ones.
    pub incarnation: u64,
    /// Messages the subscription buffers before async-nats drops them.
    pub subscription_capacity: usize,
    /// How often heartbeats go out.
    pub heartbeat_every: Duration,
}

/// One thing a node tells another about a user it hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// `user` has new stored messages.
    Wake { user: UserId },
    /// Friend `who` of `user` came online or went offline.
    Presence {
        user: UserId,
        who: UserId,
        name: String,
        online: bool,
    },
    /// Another login of `user` waits: their session closes if it has been
    /// silent for the takeover window.
    Takeover { user: UserId },
    /// The creator of `group` removed `user` from it.
    RemovedFromGroup { user: UserId, group: GroupId },
    /// `friend` ended their friendship with `user`.
    FriendRemoved { user: UserId, friend: UserId },
    /// `reader` read their direct conversation with `user` up to `up_to`.
    ReadReceipt {
        user: UserId,
        reader: UserId,
        up_to: u64,
    },
}

/// What goes over the wire: the events of one commit for one node, or a
/// heartbeat (no events) carrying the last sequence number sent.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    incarnation: u64,
    seq: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<Event>,
    /// When it was published (µs since the epoch), for the NATS latency
    /// (0 from a node that does not say).
    #[serde(default)]
    sent_us: u64,
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub use crate::metrics::GAP_REASONS;

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("starting the NATS thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("connecting to NATS at {url}: {message}")]
    Connect { url: String, message: String },
}

/// The store thread's side of the bus: numbers and queues envelopes.
pub struct Publisher {
    node_id: String,
    incarnation: u64,
    tx: flume::Sender<(String, Vec<u8>)>,
    /// Last sequence number sent to each peer.
    sent: HashMap<String, u64>,
}

impl Publisher {
    /// Queues `events` for `node`; never blocks. A full queue drops them (the
    /// receiver sees the gap in the sequence numbers).
    pub fn publish(&mut self, node: &str, events: Vec<Event>) {
        let seq = self.sent.entry(node.to_owned()).or_insert(0);
        *seq += 1;
        let envelope = Envelope {
            from: self.node_id.clone(),
            incarnation: self.incarnation,
            seq: *seq,
            events,
            sent_us: now_us(),
        };
        self.send(node, &envelope);
    }

    /// Tells every peer this node has sent to how far its numbers went.
    pub fn heartbeat(&mut self) {
        for (node, seq) in &self.sent {
            let envelope = Envelope {
                from: self.node_id.clone(),
                incarnation: self.incarnation,
                seq: *seq,
                events: Vec::new(),
                sent_us: now_us(),
            };
            self.send(node, &envelope);
        }
    }

    fn send(&self, node: &str, envelope: &Envelope) {
        let payload = serde_json::to_vec(envelope).expect("envelopes serialize");
        match self.tx.try_send((node_subject(node), payload)) {
            Ok(()) => {}
            Err(_) => {
                metrics::counter!(metric_names::NATS_DROPPED_TOTAL).increment(1);
            }
        }
    }
}

/// The running bus; [`Bus::stop`] ends it.
pub struct Bus {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bus {
    /// Stops the bus after sending what is queued (at most a second).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects to NATS (retrying in the background if it is not up yet) and
/// starts the bus thread. `routers` are the shards' router inboxes.
pub fn start(
    config: BusConfig,
    routers: Vec<flume::Sender<Vec<RouterEvent>>>,
) -> Result<(Publisher, Bus), BusError> {
    let url = config.url.clone();
    let (tx, outgoing) = flume::bounded(4096);
    let publisher = Publisher {
        node_id: config.node_id.clone(),
        incarnation: config.incarnation,
        tx,
        sent: HashMap::new(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("nats".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(run(config, routers, outgoing, stop_rx, ready_tx));
        })?;
    let bus = Bus {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let failed = match ready_rx.recv() {
        Ok(Ok(())) => return Ok((publisher, bus)),
        Ok(Err(message)) => message,
        Err(_) => "the NATS thread ended".into(),
    };
    bus.stop();
    Err(BusError::Connect {
        url,
        message: failed,
    })
}

/// What the bus thread hears from async-nats's event callback.
enum Signal {
    Connected,
    Disconnected,
    SlowConsumer,
}

async fn run(
    config: BusConfig,
    routers: Vec<flume::Sender<Vec<RouterEvent>>>,
    outgoing: flume::Receiver<(String, Vec<u8>)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let (signal_tx, mut signals) = tokio::sync::mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::new()
        .name(format!("chat-node {}", config.node_id))
        .subscription_capacity(config.subscription_capacity)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1_000))
        })
        .event_callback(move |event| {
            let signal = match event {
                async_nats::Event::Connected => Some(Signal::Connected),
                async_nats::Event::Disconnected => Some(Signal::Disconnected),
                async_nats::Event::SlowConsumer(_) => Some(Signal::SlowConsumer),
                other => {
                    tracing::warn!(event = %other, "NATS");
                    None
                }
            };
            if let Some(signal) = signal {
                let _ = signal_tx.send(signal);
            }
            async {}
        });
    let client = match options.connect(config.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let mut subscription = match client.subscribe(node_subject(&config.node_id)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("subscribing: {e}")));
            return;
        }
    };
    // A flush returns once the server has answered a ping sent after the
    // subscription, so the node accepts clients only once it can hear about
    // them. When NATS is not up yet the node starts anyway and catches up at
    // its first connection (a reconnect resync).
    let joined = matches!(
        tokio::time::timeout(STARTUP_WAIT, client.flush()).await,
        Ok(Ok(()))
    );
    if joined {
        tracing::info!(url = %config.url, subject = %node_subject(&config.node_id), "joined the cluster over NATS");
    } else {
        tracing::warn!(url = %config.url, "NATS is not reachable yet; starting without it and retrying");
    }
    let _ = ready.send(Ok(()));

    let mut publishing = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Ok((subject, payload)) = outgoing.recv_async().await {
                match client.publish(subject, payload.into()).await {
                    Ok(()) => metrics::counter!(metric_names::NATS_PUBLISHED_TOTAL).increment(1),
                    Err(e) => {
                        tracing::debug!(error = %e, "NATS publish failed");
                        metrics::counter!(metric_names::NATS_DROPPED_TOTAL).increment(1);
                    }
                }
            }
        })
    };

    let mut inbox = Inbox::new(routers, config.heartbeat_every);
    crate::metrics::zero_nats();
    let connected = metrics::gauge!(metric_names::NATS_CONNECTED);
    connected.set(if joined { 1.0 } else { 0.0 });
    let mut was_down = !joined;
    let mut tick = tokio::time::interval(config.heartbeat_every);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            message = subscription.next() => match message {
                Some(message) => inbox.receive(&message.payload).await,
                None => {
                    tracing::error!("NATS subscription ended");
                    break;
                }
            },
            Some(signal) = signals.recv() => match signal {
                Signal::Disconnected => {
                    tracing::warn!("disconnected from NATS; deliveries wait in the store");
                    connected.set(0.0);
                    was_down = true;
                }
                Signal::Connected => {
                    connected.set(1.0);
                    if was_down {
                        tracing::info!("reconnected to NATS");
                        was_down = false;
                        inbox.resync("reconnect").await;
                    }
                }
                Signal::SlowConsumer => {
                    tracing::warn!("NATS dropped wake-ups for this node (slow consumer)");
                    inbox.resync("slow_consumer").await;
                }
            },
            _ = tick.tick() => inbox.check_silent_peers().await,
        }
    }
    // The store thread has ended and dropped its publisher: send what it
    // queued, then close.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = (&mut publishing).await;
        let _ = client.flush().await;
    })
    .await;
    publishing.abort();
}

/// What a receiving node knows about one peer.
struct Peer {
    incarnation: u64,
    seq: u64,
    heard: Instant,
}

/// The receiving side: hands events to the shards and watches for gaps.
struct Inbox {
    routers: Vec<flume::Sender<Vec<RouterEvent>>>,
    peers: HashMap<String, Peer>,
    silence: Duration,
}

impl Inbox {
    fn new(routers: Vec<flume::Sender<Vec<RouterEvent>>>, heartbeat_every: Duration) -> Inbox {
        Inbox {
            routers,
            peers: HashMap::new(),
            silence: heartbeat_every * 3 + Duration::from_millis(500),
        }
    }

    async fn receive(&mut self, payload: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable message on this node's subject");
                metrics::counter!(metric_names::NATS_BAD_MESSAGES_TOTAL).increment(1);
                return;
            }
        };
        metrics::counter!(metric_names::NATS_RECEIVED_TOTAL).increment(1);
        if envelope.sent_us > 0 {
            let latency_us = now_us().saturating_sub(envelope.sent_us);
            metrics::histogram!(metric_names::NATS_LATENCY_SECONDS).record(latency_us as f64 / 1e6);
        }
        if let Some(reason) = self.track(&envelope) {
            self.resync(reason).await;
        }
        if envelope.events.is_empty() {
            return;
        }
        let mut per_shard: Vec<Vec<RouterEvent>> = vec![Vec::new(); self.routers.len()];
        for event in envelope.events {
            let event = match event {
                Event::Wake { user } => RouterEvent::Wake { user },
                Event::Presence {
                    user,
                    who,
                    name,
                    online,
                } => RouterEvent::Presence {
                    user,
                    who,
                    name: Arc::from(name),
                    online,
                },
                Event::Takeover { user } => RouterEvent::Takeover { user },
                Event::RemovedFromGroup { user, group } => RouterEvent::Notify {
                    user,
                    push: Push::RemovedFromGroup { group },
                },
                Event::FriendRemoved { user, friend } => RouterEvent::Notify {
                    user,
                    push: Push::FriendRemoved { friend },
                },
                Event::ReadReceipt {
                    user,
                    reader,
                    up_to,
                } => RouterEvent::Notify {
                    user,
                    push: Push::ReadReceipt {
                        reader,
                        peer: user,
                        up_to,
                    },
                },
            };
            per_shard[event.home_shard(self.routers.len())].push(event);
        }
        for (shard, events) in per_shard.into_iter().enumerate() {
            if !events.is_empty() {
                // A shard that is gone belongs to a node that is stopping.
                let _ = self.routers[shard].send_async(events).await;
            }
        }
    }

    /// Updates what is known of the sender; returns why there is a gap, if
    /// there is one.
    fn track(&mut self, envelope: &Envelope) -> Option<&'static str> {
        let heartbeat = envelope.events.is_empty();
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&envelope.from) else {
            self.peers.insert(
                envelope.from.clone(),
                Peer {
                    incarnation: envelope.incarnation,
                    seq: envelope.seq,
                    heard: now,
                },
            );
            // A peer heard for the first time may have sent before this node
            // subscribed; its first envelope says how many.
            let missed = if heartbeat {
                envelope.seq > 0
            } else {
                envelope.seq > 1
            };
            return missed.then_some("sequence");
        };
        peer.heard = now;
        if peer.incarnation != envelope.incarnation {
            // The peer restarted: what it committed before dying may never
            // have been published.
            peer.incarnation = envelope.incarnation;
            peer.seq = envelope.seq;
            return Some("peer_restarted");
        }
        let expected = if heartbeat { peer.seq } else { peer.seq + 1 };
        let gap = envelope.seq > expected;
        peer.seq = peer.seq.max(envelope.seq);
        gap.then_some("sequence")
    }

    /// Forgets peers that stopped sending heartbeats and resyncs once for
    /// them: they may have died between a commit and its publish.
    async fn check_silent_peers(&mut self) {
        let silence = self.silence;
        let before = self.peers.len();
        self.peers.retain(|node, peer| {
            let alive = peer.heard.elapsed() < silence;
            if !alive {
                tracing::info!(peer = %node, "peer went silent");
            }
            alive
        });
        if self.peers.len() < before {
            self.resync("peer_silent").await;
        }
    }

    /// Wakes every online session of every shard.
    async fn resync(&mut self, reason: &'static str) {
        metrics::counter!(metric_names::NATS_GAPS_TOTAL, "reason" => reason).increment(1);
        metrics::counter!(metric_names::RESYNCS_TOTAL).increment(1);
        tracing::debug!(reason, "resync: every session reads the store");
        for router in &self.routers {
            let _ = router.send_async(vec![RouterEvent::Resync]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(from: &str, incarnation: u64, seq: u64, events: usize) -> Envelope {
        Envelope {
            from: from.into(),
            incarnation,
            seq,
            events: (0..events as u64)
                .map(|user| Event::Wake { user })
                .collect(),
            sent_us: 0,
        }
    }

    #[test]
    fn gaps_are_found_in_sequences_heartbeats_and_restarts() {
        let mut inbox = Inbox::new(Vec::new(), Duration::from_secs(1));
        assert_eq!(inbox.track(&envelope("a", 1, 1, 1)), None);
        assert_eq!(inbox.track(&envelope("a", 1, 2, 1)), None);
        assert_eq!(
            inbox.track(&envelope("a", 1, 2, 0)),
            None,
            "heartbeat in step"
        );
        assert_eq!(inbox.track(&envelope("a", 1, 4, 1)), Some("sequence"));
        assert_eq!(
            inbox.track(&envelope("a", 1, 5, 0)),
            Some("sequence"),
            "heartbeat ahead"
        );
        assert_eq!(inbox.track(&envelope("a", 1, 6, 1)), None);
        assert_eq!(inbox.track(&envelope("a", 2, 1, 1)), Some("peer_restarted"));
        assert_eq!(inbox.track(&envelope("a", 2, 2, 1)), None);
        assert_eq!(inbox.track(&envelope("b", 7, 3, 1)), Some("sequence"));
        assert_eq!(inbox.track(&envelope("c", 7, 0, 0)), None);
    }

    #[test]
    fn envelopes_round_trip_as_json() {
        let e = Envelope {
            from: "n1".into(),
            incarnation: 9,
            seq: 3,
            events: vec![
                Event::Wake { user: 4 },
                Event::Presence {
                    user: 5,
                    who: 6,
                    name: "bob".into(),
                    online: true,
                },
                Event::RemovedFromGroup { user: 7, group: 8 },
                Event::Takeover { user: 14 },
                Event::FriendRemoved {
                    user: 9,
                    friend: 10,
                },
            ],
            sent_us: 1_700_000_000_000_000,
        };
        let back: Envelope = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!((back.from.as_str(), back.seq), ("n1", 3));
        assert_eq!(back.events, e.events);
    }
}
