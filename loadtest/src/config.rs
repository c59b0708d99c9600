//! The load tester's settings: command-line flags (each also a
//! `CHAT_LOADTEST_*` environment variable) and an optional TOML scenario file
//! (`--scenario-file`, the same keys in snake_case). A flag or variable wins
//! over the file, the file over the built-in default.
//!
//! [`Args::resolve`] turns them into a checked [`RunConfig`]: everything a
//! run needs, serializable so that a coordinator can hand it to its workers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_ops::settings::{self, SettingsError};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::chaos::ChaosConfig;
use crate::slo::{Slo, SloError};

const EXAMPLES: &str = "\
Examples:
  # the whole system on this machine: a balancer and one node on free ports,
  # 200 users, 2 000 messages/s for 10 s, live progress and a latency table
  chat-loadtest --local 1
  chat-loadtest --local 2 --scenario group --group-size 20 --rate 500   # needs nats-server
  chat-loadtest --target 127.0.0.1:8000 --users 5000 --rate 20000 --duration 60s \\
      --json report.json --hgrm-dir hgrm --plot latency.svg --slo p99=5ms,loss=0
  chat-loadtest --target 127.0.0.1:6000 --protocol json --scenario direct   # the seed's server too
  chat-loadtest --redirect 127.0.0.1:8001 --scenario connect --users 10000 --rate 2000
  chat-loadtest --local 1 --scenario ramp --ramp-start 1000 --ramp-step 1000 --slo p99=20ms
  # closed loop at saturation: 50 sender/receiver pairs, one message in flight each
  chat-loadtest --local 1 --model closed --users 100 --rate 200000
  # the server's CPU per message and memory per connection, from its /metrics
  chat-loadtest --target 127.0.0.1:6000 --server-metrics http://127.0.0.1:9100/metrics
  chat-loadtest --target 127.0.0.1:6000 --scenario connect --connect-only --users 5000 \\
      --server-metrics http://127.0.0.1:9100/metrics      # memory per idle connection
  chat-loadtest --scenario-file loadtest/scenarios/mixed.toml --target 127.0.0.1:8000
  # history: half the actions page back through a conversation (1-3 pages)
  chat-loadtest --local 1 --scenario history --users 200 --rate 1000
  # mixed with read receipts: a tenth of the actions mark a conversation read
  chat-loadtest --local 1 --scenario mixed --mix direct=60,group=20,relogin=10,read=10
  # users whose connection drops come back (backoff, login again) and go on
  chat-loadtest --target 127.0.0.1:6000,127.0.0.1:6001 --reconnect --duration 600s
  # chaos soak: 3 local nodes, NATS, a balancer; every 30 s a node killed and
  # restarted, NATS restarted, the balancer restarted, a node paused past its
  # lease, in turn; the report lists each fault, its recovery and its loss
  chat-loadtest --local 3 --chaos --chaos-every 30s --rate 2000 --duration 10m --json chaos.json
  # distributed: workers first (any machine), then the coordinator
  chat-loadtest worker --nats nats://10.0.0.9:4222
  chat-loadtest --workers 4 --nats nats://10.0.0.9:4222 --target 10.0.0.5:8000 --users 100000

Scenarios: connect (users connect, register and log in at --rate per second,
then stay online for --duration; --connect-only: only connect and ping),
direct (one-to-one messages between random friends at --rate), group (group
messages at --rate, each to --group-size members), mixed (mostly idle users,
some chatting, some in groups, logins and logouts; --mix read=N adds marking
a conversation read up to the last message received, history=N paging back
through one), history (every user online and acting: by --mix, default
direct=40,group=10,history=50, chatting or paging back through a
conversation's history with 1 to 3 HistoryRequests; history and mark_read
latencies are measured), soak (direct at a fixed rate for a long
--duration), ramp (rate rising by --ramp-step every --ramp-step-duration
until an SLO breaks). History and read marks work in both protocols
(JSON msgids 40 and 42; the seed's server has neither).

Exit status: 0 when every --slo held, 2 when one did not, 1 on an error.";

/// Wire protocol the virtual users speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// The node's length-prefixed FlatBuffers protocol.
    Fb,
    /// The seed's JSON protocol (works against the seed's C++ server too).
    Json,
}

/// How JSON users acknowledge what is pushed to them (`--json-acks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonAcks {
    /// msgid 50, our node's acknowledgement (sent before login too), as
    /// FlatBuffers users acknowledge: exact across dropped connections.
    #[default]
    Explicit,
    /// None, as the seed's client: our node counts a push read once the
    /// user sends its next request or closes cleanly (docs/protocol.md).
    Implicit,
}

/// What the users do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioKind {
    Connect,
    Direct,
    Group,
    Mixed,
    // Users page back through their conversations' history while others
    // chat (the `mixed` actions, all users active).
    History,
    Soak,
    Ramp,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Connect => "connect",
            ScenarioKind::Direct => "direct",
            ScenarioKind::Group => "group",
            ScenarioKind::Mixed => "mixed",
            ScenarioKind::History => "history",
            ScenarioKind::Soak => "soak",
            ScenarioKind::Ramp => "ramp",
        }
    }
}

/// Whether sends wait for replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Sends follow the schedule whatever the replies (wrk2, amoc).
    Open,
    /// Each sender keeps one message in flight: it sends the next only once
    /// the previous one is done (one-to-one scenarios: senders paired with
    /// fixed receivers, done = delivered to the receiver and acknowledged;
    /// group, mixed and history: acknowledged or answered). A closed-loop
    /// tool; shows what coordinated omission hides.
    Closed,
}

/// Where the users connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Connect to these, round-robin (one balancer in proxy mode, or nodes).
    Addrs(Vec<String>),
    /// Ask this balancer (redirect mode) which node to use, then connect there.
    Redirect(String),
}

/// Weights of the actions of the `mixed` and `history` scenarios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    pub direct: f64,
    pub group: f64,
    /// A user logs out and logs in again (offline messages meanwhile).
    pub relogin: f64,
    /// A user marks one of its conversations read up to the last message
    /// it received there (`MarkReadRequest`; a direct message instead while
    /// it has received nothing).
    #[serde(default)]
    pub read: f64,
    /// A user pages back through one of its conversations (a friend's or a
    /// group's): 1 to 3 `HistoryRequest`s, each for the page before the
    /// last, fewer when the history ends.
    #[serde(default)]
    pub history: f64,
}

impl Mix {
    /// The default weights of `scenario`.
    pub fn default_for(scenario: ScenarioKind) -> &'static str {
        match scenario {
            ScenarioKind::History => "direct=40,group=10,history=50",
            _ => "direct=80,group=15,relogin=5",
        }
    }

    /// Whether some actions need the history and read requests, which only
    /// the FlatBuffers protocol has.
    pub fn needs_history(&self) -> bool {
        self.read > 0.0 || self.history > 0.0
    }
}

/// The steps of the `ramp` scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    pub start: f64,
    pub step: f64,
    #[serde(with = "humantime_serde")]
    pub step_duration: Duration,
    pub max: f64,
}

/// A checked run: what the coordinator sends to its workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub scenario: ScenarioKind,
    pub protocol: Protocol,
    pub model: Model,
    pub target: Target,
    pub users: u64,
    /// Actions per second: messages (connect: connections).
    pub rate: f64,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// After sending stops, how long to wait for messages in flight.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Connections per second while the users are set up.
    pub connect_rate: f64,
    /// Friends each user makes (direct messages go to a random friend).
    pub friends: u32,
    pub group_size: u32,
    /// Message text length in bytes.
    pub text_size: usize,
    /// `mixed`: share of users that chat; the others stay online, idle.
    pub active: f64,
    pub mix: Mix,
    pub ramp: Ramp,
    pub slo: Vec<Slo>,
    /// Source addresses in 127.0.0.0/8 the connections are spread over
    /// (loopback targets only; 1 = the kernel's choice).
    pub source_addrs: u32,
    /// A scheduled action started later than this counts as late.
    #[serde(with = "humantime_serde")]
    pub late_threshold: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// FlatBuffers users acknowledge deliveries every this many messages
    /// (and whenever their inbox runs dry).
    pub ack_every: u64,
    #[serde(default)]
    pub json_acks: JsonAcks,
    pub password: String,
    /// User names are `<prefix>-<worker>-<n>`.
    pub prefix: String,
    /// `connect` scenario: users only open their connection and send one
    /// ping (no register, no login): what an idle connection costs.
    #[serde(default)]
    pub connect_only: bool,
    /// Users whose connection closes connect and log in again, with
    /// backoff (see [`crate::population`]).
    #[serde(default)]
    pub reconnect: bool,
    /// Prometheus endpoints of the servers under test (`http://host:port/path`),
    /// whose `process_cpu_seconds_total` and `process_resident_memory_bytes`
    /// are summed into the server's cost.
    #[serde(default)]
    pub server_metrics: Vec<String>,
    /// `--balancer-pid`: the proxy in front of the servers (chat-balancer,
    /// nginx, HAProxy), whose CPU and memory, with its child processes', are
    /// read from `/proc` into the balancer's cost.
    #[serde(default)]
    pub balancer_pid: Option<u32>,
    /// `--chaos`: faults injected into the local cluster (see
    /// [`crate::chaos`]); implies `reconnect`.
    #[serde(default)]
    pub chaos: Option<ChaosConfig>,
}

impl RunConfig {
    /// Whether senders are paired with fixed receivers (closed model,
    /// one-to-one scenarios): user `i` of the first half sends to user
    /// `i + n/2`, one message in flight, the next once the receiver got the
    /// previous one.
    pub fn closed_pairs(&self) -> bool {
        self.model == Model::Closed
            && matches!(
                self.scenario,
                ScenarioKind::Direct | ScenarioKind::Soak | ScenarioKind::Ramp
            )
    }

    /// Time from the start of traffic to the end of sending.
    pub fn traffic_time(&self) -> Duration {
        match self.scenario {
            ScenarioKind::Connect => Duration::ZERO,
            ScenarioKind::Ramp => self.ramp.step_duration * self.ramp_rates().len() as u32,
            _ => self.warmup + self.duration,
        }
    }

    /// The offered rate of every step of a ramp.
    pub fn ramp_rates(&self) -> Vec<f64> {
        let mut rates = Vec::new();
        let mut r = self.ramp.start;
        while r <= self.ramp.max + 1e-9 && rates.len() < 10_000 {
            rates.push(r);
            r += self.ramp.step;
        }
        rates
    }
}

/// `chat-loadtest`: runs a scenario, or serves as a worker.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-loadtest",
    version,
    about = "Open-model load tester for the chat cluster: scenarios of real users at a fixed \
             arrival rate, coordinated-omission-corrected latency percentiles",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: Args,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Take a share of distributed runs from a coordinator, until stopped.
    Worker(WorkerArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The NATS server the coordinator uses.
    #[arg(long, env = "CHAT_LOADTEST_NATS")]
    pub nats: String,
    /// Tokio worker threads [default: number of cores].
    #[arg(long, env = "CHAT_LOADTEST_THREADS")]
    pub threads: Option<usize>,
    /// `/metrics` address, or `off`.
    #[arg(long, env = "CHAT_LOADTEST_METRICS_LISTEN", default_value = "off")]
    pub metrics_listen: String,
    /// Serve this many runs, then exit (0 = until stopped).
    #[arg(long, default_value_t = 0)]
    pub runs: u64,
}

/// Flags of a run. Every value is optional so that the scenario file can fill
/// what the command line leaves out; defaults are applied in `resolve`.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Args {
    /// TOML file with any of these settings (see loadtest/scenarios/).
    #[arg(long, env = "CHAT_LOADTEST_SCENARIO_FILE")]
    #[serde(skip)]
    pub scenario_file: Option<PathBuf>,
    /// Connect here (a balancer in proxy mode, or nodes used round-robin). Repeatable.
    #[arg(long = "target", env = "CHAT_LOADTEST_TARGET", value_delimiter = ',')]
    #[serde(default)]
    pub target: Vec<String>,
    /// Ask this balancer (redirect mode) which node each user should use.
    #[arg(long, env = "CHAT_LOADTEST_REDIRECT")]
    pub redirect: Option<String>,
    /// Start a balancer and N nodes on free loopback ports (N > 1 needs nats-server), run through the balancer, tear down.
    #[arg(long, env = "CHAT_LOADTEST_LOCAL")]
    pub local: Option<usize>,
    /// Wire protocol [default: fb].
    #[arg(long, env = "CHAT_LOADTEST_PROTOCOL", value_enum)]
    pub protocol: Option<Protocol>,
    /// What the users do [default: direct].
    #[arg(long, env = "CHAT_LOADTEST_SCENARIO", value_enum)]
    pub scenario: Option<ScenarioKind>,
    /// open: sends follow the schedule; closed: each sender keeps one message in flight (one-to-one: half the users send, each to a fixed receiver, and wait for its delivery; group, mixed, history: for the ack or answer) [default: open].
    #[arg(long, env = "CHAT_LOADTEST_MODEL", value_enum)]
    pub model: Option<Model>,
    /// Virtual users (one connection each) [default: 200; connect: 1000].
    #[arg(long, env = "CHAT_LOADTEST_USERS")]
    pub users: Option<u64>,
    /// Messages per second over all users (mixed, history: actions); connect: connections per second [default: 2000; connect: 500].
    #[arg(long, env = "CHAT_LOADTEST_RATE")]
    pub rate: Option<f64>,
    /// Measured time, after the warmup; connect: how long the users stay online after the last arrived [default: 10s; soak: 10m].
    #[arg(long, env = "CHAT_LOADTEST_DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub duration: Option<Duration>,
    /// Traffic before the measured time [default: 2s].
    #[arg(long, env = "CHAT_LOADTEST_WARMUP", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub warmup: Option<Duration>,
    /// Longest wait for messages in flight after sending stops [default: 5s].
    #[arg(long, env = "CHAT_LOADTEST_DRAIN", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub drain: Option<Duration>,
    /// Connections per second while users are set up [default: 1000].
    #[arg(long, env = "CHAT_LOADTEST_CONNECT_RATE")]
    pub connect_rate: Option<f64>,
    /// Friends per user [default: 4].
    #[arg(long, env = "CHAT_LOADTEST_FRIENDS")]
    pub friends: Option<u32>,
    /// Members per group (group, mixed, history) [default: 10].
    #[arg(long, env = "CHAT_LOADTEST_GROUP_SIZE")]
    pub group_size: Option<u32>,
    /// Message text bytes [default: 64].
    #[arg(long, env = "CHAT_LOADTEST_TEXT_SIZE")]
    pub text_size: Option<usize>,
    /// mixed: share of users that chat, the rest stay idle [default: 0.2].
    #[arg(long, env = "CHAT_LOADTEST_ACTIVE")]
    pub active: Option<f64>,
    /// mixed, history: action weights of direct, group, relogin, read (mark a conversation read up to the last message received) and history (page back through a conversation) [default: mixed direct=80,group=15,relogin=5; history direct=40,group=10,history=50].
    #[arg(long, env = "CHAT_LOADTEST_MIX")]
    pub mix: Option<String>,
    /// ramp: first rate [default: --rate / 4].
    #[arg(long, env = "CHAT_LOADTEST_RAMP_START")]
    pub ramp_start: Option<f64>,
    /// ramp: rate added each step [default: the first rate].
    #[arg(long, env = "CHAT_LOADTEST_RAMP_STEP")]
    pub ramp_step: Option<f64>,
    /// ramp: length of a step [default: 5s].
    #[arg(long, env = "CHAT_LOADTEST_RAMP_STEP_DURATION", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub ramp_step_duration: Option<Duration>,
    /// ramp: highest rate tried [default: 100 × the first rate].
    #[arg(long, env = "CHAT_LOADTEST_RAMP_MAX")]
    pub ramp_max: Option<f64>,
    /// Objectives, e.g. p99=5ms,p99.9=20ms,loss=0,errors=0; exit status 2 when one is missed [ramp default: p99=50ms,loss=0].
    #[arg(long, env = "CHAT_LOADTEST_SLO")]
    pub slo: Option<String>,
    /// Write the versioned JSON summary here.
    #[arg(long, env = "CHAT_LOADTEST_JSON")]
    pub json: Option<PathBuf>,
    /// Write one .hgrm percentile distribution per series and HdrHistogram interval logs here.
    #[arg(long, env = "CHAT_LOADTEST_HGRM_DIR")]
    pub hgrm_dir: Option<PathBuf>,
    /// Write an SVG latency-by-percentile chart here.
    #[arg(long, env = "CHAT_LOADTEST_PLOT")]
    pub plot: Option<PathBuf>,
    /// Prometheus /metrics address, or `off` [default: 127.0.0.1:9400].
    #[arg(long, env = "CHAT_LOADTEST_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Distributed: split the run over this many `chat-loadtest worker` processes (needs --nats).
    #[arg(long, env = "CHAT_LOADTEST_WORKERS")]
    pub workers: Option<u32>,
    /// Distributed: the NATS server the workers listen on.
    #[arg(long, env = "CHAT_LOADTEST_NATS")]
    pub nats: Option<String>,
    /// Tokio worker threads [default: number of cores].
    #[arg(long, env = "CHAT_LOADTEST_THREADS")]
    pub threads: Option<usize>,
    /// Spread connections over this many source addresses 127.0.0.1, .2, ... (loopback targets) [default: one per 25 000 users].
    #[arg(long, env = "CHAT_LOADTEST_SOURCE_ADDRS")]
    pub source_addrs: Option<u32>,
    /// A send started later than this after its scheduled time counts as late [default: 10ms].
    #[arg(long, env = "CHAT_LOADTEST_LATE_THRESHOLD", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub late_threshold: Option<Duration>,
    /// How long a request waits for its reply [default: 10s].
    #[arg(long, env = "CHAT_LOADTEST_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub request_timeout: Option<Duration>,
    /// FlatBuffers users acknowledge deliveries every this many messages [default: 32].
    #[arg(long, env = "CHAT_LOADTEST_ACK_EVERY")]
    pub ack_every: Option<u64>,
    /// JSON users acknowledge with msgid 50 (`explicit`), or not at all, as
    /// the seed's client (`implicit`: the node counts a push read at the
    /// user's next request) [default: explicit].
    #[arg(long, env = "CHAT_LOADTEST_JSON_ACKS")]
    pub json_acks: Option<JsonAcks>,
    /// Password of the virtual users [default: loadtest-pw].
    #[arg(long, env = "CHAT_LOADTEST_PASSWORD")]
    pub password: Option<String>,
    /// Prefix of user names [default: random per run].
    #[arg(long, env = "CHAT_LOADTEST_PREFIX")]
    pub prefix: Option<String>,
    /// --local: shards (executors) per node [default: 1].
    #[arg(long, env = "CHAT_LOADTEST_LOCAL_SHARDS")]
    pub local_shards: Option<usize>,
    /// Live output: auto (a bar on a terminal, lines otherwise), lines, or off [default: auto].
    #[arg(long, env = "CHAT_LOADTEST_PROGRESS")]
    pub progress: Option<String>,
    /// connect: users only open a connection and send one ping (no register, no login), to measure an idle connection [default: false].
    #[arg(
        long,
        env = "CHAT_LOADTEST_CONNECT_ONLY",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub connect_only: Option<bool>,
    /// Virtual users whose connection closes (reset, cut, server gone) connect again with exponential backoff and full jitter (100 ms doubling to 5 s; the next --target after a failed attempt), log in again (AlreadyOnline is retried) and go on; actions due meanwhile are skipped (`send: not connected`). The report then separates deliveries pushed live from those in a reconnection's login reply [default: false: a user whose connection dies stays offline].
    #[arg(
        long,
        env = "CHAT_LOADTEST_RECONNECT",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub reconnect: Option<bool>,
    /// Prometheus /metrics URL of a server under test (repeatable; summed): its process CPU and memory give the server's cost per message and per connection, e.g. http://127.0.0.1:9100/metrics.
    #[arg(
        long = "server-metrics",
        env = "CHAT_LOADTEST_SERVER_METRICS",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub server_metrics: Vec<String>,
    /// Process id of the proxy in front of the servers (chat-balancer, nginx, HAProxy) on this machine: its CPU and memory, with its child processes' (nginx's workers), between the start and the end of the measured window give the balancer's cost per message, as --server-metrics gives the servers'. Example: --balancer-pid "$(cat /run/nginx.pid)".
    #[arg(long, env = "CHAT_LOADTEST_BALANCER_PID")]
    pub balancer_pid: Option<u32>,
    /// --local: the nodes' --lease-ttl, how long a dead or stalled node keeps its users claimed [default: 10s].
    #[arg(long, env = "CHAT_LOADTEST_LOCAL_LEASE_TTL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub local_lease_ttl: Option<Duration>,
    /// Chaos soak: run on a local cluster (--local 3 unless --local N, N >= 2, is given) and, every --chaos-every, inject a fault: kill (SIGKILL a node, restart it on the same ports), nats (restart nats-server), balancer (restart the balancer), stop (SIGSTOP a node for its lease + 1 s, then SIGCONT), in turn. Implies --reconnect. The report lists each fault with its time, recovery and loss. Example: chat-loadtest --chaos --chaos-every 30s --rate 2000 --duration 10m --json chaos.json [default: false].
    #[arg(
        long,
        env = "CHAT_LOADTEST_CHAOS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub chaos: Option<bool>,
    /// --chaos: time from the start of traffic to the first fault, and between faults [default: 30s].
    #[arg(long, env = "CHAT_LOADTEST_CHAOS_EVERY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde::option")]
    pub chaos_every: Option<Duration>,
    /// --chaos: the fault kinds, injected in this order round and round [default: kill,nats,balancer,stop].
    #[arg(long, env = "CHAT_LOADTEST_CHAOS_FAULTS")]
    pub chaos_faults: Option<String>,
}

/// Why the settings can not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] SettingsError),
    #[error(transparent)]
    Slo(#[from] SloError),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Output settings, which stay with the coordinator.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub json: Option<PathBuf>,
    pub hgrm_dir: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub progress: Progress,
}

/// How live progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    #[default]
    Auto,
    Lines,
    Off,
}

impl Args {
    /// Fills what the command line left out from the scenario file.
    pub fn with_file(self) -> Result<Args, ConfigError> {
        let Some(path) = self.scenario_file.clone() else {
            return Ok(self);
        };
        let file: Args = settings::load(&path)?;
        Ok(self.or(file))
    }

    fn or(self, file: Args) -> Args {
        macro_rules! pick {
            ($($f:ident),*) => {
                Args {
                    scenario_file: self.scenario_file,
                    target: if self.target.is_empty() { file.target } else { self.target },
                    server_metrics: if self.server_metrics.is_empty() {
                        file.server_metrics
                    } else {
                        self.server_metrics
                    },
                    $($f: self.$f.or(file.$f),)*
                }
            };
        }
        pick!(
            redirect,
            local,
            protocol,
            scenario,
            model,
            users,
            rate,
            duration,
            warmup,
            drain,
            connect_rate,
            friends,
            group_size,
            text_size,
            active,
            mix,
            ramp_start,
            ramp_step,
            ramp_step_duration,
            ramp_max,
            slo,
            json,
            hgrm_dir,
            plot,
            metrics_listen,
            workers,
            nats,
            threads,
            source_addrs,
            late_threshold,
            request_timeout,
            ack_every,
            json_acks,
            password,
            prefix,
            local_shards,
            progress,
            connect_only,
            reconnect,
            local_lease_ttl,
            chaos,
            chaos_every,
            chaos_faults,
            balancer_pid
        )
    }

    /// The nodes of the local cluster to start: `--local N`, or 3 for
    /// `--chaos` without `--local`.
    pub fn local_nodes(&self) -> Option<usize> {
        self.local.or(self.chaos.unwrap_or(false).then_some(3))
    }

    /// The local nodes' lease.
    pub fn lease_ttl(&self) -> Duration {
        self.local_lease_ttl.unwrap_or(Duration::from_secs(10))
    }

    /// The chaos settings, checked; `None` without `--chaos`.
    fn chaos(
        &self,
        scenario: ScenarioKind,
        local: bool,
    ) -> Result<Option<ChaosConfig>, ConfigError> {
        if !self.chaos.unwrap_or(false) {
            return Ok(None);
        }
        if matches!(scenario, ScenarioKind::Connect | ScenarioKind::Ramp) {
            return Err(invalid(format!(
                "--chaos runs with steady traffic: not with the {} scenario",
                scenario.name()
            )));
        }
        if !local || self.workers.is_some() {
            return Err(invalid(
                "--chaos injects faults into a local cluster: it implies --local 3 (or give --local N, N >= 2), without --target, --redirect or --workers",
            ));
        }
        if self.local_nodes().is_some_and(|n| n < 2) {
            return Err(invalid(
                "--chaos needs at least 2 local nodes (users of a dead node log in on another)",
            ));
        }
        let every = self.chaos_every.unwrap_or(Duration::from_secs(30));
        if every < Duration::from_secs(1) {
            return Err(invalid("--chaos-every must be at least 1s"));
        }
        let faults = crate::chaos::parse_faults(
            self.chaos_faults
                .as_deref()
                .unwrap_or("kill,nats,balancer,stop"),
        )
        .map_err(|e| invalid(format!("--chaos-faults: {e}")))?;
        Ok(Some(ChaosConfig {
            every,
            faults,
            lease_ttl: self.lease_ttl(),
        }))
    }

    /// The checked run, with `target` filled in by the caller for `--local`.
    pub fn resolve(&self, local_target: Option<Target>) -> Result<RunConfig, ConfigError> {
        let scenario = self.scenario.unwrap_or(ScenarioKind::Direct);
        let is_local = local_target.is_some();
        let chaos = self.chaos(scenario, is_local)?;
        let target = match (local_target, &self.redirect, self.target.is_empty()) {
            (Some(t), None, true) => t,
            (None, Some(r), true) => Target::Redirect(r.clone()),
            (None, None, false) => Target::Addrs(self.target.clone()),
            (None, None, true) => {
                return Err(invalid(
                    "no target: give --target ADDR, --redirect ADDR or --local N",
                ));
            }
            _ => {
                return Err(invalid("give only one of --target, --redirect and --local"));
            }
        };
        let connect = scenario == ScenarioKind::Connect;
        let users = self.users.unwrap_or(if connect { 1000 } else { 200 });
        let rate = self.rate.unwrap_or(if connect { 500.0 } else { 2000.0 });
        if users == 0 {
            return Err(invalid("--users must be at least 1"));
        }
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid("--rate must be a positive number"));
        }
        if !connect && users < 2 {
            return Err(invalid(format!(
                "the {} scenario needs at least 2 users",
                scenario.name()
            )));
        }
        let duration = self.duration.unwrap_or(if scenario == ScenarioKind::Soak {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(10)
        });
        let connect_rate = self.connect_rate.unwrap_or(1000.0);
        if !(connect_rate.is_finite() && connect_rate > 0.0) {
            return Err(invalid("--connect-rate must be a positive number"));
        }
        let group_size = self.group_size.unwrap_or(10);
        if group_size < 2 {
            return Err(invalid("--group-size must be at least 2"));
        }
        let active = self.active.unwrap_or(0.2);
        if !(0.0..=1.0).contains(&active) || active == 0.0 {
            return Err(invalid("--active must be in (0, 1]"));
        }
        let mix = parse_mix(self.mix.as_deref().unwrap_or(Mix::default_for(scenario)))?;
        let protocol = self.protocol.unwrap_or(Protocol::Fb);
        let ramp_start = self.ramp_start.unwrap_or(rate / 4.0);
        let ramp = Ramp {
            start: ramp_start,
            step: self.ramp_step.unwrap_or(ramp_start),
            step_duration: self.ramp_step_duration.unwrap_or(Duration::from_secs(5)),
            max: self.ramp_max.unwrap_or(ramp_start * 100.0),
        };
        if !(ramp.start > 0.0 && ramp.step > 0.0 && ramp.max >= ramp.start) {
            return Err(invalid(
                "--ramp-start and --ramp-step must be positive, --ramp-max at least --ramp-start",
            ));
        }
        let mut slo = match &self.slo {
            Some(text) => Slo::parse_list(text)?,
            None => Vec::new(),
        };
        if scenario == ScenarioKind::Ramp && slo.is_empty() {
            slo = Slo::parse_list("p99=50ms,loss=0")?;
        }
        let text_size = self.text_size.unwrap_or(64);
        if !(crate::payload::MIN_TEXT..=4096).contains(&text_size) {
            return Err(invalid(format!(
                "--text-size must be in {}..=4096",
                crate::payload::MIN_TEXT
            )));
        }
        let connect_only = self.connect_only.unwrap_or(false);
        if connect_only && !connect {
            return Err(invalid(
                "--connect-only applies to the connect scenario only",
            ));
        }
        for url in &self.server_metrics {
            crate::server::MetricsUrl::parse(url)
                .map_err(|e| invalid(format!("--server-metrics: {e}")))?;
        }
        if let Some(pid) = self.balancer_pid {
            if is_local {
                return Err(invalid(
                    "--balancer-pid is for --target runs: --local samples its own balancer",
                ));
            }
            crate::server::proc_tree_usage(pid)
                .map_err(|e| invalid(format!("--balancer-pid {pid}: {e}")))?;
        }
        let source_addrs = self
            .source_addrs
            .unwrap_or(users.div_ceil(25_000).max(1) as u32)
            .clamp(1, 250);
        Ok(RunConfig {
            scenario,
            protocol,
            model: self.model.unwrap_or(Model::Open),
            target,
            users,
            rate,
            duration,
            warmup: self.warmup.unwrap_or(Duration::from_secs(2)),
            drain: self.drain.unwrap_or(Duration::from_secs(5)),
            connect_rate,
            friends: self.friends.unwrap_or(4),
            group_size,
            text_size,
            active,
            mix,
            ramp,
            slo,
            source_addrs,
            late_threshold: self.late_threshold.unwrap_or(Duration::from_millis(10)),
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(10)),
            ack_every: self.ack_every.unwrap_or(32).max(1),
            json_acks: self.json_acks.unwrap_or_default(),
            password: self
                .password
                .clone()
                .unwrap_or_else(|| "loadtest-pw".into()),
            prefix: self.prefix.clone().unwrap_or_else(random_prefix),
            connect_only,
            reconnect: self.reconnect.unwrap_or(false) || chaos.is_some(),
            server_metrics: self.server_metrics.clone(),
            balancer_pid: self.balancer_pid,
            chaos,
        })
    }

    /// Where the reports go.
    pub fn output(&self) -> Result<Output, ConfigError> {
        let metrics_listen = match self.metrics_listen.as_deref().unwrap_or("127.0.0.1:9400") {
            "off" => None,
            addr => Some(
                addr.parse()
                    .map_err(|_| invalid(format!("--metrics-listen: bad address {addr:?}")))?,
            ),
        };
        let progress = match self.progress.as_deref().unwrap_or("auto") {
            "auto" => Progress::Auto,
            "lines" => Progress::Lines,
            "off" => Progress::Off,
            other => {
                return Err(invalid(format!(
                    "--progress must be auto, lines or off, not {other:?}"
                )));
            }
        };
        Ok(Output {
            json: self.json.clone(),
            hgrm_dir: self.hgrm_dir.clone(),
            plot: self.plot.clone(),
            metrics_listen,
            progress,
        })
    }
}

/// `direct=80,group=15,relogin=5,read=0,history=0` (missing kinds weigh 0).
fn parse_mix(text: &str) -> Result<Mix, ConfigError> {
    let mut mix = Mix {
        direct: 0.0,
        group: 0.0,
        relogin: 0.0,
        read: 0.0,
        history: 0.0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| invalid(format!("--mix: expected kind=weight, got {part:?}")))?;
        let w: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| invalid(format!("--mix: bad weight {value:?}")))?;
        match key.trim() {
            "direct" => mix.direct = w,
            "group" => mix.group = w,
            "relogin" => mix.relogin = w,
            "read" => mix.read = w,
            "history" => mix.history = w,
            other => {
                return Err(invalid(format!(
                    "--mix: unknown kind {other:?} (direct, group, relogin, read, history)"
                )));
            }
        }
    }
    if mix.direct + mix.group + mix.relogin + mix.read + mix.history <= 0.0 {
        return Err(invalid("--mix: at least one weight must be positive"));
    }
    Ok(mix)
}

fn random_prefix() -> String {
    format!("lt{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Durations as humantime strings ("10s") in TOML and JSON.
pub mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(D::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, de::Error};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => humantime::parse_duration(&text)
                    .map(Some)
                    .map_err(D::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        let mut all = vec!["chat-loadtest"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().run
    }

    #[test]
    fn defaults_need_a_target() {
        let err = parse(&[]).resolve(None).unwrap_err();
        assert!(err.to_string().contains("no target"), "{err}");
    }

    #[test]
    fn defaults_of_a_direct_run() {
        let c = parse(&["--target", "127.0.0.1:8000"])
            .resolve(None)
            .unwrap();
        assert_eq!(c.scenario, ScenarioKind::Direct);
        assert_eq!(c.protocol, Protocol::Fb);
        assert_eq!(c.model, Model::Open);
        assert_eq!(c.users, 200);
        assert_eq!(c.rate, 2000.0);
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.target, Target::Addrs(vec!["127.0.0.1:8000".into()]));
    }

    #[test]
    fn targets_are_exclusive() {
        let err = parse(&["--target", "a:1", "--redirect", "b:2"])
            .resolve(None)
            .unwrap_err();
        assert!(err.to_string().contains("only one"), "{err}");
    }

    #[test]
    fn flags_win_over_the_scenario_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "scenario = \"group\"\nrate = 100.0\nduration = \"3s\"\ntarget = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let args = parse(&["--scenario-file", path.to_str().unwrap(), "--rate", "50"])
            .with_file()
            .unwrap();
        let c = args.resolve(None).unwrap();
        assert_eq!(c.scenario, ScenarioKind::Group);
        assert_eq!(c.rate, 50.0);
        assert_eq!(c.duration, Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "rat = 100.0\n").unwrap();
        let err = parse(&["--scenario-file", path.to_str().unwrap()])
            .with_file()
            .unwrap_err();
        assert!(err.to_string().contains("rat"), "{err}");
    }

    #[test]
    fn mix_parses_and_rejects_nonsense() {
        let m = parse_mix("direct=1, relogin=2").unwrap();
        assert_eq!((m.direct, m.group, m.relogin), (1.0, 0.0, 2.0));
        assert!(parse_mix("chat=1").is_err());
        assert!(parse_mix("direct=-1").is_err());
        assert!(parse_mix("direct=0").is_err());
        let m = parse_mix("direct=60,group=20,relogin=10,read=10").unwrap();
        assert_eq!(
            (m.direct, m.group, m.relogin, m.read, m.history),
            (60.0, 20.0, 10.0, 10.0, 0.0)
        );
        assert!(m.needs_history());
        let m = parse_mix("history=1").unwrap();
        assert_eq!((m.direct, m.read, m.history), (0.0, 0.0, 1.0));
        assert!(!parse_mix("direct=1").unwrap().needs_history());
    }

    #[test]
    fn history_scenario_and_read_mix_resolve() {
        let c = parse(&["--target", "x:1", "--scenario", "history"])
            .resolve(None)
            .unwrap();
        assert_eq!(c.scenario, ScenarioKind::History);
        assert_eq!(
            (
                c.mix.direct,
                c.mix.group,
                c.mix.relogin,
                c.mix.read,
                c.mix.history
            ),
            (40.0, 10.0, 0.0, 0.0, 50.0)
        );
        let c = parse(&[
            "--target",
            "x:1",
            "--scenario",
            "mixed",
            "--mix",
            "direct=60,group=20,relogin=10,read=10",
        ])
        .resolve(None)
        .unwrap();
        assert_eq!(c.mix.read, 10.0);
        // History and read marks go over JSON too (msgids 40 and 42).
        assert!(
            parse(&[
                "--target",
                "x:1",
                "--scenario",
                "mixed",
                "--protocol",
                "json"
            ])
            .resolve(None)
            .is_ok()
        );
        for args in [
            &["--scenario", "history", "--protocol", "json"][..],
            &[
                "--scenario",
                "mixed",
                "--protocol",
                "json",
                "--mix",
                "direct=1,read=1",
            ],
        ] {
            let mut all = vec!["--target", "x:1"];
            all.extend_from_slice(args);
            assert!(parse(&all).resolve(None).is_ok(), "{args:?}");
        }
        // A RunConfig of an older coordinator (no read, no history) reads.
        let mut v = serde_json::to_value(&c).unwrap();
        let mix = v["mix"].as_object_mut().unwrap();
        mix.remove("read");
        mix.remove("history");
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert_eq!((back.mix.read, back.mix.history), (0.0, 0.0));
    }

    #[test]
    fn ramp_rates_step_up_to_the_max() {
        let c = parse(&[
            "--target",
            "x:1",
            "--scenario",
            "ramp",
            "--ramp-start",
            "100",
            "--ramp-step",
            "50",
            "--ramp-max",
            "260",
        ])
        .resolve(None)
        .unwrap();
        assert_eq!(c.ramp_rates(), vec![100.0, 150.0, 200.0, 250.0]);
        assert!(!c.slo.is_empty(), "ramp gets a default SLO");
    }

    #[test]
    fn connect_only_is_for_the_connect_scenario() {
        let c = parse(&["--target", "x:1", "--scenario", "connect", "--connect-only"])
            .resolve(None)
            .unwrap();
        assert!(c.connect_only);
        let c = parse(&[
            "--target",
            "x:1",
            "--scenario",
            "connect",
            "--connect-only",
            "false",
        ])
        .resolve(None)
        .unwrap();
        assert!(!c.connect_only);
        let err = parse(&["--target", "x:1", "--connect-only"])
            .resolve(None)
            .unwrap_err();
        assert!(err.to_string().contains("connect scenario"), "{err}");
    }

    #[test]
    fn a_balancer_pid_must_be_a_live_process_and_not_with_local() {
        let me = std::process::id().to_string();
        let c = parse(&["--target", "x:1", "--balancer-pid", &me])
            .resolve(None)
            .unwrap();
        assert_eq!(c.balancer_pid, Some(std::process::id()));
        let err = parse(&["--target", "x:1", "--balancer-pid", "4294967295"])
            .resolve(None)
            .unwrap_err();
        assert!(err.to_string().contains("--balancer-pid"), "{err}");
        let local = Some(Target::Addrs(vec!["127.0.0.1:1".into()]));
        let err = parse(&["--balancer-pid", &me]).resolve(local).unwrap_err();
        assert!(err.to_string().contains("--local"), "{err}");
    }

    #[test]
    fn server_metrics_urls_are_checked_and_kept_in_order() {
        let c = parse(&[
            "--target",
            "x:1",
            "--server-metrics",
            "http://127.0.0.1:9100/metrics",
            "--server-metrics",
            "http://127.0.0.1:9101/metrics,http://127.0.0.1:9102/metrics",
        ])
        .resolve(None)
        .unwrap();
        assert_eq!(
            c.server_metrics,
            [
                "http://127.0.0.1:9100/metrics",
                "http://127.0.0.1:9101/metrics",
                "http://127.0.0.1:9102/metrics"
            ]
        );
        let err = parse(&["--target", "x:1", "--server-metrics", "127.0.0.1:9100"])
            .resolve(None)
            .unwrap_err();
        assert!(err.to_string().contains("--server-metrics"), "{err}");
    }

    #[test]
    fn the_new_settings_come_from_the_scenario_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "scenario = \"connect\"\nconnect_only = true\n\
             server_metrics = [\"http://127.0.0.1:9100/metrics\"]\n",
        )
        .unwrap();
        let c = parse(&["--target", "x:1", "--scenario-file", path.to_str().unwrap()])
            .with_file()
            .unwrap()
            .resolve(None)
            .unwrap();
        assert!(c.connect_only);
        assert_eq!(c.server_metrics, ["http://127.0.0.1:9100/metrics"]);
        assert!(
            !parse(&[
                "--target",
                "x:1",
                "--model",
                "closed",
                "--scenario",
                "group"
            ])
            .resolve(None)
            .unwrap()
            .closed_pairs(),
            "group messages have no pairs"
        );
        assert!(
            parse(&["--target", "x:1", "--model", "closed"])
                .resolve(None)
                .unwrap()
                .closed_pairs()
        );
    }

    #[test]
    fn chaos_implies_a_local_cluster_of_three_and_reconnect() {
        let local = || Some(Target::Addrs(vec!["127.0.0.1:1".into()]));
        let args = parse(&["--chaos"]);
        assert_eq!(args.local_nodes(), Some(3));
        let c = args.resolve(local()).unwrap();
        assert!(c.reconnect, "--chaos implies --reconnect");
        let chaos = c.chaos.unwrap();
        assert_eq!(chaos.every, Duration::from_secs(30));
        assert_eq!(chaos.faults, crate::chaos::FaultKind::ALL);
        assert_eq!(chaos.lease_ttl, Duration::from_secs(10));
        let c = parse(&[
            "--chaos",
            "--local",
            "2",
            "--local-lease-ttl",
            "3s",
            "--chaos-every",
            "5s",
            "--chaos-faults",
            "stop,kill",
        ])
        .resolve(local())
        .unwrap();
        let chaos = c.chaos.unwrap();
        assert_eq!(chaos.every, Duration::from_secs(5));
        assert_eq!(chaos.lease_ttl, Duration::from_secs(3));
        assert_eq!(
            chaos.faults,
            [crate::chaos::FaultKind::Stop, crate::chaos::FaultKind::Kill]
        );
        assert!(
            parse(&["--local", "1"])
                .resolve(local())
                .unwrap()
                .chaos
                .is_none()
        );
        for (args, why) in [
            (&["--chaos", "--local", "1"][..], "at least 2"),
            (&["--chaos", "--scenario", "ramp"], "steady traffic"),
            (&["--chaos", "--scenario", "connect"], "steady traffic"),
            (&["--chaos", "--chaos-faults", "kill,fire"], "fire"),
            (&["--chaos", "--chaos-every", "10ms"], "at least 1s"),
        ] {
            let err = parse(args).resolve(local()).unwrap_err().to_string();
            assert!(err.contains(why), "{args:?}: {err}");
        }
        let err = parse(&["--chaos", "--target", "x:1"])
            .resolve(None)
            .unwrap_err();
        assert!(err.to_string().contains("local cluster"), "{err}");
    }

    #[test]
    fn run_config_round_trips_through_json() {
        let c = parse(&["--target", "127.0.0.1:8000", "--slo", "p99=5ms,loss=0"])
            .resolve(None)
            .unwrap();
        let back: RunConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}

#[cfg(test)]
mod scenario_files {
    use super::*;

    #[test]
    fn every_example_scenario_file_resolves() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let args = Args {
                scenario_file: Some(path.clone()),
                target: vec!["127.0.0.1:8000".into()],
                ..Args::default()
            };
            let config = args
                .with_file()
                .and_then(|a| a.resolve(None))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert_eq!(
                config.scenario.name(),
                stem,
                "{} names its scenario",
                path.display()
            );
            seen += 1;
        }
        assert_eq!(seen, 7, "one example per scenario");
    }
}
