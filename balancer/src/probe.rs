//! Load probes: the active health check and the source of the load reports
//! the choice weighs.
//!
//! A plain thread runs a tokio runtime (the client library is tokio's) with
//! one task per node. Each task keeps one long-lived probe connection
//! (`chat_client::Client`) and sends a `LoadRequest` every `probe_interval`;
//! an answer within the interval is recorded on the [`Upstream`], anything
//! else (refused connect, timeout, error reply, junk that fails FlatBuffers
//! verification, an invalid report) counts as a failed probe and drops the
//! connection, which is made again at the next tick. `probe_fails` failures
//! in a row mark the node down until a probe succeeds.
//!
//! A supervisor looks at the pool a few times a second and starts a task for
//! each node that has none; a task ends when its node is removed by a reload.
//! Nodes with `proxy_protocol=v1|v2` get a PROXY header for the balancer's
//! own connection first (v1 `PROXY UNKNOWN`, v2 LOCAL), as HAProxy sends on
//! its health checks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chat_client::{Client, ClientConfig, LoadReport};
use tokio::io::AsyncWriteExt;

use crate::pool::{Pool, Upstream};

/// Starts the probe thread; it runs as long as the process.
pub fn start(pool: Arc<Pool>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("probes".into())
        .spawn(move || runtime.block_on(supervise(pool)))?;
    Ok(())
}

async fn supervise(pool: Arc<Pool>) {
    let mut probed: Vec<Arc<Upstream>> = Vec::new();
    loop {
        probed.retain(|u| !u.removed.load(Ordering::Relaxed));
        for u in pool.upstreams().iter() {
            if !probed.iter().any(|p| Arc::ptr_eq(p, u)) {
                probed.push(u.clone());
                tokio::spawn(probe(pool.clone(), u.clone()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Probes one node until it is removed.
async fn probe(pool: Arc<Pool>, upstream: Arc<Upstream>) {
    let mut client: Option<Client> = None;
    let mut ticks = tokio::time::interval(pool.tuning().probe_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut period = pool.tuning().probe_interval;
    loop {
        ticks.tick().await;
        if upstream.removed.load(Ordering::Relaxed) {
            return;
        }
        let tuning = pool.tuning();
        if tuning.probe_interval != period {
            period = tuning.probe_interval;
            ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let picks_at_send = upstream.picks.load(Ordering::Relaxed);
        let outcome = tokio::time::timeout(period, async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(connect(&upstream, tuning.connect_timeout).await?);
            }
            let c = client.as_ref().expect("connected above");
            let report = c.load().await.map_err(|e| e.to_string())?;
            check(&report)?;
            Ok::<LoadReport, String>(report)
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(period)
            ))
        });
        match outcome {
            Ok(report) => upstream.probe_ok(report, picks_at_send),
            Err(error) => {
                if let Some(c) = client.take() {
                    c.close().await;
                }
                upstream.probe_failed(error, tuning.probe_fails);
            }
        }
    }
}

async fn connect(upstream: &Upstream, timeout: Duration) -> Result<Client, String> {
    let spec = upstream.spec();
    let mut stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(spec.addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    if let Some(version) = spec.proxy_protocol.version() {
        stream
            .write_all(&chat_schema::proxy::local(version))
            .await
            .map_err(|e| format!("writing the PROXY header: {e}"))?;
    }
    let config = ClientConfig {
        // A LoadReply is small: a node that sends more is sending junk.
        max_frame: 64 * 1024,
        request_timeout: Some(timeout.max(Duration::from_millis(100))),
        keepalive: None,
        nodelay: true,
    };
    Ok(Client::from_io(stream, config))
}

/// Refuses reports no node would send.
fn check(report: &LoadReport) -> Result<(), String> {
    if report.capacity == 0 {
        return Err("invalid load report: capacity 0".into());
    }
    if report.shard_busy.len() > 4096 {
        return Err("invalid load report: too many shards".into());
    }
    Ok(())
}
