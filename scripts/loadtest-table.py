#!/usr/bin/env python3
"""Turns chat-loadtest --json summaries into a markdown table and puts it
into docs/benchmarks.md between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
(appended under a heading when the markers are missing), so that every
benchmark figure comes from the tool's JSON.

    loadtest-table.py NAME INTRO 'label::path.json[::other label]' ... [--note TEXT]

Each row's delivery p99 is also given as a ratio to a baseline measured in
the same script run: the row named third, else the first row. The server
columns come from the summary's `server` object (runs with --local or
--server-metrics; empty otherwise): the nodes' CPU per delivered message in
the measured window and their resident memory gained per connection, with
--local's balancer added as "+ N balancer".
"""
import json
import re
import sys


def ms(us):
    return f"{us / 1000:.2f}"


def server_cell(s, key, scale, digits):
    """The nodes' figure `key` of the summary's server cost, scaled, with the
    balancer's after it when there is one; empty when not measured."""
    server = s.get("server") or {}
    parts = []
    for group in ("nodes", "balancer"):
        value = (server.get(group) or {}).get(key)
        if value is None:
            continue
        text = f"{value / scale:.{digits}f}"
        parts.append(text if group == "nodes" else f"+ {text} balancer")
    return " ".join(parts)


def row(label, s, base):
    c = s["counters"]
    r = s["rate"]
    lat = s["latency"]
    d = (lat.get("delivery") or {}).get("corrected")
    a = (lat.get("send_ack") or {}).get("corrected")
    best = s.get("ramp_best_rate_per_s")
    ratio = ""
    if base is not None and d:
        b = base["latency"]["delivery"]["corrected"]
        ratio = f"{d['p99_us'] / max(b['p99_us'], 1):.2f}×"
    cells = [
        label,
        "ramp" if s["scenario"] == "ramp" else f"{r['offered_per_s']:.0f}",
        f"{r['achieved_per_s']:.0f}",
        f"{best:.0f}" if best is not None else ("none held" if s["scenario"] == "ramp" else ""),
        str(c["delivered"]),
        str(c["lost"] + c["duplicated"] + c["out_of_order"]),
        ms(d["p50_us"]) if d else "",
        ms(d["p99_us"]) if d else "",
        ms(d["p99_9_us"]) if d else "",
        ms(a["p99_us"]) if a else "",
        ratio,
        server_cell(s, "cpu_us_per_delivered", 1, 1),
        server_cell(s, "rss_bytes_per_connection", 1024, 1),
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv):
    name, intro = argv[0], argv[1]
    runs, note = [], ""
    rest = argv[2:]
    while rest:
        arg = rest.pop(0)
        if arg == "--note":
            note = rest.pop(0)
        else:
            label, path, *vs = arg.split("::")
            vs = vs[0] if vs else None
            with open(path) as f:
                runs.append((label, json.load(f), vs or None))
    by_label = {label: s for label, s, _ in runs}
    lines = [
        "| run | offered/s | achieved/s | ramp: highest rate held | delivered | lost + dup + reordered "
        "| delivery p50 ms | p99 ms | p99.9 ms | ack p99 ms | p99 vs baseline "
        "| server CPU µs/msg | server memory KiB/conn |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (label, s, vs) in enumerate(runs):
        base = by_label[vs] if vs else (None if i == 0 else runs[0][1])
        lines.append(row(label + (f" (baseline: {vs})" if vs else ""), s, base))
    text = (
        f"<!-- {name}:begin (generated from chat-loadtest --json; do not edit) -->\n"
        + intro.strip() + "\n\n" + "\n".join(lines) + "\n"
        + (("\n" + note.strip() + "\n") if note else "")
        + f"<!-- {name}:end -->\n"
    )
    path = "docs/benchmarks.md"
    doc = open(path).read()
    pattern = re.compile(rf"<!-- {re.escape(name)}:begin.*?<!-- {re.escape(name)}:end -->\n", re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc)
    else:
        doc += f"\n## {name}\n\n" + text
    open(path, "w").write(doc)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
