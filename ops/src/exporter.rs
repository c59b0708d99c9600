//! The Prometheus side of every binary: installing the `metrics` recorder
//! (with the histogram buckets the binary wants) and the `/metrics` page,
//! which is what the recorder renders plus the [`process`](crate::process)
//! metrics.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::http::Response;

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("histogram buckets: {0}")]
    Buckets(#[from] BuildError),
    #[error("a metrics recorder was already installed")]
    AlreadyInstalled,
}

/// Installs the global recorder with these buckets (each for the metrics
/// its matcher selects) and returns the handle that renders it.
pub fn install(buckets: &[(Matcher, &[f64])]) -> Result<PrometheusHandle, ExporterError> {
    let mut builder = PrometheusBuilder::new();
    for (matcher, values) in buckets {
        builder = builder.set_buckets_for_metric(matcher.clone(), values)?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| ExporterError::AlreadyInstalled)?;
    Ok(handle)
}

/// The `/metrics` page: the recorder's metrics and the process metrics.
pub fn page(handle: &PrometheusHandle) -> Response {
    Response::metrics(handle.render() + &crate::process::render())
}
