#!/usr/bin/env python3
"""Generates the chat cluster's Grafana dashboards (grafana/dashboards/*.json).

The dashboards are described compactly below (one function per dashboard)
and written as Grafana 10 JSON (schemaVersion 38), pretty-printed with sorted
keys, so the same description always gives byte-identical files.

    python3 grafana/generate.py            # write grafana/dashboards/<uid>.json
    python3 grafana/generate.py --check    # exit 1, naming the stale files, if
                                           # the committed JSON differs
    python3 grafana/generate.py --exprs    # print every panel query with the
                                           # variables at their defaults (JSON lines)
    python3 grafana/generate.py --eval http://127.0.0.1:9090
                                           # run every such query on a Prometheus;
                                           # exit 1 if one fails or returns nothing

Standard library only. Every query selects with job=~"$job" and
instance=~"$instance" and uses $__rate_interval for rates; write() refuses a
description that breaks those rules, or a panel without a description, a
unit or a query.
"""

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "dashboards")

DS = {"type": "prometheus", "uid": "prometheus"}
SEL = 'job=~"$job",instance=~"$instance"'
RI = "$__rate_interval"


# --- PromQL helpers -----------------------------------------------------------


def sel(metric, extra=""):
    """metric{job=~"$job",instance=~"$instance"[,extra]}"""
    return "%s{%s%s}" % (metric, SEL, "," + extra if extra else "")


def rate(metric, extra="", fn="rate"):
    return "%s(%s[%s])" % (fn, sel(metric, extra), RI)


def by(labels):
    return " by (%s)" % ", ".join(labels) if labels else ""


def agg(op, labels, inner):
    return "%s%s(%s)" % (op, by(labels) + " " if labels else "", inner)


def sum_rate(metric, labels=(), extra=""):
    return agg("sum", labels, rate(metric, extra))


def quantile(q, metric, labels=(), extra=""):
    """histogram_quantile over the summed bucket rates, per labels."""
    return "histogram_quantile(%s, %s)" % (
        q,
        agg("sum", ("le",) + tuple(labels), rate(metric + "_bucket", extra)),
    )


def error_ratio(labels):
    """Error ratio of chat_node_requests_total per labels: 1 - ok / all.
    A label set with no "ok" series at all (every request failed) counts 0 ok
    rather than vanishing from the panel."""
    all_ = sum_rate("chat_node_requests_total", labels)
    ok = sum_rate("chat_node_requests_total", labels, 'outcome="ok"')
    return "1 - ((%s or 0 * %s) / %s)" % (ok, all_, all_)


# --- panels -------------------------------------------------------------------
#
# A target is (expr, legendFormat). Panels carry their width and height; the
# layout below places them left to right in rows of 24 columns.


def T(expr, legend):
    return (expr, legend)


def ts(title, desc, unit, targets, w=12, h=8, **kw):
    return dict(kind="timeseries", title=title, desc=desc, unit=unit, targets=targets, w=w, h=h, **kw)


def stat(title, desc, unit, targets, w=4, h=4, **kw):
    return dict(kind="stat", title=title, desc=desc, unit=unit, targets=targets, w=w, h=h, **kw)


def table(title, desc, unit, columns, w=24, h=7, **kw):
    """columns: (header, expr, unit or None, mappings or None); every expr an
    instant query aggregated by the same labels, merged into one row per label
    set."""
    return dict(kind="table", title=title, desc=desc, unit=unit, columns=columns, w=w, h=h, **kw)


def row(title, **kw):
    return dict(kind="row", title=title, **kw)


def up_down_mapping():
    return [
        {
            "options": {
                "0": {"color": "red", "index": 0, "text": "DOWN"},
                "1": {"color": "green", "index": 1, "text": "up"},
            },
            "type": "value",
        }
    ]


def thresholds(*steps):
    """steps: color, then (value, color) pairs."""
    out = [{"color": steps[0], "value": None}]
    for value, color in steps[1:]:
        out.append({"color": color, "value": value})
    return {"mode": "absolute", "steps": out}


# Per-process USE panels, the same on every dashboard.
def process_panels(what):
    return [
        row("Process (%s)" % what),
        ts(
            "CPU",
            "CPU time per second of each %s process (1 = one core busy); a process pinned near its core count is saturated." % what,
            "percentunit",
            [T(rate("process_cpu_seconds_total"), "{{instance}}")],
            w=6,
            min=0,
        ),
        ts(
            "Resident memory",
            "Resident set size of each %s process; steady growth under steady load suggests a leak or an unbounded queue." % what,
            "bytes",
            [T(sel("process_resident_memory_bytes"), "{{instance}}")],
            w=6,
            min=0,
        ),
        ts(
            "Open file descriptors / max",
            "Open fds against the process limit (each client connection holds one, a relayed one two); near the max, accepts start failing.",
            "short",
            [
                T(sel("process_open_fds"), "open {{instance}}"),
                T(sel("process_max_fds"), "max {{instance}}"),
            ],
            w=6,
            log=True,
        ),
        ts(
            "Threads",
            "OS threads of each %s process; should stay flat (shards, store and NATS threads are fixed at start)." % what,
            "short",
            [T(sel("process_threads"), "{{instance}}")],
            w=6,
            min=0,
        ),
    ]


# --- the dashboards -----------------------------------------------------------


def overview():
    return dict(
        uid="chat-overview",
        title="Chat cluster overview",
        job=("node", "chat-node"),
        variables=[],
        panels=[
            row("Cluster now"),
            stat(
                "Nodes up",
                "Node targets Prometheus scraped successfully, against all node targets; fewer up than scraped means a node is down or its /metrics unreachable.",
                "short",
                [
                    T(agg("sum", (), sel("up")), "up"),
                    T(agg("count", (), sel("up")), "targets"),
                ],
                thresholds=thresholds("green"),
            ),
            stat(
                "Connections",
                "Open client connections over all nodes; a sudden drop means clients were disconnected (node restart, slow-consumer kicks).",
                "short",
                [T(agg("sum", (), sel("chat_node_connections")), "connections")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Messages stored/s",
                "Chat messages committed per second over the cluster: the cluster's useful throughput.",
                "ops",
                [T(sum_rate("chat_node_messages_stored_total"), "stored/s")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Delivery p99",
                "99th percentile of commit-to-push time over all nodes and kinds; above ~50 ms users feel chat lag.",
                "s",
                [T(quantile(0.99, "chat_node_delivery_latency_seconds"), "p99")],
                thresholds=thresholds("green", (0.05, "orange"), (0.25, "red")),
            ),
            stat(
                "Request error ratio",
                "Share of requests answered with an error code over all nodes; anything above a few percent needs a look at the outcome breakdown.",
                "percentunit",
                [T(error_ratio(()), "errors")],
                thresholds=thresholds("green", (0.01, "orange"), (0.05, "red")),
            ),
            stat(
                "Pending messages",
                "Stored deliveries no recipient has acknowledged yet (whole store, SQLite only); a steady climb means recipients are not keeping up or not acking.",
                "short",
                [T(agg("max", (), sel("chat_node_pending_messages")), "pending")],
                thresholds=thresholds("green"),
            ),
            table(
                "Nodes",
                "One row per node: scrape up, connections, requests/s, NATS link, CPU, memory, fd use and uptime; compare nodes to spot the odd one out.",
                "short",
                [
                    ("up", agg("max", ("instance",), sel("up")), None, up_down_mapping()),
                    ("connections", agg("sum", ("instance",), sel("chat_node_connections")), "short", None),
                    ("requests/s", sum_rate("chat_node_requests_total", ("instance",)), "reqps", None),
                    ("NATS", agg("max", ("instance",), sel("chat_node_nats_connected")), None, up_down_mapping()),
                    ("CPU", agg("sum", ("instance",), rate("process_cpu_seconds_total")), "percentunit", None),
                    ("memory", agg("max", ("instance",), sel("process_resident_memory_bytes")), "bytes", None),
                    (
                        "fds used",
                        "%s / %s"
                        % (
                            agg("max", ("instance",), sel("process_open_fds")),
                            agg("max", ("instance",), sel("process_max_fds")),
                        ),
                        "percentunit",
                        None,
                    ),
                    (
                        "uptime",
                        "time() - %s" % agg("max", ("instance",), sel("process_start_time_seconds")),
                        "s",
                        None,
                    ),
                ],
                h=6,
            ),
            row("Traffic"),
            ts(
                "Connections by node",
                "Open client connections per node; the balancer should keep them even, a node far above the others is getting more than its share.",
                "short",
                [T(agg("sum", ("instance",), sel("chat_node_connections")), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "Logins/s by node",
                "Successful logins per second per node; a spike after a node dies is its users logging in elsewhere.",
                "ops",
                [T(sum_rate("chat_node_logins_total", ("instance",)), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "Messages/s",
                "Messages stored per second and pushes to clients by kind (direct, group: one per online recipient); delivered far below stored x fan-out means recipients are offline or pushes are stuck.",
                "ops",
                [
                    T(sum_rate("chat_node_messages_stored_total"), "stored"),
                    T(sum_rate("chat_node_messages_delivered_total", ("kind",)), "delivered {{kind}}"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Delivery latency p50 / p99 by kind",
                "Time from a message's commit to its push being queued on the recipient's connection (recipient online); p99 rising while p50 holds points at a stalled shard or node.",
                "s",
                [
                    T(quantile(0.5, "chat_node_delivery_latency_seconds", ("kind",)), "p50 {{kind}}"),
                    T(quantile(0.99, "chat_node_delivery_latency_seconds", ("kind",)), "p99 {{kind}}"),
                ],
                min=0,
            ),
            ts(
                "Pending messages",
                "Stored deliveries not yet acknowledged, as each node counts them (the whole shared store, so the lines agree; absent on ScyllaDB); should hover near zero with everyone online.",
                "short",
                [T(sel("chat_node_pending_messages"), "{{instance}}")],
                min=0,
            ),
            row("Requests (rate, errors, duration)"),
            ts(
                "Requests/s by kind",
                "Requests handled per second by kind over all nodes: the request mix (messages, acks, logins...).",
                "reqps",
                [T(sum_rate("chat_node_requests_total", ("kind",)), "{{kind}}")],
                w=8,
                min=0,
            ),
            ts(
                "Requests/s by outcome",
                "Requests per second by outcome: ok or the error code returned; any non-ok line is clients hitting errors, see which kind in the error ratio.",
                "reqps",
                [T(sum_rate("chat_node_requests_total", ("outcome",)), "{{outcome}}")],
                w=8,
                min=0,
            ),
            ts(
                "Error ratio by kind",
                "Share of each kind of request answered with an error; a kind at 100% is broken, a few % of login errors can be users already online.",
                "percentunit",
                [T(error_ratio(("kind",)), "{{kind}}")],
                w=8,
                min=0,
                max=1,
            ),
            ts(
                "Request latency p50 by kind",
                "Median time from decoding a request to queueing its reply; login and register include password hashing.",
                "s",
                [T(quantile(0.5, "chat_node_request_duration_seconds", ("kind",)), "{{kind}}")],
                min=0,
            ),
            ts(
                "Request latency p99 by kind",
                "99th percentile time from decoding a request to queueing its reply; a rise in every kind at once means shards or the store are overloaded.",
                "s",
                [T(quantile(0.99, "chat_node_request_duration_seconds", ("kind",)), "{{kind}}")],
                min=0,
            ),
            row("Trouble"),
            ts(
                "Slow-consumer disconnects/s",
                "Clients disconnected because their outbound queue overflowed; non-zero means clients (or their network) read slower than they are sent to.",
                "ops",
                [T(sum_rate("chat_node_slow_consumer_disconnects_total", ("instance",)), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "Refused and failed connections/s",
                "Connections closed at once over --max-connections, and failed accepts (usually out of fds); either means the node is full.",
                "ops",
                [
                    T(sum_rate("chat_node_connections_refused_total", ("instance",)), "refused {{instance}}"),
                    T(sum_rate("chat_node_accept_errors_total", ("instance",)), "accept errors {{instance}}"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Store errors, dropped and bad envelopes /s",
                "Failed store commits, NATS envelopes dropped (recovered by gap detection) and undecodable envelopes; should all be zero.",
                "ops",
                [
                    T(sum_rate("chat_node_store_errors_total", ("instance",)), "store errors {{instance}}"),
                    T(sum_rate("chat_node_nats_dropped_total", ("instance",)), "NATS dropped {{instance}}"),
                    T(sum_rate("chat_node_nats_bad_messages_total", ("instance",)), "bad envelopes {{instance}}"),
                ],
                w=8,
                min=0,
            ),
            row("Per-node resources (utilisation, saturation)"),
            ts(
                "CPU by node",
                "CPU time per second of each node (1 = one core busy); near the node's core count it is saturated, compare with shard busy on the node dashboard.",
                "percentunit",
                [T(rate("process_cpu_seconds_total"), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "Resident memory by node",
                "Resident memory of each node; grows with connections and outbound queues, steady growth at steady load is a leak.",
                "bytes",
                [T(sel("process_resident_memory_bytes"), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "File descriptors used (share of max)",
                "Open fds over the process limit per node (one per client connection); approaching 100% means accepts will fail.",
                "percentunit",
                [T("%s / %s" % (sel("process_open_fds"), sel("process_max_fds")), "{{instance}}")],
                w=8,
                min=0,
                max=1,
            ),
        ],
    )


def node():
    shard = 'shard=~"$shard"'
    return dict(
        uid="chat-node",
        title="Chat node",
        job=("node", "chat-node"),
        variables=[
            ("shard", "Shard", 'label_values(chat_node_shard_busy_ratio{%s}, shard)' % SEL),
        ],
        panels=[
            row("Shards (event loops)"),
            ts(
                "Shard busy",
                "Share of the last second each shard's executor was busy; a shard near 100% is saturated and its connections queue up.",
                "percentunit",
                [T(sel("chat_node_shard_busy_ratio", shard), "{{instance}} shard {{shard}}")],
                min=0,
                max=1,
            ),
            ts(
                "Event-loop lag p99",
                "How late a 10 ms timer fires on each shard (p99): time an executor was kept from its tasks; tens of ms means something blocks the shard.",
                "s",
                [T(quantile(0.99, "chat_node_event_loop_lag_seconds", ("instance", "shard"), shard), "{{instance}} shard {{shard}}")],
                min=0,
            ),
            ts(
                "Outbound queued bytes",
                "Bytes queued for clients and not yet written, per shard; a growing queue means clients read slowly (slow consumers get disconnected).",
                "bytes",
                [T(sel("chat_node_outbound_bytes", shard), "{{instance}} shard {{shard}}")],
                min=0,
            ),
            ts(
                "Connections by shard",
                "Open client connections per shard and protocol; shards should hold similar numbers.",
                "short",
                [T(agg("sum", ("instance", "shard", "protocol"), sel("chat_node_connections", shard)), "{{instance}} shard {{shard}} {{protocol}}")],
                min=0,
            ),
            ts(
                "Connections accepted and refused /s",
                "Client connections accepted per second by protocol, refused over --max-connections, and failed accepts (fds); refusals mean the node is full.",
                "ops",
                [
                    T(sum_rate("chat_node_connections_accepted_total", ("instance", "protocol")), "accepted {{instance}} {{protocol}}"),
                    T(sum_rate("chat_node_connections_refused_total", ("instance",)), "refused {{instance}}"),
                    T(sum_rate("chat_node_accept_errors_total", ("instance",)), "accept errors {{instance}}"),
                ],
                min=0,
            ),
            ts(
                "Slow-consumer disconnects/s",
                "Clients disconnected because their outbound queue overflowed; non-zero means clients read slower than messages arrive.",
                "ops",
                [T(sum_rate("chat_node_slow_consumer_disconnects_total", ("instance",)), "{{instance}}")],
                min=0,
            ),
            ts(
                "Connections closed/s by reason",
                "Why connections end: client_closed is normal; idle_timeout, slow_consumer, protocol_error, io_error and shutdown each point at a cause.",
                "ops",
                [T(sum_rate("chat_node_connections_closed_total", ("instance", "reason")), "{{reason}} {{instance}}")],
                min=0,
            ),
            row("Store"),
            ts(
                "Commit latency p50 / p99",
                "Time to run and commit one batch of store operations; rising p99 on SQLite usually means writers wait for the shared file's lock.",
                "s",
                [
                    T(quantile(0.5, "chat_node_store_commit_seconds", ("instance",)), "p50 {{instance}}"),
                    T(quantile(0.99, "chat_node_store_commit_seconds", ("instance",)), "p99 {{instance}}"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Batch size (ops per commit)",
                "Operations per group commit, p99 and mean (buckets are powers of two, so small values are coarse); batches grow as load grows (good), batches near 1024 mean the store thread is the bottleneck.",
                "short",
                [
                    T(quantile(0.99, "chat_node_store_batch_ops", ("instance",)), "p99 {{instance}}"),
                    T(
                        "%s / %s"
                        % (
                            sum_rate("chat_node_store_batch_ops_sum", ("instance",)),
                            sum_rate("chat_node_store_batch_ops_count", ("instance",)),
                        ),
                        "mean {{instance}}",
                    ),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Store ops/s by op",
                "Operations run by the store thread per second, by op (append, ack, pending reads, login...).",
                "ops",
                [T(sum_rate("chat_node_store_ops_total", ("op",)), "{{op}}")],
                w=8,
                min=0,
            ),
            ts(
                "Store errors/s",
                "Failed store commits and maintenance runs; should be zero, any error is in the node's log.",
                "ops",
                [T(sum_rate("chat_node_store_errors_total", ("instance",)), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "Messages stored, delivered, compacted /s",
                "Messages this node committed, pushed to its clients by kind, and deleted by compaction once acknowledged.",
                "ops",
                [
                    T(sum_rate("chat_node_messages_stored_total", ("instance",)), "stored {{instance}}"),
                    T(sum_rate("chat_node_messages_delivered_total", ("instance", "kind")), "delivered {{kind}} {{instance}}"),
                    T(sum_rate("chat_node_messages_compacted_total", ("instance",)), "compacted {{instance}}"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Pending messages",
                "Stored deliveries not yet acknowledged by their recipient (whole store, refreshed every 10 s; absent on ScyllaDB); a steady climb means acks are not coming.",
                "short",
                [T(sel("chat_node_pending_messages"), "{{instance}}")],
                w=8,
                min=0,
            ),
            row("NATS (between nodes)"),
            stat(
                "NATS connected",
                "1 while the node is connected to NATS; DOWN means cross-node messages wait for resync after reconnection.",
                "short",
                [T(sel("chat_node_nats_connected"), "{{instance}}")],
                w=4,
                h=8,
                mappings=up_down_mapping(),
                thresholds=thresholds("red", (1, "green")),
            ),
            ts(
                "Envelopes/s",
                "Envelopes published to and received from other nodes, and dropped because NATS did not take them; drops trigger a resync on the receiver.",
                "ops",
                [
                    T(sum_rate("chat_node_nats_published_total", ("instance",)), "published {{instance}}"),
                    T(sum_rate("chat_node_nats_received_total", ("instance",)), "received {{instance}}"),
                    T(sum_rate("chat_node_nats_dropped_total", ("instance",)), "dropped {{instance}}"),
                ],
                w=10,
                min=0,
            ),
            ts(
                "NATS latency p50 / p99",
                "Time from another node publishing an envelope to its receipt here (needs synchronised clocks); p99 above a few ms means NATS or this node's NATS thread is slow.",
                "s",
                [
                    T(quantile(0.5, "chat_node_nats_latency_seconds", ("instance",)), "p50 {{instance}}"),
                    T(quantile(0.99, "chat_node_nats_latency_seconds", ("instance",)), "p99 {{instance}}"),
                ],
                w=10,
                min=0,
            ),
            ts(
                "Resyncs, bad envelopes, reaped leases /s",
                "Store reads to recover from a gap in another node's envelopes, undecodable envelopes, and expired leases of crashed nodes reaped; resyncs are normal after a restart, steady ones are not.",
                "ops",
                [
                    T(sum_rate("chat_node_resyncs_total", ("instance",)), "resyncs {{instance}}"),
                    T(sum_rate("chat_node_nats_bad_messages_total", ("instance",)), "bad envelopes {{instance}}"),
                    T(sum_rate("chat_node_expired_leases_total", ("instance",)), "reaped leases {{instance}}"),
                ],
                w=12,
                min=0,
            ),
            ts(
                "Gaps in other nodes' envelopes /s by reason",
                "Envelopes missed from another node (sequence, slow_consumer), after a reconnect, a peer's restart or its silence; each is recovered by a resync, steady ones mean NATS drops or this node cannot keep up.",
                "ops",
                [T(sum_rate("chat_node_nats_gaps_total", ("instance", "reason")), "{{reason}} {{instance}}")],
                w=12,
                min=0,
            ),
            row("Requests"),
            ts(
                "Requests/s by kind and outcome",
                "Requests handled per second on the selected nodes, by kind and outcome (ok or error code).",
                "reqps",
                [T(sum_rate("chat_node_requests_total", ("kind", "outcome")), "{{kind}} {{outcome}}")],
                w=8,
                min=0,
            ),
            ts(
                "Request latency p50 by kind",
                "Median time from decoding a request to queueing its reply, by kind.",
                "s",
                [T(quantile(0.5, "chat_node_request_duration_seconds", ("kind",)), "{{kind}}")],
                w=8,
                min=0,
            ),
            ts(
                "Request latency p99 by kind",
                "99th percentile request time by kind; compare with shard busy and commit latency to find where the time goes.",
                "s",
                [T(quantile(0.99, "chat_node_request_duration_seconds", ("kind",)), "{{kind}}")],
                w=8,
                min=0,
            ),
            ts(
                "Delivery latency p50 / p99 by kind",
                "Time from a message's commit to its push being queued on a recipient's connection on this node; cross-node messages include the NATS hop.",
                "s",
                [
                    T(quantile(0.5, "chat_node_delivery_latency_seconds", ("instance", "kind")), "p50 {{kind}} {{instance}}"),
                    T(quantile(0.99, "chat_node_delivery_latency_seconds", ("instance", "kind")), "p99 {{kind}} {{instance}}"),
                ],
                w=24,
                min=0,
            ),
        ]
        + process_panels("node"),
    )


def balancer():
    up_ = 'upstream=~"$upstream"'
    return dict(
        uid="chat-balancer",
        title="Chat balancer",
        job=("balancer", "chat-balancer"),
        variables=[
            ("upstream", "Upstream", 'label_values(chat_balancer_picks_total{%s}, upstream)' % SEL),
        ],
        panels=[
            row("Now"),
            stat(
                "Balancer up",
                "Balancer targets Prometheus scraped successfully; DOWN means the balancer (or its admin port) is gone.",
                "short",
                [T(agg("min", (), sel("up")), "up")],
                mappings=up_down_mapping(),
                thresholds=thresholds("red", (1, "green")),
            ),
            stat(
                "Accepted/s",
                "Client connections accepted per second in proxy mode.",
                "ops",
                [T(sum_rate("chat_balancer_accepted_total"), "accepted/s")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Open relayed connections",
                "Connections the balancer relays now, over all nodes.",
                "short",
                [T(agg("sum", (), sel("chat_balancer_open_connections")), "open")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Nodes marked down",
                "Upstreams getting no new connections for any reason (probe or connect failures, draining, max_conns, configured down, drained or downed through the admin API).",
                "short",
                [T(agg("sum", (), agg("max", ("upstream",), sel("chat_balancer_upstream_down", up_))), "down")],
                thresholds=thresholds("green", (1, "orange")),
            ),
            stat(
                "Panic picks in range",
                "Picks made with every node unavailable (panic mode, --panic only) during the dashboard's time range; any means all nodes looked down. Without --panic such clients are closed at once (Clients with no node).",
                "short",
                [T(agg("sum", (), "increase(%s[$__range])" % sel("chat_balancer_panic_total")), "panic picks")],
                thresholds=thresholds("green", (1, "red")),
            ),
            stat(
                "Clients with no node in range",
                "Client connections closed because no node accepted (every one tried failed, or none available: fail fast), during the time range; any is a client turned away.",
                "short",
                [T(agg("sum", (), "increase(%s[$__range])" % sel("chat_balancer_no_upstream_total")), "no upstream")],
                thresholds=thresholds("green", (1, "red")),
            ),
            row("Traffic (rate, errors, duration)"),
            ts(
                "Picks/s by upstream",
                "Connections and redirects sent to each node per second; a live node with no picks, or one taking all, is worth a look at its report.",
                "ops",
                [T(sum_rate("chat_balancer_picks_total", ("upstream",), up_), "{{upstream}}")],
                w=8,
                min=0,
            ),
            ts(
                "Open relayed connections by upstream",
                "Connections relayed now, per node (proxy mode only; redirected clients show in the node's report instead).",
                "short",
                [T(agg("sum", ("upstream",), sel("chat_balancer_open_connections", up_)), "{{upstream}}")],
                w=8,
                min=0,
            ),
            ts(
                "Accepted and closed /s",
                "Proxy-mode connections accepted per second, closed per second (accepted minus the growth of open connections), turned away for lack of a node (of which failed fast: closed at once, no node available), and failed accepts.",
                "ops",
                [
                    T(sum_rate("chat_balancer_accepted_total"), "accepted"),
                    T(
                        "%s - %s"
                        % (
                            sum_rate("chat_balancer_accepted_total"),
                            agg("sum", (), rate("chat_balancer_open_connections", fn="deriv")),
                        ),
                        "closed (accepted - growth of open)",
                    ),
                    T(sum_rate("chat_balancer_no_upstream_total"), "no node accepted"),
                    T(sum_rate("chat_balancer_fail_fast_total"), "failed fast (no node available)"),
                    T(sum_rate("chat_balancer_accept_errors_total"), "accept errors"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Relayed connections closed/s by end",
                "How relayed connections ended: closed (either side, cleanly) is normal; error and idle point at broken or silent peers.",
                "ops",
                [T(sum_rate("chat_balancer_closed_total", ("end",)), "{{end}}")],
                w=8,
                min=0,
            ),
            ts(
                "Connect failures/s by upstream",
                "Failed connects to each node; they count towards max_fails and mark the node down (connect_failed).",
                "ops",
                [T(sum_rate("chat_balancer_connect_failures_total", ("upstream",), up_), "{{upstream}}")],
                w=8,
                min=0,
            ),
            ts(
                "Probe failures/s by upstream",
                "Failed load probes per node; --probe-fails in a row mark it down (probe_failed). A dead node fails once per probe interval.",
                "ops",
                [T(sum_rate("chat_balancer_probe_failures_total", ("upstream",), up_), "{{upstream}}")],
                w=8,
                min=0,
            ),
            ts(
                "Connect latency p50 / p99 by upstream",
                "Time to connect to each node; a slow connect means the node's accept queue is backed up (or it is paused).",
                "s",
                [
                    T(quantile(0.5, "chat_balancer_connect_seconds", ("upstream",), up_), "p50 {{upstream}}"),
                    T(quantile(0.99, "chat_balancer_connect_seconds", ("upstream",), up_), "p99 {{upstream}}"),
                ],
                w=8,
                min=0,
            ),
            row("Node health as the balancer sees it"),
            ts(
                "Nodes marked down by upstream",
                "Number of reasons each node is getting no new connections (0 = available); the table on the right names the reasons.",
                "short",
                [T(agg("sum", ("upstream",), sel("chat_balancer_upstream_down", up_)), "{{upstream}}")],
                w=12,
                min=0,
            ),
            table(
                "Down reasons now",
                "For each node and reason, DOWN while that reason keeps the node out of the picks (configured_down, probe_failed, connect_failed, draining, max_conns).",
                "short",
                [
                    ("state", agg("max", ("upstream", "reason"), sel("chat_balancer_upstream_down", up_)), None, [
                        {
                            "options": {
                                "0": {"color": "green", "index": 0, "text": "-"},
                                "1": {"color": "red", "index": 1, "text": "DOWN"},
                            },
                            "type": "value",
                        }
                    ]),
                ],
                w=12,
                h=8,
            ),
            ts(
                "Report age by upstream",
                "Age of each node's last load report (-1: none yet); above --report-max-age (3 s) the balancer falls back to its own connection counts for that node.",
                "s",
                [T(agg("max", ("upstream",), sel("chat_balancer_report_age_seconds", up_)), "{{upstream}}")],
                w=12,
            ),
            ts(
                "Panic and fallback picks/s",
                "Picks made with every node unavailable (panic, --panic only), and picks made without fresh reports (fallback); steady fallback means probes are slow or failing.",
                "ops",
                [
                    T(sum_rate("chat_balancer_panic_total"), "panic"),
                    T(sum_rate("chat_balancer_fallback_picks_total"), "fallback"),
                ],
                w=12,
                min=0,
            ),
            row("Reported node load"),
            ts(
                "Reported load (connections / capacity)",
                "Each node's connections over its capacity from its last report; the balancer steers new clients to the lower ones, so they should converge.",
                "percentunit",
                [
                    T(
                        "%s / (%s > 0)"
                        % (
                            agg("max", ("upstream",), sel("chat_balancer_reported_connections", up_)),
                            agg("max", ("upstream",), sel("chat_balancer_reported_capacity", up_)),
                        ),
                        "{{upstream}}",
                    )
                ],
                w=8,
                min=0,
            ),
            ts(
                "Reported busy",
                "Mean executor busy fraction in each node's last report; a node near 100% costs more and gets fewer new clients.",
                "percentunit",
                [T(agg("max", ("upstream",), sel("chat_balancer_reported_busy_ratio", up_)), "{{upstream}}")],
                w=8,
                min=0,
                max=1,
            ),
            ts(
                "Reported outbound bytes",
                "Bytes queued for clients in each node's last report; counts in the cost (per 64 MiB), a growing queue means slow readers on that node.",
                "bytes",
                [T(agg("max", ("upstream",), sel("chat_balancer_reported_outbound_bytes", up_)), "{{upstream}}")],
                w=8,
                min=0,
            ),
            table(
                "Node reports now",
                "Each node's last report (connections, capacity, busy, outbound bytes, age) beside the balancer's own view (picks, open relayed connections, down reasons).",
                "short",
                [
                    ("connections", agg("max", ("upstream",), sel("chat_balancer_reported_connections", up_)), "short", None),
                    ("capacity", agg("max", ("upstream",), sel("chat_balancer_reported_capacity", up_)), "short", None),
                    ("busy", agg("max", ("upstream",), sel("chat_balancer_reported_busy_ratio", up_)), "percentunit", None),
                    ("outbound", agg("max", ("upstream",), sel("chat_balancer_reported_outbound_bytes", up_)), "bytes", None),
                    ("report age", agg("max", ("upstream",), sel("chat_balancer_report_age_seconds", up_)), "s", None),
                    ("picks", agg("sum", ("upstream",), sel("chat_balancer_picks_total", up_)), "short", None),
                    ("down reasons", agg("sum", ("upstream",), sel("chat_balancer_upstream_down", up_)), "short", None),
                ],
                h=6,
            ),
        ]
        + process_panels("balancer"),
    )


def loadtest():
    lat = "chat_loadtest_latency_seconds"

    def latency_panel(correction):
        extra = 'metric=~"$metric",correction="%s"' % correction
        return ts(
            "$metric latency, %s" % correction,
            (
                "p50/p90/p99/p99.9 measured from the scheduled time (coordinated omission corrected): what users feel."
                if correction == "corrected"
                else "p50/p90/p99/p99.9 measured from when the action actually started; far below corrected means the server (or generator) stalled senders."
            ),
            "s",
            [
                T(quantile(q, lat, ("metric",), extra), "%s {{metric}}" % name)
                for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"))
            ],
            log=True,
        )

    return dict(
        uid="chat-loadtest",
        title="Chat load test",
        job=("loadtest", "chat-loadtest"),
        variables=[
            ("metric", "Latency metric", 'label_values(%s_count{%s}, metric)' % (lat, SEL)),
        ],
        panels=[
            row("Run"),
            stat(
                "Stage",
                "Where the run is: setup (users arriving), traffic, drain (waiting for messages in flight), done.",
                "none",
                [T(agg("max", (), sel("chat_loadtest_stage")), "stage")],
                mappings=[
                    {
                        "options": {
                            "0": {"color": "blue", "index": 0, "text": "setup"},
                            "1": {"color": "green", "index": 1, "text": "traffic"},
                            "2": {"color": "orange", "index": 2, "text": "drain"},
                            "3": {"color": "purple", "index": 3, "text": "done"},
                        },
                        "type": "value",
                    }
                ],
                thresholds=thresholds("green"),
            ),
            stat(
                "Connections",
                "Virtual users' connections open now; below --users means connects failed or the server closed them.",
                "short",
                [T(agg("sum", (), sel("chat_loadtest_connections")), "connections")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Offered rate",
                "Actions per second the schedule asks for now (summed over load processes).",
                "ops",
                [T(agg("sum", (), sel("chat_loadtest_offered_rate")), "offered")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Achieved rate",
                "Sends acknowledged in the last second (summed); below the offered rate the server is not keeping up.",
                "ops",
                [T(agg("sum", (), sel("chat_loadtest_achieved_rate")), "achieved")],
                thresholds=thresholds("green"),
            ),
            stat(
                "Pending receipts",
                "Receipts due that have not come yet; what is still pending after the drain is lost.",
                "short",
                [T(agg("sum", (), sel("chat_loadtest_pending")), "pending")],
                thresholds=thresholds("green", (1000, "orange")),
            ),
            stat(
                "Errors in range",
                "Errors of every kind during the dashboard's time range (the run's report lists them by kind).",
                "short",
                [T(agg("sum", (), "increase(%s[$__range])" % sel("chat_loadtest_errors_total")), "errors")],
                thresholds=thresholds("green", (1, "orange")),
            ),
            row("Throughput"),
            ts(
                "Offered vs achieved rate",
                "The schedule's rate against sends acknowledged per second; a gap means the target cannot carry the offered load (or sends fail).",
                "ops",
                [
                    T(agg("sum", (), sel("chat_loadtest_offered_rate")), "offered"),
                    T(agg("sum", (), sel("chat_loadtest_achieved_rate")), "achieved"),
                ],
                min=0,
            ),
            ts(
                "Sent, acked, expected, delivered /s",
                "Messages written, acknowledged by the server, receipts due (one per recipient) and receipts that came; delivered below expected means receipts are late or lost.",
                "ops",
                [
                    T(sum_rate("chat_loadtest_sent_total"), "sent"),
                    T(sum_rate("chat_loadtest_acked_total"), "acked"),
                    T(sum_rate("chat_loadtest_expected_total"), "expected receipts"),
                    T(sum_rate("chat_loadtest_delivered_total"), "delivered receipts"),
                ],
                min=0,
            ),
            row("Latency"),
            ts(
                "p99 by metric, corrected and uncorrected",
                "99th percentile of each latency, corrected (from the scheduled time) beside uncorrected (from the actual start); Prometheus buckets approximate, the run's report is exact.",
                "s",
                [T(quantile(0.99, lat, ("metric", "correction"), 'metric=~"$metric"'), "{{metric}} {{correction}}")],
                w=24,
                log=True,
            ),
            row("Latency percentiles: $metric", repeat="metric"),
            latency_panel("corrected"),
            latency_panel("uncorrected"),
            row("History and read receipts"),
            ts(
                "History and mark-read latency, corrected",
                "p50 and p99 of history pages (a browse's first page from its scheduled time, later pages from when they were asked) and of mark-reads: the history scenario, and mixed with --mix history=N or read=N.",
                "s",
                [
                    T(quantile(q, lat, ("metric",), 'metric=~"history|mark_read",correction="corrected"'), "%s {{metric}}" % name)
                    for q, name in ((0.5, "p50"), (0.99, "p99"))
                ],
                w=8,
                log=True,
            ),
            ts(
                "History and mark-read requests /s",
                "HistoryRequests (one per page) and MarkReadRequests sent, answered, and failed (answered with an error or not at all; the run's report lists the kinds).",
                "ops",
                [
                    T(sum_rate("chat_loadtest_history_requests_total"), "history sent"),
                    T(sum_rate("chat_loadtest_history_pages_total"), "history pages"),
                    T(sum_rate("chat_loadtest_history_failed_total"), "history failed"),
                    T(sum_rate("chat_loadtest_mark_read_requests_total"), "mark-read sent"),
                    T(sum_rate("chat_loadtest_marked_read_total"), "marked read"),
                    T(sum_rate("chat_loadtest_mark_read_failed_total"), "mark-read failed"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Messages per history page",
                "Messages in the history pages received over pages received: near the page size (50) the conversations are deep, far below it browses reach their beginning.",
                "short",
                [
                    T(
                        "%s / %s"
                        % (sum_rate("chat_loadtest_history_messages_total"), sum_rate("chat_loadtest_history_pages_total")),
                        "messages/page",
                    )
                ],
                w=8,
                min=0,
            ),
            row("Correctness and the generator"),
            ts(
                "Pending receipts",
                "Receipts due that have not come yet: a few in flight is normal, a level that keeps rising is messages being lost.",
                "short",
                [T(agg("sum", (), sel("chat_loadtest_pending")), "pending")],
                w=8,
                min=0,
            ),
            ts(
                "Errors and failed sends /s",
                "Errors of every kind, and sends answered with an error or not at all; see the run's report for the kinds.",
                "ops",
                [
                    T(sum_rate("chat_loadtest_errors_total"), "errors"),
                    T(sum_rate("chat_loadtest_send_failed_total"), "send failed"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Duplicated and out-of-order (total)",
                "Messages received twice under different server ids, and after a later one of the same stream, since the run started; anything above 0 is a bug.",
                "short",
                [
                    T(agg("sum", (), sel("chat_loadtest_duplicated_total")), "duplicated"),
                    T(agg("sum", (), sel("chat_loadtest_out_of_order_total")), "out of order"),
                ],
                w=8,
                min=0,
            ),
            ts(
                "Generator late actions/s",
                "Actions the generator started later than --late-threshold after their scheduled time: the generator's own bottleneck, inside the corrected figures.",
                "ops",
                [T(sum_rate("chat_loadtest_late_total"), "late")],
                w=8,
                min=0,
            ),
            ts(
                "Connections",
                "Virtual users' connections open, per load process.",
                "short",
                [T(sel("chat_loadtest_connections"), "{{instance}}")],
                w=8,
                min=0,
            ),
            ts(
                "Stage",
                "Run stage over time: 0 setup, 1 traffic, 2 drain, 3 done.",
                "none",
                [T(sel("chat_loadtest_stage"), "{{instance}}")],
                w=8,
                min=0,
                max=3,
            ),
        ]
        + process_panels("load tester"),
    )


DASHBOARDS = [overview, node, balancer, loadtest]


# --- rendering ----------------------------------------------------------------


def variable_job(regex_word, default):
    q = "label_values(up, job)"
    return {
        "current": {"selected": True, "text": default, "value": default},
        "datasource": DS,
        "definition": q,
        "description": "Prometheus job of the targets (the scrape config's job_name).",
        "hide": 0,
        "includeAll": False,
        "label": "Job",
        "multi": False,
        "name": "job",
        "options": [],
        "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 1,
        "regex": "/%s/" % regex_word,
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def variable_all(name, label, q):
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "datasource": DS,
        "definition": q,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update({"format": "table", "instant": True, "range": False})
    else:
        t.update({"range": True})
    return t


def refs():
    return [chr(ord("A") + i) for i in range(26)]


def render_panel(p, pid, x, y):
    base = {
        "datasource": DS,
        "description": p["desc"],
        "gridPos": {"h": p["h"], "w": p["w"], "x": x, "y": y},
        "id": pid,
        "title": p["title"],
        "type": p["kind"],
    }
    defaults = {"unit": p["unit"]}
    for key in ("min", "max"):
        if key in p:
            defaults[key] = p[key]
    if "mappings" in p:
        defaults["mappings"] = p["mappings"]
    if "thresholds" in p:
        defaults["thresholds"] = p["thresholds"]
    overrides = []

    if p["kind"] == "timeseries":
        custom = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never", "spanNulls": False}
        if p.get("log"):
            custom["scaleDistribution"] = {"log": 10, "type": "log"}
        defaults["custom"] = custom
        defaults["color"] = {"mode": "palette-classic"}
        base["options"] = {
            "legend": {"calcs": ["mean", "max", "lastNotNull"], "displayMode": "table", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        base["targets"] = [target(e, l, r) for (e, l), r in zip(p["targets"], refs())]
    elif p["kind"] == "stat":
        defaults["color"] = {"mode": "thresholds"}
        base["options"] = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
        base["targets"] = [target(e, l, r) for (e, l), r in zip(p["targets"], refs())]
    elif p["kind"] == "table":
        base["options"] = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
        targets, rename, order = [], {}, {}
        for i, ((header, expr, unit, mappings), r) in enumerate(zip(p["columns"], refs())):
            targets.append(target(expr, header, r, instant=True))
            value_field = "Value #%s" % r if len(p["columns"]) > 1 else "Value"
            rename[value_field] = header
            order[header] = 100 + i
            props = []
            if unit:
                props.append({"id": "unit", "value": unit})
            if mappings:
                props.append({"id": "mappings", "value": mappings})
                props.append({"id": "custom.cellOptions", "value": {"type": "color-text"}})
            if props:
                overrides.append({"matcher": {"id": "byName", "options": header}, "properties": props})
        base["targets"] = targets
        base["transformations"] = [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "indexByName": order, "renameByName": rename},
            },
        ]
    else:
        raise ValueError(p["kind"])
    base["fieldConfig"] = {"defaults": defaults, "overrides": overrides}
    return base


def render(d):
    panels, pid, x, y, row_h = [], 1, 0, 0, 0
    for p in d["panels"]:
        if p["kind"] == "row":
            if x:
                y, x, row_h = y + row_h, 0, 0
            r = {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "id": pid,
                "panels": [],
                "title": p["title"],
                "type": "row",
            }
            if "repeat" in p:
                r["repeat"] = p["repeat"]
            panels.append(r)
            pid, y = pid + 1, y + 1
            continue
        if x + p["w"] > 24:
            y, x, row_h = y + row_h, 0, 0
        panels.append(render_panel(p, pid, x, y))
        pid, x, row_h = pid + 1, x + p["w"], max(row_h, p["h"])

    word, default = d["job"]
    templating = [
        variable_job(word, default),
        variable_all("instance", "Instance", 'label_values(up{job=~"$job"}, instance)'),
    ] + [variable_all(n, label, q) for n, label, q in d["variables"]]
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "Generated by grafana/generate.py; edit that file, not this one.",
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": ["chat"],
                "targetBlank": False,
                "title": "Chat dashboards",
                "tooltip": "",
                "type": "dashboards",
                "url": "",
            }
        ],
        "liveNow": False,
        "panels": panels,
        "refresh": "10s",
        "schemaVersion": 38,
        "style": "dark",
        "tags": ["chat"],
        "templating": {"list": templating},
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": d["title"],
        "uid": d["uid"],
        "version": 1,
        "weekStart": "",
    }


# --- rules every query and panel follows ----------------------------------------

METRIC_RE = re.compile(r"\b(chat_[a-z_]+|process_[a-z_]+|up)\b")


def lint(dash):
    problems = []
    for p in all_panels(dash):
        if p["type"] == "row":
            continue
        where = "%s / %s" % (dash["uid"], p["title"])
        if not p.get("description"):
            problems.append("%s: no description" % where)
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append("%s: no unit" % where)
        if p.get("datasource") != DS:
            problems.append("%s: datasource is not %s" % (where, DS))
        if not p.get("targets"):
            problems.append("%s: no targets" % where)
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            if not expr:
                problems.append("%s: target without expr" % where)
            if not t.get("legendFormat"):
                problems.append("%s: target without legendFormat" % where)
            for m in METRIC_RE.finditer(expr):
                if not expr[m.end():].startswith("{" + SEL):
                    problems.append("%s: %s not selected with %s" % (where, m.group(1), SEL))
            for r in re.finditer(r"\[([^\]]*)\]", expr):
                if r.group(1) not in (RI, "$__range"):
                    problems.append("%s: range [%s] is not [%s]" % (where, r.group(1), RI))
            if "vector(" in expr:
                problems.append("%s: vector() hides missing series" % where)
    return problems


def all_panels(dash):
    for p in dash["panels"]:
        yield p
        for q in p.get("panels", []):
            yield q


def outputs():
    out = {}
    for make in DASHBOARDS:
        dash = render(make())
        problems = lint(dash)
        if problems:
            sys.exit("grafana/generate.py: invalid dashboard description:\n  " + "\n  ".join(problems))
        text = json.dumps(dash, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        out[os.path.join(OUT_DIR, dash["uid"] + ".json")] = text
    return out


# --- queries as the dashboards run them -------------------------------------------


def substituted_exprs(dash):
    """Every target expr with each variable at its current value (.* for All),
    $__rate_interval = 1m, $__interval = 15s, $__range = 5m."""
    values = {}
    for v in dash["templating"]["list"]:
        cur = v["current"]["value"]
        if isinstance(cur, list):
            cur = cur[0] if len(cur) == 1 else "|".join(cur)
        values[v["name"]] = v.get("allValue", ".*") if cur == "$__all" else cur
    builtins = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
    for p in all_panels(dash):
        for t in p.get("targets", []):
            expr = t["expr"]
            for name in sorted(builtins, key=len, reverse=True):
                expr = expr.replace("$" + name, builtins[name])
            for name in sorted(values, key=len, reverse=True):
                expr = expr.replace("$" + name, values[name])
            yield p["title"], t["refId"], expr


def evaluate(url):
    failed = 0
    for make in DASHBOARDS:
        dash = render(make())
        for title, ref, expr in substituted_exprs(dash):
            q = urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen("%s/api/v1/query?%s" % (url.rstrip("/"), q), timeout=30) as resp:
                    body = json.load(resp)
                n = len(body["data"]["result"]) if body.get("status") == "success" else -1
                err = body.get("error", "")
            except urllib.error.HTTPError as e:
                n, err = -1, e.read().decode(errors="replace")
            except (urllib.error.URLError, OSError) as e:
                sys.exit("cannot reach %s: %s" % (url, e))
            status = "ok" if n > 0 else ("EMPTY" if n == 0 else "ERROR " + err)
            if n <= 0:
                failed += 1
            print("%-6s %3s series  %s / %s %s: %s" % (status[:6], max(n, 0), dash["uid"], title, ref, expr))
            if n < 0:
                print("       " + err)
    print("%d queries failed or returned nothing" % failed)
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is stale")
    ap.add_argument("--exprs", action="store_true", help="print every query, variables substituted")
    ap.add_argument("--eval", metavar="URL", help="run every query on the Prometheus at URL")
    args = ap.parse_args()

    if args.exprs:
        for make in DASHBOARDS:
            dash = render(make())
            for title, ref, expr in substituted_exprs(dash):
                print(json.dumps({"dashboard": dash["uid"], "panel": title, "ref": ref, "expr": expr}))
        return 0
    if args.eval:
        return evaluate(args.eval)

    want = outputs()
    if args.check:
        stale = []
        for path, text in sorted(want.items()):
            try:
                with open(path, encoding="utf-8") as f:
                    have = f.read()
            except FileNotFoundError:
                have = None
            if have != text:
                stale.append(path)
        if os.path.isdir(OUT_DIR):
            for name in sorted(os.listdir(OUT_DIR)):
                path = os.path.join(OUT_DIR, name)
                if name.endswith(".json") and path not in want:
                    stale.append(path + " (not generated: remove it)")
        if stale:
            print("grafana/generate.py --check: stale dashboards (run python3 grafana/generate.py):")
            for path in stale:
                print("  " + os.path.relpath(path))
            return 1
        return 0

    os.makedirs(OUT_DIR, exist_ok=True)
    for path, text in sorted(want.items()):
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
