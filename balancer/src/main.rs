//! `chat-balancer`: a TCP balancer for chat nodes, in place of nginx's stream
//! module. Routes each new connection by the load the nodes report.
//!
//! Modules, in the order data flows: [`config`] (flags, env, TOML) →
//! [`pool`] (nodes, health, the choice) ← [`probe`] (load reports, active
//! health) ; [`proxy`] (accept, connect, relay) and [`redirect`] ("which
//! node?") ask the pool ; [`admin`] shows it all; [`metric_names`] names every
//! metric.
//!
//! This file: parse the settings, start the pieces, then handle signals —
//! SIGHUP reloads the config (refused with a log line if invalid, the old one
//! stays), SIGTERM/SIGINT stop accepting and wait up to `--shutdown-grace`
//! for open connections.

mod access_log;
mod admin;
mod config;
mod log_limit;
mod metric_names;
mod pool;
mod probe;
mod proxy;
mod redirect;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

fn main() -> anyhow::Result<()> {
    chat_ops::logs::init("CHAT_BALANCER_LOG");
    let args = config::Args::parse();
    if args.check_config {
        std::process::exit(check_config(&args));
    }
    let config = args.resolve()?;
    let handle = admin::install()?;
    let pool = Arc::new(pool::Pool::new(
        config.upstreams.clone(),
        config.tuning.clone(),
    ));

    let admin_addr = match config.admin_listen {
        Some(addr) => {
            let listener =
                admin::bind(addr).with_context(|| format!("binding --admin-listen {addr}"))?;
            let bound = listener.local_addr()?;
            admin::serve(listener, handle, pool.clone(), config.admin_allow.clone());
            Some(bound)
        }
        None => None,
    };
    probe::start(pool.clone()).context("starting the probe thread")?;
    // Before any port listens: a signal from then on is handled, not fatal.
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let executors = proxy::Executors::start(
        proxy::Wiring {
            pool: pool.clone(),
            listen: config.listen,
            redirect_listen: config.redirect_listen,
            shutdown_grace: config.shutdown_grace,
            reuse_port: config.reuse_port,
            access_log: config.access_log.clone(),
        },
        config.threads,
    )?;
    tracing::info!(
        listen = %executors.listen,
        redirect = ?executors.redirect_listen,
        admin = ?admin_addr,
        threads = config.threads,
        upstreams = config.upstreams.len(),
        "chat-balancer listening"
    );

    let stop = executors.stopper();
    let running = config;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload(&args, &running, &pool);
                    continue;
                }
                tracing::info!(
                    signal,
                    grace = ?running.shutdown_grace,
                    "stopping: no new connections, open ones may finish"
                );
                stop.stop();
                break;
            }
        })?;
    executors.wait();
    tracing::info!("chat-balancer stopped");
    Ok(())
}

/// `--check-config` (`-t`): resolves and validates everything, prints what
/// would run, binds nothing; returns the exit code.
fn check_config(args: &config::Args) -> i32 {
    let checked = args.resolve().map_err(anyhow::Error::from).and_then(|c| {
        if let Some(target) = &c.access_log {
            target.open().context("--access-log")?;
        }
        Ok(c)
    });
    match checked {
        Ok(c) => {
            print!("{}", c.describe());
            match &args.config {
                Some(path) => println!(
                    "chat-balancer: the configuration in {} is ok",
                    path.display()
                ),
                None => println!("chat-balancer: the configuration is ok"),
            }
            0
        }
        Err(e) => {
            eprintln!("chat-balancer: the configuration is invalid: {e:#}");
            1
        }
    }
}

/// SIGHUP: re-resolves the same flags with the config file read again.
fn reload(args: &config::Args, running: &config::Config, pool: &pool::Pool) {
    match args.resolve() {
        Ok(new) => {
            if new.listen != running.listen
                || new.redirect_listen != running.redirect_listen
                || new.admin_listen != running.admin_listen
                || new.threads != running.threads
                || new.reuse_port != running.reuse_port
                || new.access_log != running.access_log
                || new.admin_allow != running.admin_allow
            {
                tracing::warn!(
                    "reload: listen addresses, --threads, --reuse-port, --access-log and --admin-allow only change on restart; keeping the old ones"
                );
            }
            pool.reload(new.upstreams, new.tuning);
            metrics::counter!(metric_names::RELOADS_TOTAL, "result" => "ok").increment(1);
            tracing::info!("reload: configuration applied");
        }
        Err(e) => {
            metrics::counter!(metric_names::RELOADS_TOTAL, "result" => "refused").increment(1);
            tracing::error!(error = %e, "reload refused: invalid configuration, keeping the old one");
        }
    }
}
