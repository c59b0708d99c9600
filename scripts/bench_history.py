#!/usr/bin/env python3
"""History page latency with a large store (used by scripts/bench-history.sh).

Registers USERS users on a running chat-node over the seed JSON protocol, writes
MESSAGES stored messages straight into its SQLite file (the node shares the
file; WAL lets both in), CONVERSATION of them between the first two users,
then asks for history pages (msgid 40) at RATE pages a second for DURATION
seconds, from the two users of that conversation (one session each,
requests pipelined), open model: each request has a scheduled time and its
latency is measured from that time, so a slow reply delays the ones behind
it and they count as slow too. Half the pages are the newest, half start
below a random message of the conversation. Prints one JSON
line with the percentiles and the node's CPU per page (from /proc).

Only the standard library: sqlite3, asyncio, json.
"""

import argparse
import asyncio
import collections
import json
import os
import random
import sqlite3
import time


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))
    return values[k]


class Conn:
    """One seed-JSON connection: objects end with a NUL byte."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host, port):
        r, w = await asyncio.open_connection(host, port)
        return cls(r, w)

    async def ask(self, obj):
        self.writer.write(json.dumps(obj).encode() + b"\0")
        await self.writer.drain()
        return await self.recv()

    async def recv(self):
        data = await self.reader.readuntil(b"\0")
        return json.loads(data[:-1])


async def register(host, port, name):
    c = await Conn.open(host, port)
    r = await c.ask({"msgid": 4, "name": name, "pwd": "pw"})
    c.writer.close()
    if r.get("errno") != 0:
        raise SystemExit(f"register {name}: {r}")
    return r["id"]


def seed(db, users, messages, conversation):
    """Inserts `messages` rows: `conversation` of them between users[0] and
    users[1] (alternating), the rest between random pairs of the others."""
    now_ms = int(time.time() * 1000)
    con = sqlite3.connect(db, timeout=60)
    con.execute("PRAGMA busy_timeout = 60000")
    a, b = users[0], users[1]
    others = users[2:]
    batch = []
    with con:
        for i in range(messages):
            if i % (messages // conversation) == 0 and conversation > 0:
                s, r = (a, b) if (i // (messages // conversation)) % 2 == 0 else (b, a)
            else:
                s, r = random.sample(others, 2)
            batch.append((s, f"u{s}", r, 0, now_ms, f"seeded message {i}"))
            if len(batch) == 10_000:
                con.executemany(
                    "INSERT INTO messages (sender_id, sender_name, recipient_id, group_id, time_ms, text)"
                    " VALUES (?, ?, ?, 0, ?, ?)",
                    [(s, n, r, t, x) for (s, n, r, _, t, x) in batch],
                )
                batch.clear()
        if batch:
            con.executemany(
                "INSERT INTO messages (sender_id, sender_name, recipient_id, group_id, time_ms, text)"
                " VALUES (?, ?, ?, 0, ?, ?)",
                [(s, n, r, t, x) for (s, n, r, _, t, x) in batch],
            )
        # Every recipient has them: they are history, not backlog.
        con.execute("UPDATE users SET cursor = (SELECT MAX(id) FROM messages)")
    ids = [row[0] for row in con.execute(
        "SELECT id FROM messages WHERE group_id = 0 AND MIN(sender_id, recipient_id) = ?"
        " AND MAX(sender_id, recipient_id) = ? ORDER BY id", (min(a, b), max(a, b)))]
    total = con.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    con.close()
    return ids, total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--conversation", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--limit", type=int, default=50)
    a = ap.parse_args()

    users = [await register(a.host, a.port, f"h{i}") for i in range(a.users)]
    t0 = time.monotonic()
    ids, total = seed(a.db, users, a.messages, a.conversation)
    seeded_s = time.monotonic() - t0

    # The two parties of the big conversation, one session each (a user has
    # one session); requests are pipelined on each connection, replies come
    # in order, so a reader task matches each to its scheduled time.
    parties = []
    for me, peer in ((users[0], users[1]), (users[1], users[0])):
        c = await Conn.open(a.host, a.port)
        r = await c.ask({"msgid": 1, "id": me, "pwd": "pw"})
        if r.get("errno") != 0:
            raise SystemExit(f"login {me}: {r}")
        parties.append((c, peer))
    latencies = []
    errors = 0
    start = time.monotonic() + 0.2
    per_conn = a.rate / len(parties)

    async def sender(k, c, peer, sent):
        n = 0
        while True:
            scheduled = start + k / a.rate + n / per_conn
            if scheduled - start >= a.duration:
                sent.append(None)
                return
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # The newest page half the time, a random older page otherwise.
            req = {"msgid": 40, "peer": peer, "limit": a.limit}
            if random.random() < 0.5:
                req["before"] = random.choice(ids)
            sent.append(scheduled)
            c.writer.write(json.dumps(req).encode() + b"\0")
            await c.writer.drain()
            n += 1

    async def receiver(c, sent):
        nonlocal errors
        while True:
            while not sent:
                await asyncio.sleep(0.0005)
            scheduled = sent.popleft()
            if scheduled is None:
                return
            r = await c.recv()
            done = time.monotonic()
            if r.get("msgid") != 41 or r.get("errno") != 0:
                errors += 1
            else:
                latencies.append(done - scheduled)

    tasks = []
    for k, (c, peer) in enumerate(parties):
        sent = collections.deque()
        tasks.append(sender(k, c, peer, sent))
        tasks.append(receiver(c, sent))
    cpu0 = cpu_seconds(a.pid)
    await asyncio.gather(*tasks)
    cpu1 = cpu_seconds(a.pid)
    pages = len(latencies)
    out = {
        "stored_messages": total,
        "conversation_messages": len(ids),
        "seed_seconds": round(seeded_s, 1),
        "offered_pages_per_s": a.rate,
        "pages": pages,
        "errors": errors,
        "achieved_pages_per_s": round(pages / a.duration, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "p999_ms": round(percentile(latencies, 99.9) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3),
        "server_cpu_us_per_page": round((cpu1 - cpu0) / max(pages, 1) * 1e6, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
