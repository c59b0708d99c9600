//! `chat-loadtest`: open-model load scenarios against the chat cluster.
//!
//! A run flows through these modules:
//! - [`config`]: flags and scenario file → a checked [`config::RunConfig`];
//! - [`payload`]: what each message's text carries (sender, stream,
//!   sequence number, intended send time);
//! - [`outcome`]: what a run produced (histograms, counters, errors), and
//!   how outcomes of several workers merge;
//! - [`interval_log`]: HdrHistogram interval logs (files, and what
//!   workers send back);
//! - [`slo`]: objectives, checked against a run or a ramp step;
//! - [`server`]: the servers' CPU and memory, from `/proc` or their
//!   `/metrics`;
//! - [`distributed`]: a coordinator and workers sharing a run over NATS;
//! - [`chaos`]: `--chaos`, faults injected into `--local`'s cluster during
//!   the traffic, their recovery and loss;
//! - [`report`]: the final table, JSON, `.hgrm` files, interval logs, plot.
pub mod chaos;
pub mod config;
pub mod distributed;
pub mod exporter;
pub mod interval_log;
pub mod local;
pub mod outcome;
pub mod payload;
pub mod population;
pub mod progress;
pub mod record;
pub mod report;
pub mod run;
pub mod server;
pub mod session;
pub mod slo;
pub mod tally;
pub mod target;
pub mod traffic;
