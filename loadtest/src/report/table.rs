//! The plain-text report printed at the end of a run: fixed-width columns
//! that fit a 100-column terminal. Counters appear under their JSON names
//! with their exact values, so that the table and the JSON summary can be
//! compared line by line.

use std::fmt::Write;

use super::{
    RunInfo, SloUnit, fmt_bytes, fmt_duration_us, fmt_share, fmt_us, generator_verdict, model_name,
    protocol_name, quantile, ramp_best_rate, series_with_data, slo_unit,
};
use crate::outcome::{Outcome, ProcessCost, ServerCost};

const WIDTH: usize = 100;
const COUNTERS_PER_ROW: usize = 3;

/// The whole report, ending with a newline.
pub fn table(outcome: &Outcome, info: &RunInfo) -> String {
    let mut out = String::new();
    header(&mut out, outcome, info);
    latency(&mut out, outcome);
    rate(&mut out, outcome);
    counters(&mut out, outcome);
    if info.config.reconnect {
        reconnect_legend(&mut out);
    }
    errors(&mut out, outcome);
    generator(&mut out, outcome, info);
    balance(&mut out, outcome);
    server(&mut out, outcome);
    chaos(&mut out, outcome);
    ramp(&mut out, outcome);
    slo(&mut out, info);
    out
}

fn header(out: &mut String, outcome: &Outcome, info: &RunInfo) {
    let c = info.config;
    let _ = writeln!(
        out,
        "chat-loadtest: scenario {}, protocol {}, model {}, users {}, window {}, workers {}",
        c.scenario.name(),
        protocol_name(c.protocol),
        model_name(c.model),
        c.users,
        fmt_duration_us(outcome.window_us),
        outcome.workers,
    );
    let _ = writeln!(out, "target: {}", info.target);
}

fn latency(out: &mut String, outcome: &Outcome) {
    out.push('\n');
    let mut rows = series_with_data(outcome).peekable();
    if rows.peek().is_none() {
        out.push_str("latency: no data\n");
        return;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency", "", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    for (series, h) in rows {
        let _ = write!(
            out,
            "{:<9} {:<11} {:>10}",
            series.metric.name(),
            series.correction.name(),
            h.len()
        );
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999] {
            let _ = write!(out, " {:>8}", fmt_us(quantile(h, q)));
        }
        let _ = writeln!(out, " {:>8}", fmt_us(h.max()));
    }
}

fn rate(out: &mut String, outcome: &Outcome) {
    let offered = outcome.offered_rate;
    let achieved = outcome.achieved_rate();
    let _ = write!(
        out,
        "\nrate: offered {offered:.1}/s, achieved {achieved:.1}/s"
    );
    if offered > 0.0 {
        let _ = write!(out, " ({:.1}%)", achieved * 100.0 / offered);
    }
    out.push('\n');
}

fn counters(out: &mut String, outcome: &Outcome) {
    out.push_str("\ncounters:\n");
    for row in outcome.counters.fields().chunks(COUNTERS_PER_ROW) {
        let cells: Vec<String> = row
            .iter()
            .map(|(name, value)| {
                // 31 columns: a long name takes from the value's padding.
                let width = 30usize.saturating_sub(name.len().max(18)).max(1);
                format!("{name:<18} {value:>width$}")
            })
            .collect();
        let _ = writeln!(out, "  {}", cells.join("  "));
    }
}

/// What the counters of a `--reconnect` run mean.
fn reconnect_legend(out: &mut String) {
    out.push('\n');
    for line in [
        "reconnects: users back (connected and logged in again) after a drop; not_connected: \
         actions due between a drop and the re-login, skipped (sends: in send_failed, not due).",
        "delivered = delivered_live (pushed) + delivered_at_login (pending at a first login or a \
         relogin) + delivered_after_reconnect (pending in the login reply of a reconnection).",
        "duplicated: a message received again under a new id (redelivered: the same id again, \
         dropped by id); out_of_order: reordered; lost: receipts due (the send acknowledged, or \
         received by another recipient) never received by the end of the drain; unconfirmed: \
         receipts of unacknowledged sends that reached no one (not taken, not due).",
    ] {
        wrap(out, line, "  ");
    }
}

fn errors(out: &mut String, outcome: &Outcome) {
    let total: u64 = outcome.errors.values().sum();
    if outcome.errors.is_empty() {
        out.push_str("\nerrors: none\n");
        return;
    }
    let _ = writeln!(out, "\nerrors: {total} in all");
    let mut kinds: Vec<(&String, &u64)> = outcome.errors.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (kind, n) in kinds {
        let _ = writeln!(out, "  {n:>12}  {kind}");
    }
}

fn generator(out: &mut String, outcome: &Outcome, info: &RunInfo) {
    let lag = &outcome.generator.lag;
    let lag_text = if lag.is_empty() {
        "lag not measured".to_string()
    } else {
        format!(
            "lag p50 {}, p99 {}, max {}",
            fmt_us(quantile(lag, 0.5)),
            fmt_us(quantile(lag, 0.99)),
            fmt_us(lag.max())
        )
    };
    let _ = writeln!(
        out,
        "\ngenerator: {lag_text}; late {} (later than {})",
        outcome.counters.late,
        humantime::format_duration(info.config.late_threshold)
    );
    if let Some(warning) = generator_verdict(outcome, info.config) {
        wrap(out, &format!("WARNING: {warning}"), "  ");
    }
}

fn balance(out: &mut String, outcome: &Outcome) {
    let Some(b) = &outcome.balance else {
        return;
    };
    let _ = writeln!(
        out,
        "\nbalance: {} nodes, max {}, mean {:.1}, cv {:.3}",
        b.per_node.len(),
        b.max(),
        b.mean(),
        b.cv()
    );
    let name_width = b.per_node.keys().map(|k| k.chars().count()).max();
    let name_width = name_width.unwrap_or(0).max(4);
    for (node, n) in &b.per_node {
        let _ = writeln!(out, "  {node:<name_width$} {n:>12}");
    }
}

/// `--chaos`: one row per fault, then the delivery latency outside faults.
fn chaos(out: &mut String, outcome: &Outcome) {
    let Some(c) = &outcome.chaos else {
        return;
    };
    out.push('\n');
    wrap(
        out,
        &format!(
            "chaos: {} fault{}, one every {}, lease {}; acknowledged receipts lost {} \
             ({} before the first fault{})",
            c.faults.len(),
            if c.faults.len() == 1 { "" } else { "s" },
            fmt_duration_us(c.every_us),
            fmt_duration_us(c.lease_ttl_us),
            c.acked_lost,
            c.lost_before_faults,
            if c.acked_lost > 0 {
                format!(
                    "; {} of them pending at a fresh login at the end: stuck in the store",
                    c.found_at_final_login
                )
            } else {
                String::new()
            },
        ),
        "",
    );
    let _ = writeln!(
        out,
        "  {:>2} {:<8} {:<11} {:>8} {:>9} {:>8} {:>9} {:>9} {:>6}",
        "#", "kind", "target", "at", "injected", "dropped", "online", "recovery", "lost"
    );
    let opt = |us: Option<u64>| us.map_or_else(|| "never".to_string(), fmt_us);
    for (i, f) in c.faults.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>2} {:<8} {:<11} {:>8} {:>9} {:>8} {:>9} {:>9} {:>6}",
            i + 1,
            f.kind.name(),
            f.target,
            format!("{:.1}s", f.at_us as f64 / 1e6),
            fmt_us(f.injected_us),
            f.dropped,
            opt(f.online_us),
            opt(f.recovery_us),
            f.lost,
        );
        if let Some(e) = &f.error {
            wrap(out, &format!("injection failed: {e}"), "       ");
        }
    }
    let h = &c.delivery_outside_faults;
    if h.is_empty() {
        out.push_str("  delivery outside faults: no data\n");
    } else {
        wrap(
            out,
            &format!(
                "delivery outside faults (corrected): {} messages, p50 {}, p99 {}, p99.9 {}, \
                 max {}",
                h.len(),
                fmt_us(quantile(h, 0.5)),
                fmt_us(quantile(h, 0.99)),
                fmt_us(quantile(h, 0.999)),
                fmt_us(h.max())
            ),
            "  ",
        );
    }
    wrap(
        out,
        "at: since the run's start; injected: until the process served again (stop: until \
         resumed and its lease lapse counted); dropped: connections closed until the recovery; \
         online: until every user was logged in again; recovery: until, besides, the receipts \
         due were back under 250 ms of traffic; lost: receipts of acknowledged sends intended \
         from this fault to the next that never came.",
        "  ",
    );
}

/// CPU µs (fractional) as `85.3µs` or `1.25ms`.
fn fmt_cpu_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.1}µs")
    } else {
        format!("{:.2}ms", us / 1e3)
    }
}

fn server(out: &mut String, outcome: &Outcome) {
    let Some(s) = &outcome.server else {
        return;
    };
    let Some(source) = &s.source else {
        return;
    };
    out.push('\n');
    wrap(out, &format!("server ({source}): {}", s.sampled), "");
    let _ = writeln!(
        out,
        "  {:.2}s between samples, {} deliveries, {} connections open",
        s.sampled_us as f64 / 1e6,
        s.deliveries,
        s.connections
    );
    if let Some(e) = &s.error {
        wrap(out, &format!("not measured: {e}"), "  ");
    }
    let nodes = if s.node_count == 1 {
        "node".to_string()
    } else {
        format!("{} nodes", s.node_count)
    };
    for (name, p) in [(nodes, &s.nodes), ("balancer".to_string(), &s.balancer)] {
        if let Some(p) = p {
            let _ = writeln!(out, "  {name:<9} {}", server_row(s, p));
        }
    }
}

/// `cpu 2.50s (0.25 cores), 250.0µs/delivered; rss 10.0 MiB → 20.0 MiB, 51.2 KiB/connection`
fn server_row(s: &ServerCost, p: &ProcessCost) -> String {
    let cores = s
        .cores(p)
        .map_or_else(String::new, |c| format!(" ({c:.2} cores)"));
    let per_message = s.cpu_us_per_delivered(p).map_or_else(
        || "no deliveries".to_string(),
        |us| format!("{}/delivered", fmt_cpu_us(us)),
    );
    let per_connection = s.rss_bytes_per_connection(p).map_or_else(
        || "no connections".to_string(),
        |b| format!("{}/connection", fmt_bytes(b)),
    );
    format!(
        "cpu {:.2}s{cores}, {per_message}; rss {} → {}, {per_connection}",
        p.cpu_seconds(),
        fmt_bytes(p.before.rss_bytes as f64),
        fmt_bytes(p.end.rss_bytes as f64),
    )
}

fn ramp(out: &mut String, outcome: &Outcome) {
    if outcome.ramp.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nramp:\n  {:>4} {:>12} {:>12} {:>8} {:>12} {:>10} {:>5}",
        "step", "rate/s", "achieved/s", "p99", "sent", "lost", "held"
    );
    for (i, s) in outcome.ramp.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:>4} {:>12.1} {:>12.1} {:>8} {:>12} {:>10} {:>5}",
            i + 1,
            s.rate,
            s.achieved,
            fmt_us(s.p99_us),
            s.sent,
            s.lost,
            if s.held { "yes" } else { "no" }
        );
    }
    match ramp_best_rate(&outcome.ramp) {
        Some(rate) => {
            let _ = writeln!(out, "highest rate that held: {rate}/s");
        }
        None => out.push_str("highest rate that held: none\n"),
    }
}

fn slo(out: &mut String, info: &RunInfo) {
    if info.verdicts.is_empty() {
        out.push_str("\nslo: none set\n");
        return;
    }
    out.push_str("\nslo:\n");
    let width = info
        .verdicts
        .iter()
        .map(|v| v.objective.chars().count())
        .max()
        .unwrap_or(0);
    for v in info.verdicts {
        let actual = match v.actual {
            None => "no data".to_string(),
            Some(a) => match slo_unit(v, info.config) {
                SloUnit::Micros => fmt_us(a.round() as u64),
                SloUnit::Count => format!("{}", a.round() as u64),
                SloUnit::Share => fmt_share(a),
            },
        };
        let _ = writeln!(
            out,
            "  {:<6}  {:<width$}  actual {actual}",
            if v.held { "ok" } else { "MISSED" },
            v.objective,
        );
    }
}

/// Appends `text` word-wrapped to [`WIDTH`], each line after `indent`.
fn wrap(out: &mut String, text: &str, indent: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > WIDTH {
            let _ = writeln!(out, "{indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;
    use crate::outcome::{Correction, Metric, Series};

    fn render(outcome: &Outcome) -> String {
        let config = fixture::config();
        let verdicts = fixture::verdicts();
        let info = fixture::info(&config, &verdicts);
        table(outcome, &info)
    }

    /// The value printed after `name` in the counters block.
    fn counter_in(text: &str, name: &str) -> Option<u64> {
        let block = text.split("\ncounters:\n").nth(1)?.split("\n\n").next()?;
        let mut words = block.split_whitespace();
        while let Some(w) = words.next() {
            if w == name {
                return words.next()?.parse().ok();
            }
        }
        None
    }

    #[test]
    fn header_names_the_run() {
        let text = render(&fixture::outcome());
        let first = text.lines().next().unwrap();
        for part in [
            "scenario direct",
            "protocol fb",
            "model open",
            "users 200",
            "window 10s",
            "workers 2",
        ] {
            assert!(first.contains(part), "{part:?} not in {first:?}");
        }
        assert!(text.contains("target: balancer 127.0.0.1:8000 (local, 1 node)"));
    }

    #[test]
    fn every_counter_appears_with_its_exact_value() {
        let o = fixture::outcome();
        let text = render(&o);
        for (name, value) in o.counters.fields() {
            assert_eq!(counter_in(&text, name), Some(value), "{name} in\n{text}");
        }
    }

    #[test]
    fn a_reconnecting_run_explains_its_counters_within_the_width() {
        let o = fixture::outcome();
        assert!(
            !render(&o).contains("delivered_live (pushed)"),
            "no legend by default"
        );
        let mut config = fixture::config();
        config.reconnect = true;
        let verdicts = fixture::verdicts();
        let text = table(&o, &fixture::info(&config, &verdicts));
        for (name, value) in o.counters.fields() {
            assert_eq!(counter_in(&text, name), Some(value), "{name} in\n{text}");
        }
        for part in [
            "reconnects:",
            "delivered_after_reconnect (pending",
            "unconfirmed:",
        ] {
            assert!(text.contains(part), "{part:?} not in\n{text}");
        }
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn a_chaos_run_lists_its_faults_within_the_width() {
        let mut o = fixture::outcome();
        assert!(
            !render(&o).contains("chaos:"),
            "no chaos section by default"
        );
        o.chaos = Some(fixture::chaos());
        let text = render(&o);
        for part in [
            "chaos: 2 faults, one every 30s, lease 10s; acknowledged receipts lost 3",
            "kill     node-1",
            "stop     node-0",
            "never",
            "injection failed: boom",
            "delivery outside faults (corrected): 3 messages",
        ] {
            assert!(text.contains(part), "{part:?} not in\n{text}");
        }
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn latency_rows_follow_series_order_with_counts_and_percentiles() {
        let o = fixture::outcome();
        let text = render(&o);
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("send_ack") || l.starts_with("delivery"))
            .collect();
        let expected: Vec<Series> = [Metric::SendAck, Metric::Delivery]
            .into_iter()
            .flat_map(|m| Correction::BOTH.map(|c| Series::new(m, c)))
            .collect();
        assert_eq!(rows.len(), expected.len(), "{text}");
        for (row, series) in rows.iter().zip(expected) {
            let h = &o.totals[&series];
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[0], series.metric.name());
            assert_eq!(cells[1], series.correction.name());
            assert_eq!(cells[2], h.len().to_string());
            assert_eq!(cells[3], fmt_us(h.value_at_quantile(0.5)));
            assert_eq!(cells[5], fmt_us(h.value_at_quantile(0.99)));
            assert_eq!(cells[8], fmt_us(h.max()));
        }
        assert!(
            !text.lines().any(|l| l.starts_with("connect ")),
            "series without data are left out:\n{text}"
        );
    }

    #[test]
    fn rate_line_gives_offered_achieved_and_their_ratio() {
        let text = render(&fixture::outcome());
        assert!(
            text.contains("rate: offered 1000.0/s, achieved 998.0/s (99.8%)"),
            "{text}"
        );
    }

    #[test]
    fn errors_are_sorted_by_count() {
        let text = render(&fixture::outcome());
        assert!(text.contains("errors: 16 in all"), "{text}");
        let login = text.find("login: AlreadyOnline").unwrap();
        let timeout = text.find("send: timeout").unwrap();
        assert!(login < timeout, "9 before 7");

        let mut quiet = fixture::outcome();
        quiet.errors.clear();
        assert!(render(&quiet).contains("errors: none"));
    }

    #[test]
    fn generator_lag_and_warning() {
        let mut o = fixture::outcome();
        let text = render(&o);
        assert!(
            text.contains(
                "generator: lag p50 70µs, p99 900µs, max 900µs; late 8 (later than 10ms)"
            ),
            "{text}"
        );
        assert!(!text.contains("WARNING"));
        o.counters.late = 500;
        let text = render(&o);
        assert!(
            text.contains("WARNING: the load generator fell behind"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn balance_ramp_and_slo_lines() {
        let text = render(&fixture::outcome());
        assert!(
            text.contains("balance: 2 nodes, max 120, mean 99.0, cv 0.212"),
            "{text}"
        );
        assert!(text.contains("node-a          120"), "{text}");
        assert!(text.contains("highest rate that held: 1000/s"), "{text}");
        let ramp_rows: Vec<&str> = text
            .lines()
            .filter(|l| l.ends_with(" yes") || l.ends_with(" no"))
            .collect();
        assert_eq!(ramp_rows.len(), 3, "{text}");
        assert!(ramp_rows[2].contains("65.0ms"));

        assert!(text.contains("  ok      p99<=50ms   actual "), "{text}");
        assert!(text.contains("  MISSED  loss<=0     actual 3\n"), "{text}");
        assert!(
            text.contains("  ok      loss<=0.5%  actual 0.025%\n"),
            "{text}"
        );
    }

    #[test]
    fn server_cost_lines() {
        let text = render(&fixture::outcome());
        assert!(
            text.contains(
                "server (local): /proc of node 100 and balancer 101\n  \
                 10.00s between samples, 10000 deliveries, 200 connections open\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  node      cpu 2.50s (0.25 cores), 250.0µs/delivered; rss 10.0 MiB → 20.0 MiB, \
                 51.2 KiB/connection\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  balancer  cpu 0.50s (0.05 cores), 50.0µs/delivered; rss 5.0 MiB → 4.0 MiB, -5.1 KiB/connection\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
        let mut o = fixture::outcome();
        let cost = o.server.as_mut().unwrap();
        cost.nodes = None;
        cost.balancer = None;
        cost.error = Some("http://127.0.0.1:1/metrics: connection refused".into());
        let text = render(&o);
        assert!(
            text.contains("  not measured: http://127.0.0.1:1/metrics: connection refused"),
            "{text}"
        );
        o.server = None;
        assert!(!render(&o).contains("server ("));
        assert_eq!(fmt_cpu_us(85.25), "85.2µs");
        assert_eq!(fmt_cpu_us(1_250.0), "1.25ms");
    }

    #[test]
    fn a_first_failed_ramp_step_holds_nothing() {
        let mut o = fixture::outcome();
        o.ramp[0].held = false;
        assert!(render(&o).contains("highest rate that held: none"));
        o.ramp.clear();
        o.balance = None;
        let text = render(&o);
        assert!(!text.contains("ramp:") && !text.contains("balance:"));
    }

    #[test]
    fn an_empty_outcome_still_reads() {
        let text = render(&Outcome::default());
        assert!(text.contains("latency: no data"), "{text}");
        assert!(
            text.contains("rate: offered 0.0/s, achieved 0.0/s\n"),
            "{text}"
        );
        assert!(text.contains("lag not measured"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }
}
