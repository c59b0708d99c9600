//! `chat-loadtest`: parse the settings, start a local cluster if asked, run
//! the scenario here or over workers, print the table and write the reports.
//! Exit status: 0 when every SLO held, 2 when one was missed, 1 on an
//! error, 130 when interrupted.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use chat_loadtest::config::{
    Args, Cli, Command, Output, RunConfig, ScenarioKind, Target, WorkerArgs,
};
use chat_loadtest::distributed::{self, Assignment, Progress};
use chat_loadtest::exporter;
use chat_loadtest::local::Local;
use chat_loadtest::outcome::{Correction, Metric, Outcome, Series};
use chat_loadtest::progress::Display;
use chat_loadtest::report::{self, RunInfo};
use chat_loadtest::run::{self, Part, Sink, Tick};
use chat_loadtest::server::Probe;
use chat_loadtest::slo::{self, Observed, Verdict};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    chat_ops::logs::init_or("CHAT_LOADTEST_LOG", "warn");
    let result = match cli.command {
        Some(Command::Worker(w)) => worker(w).map(|()| ExitCode::SUCCESS),
        None => coordinator(cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("chat-loadtest: {e:#}");
        ExitCode::FAILURE
    })
}

/// Raises the open-files limit to its hard limit (each user holds one
/// socket); returns the limit.
fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Warns when this process cannot hold `users` connections.
fn check_open_files(users: u64) {
    let limit = raise_open_files();
    if users + 64 > limit {
        eprintln!(
            "warning: this process may open {limit} files, too few for {users} connections: \
             split the run over workers (`--workers K`, see docs/loadtest.md)"
        );
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    Ok(b.enable_all().build()?)
}

/// A plain run, or the coordinator of a distributed one.
fn coordinator(args: Args) -> anyhow::Result<ExitCode> {
    let args = args.with_file()?;
    let output = args.output()?;
    let local = match args.local_nodes() {
        Some(0) => anyhow::bail!("--local needs at least one node"),
        Some(n) => {
            eprintln!(
                "starting a balancer and {n} node{} ...",
                if n == 1 { "" } else { "s" }
            );
            Some(
                Local::start(n, args.local_shards.unwrap_or(1), args.lease_ttl())
                    .context("--local")?,
            )
        }
        None => None,
    };
    let mut config = args.resolve(local.as_ref().map(Local::target))?;
    if let (Some(l), Some(_)) = (&local, args.workers) {
        // Workers cannot see the local processes: they read the nodes'
        // /metrics instead.
        if config.server_metrics.is_empty() {
            config.server_metrics = l.metrics_urls();
        }
    }
    let config = Arc::new(config);
    // A plain run samples the servers itself: --local's processes, or
    // the --server-metrics endpoints.
    // (Not with --chaos: restarted processes have new pids.)
    let probe = match &local {
        Some(_) if config.chaos.is_some() => None,
        Some(l) => Some(l.probe()),
        None => Probe::metrics(&config.server_metrics, config.balancer_pid)?,
    };
    let injector = match (&local, &config.chaos) {
        (Some(l), Some(c)) => {
            eprintln!(
                "chaos: a fault every {} ({}), lease {}",
                humantime::format_duration(c.every),
                c.faults
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                humantime::format_duration(c.lease_ttl)
            );
            Some(l.injector())
        }
        _ => None,
    };
    let target = match &local {
        Some(l) => l.describe(),
        None => match &config.target {
            Target::Addrs(a) => a.join(", "),
            Target::Redirect(b) => format!("redirected by {b}"),
        },
    };
    if args.workers.is_none() {
        check_open_files(config.users);
    }
    let rt = runtime(args.threads)?;
    let metrics_at = match output.metrics_listen {
        // A busy port costs the metrics, not the run.
        Some(addr) => exporter::start(addr)
            .map_err(|e| {
                eprintln!("warning: no /metrics: {e:#} (choose another --metrics-listen, or off)")
            })
            .ok(),
        None => None,
    };
    let display = Arc::new(Display::new(output.progress, &config));
    eprintln!(
        "{} scenario, {} users, {}; {target}{}",
        config.scenario.name(),
        config.users,
        rate_text(&config),
        metrics_at.map_or_else(String::new, |a| format!("; metrics on http://{a}/metrics"))
    );
    let started = SystemTime::now();
    let run = async {
        match (args.workers, &args.nats) {
            (Some(k), Some(url)) => {
                let quiet = output.progress == chat_loadtest::config::Progress::Off;
                let mut latest = std::collections::BTreeMap::new();
                distributed::coordinate(
                    url,
                    &config,
                    k,
                    Duration::from_secs(2),
                    move |p: &Progress| {
                        latest.insert(p.worker, p.clone());
                        // Worker 0 reports once a second: print the sum of the latest of each.
                        if p.worker == 0 && !quiet {
                            eprintln!("{}", progress_line(latest.values(), k));
                        }
                    },
                )
                .await
                .map_err(anyhow::Error::from)
            }
            (Some(_), None) => Err(anyhow::anyhow!("--workers needs --nats URL")),
            (None, _) => {
                let sink: Sink = {
                    let display = display.clone();
                    let exporting = metrics_at.is_some();
                    Arc::new(move |t: &Tick| {
                        display.tick(t);
                        if let (true, Tick::Second(s)) = (exporting, t) {
                            exporter::publish(s);
                        }
                    })
                };
                let part = Part {
                    worker: 0,
                    users: config.users,
                    rate_share: 1.0,
                };
                run::run(config.clone(), part, Instant::now(), sink, probe, injector)
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            outcome = run => outcome.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    display.finish();
    let Some(outcome) = outcome? else {
        eprintln!(
            "interrupted: stopping the run{}",
            if local.is_some() {
                " and the local cluster"
            } else {
                ""
            }
        );
        // Not a plain drop: that would wait for the pacer's thread to reach
        // the end of its schedule.
        rt.shutdown_timeout(Duration::from_secs(1));
        drop(local);
        return Ok(ExitCode::from(130));
    };
    // The cluster is no longer needed: stop it before the reports.
    drop(local);
    let verdicts = verdicts(&config, &outcome);
    let info = RunInfo {
        config: &config,
        started,
        verdicts: &verdicts,
        target,
    };
    print!("{}", report::table(&outcome, &info));
    write_reports(&output, &outcome, &info)?;
    Ok(if verdicts.iter().all(|v| v.held) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// One line summing the workers' latest progress.
fn progress_line<'a>(latest: impl Iterator<Item = &'a Progress>, workers: u32) -> String {
    let (mut n, mut elapsed, mut conns, mut sent, mut acked, mut delivered, mut errors, mut p99) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    let mut phase = String::new();
    for p in latest {
        n += 1;
        elapsed = elapsed.max(p.elapsed_ms);
        conns += p.connections;
        sent += p.sent;
        acked += p.acked;
        delivered += p.delivered;
        errors += p.errors;
        p99 = p99.max(p.p99_us);
        phase.clone_from(&p.phase);
    }
    format!(
        "{:>5}s {phase:<7} workers {n}/{workers} conns {conns:<7} sent {sent} acked {acked} \
         delivered {delivered} errors {errors} p99 (worst worker) {}",
        elapsed / 1000,
        report::fmt_us(p99)
    )
}

fn rate_text(config: &RunConfig) -> String {
    match config.scenario {
        ScenarioKind::Connect => format!("{} connections/s", config.rate),
        ScenarioKind::Ramp => format!(
            "{}/s rising by {}/s every {}",
            config.ramp.start,
            config.ramp.step,
            humantime::format_duration(config.ramp.step_duration)
        ),
        _ => format!(
            "{} {}/s for {} after {} warmup ({} model)",
            config.rate,
            match config.scenario {
                ScenarioKind::Mixed | ScenarioKind::History => "actions",
                _ => "msg",
            },
            humantime::format_duration(config.duration),
            humantime::format_duration(config.warmup),
            format!("{:?}", config.model).to_lowercase()
        ),
    }
}

/// Checks the run's objectives.
fn verdicts(config: &RunConfig, outcome: &Outcome) -> Vec<Verdict> {
    let lookup = |m: Metric| {
        outcome
            .totals
            .get(&Series::new(m, Correction::Corrected))
            .cloned()
    };
    let seen = Observed {
        main_metric: if config.connect_only {
            Metric::Connect
        } else if config.scenario == ScenarioKind::Connect {
            Metric::Login
        } else {
            Metric::Delivery
        },
        corrected: &lookup,
        lost: outcome.counters.lost,
        expected: outcome.counters.expected,
        errors: outcome.errors.values().sum(),
    };
    slo::check(&config.slo, &seen)
}

fn write_reports(output: &Output, outcome: &Outcome, info: &RunInfo) -> anyhow::Result<()> {
    if let Some(path) = &output.json {
        report::write_json(path, outcome, info)
            .with_context(|| format!("--json {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &output.hgrm_dir {
        let files = report::write_hgrm_dir(dir, outcome, info)
            .with_context(|| format!("--hgrm-dir {}", dir.display()))?;
        eprintln!("wrote {} files in {}", files.len(), dir.display());
    }
    if let Some(path) = &output.plot {
        report::write_plot(path, outcome, info)
            .with_context(|| format!("--plot {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `chat-loadtest worker`: serve assignments until stopped.
fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let rt = runtime(args.threads)?;
    let exporting = match args.metrics_listen.as_str() {
        "off" => false,
        addr => {
            exporter::start(addr.parse().context("--metrics-listen")?)?;
            true
        }
    };
    eprintln!("worker: waiting for runs on {}", args.nats);
    rt.block_on(distributed::serve(
        &args.nats,
        args.runs,
        move |a: Assignment, progress| async move {
            let total = a.config.users;
            let range = a.share.of(total);
            let part = Part {
                worker: a.share.index,
                users: range.end - range.start,
                rate_share: a.share.rate(1.0, total),
            };
            // The common start, on this machine's monotonic clock.
            let now = (Instant::now(), SystemTime::now());
            let base = match a.start_at.duration_since(now.1) {
                Ok(ahead) => now.0 + ahead,
                Err(behind) => now.0.checked_sub(behind.duration()).unwrap_or(now.0),
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(base)).await;
            eprintln!(
                "worker {}: run {}: {} users",
                a.share.index, a.run_id, part.users
            );
            let index = a.share.index;
            // The first worker samples the servers; the others count.
            let probe = if index == 0 {
                Probe::metrics(&a.config.server_metrics, a.config.balancer_pid)
                    .map_err(|e| e.to_string())?
            } else {
                None
            };
            let sink: Sink = Arc::new(move |t: &Tick| {
                if let Tick::Second(s) = t {
                    if exporting {
                        exporter::publish(s);
                    }
                    let _ = progress.send(Progress {
                        worker: index,
                        elapsed_ms: s.elapsed.as_millis() as u64,
                        phase: s.stage.name().into(),
                        connections: s.connections,
                        sent: s.counters.sent,
                        acked: s.counters.acked,
                        delivered: s.counters.delivered,
                        errors: s.errors,
                        p99_us: s.p99_us.unwrap_or(0),
                    });
                }
            });
            let outcome = run::run(Arc::new(a.config), part, base, sink, probe, None)
                .await
                .map_err(|e| e.to_string())?;
            let c = &outcome.counters;
            eprintln!(
                "worker {index}: run {}: sent {} acked {} delivered {} lost {} errors {}",
                a.run_id,
                c.sent,
                c.acked,
                c.delivered,
                c.lost,
                outcome.errors.values().sum::<u64>()
            );
            Ok(outcome)
        },
    ))?;
    Ok(())
}
