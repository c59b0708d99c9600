//! The node's settings: command-line flags, each also readable from a
//! `CHAT_NODE_*` environment variable, and an optional TOML file (`--config`)
//! with the same keys in snake_case. A flag or variable wins over the file,
//! the file over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_ops::settings::{self, SettingsError};
use clap::Parser;
use serde::Deserialize;

use crate::store::scylla::ScyllaOptions;
use crate::store::sqlite::SyncPolicy;

/// `--history-retention` when not given: 30 days.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The longest `--commit-window` accepted.
const MAX_COMMIT_WINDOW: Duration = Duration::from_millis(100);

const EXAMPLES: &str = "\
Examples:
  chat-node                                   # 127.0.0.1:6000, data in ./chat-data
  chat-node --listen 0.0.0.0:6000 --shards 2 --data-dir /var/lib/chat
  CHAT_NODE_LISTEN=127.0.0.1:7000 chat-node --metrics-listen 127.0.0.1:9101
  chat-node --config node.toml                # keys as below, in snake_case
  # a cluster on one machine: every node shares the data directory and NATS
  chat-node --nats nats://127.0.0.1:4222 --node-id a --listen 127.0.0.1:6000 --metrics-listen 127.0.0.1:9100
  chat-node --nats nats://127.0.0.1:4222 --node-id b --listen 127.0.0.1:6001 --metrics-listen 127.0.0.1:9101
  # across machines, on ScyllaDB (create the schema once with --init-schema)
  chat-node --store scylla --scylla-nodes 10.0.0.5:9042,10.0.0.6:9042 --init-schema --nats nats://10.0.0.9:4222";

/// Command-line flags. Every value is optional here so that the TOML file can
/// fill what the command line leaves out; defaults are applied in `resolve`.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "chat-node", version, about = "Chat server node (FlatBuffers and seed JSON protocols on one port)", after_help = EXAMPLES)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Args {
    /// TOML file with any of these settings.
    #[arg(long, env = "CHAT_NODE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address for clients [default: 127.0.0.1:6000].
    #[arg(long, env = "CHAT_NODE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus /metrics endpoint [default: 127.0.0.1:9100].
    #[arg(long, env = "CHAT_NODE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./chat-data].
    #[arg(long, env = "CHAT_NODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Executors (threads, one per core) [default: cores - 1, at least 1:
    /// the store thread gets a core of its own].
    #[arg(long, env = "CHAT_NODE_SHARDS")]
    pub shards: Option<usize>,
    /// Unique name of this node: letters, digits, `-` and `_` [default: host name and client port, e.g. `web1-6000`].
    #[arg(long, env = "CHAT_NODE_NODE_ID")]
    pub node_id: Option<String>,
    /// Largest frame or JSON request a client may send, in bytes [default: 65536].
    #[arg(long, env = "CHAT_NODE_MAX_FRAME")]
    pub max_frame: Option<usize>,
    /// Longest message text, in bytes [default: 4096].
    #[arg(long, env = "CHAT_NODE_MAX_TEXT")]
    pub max_text: Option<usize>,
    /// Close connections silent for this long, e.g. 300s or 5m [default: 300s].
    #[arg(long, env = "CHAT_NODE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub idle_timeout: Option<Duration>,
    /// Once the first byte of a request arrived, how long the rest may take (as nginx's client_header_timeout); a client that trickles a frame is closed [default: 10s].
    #[arg(long, env = "CHAT_NODE_FRAME_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub frame_timeout: Option<Duration>,
    /// How long a connection may stay without logging in (registering and pinging included) before it is closed [default: 60s].
    #[arg(long, env = "CHAT_NODE_LOGIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub login_timeout: Option<Duration>,
    /// Bytes queued to a client that does not read before it is disconnected [default: 1048576].
    #[arg(long, env = "CHAT_NODE_MAX_OUTBOUND")]
    pub max_outbound: Option<usize>,
    /// Durability of each group commit: `normal` survives a process crash,
    /// `full` also a power loss (fsync per commit) [default: normal].
    #[arg(long, env = "CHAT_NODE_SYNC")]
    pub sync: Option<SyncArg>,
    /// Most requests the store commits in one transaction [default: 1024].
    #[arg(long, env = "CHAT_NODE_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// How long the store's writer waits after a batch's first write for
    /// more to share its commit, e.g. 300us: less CPU per message under
    /// steady load, that much more latency for each (see docs/architecture.md,
    /// "Group commit window"). 0 commits at once [default: 0].
    #[arg(long, env = "CHAT_NODE_COMMIT_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub commit_window: Option<Duration>,
    /// Deprecated, no effect: how long an idle glommio executor spun before
    /// it slept. The shards run tokio since 2026-12-03 and park at once;
    /// the flag is still accepted, with a warning, so that configurations
    /// naming it keep starting (see docs/architecture.md, "Threads").
    #[arg(long, env = "CHAT_NODE_SPIN_BEFORE_PARK", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub spin_before_park: Option<Duration>,
    /// Run the store's writer on shard 0's executor instead of a thread of
    /// its own (SQLite only) [default: true with one shard and no --nats].
    #[arg(long, env = "CHAT_NODE_STORE_ON_SHARD", num_args = 0..=1, default_missing_value = "true")]
    pub store_on_shard: Option<bool>,
    /// Stored messages sent per page when a user catches up [default: 1000].
    #[arg(long, env = "CHAT_NODE_PENDING_PAGE")]
    pub pending_page: Option<usize>,
    /// Argon2id memory cost in KiB [default: 19456].
    #[arg(long, env = "CHAT_NODE_ARGON2_MEMORY_KIB")]
    pub argon2_memory_kib: Option<u32>,
    /// Argon2id iterations [default: 2].
    #[arg(long, env = "CHAT_NODE_ARGON2_ITERATIONS")]
    pub argon2_iterations: Option<u32>,
    /// NATS server joining this node to a cluster, e.g. nats://127.0.0.1:4222 [default: none, the node runs alone].
    #[arg(long, env = "CHAT_NODE_NATS")]
    pub nats: Option<String>,
    /// How long a node's users stay claimed after it stops renewing its lease (a crash) [default: 10s].
    #[arg(long, env = "CHAT_NODE_LEASE_TTL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub lease_ttl: Option<Duration>,
    /// Wake-ups the NATS subscription buffers before it drops (a slow consumer) [default: 65536].
    #[arg(long, env = "CHAT_NODE_NATS_SUBSCRIPTION_CAPACITY")]
    pub nats_subscription_capacity: Option<usize>,
    /// Storage backend: `sqlite` (embedded, in --data-dir) or `scylla` [default: sqlite].
    #[arg(long, env = "CHAT_NODE_STORE")]
    pub store: Option<StoreArg>,
    /// ScyllaDB contact points, comma-separated host:port [default: 127.0.0.1:9042].
    #[arg(long, env = "CHAT_NODE_SCYLLA_NODES", value_delimiter = ',')]
    pub scylla_nodes: Option<Vec<String>>,
    /// ScyllaDB keyspace [default: chat].
    #[arg(long, env = "CHAT_NODE_SCYLLA_KEYSPACE")]
    pub scylla_keyspace: Option<String>,
    /// Replication of the keyspace created by --init-schema: a factor (`3`, SimpleStrategy) or per data centre (`dc1:3,dc2:3`, NetworkTopologyStrategy) [default: 1].
    #[arg(long, env = "CHAT_NODE_SCYLLA_REPLICATION")]
    pub scylla_replication: Option<String>,
    /// Consistency of reads and writes: one, quorum, local_quorum, all, ... [default: local_quorum].
    #[arg(long, env = "CHAT_NODE_SCYLLA_CONSISTENCY")]
    pub scylla_consistency: Option<String>,
    /// How long ScyllaDB keeps a message (table TTL), e.g. 30d [default: 30d].
    #[arg(long, env = "CHAT_NODE_SCYLLA_MESSAGE_TTL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub scylla_message_ttl: Option<Duration>,
    /// Most client connections the node serves; over it a new connection gets an `Overloaded` error and is closed [default: 10000].
    #[arg(long, env = "CHAT_NODE_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Messages (direct and group) one user may send per second, on average; over it a send is refused with `RateLimited` and a retry hint; 0 = no limit [default: 1000].
    #[arg(long, env = "CHAT_NODE_SEND_RATE")]
    pub send_rate: Option<u32>,
    /// Messages one user may send at once above --send-rate (the token bucket's size) [default: 2000].
    #[arg(long, env = "CHAT_NODE_SEND_BURST")]
    pub send_burst: Option<u32>,
    /// Direct messages stored for one user and not yet delivered; at the cap a new direct message to them is refused with `MailboxFull` (group messages are not); 0 = no cap [default: 10000].
    #[arg(long, env = "CHAT_NODE_MAX_PENDING_PER_USER")]
    pub max_pending_per_user: Option<u64>,
    /// Friends one user may have; adding one more (on either side) is refused with `LimitReached`; 0 = no limit [default: 1000].
    #[arg(long, env = "CHAT_NODE_MAX_FRIENDS")]
    pub max_friends: Option<u64>,
    /// Groups one user may belong to, created or joined; 0 = no limit [default: 500].
    #[arg(long, env = "CHAT_NODE_MAX_GROUPS_PER_USER")]
    pub max_groups_per_user: Option<u64>,
    /// Members one group may have; 0 = no limit [default: 1000].
    #[arg(long, env = "CHAT_NODE_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<u64>,
    /// Members, counted over all the groups in it, that a login reply's page of groups holds at most (always one group at least); the user's other groups follow as group pushes, as the client reads [default: 2000].
    #[arg(long, env = "CHAT_NODE_LOGIN_GROUP_MEMBERS")]
    pub login_group_members: Option<usize>,
    /// A login of a user whose session (on this node) has sent nothing for this long closes that session and goes through; a session heard from more recently keeps the user (the login gets AlreadyOnline). 0 = never [default: 30s].
    #[arg(long, env = "CHAT_NODE_TAKEOVER_AFTER", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub takeover_after: Option<Duration>,
    /// How long messages stay readable as history after every recipient has them (SQLite: deleted by compaction; ScyllaDB: table TTL); 0 = forever [default: 30d].
    #[arg(long, env = "CHAT_NODE_HISTORY_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub history_retention: Option<Duration>,
    /// Most connections one client address may hold (the PROXY header's source behind a trusted balancer); over it, `Overloaded` and closed; 0 = no cap [default: 0].
    #[arg(long, env = "CHAT_NODE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<u32>,
    /// The client address reported to balancers (redirect mode sends clients there) [default: the bound --listen address].
    #[arg(long, env = "CHAT_NODE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Proxy addresses (chat-balancer, nginx, HAProxy) whose connections start with a PROXY protocol header, v1 (text: nginx `proxy_protocol on`, HAProxy `send-proxy`) or v2 (binary: `send-proxy-v2`), carrying the real client address; comma-separated IPs. A connection from them without a valid header is closed; others are never read for one [default: none].
    #[arg(long, env = "CHAT_NODE_PROXY_PROTOCOL_FROM", value_delimiter = ',')]
    pub proxy_protocol_from: Option<Vec<std::net::IpAddr>>,
    /// Create the keyspace and tables (from schema/cql) if missing, then run.
    #[arg(long, env = "CHAT_NODE_INIT_SCHEMA", num_args = 0..=1, default_missing_value = "true")]
    pub init_schema: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreArg {
    Sqlite,
    Scylla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncArg {
    Normal,
    Full,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The resolved settings the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub node_id: String,
    pub max_frame: usize,
    pub max_text: usize,
    pub idle_timeout: Duration,
    pub frame_timeout: Duration,
    pub login_timeout: Duration,
    pub takeover_after: Duration,
    /// `None`: history is kept forever.
    pub history_retention: Option<Duration>,
    pub max_outbound: usize,
    pub sync: SyncPolicy,
    pub max_batch: usize,
    pub commit_window: Duration,
    pub spin_before_park: Duration,
    pub store_on_shard: bool,
    pub pending_page: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// NATS URL; `None` runs the node alone.
    pub nats: Option<String>,
    pub lease_ttl: Duration,
    pub nats_subscription_capacity: usize,
    pub store: StoreChoice,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub send_rate: u32,
    pub send_burst: u32,
    pub max_pending_per_user: u64,
    pub max_friends: u64,
    pub max_groups_per_user: u64,
    pub max_group_members: u64,
    pub login_group_members: usize,
    pub advertise_addr: Option<String>,
    pub proxy_protocol_from: Vec<std::net::IpAddr>,
}

/// Which backend holds the node's state.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// SQLite in `data_dir`.
    Sqlite,
    Scylla(ScyllaOptions),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] SettingsError),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Args {
    /// Merges flags, the `--config` file and defaults into a checked `Config`.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => settings::load(path)?,
            None => Args::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field.or(file.$field).unwrap_or_else(|| $default)
            };
        }
        let listen = pick!(listen, "127.0.0.1:6000".parse().expect("valid"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The store thread is busy in every message's path: sharing its
        // core with an executor cost 25 % more CPU per message on 2 cores
        // (docs/benchmarks.md).
        let shards = pick!(shards, cores.saturating_sub(1).max(1));
        let nats = self.nats.or(file.nats);
        // 0 keeps history forever.
        let history_retention =
            Some(pick!(history_retention, DEFAULT_HISTORY_RETENTION)).filter(|d| !d.is_zero());
        let config = Config {
            listen,
            metrics_listen: pick!(metrics_listen, "127.0.0.1:9100".parse().expect("valid")),
            data_dir: pick!(data_dir, PathBuf::from("chat-data")),
            shards,
            node_id: pick!(node_id, default_node_id(listen)),
            max_frame: pick!(max_frame, chat_schema::frame::DEFAULT_MAX_FRAME),
            max_text: pick!(max_text, 4096),
            idle_timeout: pick!(idle_timeout, Duration::from_secs(300)),
            frame_timeout: pick!(frame_timeout, Duration::from_secs(10)),
            login_timeout: pick!(login_timeout, Duration::from_secs(60)),
            takeover_after: pick!(takeover_after, Duration::from_secs(30)),
            history_retention,
            max_outbound: pick!(max_outbound, 1 << 20),
            sync: match pick!(sync, SyncArg::Normal) {
                SyncArg::Normal => SyncPolicy::Normal,
                SyncArg::Full => SyncPolicy::Full,
            },
            max_batch: pick!(max_batch, 1024),
            commit_window: pick!(commit_window, Duration::ZERO),
            spin_before_park: pick!(spin_before_park, Duration::ZERO),
            // One shard running alone: its executor also runs the writer, so
            // a message's whole path is one thread (30 % less CPU per
            // message, measured). Not in a cluster: nodes sharing one SQLite
            // file wait for each other's write lock, and that wait must not
            // stall an executor (cluster p99 went from 6 ms to 135 ms).
            store_on_shard: pick!(store_on_shard, shards == 1 && nats.is_none()),
            pending_page: pick!(pending_page, 1000),
            argon2_memory_kib: pick!(argon2_memory_kib, 19 * 1024),
            argon2_iterations: pick!(argon2_iterations, 2),
            nats,
            lease_ttl: pick!(lease_ttl, Duration::from_secs(10)),
            nats_subscription_capacity: pick!(nats_subscription_capacity, 65_536),
            max_connections: pick!(max_connections, 10_000),
            max_connections_per_ip: pick!(max_connections_per_ip, 0),
            send_rate: pick!(send_rate, 1000),
            send_burst: pick!(send_burst, 2000),
            max_pending_per_user: pick!(max_pending_per_user, 10_000),
            max_friends: pick!(max_friends, 1000),
            max_groups_per_user: pick!(max_groups_per_user, 500),
            max_group_members: pick!(max_group_members, 1000),
            login_group_members: pick!(login_group_members, 2000),
            advertise_addr: self.advertise_addr.or(file.advertise_addr),
            proxy_protocol_from: pick!(proxy_protocol_from, Vec::new()),
            store: match pick!(store, StoreArg::Sqlite) {
                StoreArg::Sqlite => StoreChoice::Sqlite,
                StoreArg::Scylla => StoreChoice::Scylla(ScyllaOptions {
                    nodes: pick!(scylla_nodes, vec!["127.0.0.1:9042".into()]),
                    keyspace: pick!(scylla_keyspace, "chat".into()),
                    replication: pick!(scylla_replication, "1".into()),
                    consistency: pick!(scylla_consistency, "local_quorum".into()),
                    message_ttl: pick!(scylla_message_ttl, Duration::from_secs(30 * 86_400)),
                    history_retention,
                    init_schema: pick!(init_schema, false),
                }),
            },
        };
        config.check()?;
        Ok(config)
    }
}

impl Config {
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.shards == 0 {
            return bad("--shards must be at least 1");
        }
        if self.commit_window > MAX_COMMIT_WINDOW {
            // Every write waits this long: more is a stall, not a batch.
            return bad("--commit-window must be at most 100ms");
        }
        if self.max_frame < 64 || self.max_frame > u32::MAX as usize {
            return bad("--max-frame must be between 64 and 4294967295");
        }
        if self.max_text == 0 || self.max_text >= self.max_frame {
            return bad("--max-text must be at least 1 and below --max-frame");
        }
        if self.idle_timeout.is_zero()
            || self.frame_timeout.is_zero()
            || self.login_timeout.is_zero()
        {
            return bad("--idle-timeout, --frame-timeout and --login-timeout must be positive");
        }
        if self.max_batch == 0 || self.pending_page == 0 {
            return bad("--max-batch and --pending-page must be at least 1");
        }
        if self.max_outbound < self.max_frame {
            return bad("--max-outbound must be at least --max-frame");
        }
        if self.node_id.is_empty()
            || self.node_id.len() > 64
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("--node-id must be 1 to 64 letters, digits, '-' or '_'");
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad("--lease-ttl must be at least 1s");
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1");
        }
        if self.nats_subscription_capacity == 0 {
            return bad("--nats-subscription-capacity must be at least 1");
        }
        Ok(())
    }

    /// Settings for tests: everything on loopback port 0, cheap password hashing.
    pub fn for_tests(data_dir: PathBuf) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid"),
            metrics_listen: "127.0.0.1:0".parse().expect("valid"),
            data_dir,
            shards: 2,
            node_id: "test".into(),
            max_frame: chat_schema::frame::DEFAULT_MAX_FRAME,
            max_text: 4096,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(60),
            takeover_after: Duration::from_secs(30),
            history_retention: Some(DEFAULT_HISTORY_RETENTION),
            max_outbound: 1 << 20,
            sync: SyncPolicy::Normal,
            max_batch: 1024,
            commit_window: Duration::ZERO,
            spin_before_park: Duration::ZERO,
            store_on_shard: false,
            pending_page: 1000,
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            nats: None,
            lease_ttl: Duration::from_secs(10),
            nats_subscription_capacity: 65_536,
            store: StoreChoice::Sqlite,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            send_rate: 1000,
            send_burst: 2000,
            max_pending_per_user: 10_000,
            max_friends: 1000,
            max_groups_per_user: 500,
            max_group_members: 1000,
            login_group_members: 2000,
            advertise_addr: None,
            proxy_protocol_from: Vec::new(),
        }
    }

    /// How often the node renews its lease: every second, or more often when
    /// the lease is shorter than three seconds.
    pub fn lease_every(&self) -> Duration {
        (self.lease_ttl / 3).min(Duration::from_secs(1))
    }
}

fn default_node_id(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{host}-{}", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nmax_text = 100\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "chat-node",
            "--config",
            file.to_str().unwrap(),
            "--max-text",
            "200",
        ]);
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.max_text, 200);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.max_frame, 65536);
        assert!(c.node_id.ends_with("-7000"));
        c.check().unwrap();
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let args = Args::parse_from(["chat-node", "--config", file.to_str().unwrap()]);
        assert!(matches!(
            args.resolve(),
            Err(ConfigError::File(SettingsError::Parse { .. }))
        ));
        let args = Args::parse_from(["chat-node", "--shards", "0"]);
        assert!(matches!(args.resolve(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn the_commit_window_is_off_by_default_and_bounded() {
        let c = Args::parse_from(["chat-node"]).resolve().unwrap();
        assert_eq!(c.commit_window, Duration::ZERO);
        let c = Args::parse_from(["chat-node", "--commit-window", "300us"])
            .resolve()
            .unwrap();
        assert_eq!(c.commit_window, Duration::from_micros(300));
        let args = Args::parse_from(["chat-node", "--commit-window", "1s"]);
        assert!(
            matches!(args.resolve(), Err(ConfigError::Invalid(m)) if m.contains("--commit-window"))
        );
    }

    #[test]
    fn history_is_kept_30_days_and_0_keeps_it_forever() {
        let c = Args::parse_from(["chat-node"]).resolve().unwrap();
        assert_eq!(c.history_retention, Some(Duration::from_secs(30 * 86_400)));
        let c = Args::parse_from(["chat-node", "--history-retention", "0"])
            .resolve()
            .unwrap();
        assert_eq!(c.history_retention, None);
        let c = Args::parse_from(["chat-node", "--history-retention", "2h"])
            .resolve()
            .unwrap();
        assert_eq!(c.history_retention, Some(Duration::from_secs(7200)));
    }
}
