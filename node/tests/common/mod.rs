//! Shared pieces of the end-to-end tests: a node started through
//! `chat-testkit`, and a raw seed-JSON connection that speaks exactly what
//! the seed's C++ client speaks (NUL-terminated objects). Cluster helpers are
//! in [`cluster`].
#![allow(dead_code)]

pub mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chat_testkit::{LocalNode, NodeOptions};
use serde_json::Value;

pub fn node() -> LocalNode {
    node_with(&[])
}

pub fn node_with(args: &[&str]) -> LocalNode {
    LocalNode::start(NodeOptions {
        binary: Some(env!("CARGO_BIN_EXE_chat-node").into()),
        args: args.iter().map(|s| s.to_string()).collect(),
        log: std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        ..NodeOptions::default()
    })
    .expect("starting chat-node")
}

/// A connection speaking the seed's JSON protocol.
pub struct Json {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Json {
    pub fn connect(addr: SocketAddr) -> Json {
        Json::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Speaks JSON over an already connected stream.
    pub fn over(stream: TcpStream) -> Json {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Json {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one request the way the seed's client does: text plus NUL.
    pub fn send(&mut self, request: &str) {
        let mut bytes = request.as_bytes().to_vec();
        bytes.push(0);
        self.send_raw(&bytes);
    }

    /// The next NUL-terminated object from the node; panics after 10 s.
    pub fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .expect("a reply within 10 s")
    }

    /// The next object, or `None` if nothing complete arrives in `wait`
    /// (or the node closed the connection).
    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let object: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(
                    serde_json::from_slice(&object[..end]).expect("the node sends valid JSON"),
                );
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends a request and returns the next object.
    pub fn ask(&mut self, request: &str) -> Value {
        self.send(request);
        self.recv()
    }

    /// Whether the node closed the connection (reads until EOF, up to `wait`).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Registers `name` over JSON and returns the new id.
pub fn json_register(addr: SocketAddr, name: &str) -> u64 {
    let reply =
        Json::connect(addr).ask(&format!(r#"{{"msgid":4,"name":"{name}","pwd":"123456"}}"#));
    assert_eq!(reply["msgid"], 5, "{reply}");
    assert_eq!(reply["errno"], 0, "{reply}");
    reply["id"].as_u64().expect("numeric id")
}

/// Logs `id` in over a new JSON connection.
pub fn json_login(addr: SocketAddr, id: u64) -> (Json, Value) {
    let mut c = Json::connect(addr);
    let reply = c.ask(&format!(r#"{{"msgid":1,"id":{id},"pwd":"123456"}}"#));
    assert_eq!(reply["msgid"], 2, "{reply}");
    assert_eq!(reply["errno"], 0, "{reply}");
    (c, reply)
}

/// Logs `id` in again after its previous connection was closed: the node
/// releases the user once it has seen the close, so "already online" (errno
/// 2) is retried for a few seconds; anything else must be a success.
pub fn json_login_again(addr: SocketAddr, id: u64) -> (Json, Value) {
    let started = std::time::Instant::now();
    loop {
        let mut c = Json::connect(addr);
        let reply = c.ask(&format!(r#"{{"msgid":1,"id":{id},"pwd":"123456"}}"#));
        if reply["errno"] == 2 && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(
            (reply["msgid"].as_u64(), reply["errno"].as_u64()),
            (Some(2), Some(0)),
            "{reply}"
        );
        return (c, reply);
    }
}

/// The FlatBuffers twin of [`json_login_again`].
pub async fn login_again(
    addr: SocketAddr,
    id: u64,
    password: &str,
) -> (chat_client::Client, chat_client::Login) {
    let started = std::time::Instant::now();
    loop {
        let c = chat_client::Client::connect(addr).await.expect("connect");
        match c.login(id, password).await {
            Err(e)
                if e.code() == Some(chat_client::ErrorCode::AlreadyOnline)
                    && started.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => {
                return (
                    c,
                    result.expect("login after the previous connection closed"),
                );
            }
        }
    }
}

/// The message ids of a login reply's `offlinemsg` page, in order.
pub fn offline_ids(login: &Value) -> Vec<u64> {
    strings(login, "offlinemsg")
        .iter()
        .map(|m| m["messageid"].as_u64().expect("message id"))
        .collect()
}

/// Parses one of the login reply's arrays of JSON-encoded strings.
pub fn strings(reply: &Value, field: &str) -> Vec<Value> {
    reply[field]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    serde_json::from_str(s.as_str().expect("array of strings"))
                        .expect("each string is JSON")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Registers `name` (password "pw") on a connection of its own, then logs it
/// in over FlatBuffers on a raw socket that the caller never reads: a
/// client that stopped reading. Returns the socket and the user id.
pub async fn fb_login_never_reading(addr: SocketAddr, name: &str) -> (tokio::net::TcpStream, u64) {
    let client = chat_client::Client::connect(addr).await.unwrap();
    let id = client.register(name, "pw").await.unwrap();
    drop(client);
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let login = chat_client::encode_request(
        1,
        &chat_client::Request::Login {
            user_id: id,
            password: "pw",
        },
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, &login)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (raw, id)
}
