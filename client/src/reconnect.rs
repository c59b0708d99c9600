//! A session that survives dropped connections: [`ReconnectingClient`].
//!
//! It holds a list of [`Endpoint`]s (a balancer, or several nodes of a
//! cluster), the user's id and password once logged in, and a [`Backoff`]
//! policy. When the connection ends (end of stream, reset, I/O or protocol
//! error), [`ReconnectingClient::next_event`] says so with
//! [`SessionEvent::Reconnecting`], waits the backoff delay, connects to the
//! next endpoint, logs in again and says [`SessionEvent::Reconnected`]; then
//! it hands out the messages stored meanwhile and the live pushes as before.
//!
//! ```no_run
//! # async fn demo() -> chat_client::Result<()> {
//! use chat_client::reconnect::{Backoff, Endpoint, ReconnectingClient, SessionEvent};
//! use chat_client::{ClientConfig, Event};
//!
//! let endpoints = vec![Endpoint::Node("127.0.0.1:6000".into()), Endpoint::Node("127.0.0.1:6001".into())];
//! let (mut bob, login) =
//!     ReconnectingClient::connect_and_login(endpoints, ClientConfig::default(), Backoff::default(), 2, "pw").await?;
//! println!("{} offline messages", login.pending.len());
//! loop {
//!     match bob.next_event().await? {
//!         SessionEvent::Event(Event::Message(m)) => println!("{}: {}", m.sender_name, m.text),
//!         SessionEvent::Event(_) => {}
//!         SessionEvent::Reconnecting { attempt, after, .. } => {
//!             println!("connection lost; reconnecting in {} ms (attempt {attempt})", after.as_millis())
//!         }
//!         SessionEvent::Reconnected { .. } => println!("reconnected"),
//!     }
//! }
//! # }
//! ```
//!
//! # Semantics
//!
//! - **Exactly once, in order, to the application.** Every message, whether
//!   from a login reply's `pending` or pushed later, passes through one
//!   [`Dedup`] for the life of the `ReconnectingClient`, so a message the
//!   node delivers again after a re-login (it was not acknowledged before
//!   the drop) is dropped instead of being handed out twice. The node
//!   delivers a session's messages in id order, stored ones before live ones,
//!   so what is handed out stays in id order, and so in order per
//!   conversation. The window is [`Dedup::default`]'s (65 536 ids).
//! - **Acknowledgement.** A message is acknowledged (`DeliveryAck` with
//!   `quiet`, so the node sends no reply) on the connection it came on when it is handed
//!   to the application: returned by [`ReconnectingClient::next_event`], or
//!   in the `pending` of the [`Login`] returned by a login. A duplicate that
//!   is dropped is acknowledged too, so a re-login does not get everything
//!   again. An acknowledgement lost with a dropped connection only means the
//!   message comes again at the next login, where it is dropped as a
//!   duplicate. A message handed out is the application's: if the process
//!   dies before it is shown, it is not delivered again.
//! - **Backoff.** Attempt `k` after a drop (1, 2, ...) waits a delay drawn
//!   uniformly from `[0, min(max, initial · factor^(k-1))]` ("full jitter",
//!   so that many clients dropped at once by a node restart do not come
//!   back in step). Attempt 1 goes to the endpoint that was in use, each
//!   further one to the next endpoint in the list, round robin (so a
//!   cluster's nodes, or a balancer, are tried in turn). Connecting gives up
//!   after [`ClientConfig::request_timeout`] (10 s when there is none); the
//!   login waits for its reply as any request does.
//!   [`Backoff::max_attempts`] bounds the attempts (default: unbounded).
//! - **Which errors are retried.** Connection failures, closed connections,
//!   timeouts and the node's `AlreadyOnline` (after a drop the node may not
//!   have released the old session yet), `Internal`, `Overloaded` and
//!   `RateLimited` are retried with backoff. `InvalidCredentials` (the
//!   password changed, the account is gone) and any other error reply to
//!   the login are fatal: `next_event` returns the error, and the client
//!   stays disconnected. A session closed because the user logged in
//!   elsewhere (the node's `NotLoggedIn` "logged in again elsewhere" on
//!   request 0) is fatal as well: reconnecting would take the user back
//!   from the newer session.
//! - **Requests are never resent.** While disconnected, requests
//!   ([`ReconnectingClient::send_direct`], [`ReconnectingClient::client`]
//!   and the rest) fail at once with an I/O error of kind
//!   [`std::io::ErrorKind::NotConnected`] ("not connected ...; the request
//!   was not sent"). A request in flight when the connection drops fails with
//!   [`ClientError::Closed`] or [`ClientError::Io`]: its outcome is unknown
//!   (a message may have been stored and delivered), so it is not sent again
//!   behind the application's back; the application decides (sending again
//!   may duplicate the message for its recipient, whose message ids differ).
//! - **Driven by `next_event`.** Reconnecting happens inside
//!   [`ReconnectingClient::next_event`]; an application that does not call
//!   it stays disconnected. `next_event` is cancel safe in the sense that
//!   matters (it may be a branch of `tokio::select!`): dropping it while it
//!   waits loses nothing; dropping it in the middle of an attempt abandons
//!   that attempt (the half-open connection is closed, and what its login
//!   brought was not acknowledged, so it comes again) and the next call
//!   makes a new one.
//! - **Detecting a drop.** A drop is seen when the connection ends. A peer
//!   that vanishes without a reset is only seen once TCP gives up; set
//!   [`ClientConfig::keepalive`] so that pings keep the node from closing
//!   the session as idle.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::connection::{Client, ClientConfig};
use crate::dedup::Dedup;
use crate::error::{ClientError, ErrorCode, Result};
use crate::model::{Event, GroupId, Login, Message, MessageId, Reply, Sent, UserId};

/// How long to wait before reconnection attempt `k`: exponential growth with
/// full jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first attempt's delay.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// How much the ceiling grows per attempt (at least 1).
    pub factor: f64,
    /// Give up after this many failed attempts in a row (`None`: never).
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 5 s, never giving up.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            factor: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The largest delay of attempt `attempt` (1-based; 0 counts as 1):
    /// `min(max, initial · factor^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1000) as i32;
        let grown = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp);
        let max = self.max.max(self.initial);
        if !grown.is_finite() || grown >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(grown)
        }
    }

    /// The delay before attempt `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] drawing from `rng`.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A node, or a balancer in proxy mode: connect there.
    Node(String),
    /// A balancer in redirect mode: ask it which node, then connect there.
    Redirect(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Node(a) => f.write_str(a),
            Endpoint::Redirect(a) => write!(f, "balancer {a}"),
        }
    }
}

/// What [`ReconnectingClient::next_event`] hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A push from the node (messages are never handed out twice).
    Event(Event),
    /// The connection is gone (or attempt `attempt - 1` failed): attempt
    /// `attempt` is made in `after`. `reason` says what went wrong.
    Reconnecting {
        attempt: u32,
        after: Duration,
        reason: String,
    },
    /// Connected again to `address`, and logged in again when the session
    /// was logged in (`login`); not logged in, once the node answered a
    /// ping. The login's `pending` is empty: its
    /// messages follow as [`SessionEvent::Event`]s, without duplicates.
    Reconnected {
        address: String,
        login: Option<Login>,
    },
}

/// A session over a connection that is made again when it drops; see the
/// [module docs](self) for what is and is not guaranteed.
#[derive(Debug)]
pub struct ReconnectingClient {
    endpoints: Vec<Endpoint>,
    config: ClientConfig,
    backoff: Backoff,
    credentials: Option<(UserId, String)>,
    conn: Option<Client>,
    address: Option<String>,
    /// The endpoint in use, or the one the next attempt goes to.
    endpoint: usize,
    dedup: Dedup,
    /// Messages from a re-login, with the connection they came on.
    queue: VecDeque<(Client, Message)>,
    /// The number of the next attempt (0 while connected).
    attempt: u32,
    retry_at: Option<Instant>,
    /// The node said this session was replaced by a login elsewhere.
    replaced: Option<String>,
    /// A fatal error ended the session.
    dead: bool,
}

fn not_connected() -> ClientError {
    ClientError::Io(io::Error::new(
        io::ErrorKind::NotConnected,
        "not connected to the server (reconnecting); the request was not sent",
    ))
}

/// Whether a failed connection or login attempt is worth another try.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Server { code, .. } => matches!(
            code,
            ErrorCode::AlreadyOnline
                | ErrorCode::Internal
                | ErrorCode::Overloaded
                | ErrorCode::RateLimited
        ),
        ClientError::RequestIdInUse(_) => false,
        ClientError::Io(_)
        | ClientError::Protocol(_)
        | ClientError::Closed
        | ClientError::Timeout => true,
    }
}

impl ReconnectingClient {
    /// A client that is not connected yet: the first
    /// [`ReconnectingClient::next_event`] or login connects. Fails with
    /// `InvalidInput` when `endpoints` is empty.
    pub fn new(
        endpoints: Vec<Endpoint>,
        config: ClientConfig,
        backoff: Backoff,
    ) -> Result<ReconnectingClient> {
        if endpoints.is_empty() {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to connect to",
            )));
        }
        Ok(ReconnectingClient {
            endpoints,
            config,
            backoff,
            credentials: None,
            conn: None,
            address: None,
            endpoint: 0,
            dedup: Dedup::default(),
            queue: VecDeque::new(),
            attempt: 0,
            retry_at: None,
            replaced: None,
            dead: false,
        })
    }

    /// Connects (without logging in), trying each endpoint once in turn;
    /// fails with the last endpoint's error.
    pub async fn connect(
        endpoints: Vec<Endpoint>,
        config: ClientConfig,
        backoff: Backoff,
    ) -> Result<ReconnectingClient> {
        let mut rc = ReconnectingClient::new(endpoints, config, backoff)?;
        rc.connect_once().await?;
        Ok(rc)
    }

    /// Connects (each endpoint once in turn) and logs in; from then on the
    /// session is resumed after every drop. The login's `pending` messages
    /// are acknowledged.
    pub async fn connect_and_login(
        endpoints: Vec<Endpoint>,
        config: ClientConfig,
        backoff: Backoff,
        user_id: UserId,
        password: &str,
    ) -> Result<(ReconnectingClient, Login)> {
        let mut rc = ReconnectingClient::connect(endpoints, config, backoff).await?;
        let login = rc.login(user_id, password).await?;
        Ok((rc, login))
    }

    async fn connect_once(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..self.endpoints.len() {
            match self.open(self.endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = Some(e);
                    self.endpoint = (self.endpoint + 1) % self.endpoints.len();
                }
            }
        }
        Err(last.unwrap_or(ClientError::Closed))
    }

    /// Opens a connection to endpoint `i` and makes it the current one.
    async fn open(&mut self, i: usize) -> Result<()> {
        let limit = self
            .config
            .request_timeout
            .unwrap_or(Duration::from_secs(10));
        let config = self.config.clone();
        let connecting = async {
            match &self.endpoints[i] {
                Endpoint::Node(addr) => Client::connect_with(addr.as_str(), config)
                    .await
                    .map(|c| (c, addr.clone())),
                Endpoint::Redirect(balancer) => {
                    Client::connect_redirected(balancer.as_str(), config).await
                }
            }
        };
        let (client, address) = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| ClientError::Timeout)??;
        self.conn = Some(client);
        self.address = Some(address);
        self.endpoint = i;
        self.replaced = None;
        Ok(())
    }

    /// Logs in on the current connection (connecting first, each endpoint
    /// once, if there is none) and remembers the credentials, so that the
    /// session is resumed after a drop. `pending` holds only messages not
    /// handed out before, and they are acknowledged.
    pub async fn login(&mut self, user_id: UserId, password: &str) -> Result<Login> {
        if self.conn.is_none() {
            self.connect_once().await?;
        }
        let client = self.conn.clone().ok_or_else(not_connected)?;
        let mut login = client.login(user_id, password).await?;
        login.pending = self.filter(&client, std::mem::take(&mut login.pending));
        self.credentials = Some((user_id, password.to_owned()));
        self.dead = false;
        Ok(login)
    }

    /// Logs out and forgets the credentials: after a drop the connection is
    /// made again but not logged in.
    pub async fn logout(&mut self) -> Result<()> {
        let client = self.client()?.clone();
        client.logout().await?;
        self.credentials = None;
        Ok(())
    }

    /// The current connection, for any request; while disconnected an I/O
    /// error of kind `NotConnected`.
    pub fn client(&self) -> Result<&Client> {
        self.conn.as_ref().ok_or_else(not_connected)
    }

    /// Whether a connection is up (as far as is known).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The address of the node (or proxy) connected to, if connected.
    pub fn address(&self) -> Option<&str> {
        self.conn.as_ref().and(self.address.as_deref())
    }

    /// The user id the session logs in as, once logged in.
    pub fn user_id(&self) -> Option<UserId> {
        self.credentials.as_ref().map(|(id, _)| *id)
    }

    /// Sends a direct message on the current connection; not resent if the
    /// connection drops (see the module docs).
    pub async fn send_direct(&self, to_id: UserId, text: &str) -> Result<Sent> {
        self.client()?.send_direct(to_id, text).await
    }

    /// Posts a message to a group on the current connection; not resent.
    pub async fn send_group(&self, group_id: GroupId, text: &str) -> Result<Sent> {
        self.client()?.send_group(group_id, text).await
    }

    /// Acknowledges messages up to `message_id` on the current connection.
    /// Rarely needed: messages are acknowledged as they are handed out.
    pub async fn ack(&self, message_id: MessageId) -> Result<()> {
        self.client()?.ack(message_id).await
    }

    /// Closes the connection; the client stays closed.
    pub async fn close(&mut self) {
        self.dead = true;
        self.credentials = None;
        self.queue.clear();
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
    }

    /// Keeps the messages of `messages` not handed out before, and
    /// acknowledges each (duplicates included) on `client`.
    fn filter(&mut self, client: &Client, messages: Vec<Message>) -> Vec<Message> {
        messages
            .into_iter()
            .filter(|m| self.accept(client, m))
            .collect()
    }

    /// Acknowledges `m` on `client` (without waiting) and says whether it
    /// is new to the application.
    fn accept(&mut self, client: &Client, m: &Message) -> bool {
        let _ = client.ack_quietly(m.id);
        self.dedup.first_time(m.id)
    }

    /// The next thing to tell the application: a push, or news of the
    /// connection. Reconnects when the connection has dropped. Fails only
    /// for good: wrong credentials, a session replaced by a login elsewhere,
    /// [`Backoff::max_attempts`] reached, or after [`ReconnectingClient::close`]
    /// ([`ClientError::Closed`]).
    pub async fn next_event(&mut self) -> Result<SessionEvent> {
        loop {
            if self.dead {
                return Err(ClientError::Closed);
            }
            if let Some((client, m)) = self.queue.pop_front() {
                if self.accept(&client, &m) {
                    return Ok(SessionEvent::Event(Event::Message(m)));
                }
                continue;
            }
            if let Some(client) = self.conn.clone() {
                match client.next_event().await {
                    Some(Event::Message(m)) => {
                        if self.accept(&client, &m) {
                            return Ok(SessionEvent::Event(Event::Message(m)));
                        }
                    }
                    Some(Event::Unsolicited {
                        request_id: 0,
                        reply:
                            Reply::Error {
                                code: ErrorCode::NotLoggedIn,
                                message,
                                retry_after,
                            },
                    }) if self.credentials.is_some() => {
                        self.replaced = Some(message.clone());
                        return Ok(SessionEvent::Event(Event::Unsolicited {
                            request_id: 0,
                            reply: Reply::Error {
                                code: ErrorCode::NotLoggedIn,
                                message,
                                retry_after,
                            },
                        }));
                    }
                    Some(ev) => return Ok(SessionEvent::Event(ev)),
                    None => {
                        self.conn = None;
                        if let Some(message) = self.replaced.take() {
                            self.dead = true;
                            self.credentials = None;
                            return Err(ClientError::Server {
                                code: ErrorCode::NotLoggedIn,
                                message,
                                retry_after: None,
                            });
                        }
                        let reason = match client.ping().await {
                            Err(e) => e.to_string(),
                            Ok(_) => "connection closed".to_owned(),
                        };
                        return self.schedule(reason);
                    }
                }
                continue;
            }
            if self.attempt == 0 {
                // Never connected, or a failed login left no connection.
                return self.schedule("not connected".to_owned());
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
            }
            match self.reconnect().await {
                Ok(ev) => return Ok(ev),
                Err(e) if retryable(&e) => {
                    self.conn = None;
                    self.endpoint = (self.endpoint + 1) % self.endpoints.len();
                    return self.schedule(e.to_string());
                }
                Err(e) => {
                    self.conn = None;
                    self.dead = true;
                    self.credentials = None;
                    return Err(e);
                }
            }
        }
    }

    /// Plans the next attempt and says so.
    fn schedule(&mut self, reason: String) -> Result<SessionEvent> {
        self.attempt += 1;
        if let Some(max) = self.backoff.max_attempts
            && self.attempt > max
        {
            self.dead = true;
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("gave up reconnecting after {max} attempts: {reason}"),
            )));
        }
        let after = self.backoff.delay(self.attempt);
        self.retry_at = Some(Instant::now() + after);
        Ok(SessionEvent::Reconnecting {
            attempt: self.attempt,
            after,
            reason,
        })
    }

    /// One attempt: connect to the current endpoint and log in again.
    async fn reconnect(&mut self) -> Result<SessionEvent> {
        self.open(self.endpoint).await?;
        let client = self.conn.clone().ok_or_else(not_connected)?;
        let login = match &self.credentials {
            Some((user_id, password)) => {
                let mut login = client.login(*user_id, password).await?;
                let pending = std::mem::take(&mut login.pending);
                self.queue
                    .extend(pending.into_iter().map(|m| (client.clone(), m)));
                Some(login)
            }
            // Not logged in: a ping shows that a node answers (a relay or a
            // balancer may accept and then close).
            None => {
                client.ping().await?;
                None
            }
        };
        self.attempt = 0;
        self.retry_at = None;
        Ok(SessionEvent::Reconnected {
            address: self.address.clone().unwrap_or_default(),
            login,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceilings_grow_by_the_factor_up_to_the_maximum() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(400));
        assert_eq!(b.ceiling(6), Duration::from_millis(3200));
        assert_eq!(b.ceiling(7), Duration::from_secs(5));
        assert_eq!(b.ceiling(1000), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        for k in 1..40 {
            assert!(b.ceiling(k) <= b.ceiling(k + 1), "attempt {k}");
        }
        // A factor below 1 does not shrink; a max below initial is initial.
        let odd = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_millis(10),
            factor: 0.5,
            max_attempts: None,
        };
        assert_eq!(odd.ceiling(1), Duration::from_secs(1));
        assert_eq!(odd.ceiling(9), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_within_zero_and_the_ceiling() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..12 {
            let ceiling = b.ceiling(attempt);
            let delays: Vec<Duration> = (0..200).map(|_| b.delay_with(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: spread over the range, not clustered at the top.
            let low = delays.iter().filter(|d| **d < ceiling / 2).count();
            assert!((40..=160).contains(&low), "attempt {attempt}: {low}");
            let distinct: std::collections::HashSet<_> = delays.iter().collect();
            assert!(distinct.len() > 150, "attempt {attempt}");
        }
        assert!(b.delay(3) <= Duration::from_millis(400));
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(zero.delay(5), Duration::ZERO);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let server = |code| ClientError::Server {
            code,
            message: String::new(),
            retry_after: None,
        };
        assert!(retryable(&server(ErrorCode::AlreadyOnline)));
        assert!(retryable(&server(ErrorCode::Overloaded)));
        assert!(retryable(&ClientError::Closed));
        assert!(retryable(&ClientError::Timeout));
        assert!(retryable(&ClientError::Io(
            io::ErrorKind::ConnectionRefused.into()
        )));
        assert!(!retryable(&server(ErrorCode::InvalidCredentials)));
        assert!(!retryable(&server(ErrorCode::BadRequest)));
    }

    #[tokio::test]
    async fn requests_fail_clearly_while_disconnected() {
        let rc = ReconnectingClient::new(
            vec![Endpoint::Node("127.0.0.1:1".into())],
            ClientConfig::default(),
            Backoff::default(),
        )
        .unwrap();
        let e = rc.send_direct(2, "hi").await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Io(io) if io.kind() == io::ErrorKind::NotConnected),
            "{e}"
        );
        assert!(e.to_string().contains("not sent"), "{e}");
        assert!(!rc.is_connected());
        assert!(
            ReconnectingClient::new(vec![], ClientConfig::default(), Backoff::default()).is_err()
        );
    }

    #[tokio::test]
    async fn attempts_are_bounded_when_asked() {
        // Nothing listens on port 1: every attempt fails at once.
        let mut rc = ReconnectingClient::new(
            vec![
                Endpoint::Node("127.0.0.1:1".into()),
                Endpoint::Node("127.0.0.1:1".into()),
            ],
            ClientConfig::default(),
            Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
                factor: 2.0,
                max_attempts: Some(3),
            },
        )
        .unwrap();
        for attempt in 1..=3 {
            match rc.next_event().await.unwrap() {
                SessionEvent::Reconnecting {
                    attempt: a, after, ..
                } => {
                    assert_eq!(a, attempt);
                    assert!(after <= Duration::from_millis(2));
                }
                other => panic!("{other:?}"),
            }
        }
        let e = rc.next_event().await.unwrap_err();
        assert!(
            e.to_string().contains("gave up reconnecting after 3"),
            "{e}"
        );
        assert!(matches!(rc.next_event().await, Err(ClientError::Closed)));
    }
}
