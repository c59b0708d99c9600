//! The Prometheus side of every binary: installing the `metrics` recorder
//! (with the histogram buckets the binary wants) and the `/metrics` page,
//! which is what the recorder renders plus the [`process`](crate::process)
//! metrics.
//!
//! The recorder keeps every histogram sample until its upkeep folds them into
//! the buckets; the exporter's own `install` runs that from a tokio task, which
//! our binaries (current-thread runtimes busy with their own work, plain
//! threads) do not offer. So
//! [`install`] starts a thread of its own that runs the upkeep every
//! [`UPKEEP_EVERY`]: a process nobody scrapes holds at most that long's
//! samples (the node's event-loop lag alone records about 100 a second per
//! shard), instead of every sample since the last scrape.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::http::Response;

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("histogram buckets: {0}")]
    Buckets(#[from] BuildError),
    #[error("a metrics recorder was already installed")]
    AlreadyInstalled,
    #[error("starting the metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

/// How often the recorder's histogram samples are folded into buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the global recorder with these buckets (each for the metrics
/// its matcher selects), starts its upkeep every [`UPKEEP_EVERY`] and
/// returns the handle that renders it.
pub fn install(buckets: &[(Matcher, &[f64])]) -> Result<PrometheusHandle, ExporterError> {
    install_with_upkeep(buckets, UPKEEP_EVERY)
}

/// [`install`] with the upkeep every `upkeep_every`.
pub fn install_with_upkeep(
    buckets: &[(Matcher, &[f64])],
    upkeep_every: Duration,
) -> Result<PrometheusHandle, ExporterError> {
    let mut builder = PrometheusBuilder::new();
    for (matcher, values) in buckets {
        builder = builder.set_buckets_for_metric(matcher.clone(), values)?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| ExporterError::AlreadyInstalled)?;
    start_upkeep(handle.clone(), upkeep_every).map_err(ExporterError::Upkeep)?;
    Ok(handle)
}

/// Runs `handle`'s upkeep every `every`, for the life of the process.
fn start_upkeep(handle: PrometheusHandle, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        })
        .map(drop)
}

/// The `/metrics` page: the recorder's metrics and the process metrics.
pub fn page(handle: &PrometheusHandle) -> Response {
    Response::metrics(handle.render() + &crate::process::render())
}
