//! The choice of a node for a new connection: power of two random choices.
//!
//! Candidates are the available primaries; if there are none, the available
//! backups; if there are none either, with `--panic`, every node not set
//! `down` (in the config or through the admin API) nor removed (panic mode:
//! try a node that may have recovered rather than refuse), and without it
//! none (the client is closed at once: a node that is down by its probes
//! may accept the connection in its kernel backlog and never answer).
//! Two distinct candidates are drawn at random and the one with the lower
//! cost wins (ties at random):
//!
//! - both reports fresh: `(utilisation + busy + outbound) / effective_weight`,
//!   where utilisation is `(reported connections + picks since the probe was
//!   sent) / capacity`, busy the mean executor busy fraction and outbound the
//!   queued bytes in units of 64 MiB. Counting this balancer's picks since the
//!   report keeps a burst between two reports from all landing on the node
//!   that looked idlest; drawing two at random instead of taking the minimum
//!   keeps several balancers with the same reports from herding.
//! - otherwise (a report older than `report_max_age` or missing):
//!   `(own open connections + 1) / effective_weight`.

use rand::Rng;

use super::upstream::Snapshot;

/// Queued outbound bytes worth as much as a full node.
const OUTBOUND_UNIT: f64 = 64.0 * 1024.0 * 1024.0;

/// How the candidates were selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Primary,
    Backup,
    /// No node available, `--panic`: every node not set down nor removed.
    Panic,
}

/// Which of `nodes` (skipping indexes in `exclude`) gets the next connection,
/// the tier it came from, and whether the decision used load reports;
/// `None` when no node is available and `panic` is off, or when not even
/// panic mode has a candidate.
pub fn choose(
    nodes: &[Snapshot],
    exclude: &[usize],
    panic: bool,
    rng: &mut impl Rng,
) -> Option<(usize, Tier, bool)> {
    let usable = |i: &usize| !exclude.contains(i);
    let available = |backup: bool| -> Vec<usize> {
        (0..nodes.len())
            .filter(usable)
            .filter(|&i| nodes[i].unavailable.is_none() && nodes[i].spec.backup == backup)
            .collect()
    };
    let (candidates, tier) = {
        let primary = available(false);
        if !primary.is_empty() {
            (primary, Tier::Primary)
        } else {
            let backup = available(true);
            if !backup.is_empty() {
                (backup, Tier::Backup)
            } else if !panic {
                return None;
            } else {
                let all: Vec<usize> = (0..nodes.len())
                    .filter(usable)
                    .filter(|&i| {
                        !matches!(
                            nodes[i].unavailable,
                            Some(
                                super::Unavailable::Configured
                                    | super::Unavailable::AdminDown
                                    | super::Unavailable::Removed
                            )
                        )
                    })
                    .collect();
                (all, Tier::Panic)
            }
        }
    };
    match candidates.len() {
        0 => None,
        1 => Some((candidates[0], tier, nodes[candidates[0]].fresh)),
        n => {
            let a = candidates[rng.random_range(0..n)];
            let mut b = candidates[rng.random_range(0..n - 1)];
            if b == a {
                b = candidates[n - 1];
            }
            let by_report = nodes[a].fresh && nodes[b].fresh;
            let (ca, cb) = (cost(&nodes[a], by_report), cost(&nodes[b], by_report));
            let winner = if ca < cb {
                a
            } else if cb < ca {
                b
            } else if rng.random_bool(0.5) {
                a
            } else {
                b
            };
            Some((winner, tier, by_report))
        }
    }
}

/// Lower is better.
pub fn cost(node: &Snapshot, by_report: bool) -> f64 {
    let weight = node.effective_weight.max(0.01);
    match (&node.health.report, by_report) {
        (Some((report, _, picks_at_send)), true) => {
            let since = node.picks.saturating_sub(*picks_at_send) as f64;
            let utilisation = (report.connections as f64 + since) / report.capacity.max(1) as f64;
            let busy = if report.shard_busy.is_empty() {
                0.0
            } else {
                report.shard_busy.iter().map(|b| *b as f64).sum::<f64>()
                    / report.shard_busy.len() as f64
            };
            let outbound = report.outbound_bytes as f64 / OUTBOUND_UNIT;
            (utilisation + busy + outbound) / weight
        }
        _ => (node.open as f64 + 1.0) / weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamSpec;
    use crate::pool::Upstream;
    use chat_client::LoadReport;
    use std::time::{Duration, Instant};

    fn node(port: u16, connections: u32) -> Upstream {
        let u = Upstream::new(UpstreamSpec::parse(&format!("127.0.0.1:{port}")).unwrap());
        u.probe_ok(
            LoadReport {
                node_id: format!("n{port}"),
                address: format!("127.0.0.1:{port}"),
                connections,
                capacity: 1000,
                shard_busy: vec![0.0, 0.0],
                outbound_bytes: 0,
                draining: false,
            },
            0,
        );
        u
    }

    fn snaps(nodes: &[Upstream]) -> Vec<Snapshot> {
        let now = Instant::now();
        nodes
            .iter()
            .map(|u| u.snapshot(now, Duration::from_secs(3)))
            .collect()
    }

    #[test]
    fn picks_since_the_report_spread_a_burst() {
        let nodes = [node(1, 200), node(2, 0), node(3, 0)];
        let mut rng = rand::rng();
        let mut counts = [0u32; 3];
        for _ in 0..300 {
            let (i, tier, by_report) = choose(&snaps(&nodes), &[], true, &mut rng).unwrap();
            assert_eq!((tier, by_report), (Tier::Primary, true));
            nodes[i]
                .picks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counts[i] += 1;
        }
        // Balanced would be (200 + 300) / 3 ≈ 167 each: the loaded node gets
        // (almost) nothing, the other two share the burst.
        assert!(counts[0] <= 10, "{counts:?}");
        assert!(counts[1] > 120 && counts[2] > 120, "{counts:?}");
    }

    #[test]
    fn backups_only_when_no_primary_and_panic_when_nothing() {
        let nodes = [node(1, 0), node(2, 0)];
        nodes[1].set_spec(UpstreamSpec::parse("127.0.0.1:2 backup").unwrap());
        let mut rng = rand::rng();
        for _ in 0..20 {
            assert_eq!(choose(&snaps(&nodes), &[], true, &mut rng).unwrap().0, 0);
        }
        let (i, tier, _) = choose(&snaps(&nodes), &[0], true, &mut rng).unwrap();
        assert_eq!((i, tier), (1, Tier::Backup));
        for n in &nodes {
            n.probe_failed("refused".into(), 1);
        }
        let (_, tier, _) = choose(&snaps(&nodes), &[], true, &mut rng).unwrap();
        assert_eq!(tier, Tier::Panic);
        assert!(choose(&snaps(&nodes), &[0, 1], true, &mut rng).is_none());
    }

    #[test]
    fn without_panic_no_available_node_means_no_candidate() {
        let nodes = [node(1, 0), node(2, 0), node(3, 0)];
        nodes[2].set_spec(UpstreamSpec::parse("127.0.0.1:3 backup").unwrap());
        let mut rng = rand::rng();
        nodes[0].probe_failed("no answer".into(), 1);
        let (i, tier, _) = choose(&snaps(&nodes), &[], false, &mut rng).unwrap();
        assert_eq!((i, tier), (1, Tier::Primary), "the one primary still up");
        nodes[1].connect_failed("refused".into());
        let (i, tier, _) = choose(&snaps(&nodes), &[], false, &mut rng).unwrap();
        assert_eq!((i, tier), (2, Tier::Backup), "then the backup");
        nodes[2].set_override(crate::pool::Override::Drain(true));
        assert!(choose(&snaps(&nodes), &[], false, &mut rng).is_none());
        let (_, tier, _) = choose(&snaps(&nodes), &[], true, &mut rng).unwrap();
        assert_eq!(tier, Tier::Panic, "the same pool with --panic");
    }

    #[test]
    fn draining_and_failed_nodes_are_skipped() {
        let nodes = [node(1, 0), node(2, 500), node(3, 900)];
        let mut report = nodes[0].snapshot(Instant::now(), Duration::from_secs(3));
        let (mut r, _, _) = report.health.report.take().unwrap();
        r.draining = true;
        nodes[0].probe_ok(r, 0);
        nodes[1].connect_failed("refused".into());
        let mut rng = rand::rng();
        for _ in 0..20 {
            assert_eq!(choose(&snaps(&nodes), &[], true, &mut rng).unwrap().0, 2);
        }
    }

    #[test]
    fn admin_overrides_drain_down_and_weigh() {
        use crate::pool::Override;
        let nodes = [node(1, 0), node(2, 0)];
        let mut rng = rand::rng();
        nodes[0].set_override(Override::Drain(true));
        for _ in 0..20 {
            assert_eq!(choose(&snaps(&nodes), &[], true, &mut rng).unwrap().0, 1);
        }
        // A drained node is still a last resort; a node set down is not.
        let (i, tier, _) = choose(&snaps(&nodes), &[1], true, &mut rng).unwrap();
        assert_eq!((i, tier), (0, Tier::Panic));
        nodes[0].set_override(Override::Down(true));
        assert!(choose(&snaps(&nodes), &[1], true, &mut rng).is_none());
        assert!(nodes[0].clear_overrides());
        assert_eq!(nodes[0].overrides(), Default::default());
        nodes[1].set_override(Override::Weight(9));
        let s = snaps(&nodes);
        assert_eq!((s[0].effective_weight, s[1].effective_weight), (1.0, 9.0));
        assert_eq!(s[1].spec.weight, 1, "the configured weight is kept");
    }

    #[test]
    fn stale_reports_fall_back_to_own_open_connections_and_weight() {
        let nodes = [node(1, 0), node(2, 0)];
        nodes[1].set_spec(UpstreamSpec::parse("127.0.0.1:2 weight=3").unwrap());
        let now = Instant::now() + Duration::from_secs(10);
        let mut rng = rand::rng();
        let mut counts = [0u32; 2];
        for _ in 0..400 {
            let s: Vec<Snapshot> = nodes
                .iter()
                .map(|u| u.snapshot(now, Duration::from_secs(3)))
                .collect();
            let (i, _, by_report) = choose(&s, &[], true, &mut rng).unwrap();
            assert!(!by_report);
            nodes[i]
                .open
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counts[i] += 1;
        }
        assert!((90..=110).contains(&counts[0]), "{counts:?}");
    }
}
