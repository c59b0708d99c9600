//! The balancer's settings: command-line flags, each also readable from a
//! `CHAT_BALANCER_*` environment variable, and an optional TOML file
//! (`--config`) with the same keys in snake_case. A flag or variable wins over
//! the file, the file over the built-in default.
//!
//! Upstreams are written like nginx `server` lines: an address followed by
//! `key=value` parameters and bare flags, e.g.
//! `"127.0.0.1:6000 weight=2 max_fails=3 fail_timeout=30s backup"`.
//! `resolve` turns flags + file into a checked [`Config`]; SIGHUP calls it
//! again with the same flags (the file is re-read) and hands the result to
//! the pool.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use chat_ops::settings::{self, SettingsError};
use clap::Parser;
use serde::Deserialize;

const EXAMPLES: &str = "\
Examples:
  # the seed's nginx stream config, translated
  chat-balancer --listen 127.0.0.1:8000 \\
      --upstream '127.0.0.1:9190 weight=1 max_fails=3 fail_timeout=30s' \\
      --upstream '127.0.0.1:9191 weight=1 max_fails=3 fail_timeout=30s'
  chat-balancer --upstream 127.0.0.1:6000 --upstream '127.0.0.1:6002 weight=2 backup'
  chat-balancer --config balancer.toml        # keys as below, in snake_case; SIGHUP re-reads it
  CHAT_BALANCER_UPSTREAM='10.0.0.5:6000,10.0.0.6:6000 proxy_protocol=v1' chat-balancer
  chat-balancer --redirect-listen off --admin-listen 0.0.0.0:9300
  chat-balancer -t --config balancer.toml     # check it, print what would run, exit 0/1
  chat-balancer --reuse-port --config balancer.toml   # several processes on one port
  chat-balancer --panic --upstream 127.0.0.1:6000   # all nodes down: try them anyway
  chat-balancer --access-log /var/log/chat-balancer/access.log --upstream 127.0.0.1:6000

Upstream parameters (as nginx `server`): weight=N (1), max_fails=N (1; 0 = never
marked down by failed connects), fail_timeout=DURATION (10s), max_conns=N (0 =
unlimited), backup, down, slow_start=DURATION (0s), proxy_protocol=v1|v2|off (off;
v1 = nginx `proxy_protocol on` and HAProxy `send-proxy`, v2 = `send-proxy-v2`;
`on` is kept as a synonym of v2).

Signals: SIGHUP reloads the config file (upstreams added, removed or changed;
open connections stay), SIGTERM/SIGINT stop accepting and let open connections
finish for up to --shutdown-grace.";

/// Command-line flags. Every value is optional here so that the TOML file can
/// fill what the command line leaves out; defaults are applied in `resolve`.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "chat-balancer",
    version,
    about = "TCP balancer for chat nodes: routes each new connection by the load the nodes report",
    after_help = EXAMPLES
)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Args {
    /// TOML file with any of these settings; SIGHUP re-reads it.
    #[arg(long, env = "CHAT_BALANCER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Proxy-mode address for clients [default: 127.0.0.1:8000].
    #[arg(long, env = "CHAT_BALANCER_LISTEN")]
    pub listen: Option<String>,
    /// Redirect-mode address ("which node?" requests), or `off` [default: 127.0.0.1:8001].
    #[arg(long, env = "CHAT_BALANCER_REDIRECT_LISTEN")]
    pub redirect_listen: Option<String>,
    /// Admin HTTP address (/metrics, /status, /status.json), or `off` [default: 127.0.0.1:9300].
    #[arg(long, env = "CHAT_BALANCER_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Who may change the pool through the admin API (POST /upstreams/ADDR/drain|undrain|down|up|weight?value=N): CIDRs or addresses, comma-separated; others get 403. /metrics and /status stay open to anyone who reaches --admin-listen. Read at start only [default: loopback, 127.0.0.0/8 and ::1].
    #[arg(
        long = "admin-allow",
        env = "CHAT_BALANCER_ADMIN_ALLOW",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub admin_allow: Vec<String>,
    /// A node, as an nginx `server` line: "ADDR [weight=N] [max_fails=N] [fail_timeout=D] [max_conns=N] [backup] [down] [slow_start=D] [proxy_protocol=v1|v2|off]". Repeatable; comma-separated in the environment.
    #[arg(
        long = "upstream",
        env = "CHAT_BALANCER_UPSTREAM",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Proxy threads (one per core), each with its own event loop accepting on the same port, and as many redirect threads when the redirect port is on [default: number of cores].
    #[arg(long, env = "CHAT_BALANCER_THREADS")]
    pub threads: Option<usize>,
    /// How long a connect to a node may take before the next one is tried [default: 1s].
    #[arg(long, env = "CHAT_BALANCER_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub connect_timeout: Option<Duration>,
    /// Most nodes tried for one client connection; 0 = every candidate once [default: 0].
    #[arg(long, env = "CHAT_BALANCER_NEXT_UPSTREAM_TRIES")]
    pub next_upstream_tries: Option<usize>,
    /// Close a relayed connection after this long without a byte either way [default: 10m].
    #[arg(long, env = "CHAT_BALANCER_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub idle_timeout: Option<Duration>,
    /// When one side of a relayed connection stops sending (EOF), keep the other direction open until it ends too (nginx's `proxy_half_close on`, HAProxy's behaviour); `--half-close false` closes both at once instead (nginx's default), so that a client's late replies are dropped. SIGHUP applies a change [default: true].
    #[arg(long, env = "CHAT_BALANCER_HALF_CLOSE", num_args = 0..=1, default_missing_value = "true")]
    pub half_close: Option<bool>,
    /// How often each node is asked for its load; a probe unanswered for this long fails [default: 1s].
    #[arg(long, env = "CHAT_BALANCER_PROBE_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub probe_interval: Option<Duration>,
    /// Failed probes in a row that mark a node down (until a probe succeeds) [default: 3].
    #[arg(long, env = "CHAT_BALANCER_PROBE_FAILS")]
    pub probe_fails: Option<u32>,
    /// A load report older than this is not used: the choice falls back to weight and own open connections [default: 3s].
    #[arg(long, env = "CHAT_BALANCER_REPORT_MAX_AGE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub report_max_age: Option<Duration>,
    /// On SIGTERM, how long open connections may take to finish [default: 10s].
    #[arg(long, env = "CHAT_BALANCER_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde_opt")]
    pub shutdown_grace: Option<Duration>,
    /// Let other chat-balancer processes listen on the same ports (nginx's `listen ... reuseport`): the kernel spreads new connections over them, and a new binary can start before the old one stops. Without it, a port another process listens on is refused [default: false].
    #[arg(long, env = "CHAT_BALANCER_REUSE_PORT", num_args = 0..=1, default_missing_value = "true")]
    pub reuse_port: Option<bool>,
    /// When no node is available (every one down by its probes or failed connects, draining, drained or at max_conns), try them anyway (panic mode, as Envoy's; counted in chat_balancer_panic_total) instead of closing the client at once (as HAProxy; counted in chat_balancer_fail_fast_total). Nodes set down (config or admin API) are never tried. SIGHUP applies a change [default: false].
    #[arg(long, env = "CHAT_BALANCER_PANIC", num_args = 0..=1, default_missing_value = "true")]
    pub panic: Option<bool>,
    /// One line per relayed connection (client, node, connect time, bytes each way, duration, how it ended) to a file (appended), `stderr`, or `off` [default: off].
    #[arg(long, env = "CHAT_BALANCER_ACCESS_LOG")]
    pub access_log: Option<String>,
    /// Check the configuration (flags, environment, file), print what would run, and exit: 0 if valid, 1 with the reason if not. Binds nothing (as `nginx -t`).
    #[arg(short = 't', long)]
    #[serde(skip)]
    pub check_config: bool,
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

/// Which PROXY protocol header a node gets before each relayed connection
/// and probe (`proxy_protocol=` on an upstream line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header.
    #[default]
    Off,
    /// The text header, as nginx `proxy_protocol on` and HAProxy `send-proxy`.
    V1,
    /// The binary header, as HAProxy `send-proxy-v2` (also spelled `on`).
    V2,
}

impl ProxyProtocol {
    /// Parses the value of `proxy_protocol=`.
    pub fn parse(value: &str) -> Result<ProxyProtocol, String> {
        match value {
            "off" => Ok(ProxyProtocol::Off),
            "v1" => Ok(ProxyProtocol::V1),
            "v2" | "on" => Ok(ProxyProtocol::V2),
            other => Err(format!(
                "proxy_protocol={other:?}: expected v1, v2 (or on, the same as v2) or off"
            )),
        }
    }

    /// The header version to send, `None` when off.
    pub fn version(self) -> Option<chat_schema::proxy::Version> {
        match self {
            ProxyProtocol::Off => None,
            ProxyProtocol::V1 => Some(chat_schema::proxy::Version::V1),
            ProxyProtocol::V2 => Some(chat_schema::proxy::Version::V2),
        }
    }
}

impl std::fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        })
    }
}

/// One node as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Failed connects within `fail_timeout` that mark the node down; 0 = never.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Most open relayed connections; 0 = unlimited.
    pub max_conns: u32,
    /// Used only when no primary node is available.
    pub backup: bool,
    /// Never used (kept in the list, shown in /status).
    pub down: bool,
    pub slow_start: Duration,
    /// The PROXY protocol header relayed connections (and probes) start with.
    pub proxy_protocol: ProxyProtocol,
}

impl UpstreamSpec {
    /// The spec as a `server` line with every parameter spelled out.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} weight={} max_fails={} fail_timeout={} max_conns={} slow_start={}",
            self.addr,
            self.weight,
            self.max_fails,
            humantime::format_duration(self.fail_timeout),
            self.max_conns,
            humantime::format_duration(self.slow_start),
        );
        line.push_str(&format!(" proxy_protocol={}", self.proxy_protocol));
        if self.backup {
            line.push_str(" backup");
        }
        if self.down {
            line.push_str(" down");
        }
        line
    }

    /// Parses an nginx-style `server` line.
    pub fn parse(line: &str) -> Result<UpstreamSpec, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(format!("upstream {line:?}: {m}"));
        let mut words = line.split_whitespace();
        let addr_text = words.next().ok_or_else(|| bad("empty".into()))?;
        let addr = addr_text
            .to_socket_addrs()
            .map_err(|e| bad(format!("address {addr_text:?}: {e}")))?
            .next()
            .ok_or_else(|| bad(format!("address {addr_text:?} resolves to nothing")))?;
        let mut spec = UpstreamSpec {
            addr,
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            max_conns: 0,
            backup: false,
            down: false,
            slow_start: Duration::ZERO,
            proxy_protocol: ProxyProtocol::Off,
        };
        for word in words {
            let number = |v: &str| -> Result<u32, ConfigError> {
                v.parse()
                    .map_err(|_| bad(format!("{word:?}: not a number")))
            };
            let duration = |v: &str| -> Result<Duration, ConfigError> {
                humantime::parse_duration(v).map_err(|e| bad(format!("{word:?}: {e}")))
            };
            match word.split_once('=') {
                Some(("weight", v)) => spec.weight = number(v)?,
                Some(("max_fails", v)) => spec.max_fails = number(v)?,
                Some(("fail_timeout", v)) => spec.fail_timeout = duration(v)?,
                Some(("max_conns", v)) => spec.max_conns = number(v)?,
                Some(("slow_start", v)) => spec.slow_start = duration(v)?,
                Some(("proxy_protocol", v)) => {
                    spec.proxy_protocol = ProxyProtocol::parse(v).map_err(bad)?
                }
                None if word == "backup" => spec.backup = true,
                None if word == "down" => spec.down = true,
                _ => return Err(bad(format!("unknown parameter {word:?}"))),
            }
        }
        if spec.weight == 0 {
            return Err(bad("weight must be at least 1".into()));
        }
        Ok(spec)
    }
}

/// What the pool and the probes read; replaced as a whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    pub connect_timeout: Duration,
    pub next_upstream_tries: usize,
    pub idle_timeout: Duration,
    /// After EOF from one side, keep relaying the other way (`--half-close`).
    pub half_close: bool,
    pub probe_interval: Duration,
    pub probe_fails: u32,
    pub report_max_age: Duration,
    /// With every node unavailable, try them anyway (`--panic`) instead of
    /// closing the client at once.
    pub panic: bool,
}

/// The resolved settings the balancer runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redirect_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// Sources allowed to use the admin API (loopback unless set).
    pub admin_allow: Vec<ipnet::IpNet>,
    pub upstreams: Vec<UpstreamSpec>,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub tuning: Tuning,
    /// Whether other processes may share the listening ports.
    pub reuse_port: bool,
    pub access_log: Option<crate::access_log::Target>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] SettingsError),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// `off`/`none` → no listener; otherwise a socket address.
fn listen_addr(flag: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if matches!(value, "off" | "none" | "") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::Invalid(format!("--{flag} {value:?}: not an address or `off`")))
}

/// `--admin-allow`: CIDRs or bare addresses; none given → loopback.
fn admin_allow(items: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    if items.iter().all(|i| i.trim().is_empty()) {
        return Ok(vec![
            "127.0.0.0/8".parse().expect("a CIDR"),
            "::1/128".parse().expect("a CIDR"),
        ]);
    }
    items
        .iter()
        .map(|i| i.trim())
        .filter(|i| !i.is_empty())
        .map(|i| {
            i.parse::<ipnet::IpNet>()
                .or_else(|_| i.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::Invalid(format!(
                        "--admin-allow {i:?}: not a CIDR (10.0.0.0/8) or an address"
                    ))
                })
        })
        .collect()
}

impl Args {
    /// Merges flags, the `--config` file (read now) and defaults into a
    /// checked `Config`. Upstreams given as flags replace the file's list.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => settings::load(path)?,
            None => Args::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field
                    .clone()
                    .or(file.$field.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let upstream_lines = if self.upstream.is_empty() {
            &file.upstream
        } else {
            &self.upstream
        };
        let upstreams = upstream_lines
            .iter()
            .map(|l| UpstreamSpec::parse(l))
            .collect::<Result<Vec<_>, _>>()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let listen = pick!(listen, "127.0.0.1:8000".into());
        let config = Config {
            listen: listen_addr("listen", &listen)?
                .ok_or_else(|| ConfigError::Invalid("--listen cannot be off".into()))?,
            redirect_listen: listen_addr(
                "redirect-listen",
                &pick!(redirect_listen, "127.0.0.1:8001".into()),
            )?,
            admin_listen: listen_addr(
                "admin-listen",
                &pick!(admin_listen, "127.0.0.1:9300".into()),
            )?,
            admin_allow: admin_allow(if self.admin_allow.is_empty() {
                &file.admin_allow
            } else {
                &self.admin_allow
            })?,
            upstreams,
            threads: pick!(threads, cores),
            shutdown_grace: pick!(shutdown_grace, Duration::from_secs(10)),
            reuse_port: pick!(reuse_port, false),
            access_log: crate::access_log::Target::parse(&pick!(access_log, "off".into())),
            tuning: Tuning {
                connect_timeout: pick!(connect_timeout, Duration::from_secs(1)),
                next_upstream_tries: pick!(next_upstream_tries, 0),
                idle_timeout: pick!(idle_timeout, Duration::from_secs(600)),
                half_close: pick!(half_close, true),
                probe_interval: pick!(probe_interval, Duration::from_secs(1)),
                probe_fails: pick!(probe_fails, 3),
                report_max_age: pick!(report_max_age, Duration::from_secs(3)),
                panic: pick!(panic, false),
            },
        };
        config.check()?;
        Ok(config)
    }
}

impl Config {
    /// What would run, one setting a line (`--check-config`).
    pub fn describe(&self) -> String {
        let addr = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        let t = &self.tuning;
        let mut out = format!(
            "listen {}{}\nredirect_listen {}\nadmin_listen {}\nthreads {}\n\
             shutdown_grace {}\nconnect_timeout {}\nnext_upstream_tries {}\n\
             idle_timeout {}\nhalf_close {}\nprobe_interval {}\nprobe_fails {}\nreport_max_age {}\n\
             panic {}\naccess_log {}\nadmin_allow {}\n",
            self.listen,
            if self.reuse_port { " reuse_port" } else { "" },
            addr(self.redirect_listen),
            addr(self.admin_listen),
            self.threads,
            humantime::format_duration(self.shutdown_grace),
            humantime::format_duration(t.connect_timeout),
            t.next_upstream_tries,
            humantime::format_duration(t.idle_timeout),
            if t.half_close { "on" } else { "off" },
            humantime::format_duration(t.probe_interval),
            t.probe_fails,
            humantime::format_duration(t.report_max_age),
            if t.panic { "on" } else { "off" },
            self.access_log
                .as_ref()
                .map_or_else(|| "off".to_owned(), |t| t.to_string()),
            self.admin_allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        for u in &self.upstreams {
            out.push_str(&format!("upstream {}\n", u.describe()));
        }
        out
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.upstreams.is_empty() {
            return bad("at least one --upstream is needed");
        }
        let mut addrs: Vec<SocketAddr> = self.upstreams.iter().map(|u| u.addr).collect();
        addrs.sort();
        if addrs.windows(2).any(|w| w[0] == w[1]) {
            return bad("an upstream address is listed twice");
        }
        if self.threads == 0 {
            return bad("--threads must be at least 1");
        }
        let t = &self.tuning;
        if t.connect_timeout.is_zero() || t.idle_timeout.is_zero() || t.probe_interval.is_zero() {
            return bad("--connect-timeout, --idle-timeout and --probe-interval must be positive");
        }
        if t.probe_fails == 0 {
            return bad("--probe-fails must be at least 1");
        }
        if t.report_max_age < t.probe_interval {
            return bad("--report-max-age must be at least --probe-interval");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_lines_parse_like_nginx_server_lines() {
        let s = UpstreamSpec::parse(
            "127.0.0.1:9190 weight=2 max_fails=3 fail_timeout=30s max_conns=100 backup slow_start=10s proxy_protocol=on",
        )
        .unwrap();
        assert_eq!(s.addr, "127.0.0.1:9190".parse().unwrap());
        assert_eq!((s.weight, s.max_fails, s.max_conns), (2, 3, 100));
        assert_eq!(s.fail_timeout, Duration::from_secs(30));
        assert_eq!(s.slow_start, Duration::from_secs(10));
        assert!(s.backup && !s.down);
        assert_eq!(s.proxy_protocol, ProxyProtocol::V2, "on is v2");
        for (value, expected) in [
            ("v1", ProxyProtocol::V1),
            ("v2", ProxyProtocol::V2),
            ("off", ProxyProtocol::Off),
        ] {
            let line = format!("127.0.0.1:1 proxy_protocol={value}");
            assert_eq!(UpstreamSpec::parse(&line).unwrap().proxy_protocol, expected);
        }
        let error = UpstreamSpec::parse("127.0.0.1:1 proxy_protocol=v3")
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected v1, v2"), "{error}");
        let d = UpstreamSpec::parse("127.0.0.1:1 down").unwrap();
        assert!(d.down);
        assert_eq!((d.weight, d.max_fails), (1, 1));
        assert_eq!(d.fail_timeout, Duration::from_secs(10));
        for bad in [
            "",
            "nowhere",
            "127.0.0.1:1 weight=0",
            "127.0.0.1:1 weight=x",
            "127.0.0.1:1 colour=blue",
            "127.0.0.1:1 proxy_protocol=maybe",
        ] {
            assert!(UpstreamSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\nupstream = [\"127.0.0.1:6000 weight=3\"]\nprobe_interval = \"500ms\"\nredirect_listen = \"off\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "chat-balancer",
            "--config",
            file.to_str().unwrap(),
            "--probe-interval",
            "2s",
        ]);
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.redirect_listen, None);
        assert_eq!(c.admin_listen, Some("127.0.0.1:9300".parse().unwrap()));
        assert_eq!(c.tuning.probe_interval, Duration::from_secs(2));
        assert_eq!(c.upstreams[0].weight, 3);
        assert_eq!(c.tuning.connect_timeout, Duration::from_secs(1));
        let flags = Args::parse_from([
            "chat-balancer",
            "--config",
            file.to_str().unwrap(),
            "--upstream",
            "127.0.0.1:6001",
        ]);
        let c = flags.resolve().unwrap();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].addr.port(), 6001);
    }

    #[test]
    fn admin_allow_is_loopback_unless_set_by_flag_env_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "upstream = [\"127.0.0.1:6000\"]\nadmin_allow = [\"10.0.0.0/8\", \"192.0.2.7\"]\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let plain = Args::parse_from(["chat-balancer", "--upstream", "127.0.0.1:1"]);
        let nets = |c: Config| {
            c.admin_allow
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(nets(plain.resolve().unwrap()), ["127.0.0.0/8", "::1/128"]);
        let from_file = Args::parse_from(["chat-balancer", "--config", path]);
        assert_eq!(
            nets(from_file.resolve().unwrap()),
            ["10.0.0.0/8", "192.0.2.7/32"]
        );
        let flag = Args::parse_from([
            "chat-balancer",
            "--config",
            path,
            "--admin-allow",
            "127.0.0.1/32,::1",
        ]);
        assert_eq!(nets(flag.resolve().unwrap()), ["127.0.0.1/32", "::1/128"]);
        let bad = Args::parse_from([
            "chat-balancer",
            "--upstream",
            "127.0.0.1:1",
            "--admin-allow",
            "10.0.0.0/33",
        ]);
        assert!(matches!(bad.resolve(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn panic_is_off_unless_set_by_a_bare_flag_a_value_or_the_file() {
        let resolve = |args: &[&str]| {
            let mut all = vec!["chat-balancer", "--upstream", "127.0.0.1:1"];
            all.extend_from_slice(args);
            Args::parse_from(all).resolve().unwrap()
        };
        let off = resolve(&[]);
        assert!(!off.tuning.panic);
        assert!(
            off.describe().contains("\npanic off\n"),
            "{}",
            off.describe()
        );
        let on = resolve(&["--panic"]);
        assert!(on.tuning.panic);
        assert!(on.describe().contains("\npanic on\n"));
        assert!(!resolve(&["--panic", "false"]).tuning.panic);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "panic = true\n").unwrap();
        let path = file.to_str().unwrap();
        assert!(resolve(&["--config", path]).tuning.panic);
        assert!(!resolve(&["--config", path, "--panic=false"]).tuning.panic);
    }

    #[test]
    fn bad_configs_are_refused() {
        let none = Args::parse_from(["chat-balancer"]);
        assert!(matches!(none.resolve(), Err(ConfigError::Invalid(_))));
        let twice = Args::parse_from([
            "chat-balancer",
            "--upstream",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:1 weight=2",
        ]);
        assert!(twice.resolve().is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "upstreams = []\n").unwrap();
        let typo = Args::parse_from(["chat-balancer", "--config", file.to_str().unwrap()]);
        assert!(matches!(
            typo.resolve(),
            Err(ConfigError::File(SettingsError::Parse { .. }))
        ));
    }
}
