#!/usr/bin/env bash
# Lists the import cycles between the modules of node/src (chat-node's
# library crate): prints each cycle and exits 1, or prints "no import cycles"
# and exits 0. `--edges` also prints the whole module graph (one edge a line,
# "from -> to", with the count of references), which is what the module map
# in docs/architecture.md draws.
#
# What counts as a reference from module A to module B: a path in A's code
# (not its comments, doc comments or string literals) that starts with
# `crate::`, `super::`, `self::` or the name of a child module A declares
# (`mod x;`), in a `use` declaration (groups `{a, b::c}` expanded) or inline
# (`crate::metrics::counter(..)`), and resolves to a module under B. A path is
# resolved to the longest prefix that names a module of the crate, so
# `crate::store::UserId` points at `store` even when `store` re-exports the
# type from elsewhere (the re-export is then an edge of `store`'s own).
# `#[cfg(test)]` items (the `mod tests { .. }` blocks, and any other item
# under that attribute) are skipped: a unit test may reach anywhere.
# `main.rs` is another crate (the binary) and is not read.
#
# Granularity (the nodes of the graph): each top-level module of the crate
# (`router`, `shard`, `engine`, ...; a folder module with all its files is
# one node), except the folders listed in SPLIT below, whose `mod.rs` is one
# node and each direct child another (`store`, `store::sqlite`,
# `store::scylla`, `store::mailbox`; `protocol`, `protocol::json`,
# `protocol::flatbuf`): the storage backends and the wire codecs are the
# units that must stay apart. Deeper files fold into their ancestor node
# (`store/scylla/leases.rs` is `store::scylla`). References between files of
# one node are not edges.
#
# A cycle is a strongly connected component of more than one node; each is
# printed with its edges and, for each edge, where the references are.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os
import re
import sys

SRC = "node/src"
SPLIT = {"store", "protocol"}
show_edges = "--edges" in sys.argv[1:]


def strip(text):
    """Blanks comments, string and char literals (keeping newlines so line
    numbers still hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 300]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:  # a char literal; otherwise a lifetime
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def item_end(code, start):
    """End of the item starting at `start`: its `;` or its closing brace."""
    depth = 0
    for j in range(start, len(code)):
        ch = code[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        elif ch == ";" and depth == 0:
            return j + 1
    return len(code)


def drop_cfg_test(code):
    """Blanks every item under `#[cfg(test)]`; returns the code and the names
    of the file modules (`#[cfg(test)] mod x;`) so dropped."""
    dropped = set()
    while True:
        m = re.search(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", code)
        if not m:
            return code, dropped
        start = m.end()
        while True:  # further attributes on the same item
            a = re.match(r"\s*#\s*\[", code[start:])
            if not a:
                break
            depth, j = 0, start + a.end() - 1
            while j < len(code):
                depth += {"[": 1, "]": -1}.get(code[j], 0)
                j += 1
                if depth == 0:
                    break
            start = j
        end = item_end(code, start)
        mm = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code[start:end])
        if mm:
            dropped.add(mm.group(1))
        code = code[:m.start()] + re.sub(r"[^\n]", " ", code[m.start():end]) + code[end:]


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    tree = re.sub(r"\bas\w+", "", tree)  # `Xas Y` once spaces are gone
    out = []

    def walk(prefix, t):
        if "{" not in t:
            out.append(prefix + t)
            return
        k = t.index("{")
        head, body = t[:k], t[k + 1:-1]
        parts, depth, cur = [], 0, ""
        for ch in body:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            cur += ch
        parts.append(cur)
        for p in parts:
            if p:
                walk(prefix + head, p)

    walk("", tree)
    return [p for p in out if p]


# --- the crate's modules -------------------------------------------------
def module_of(rel):
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


files = {}
for root, _, names in os.walk(SRC):
    for name in names:
        if name.endswith(".rs"):
            rel = os.path.relpath(os.path.join(root, name), SRC)
            if rel != "main.rs":
                files[module_of(rel)] = os.path.join(root, name)

code_of, test_only = {}, set()
for mod, path in files.items():
    with open(path, encoding="utf-8") as f:
        code, dropped = drop_cfg_test(strip(f.read()))
    code_of[mod] = code
    test_only |= {mod + (d,) for d in dropped}
# inline modules (`mod x { .. }`) are part of their file's module here
modules = set(files) - {m for m in files if any(m[:k] in test_only for k in range(1, len(m) + 1))}


def node_of(mod):
    if not mod:
        return None
    if mod[0] in SPLIT and len(mod) >= 2:
        return "::".join(mod[:2])
    return mod[0]


def resolve(mod, path):
    """Module a path written in `mod` points into, or None (external crate,
    std, a local item)."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("self", "super"):
        base = mod
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif mod + (segs[0],) in modules:
        base = mod
    else:
        return None
    best = base
    for k in range(1, len(segs) + 1):
        if base + tuple(segs[:k]) in modules:
            best = base + tuple(segs[:k])
        else:
            break
    return best


edges = {}  # (from, to) -> [file:line]
PATH = r"(?:crate|self|super|[a-z_][a-z0-9_]*)(?:\s*::\s*(?:\w+|\*|\{))+"
for mod in sorted(modules):
    src_node = node_of(mod)
    if src_node is None:
        continue
    code = code_of[mod]
    refs = []
    for m in re.finditer(r"\buse\s+([^;]*);", code):
        line = code.count("\n", 0, m.start()) + 1
        refs += [(p, line) for p in expand_use(m.group(1))]
    no_use = re.sub(r"\buse\s+[^;]*;", lambda m: re.sub(r"[^\n]", " ", m.group(0)), code)
    for m in re.finditer(PATH, no_use):
        if m.start() and (no_use[m.start() - 1].isalnum() or no_use[m.start() - 1] in "_:"):
            continue  # the tail of a longer path, already seen from its start
        line = no_use.count("\n", 0, m.start()) + 1
        refs.append((re.sub(r"\s+", "", m.group(0)).rstrip(":{"), line))
    for path, line in refs:
        target = resolve(mod, path)
        dst_node = node_of(target) if target is not None else None
        if dst_node and dst_node != src_node:
            where = f"{files[mod][len(SRC) + 1:]}:{line}"
            edges.setdefault((src_node, dst_node), [])
            if where not in edges[(src_node, dst_node)]:
                edges[(src_node, dst_node)].append(where)

nodes = sorted({node_of(m) for m in modules if node_of(m)})
succ = {n: sorted({b for (a, b) in edges if a == n}) for n in nodes}

if show_edges:
    print("module graph (from -> to: references):")
    for (a, b) in sorted(edges):
        print(f"  {a} -> {b}: {len(edges[(a, b)])}")
    print()

# Tarjan's strongly connected components
index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in succ[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in nodes:
    if v not in index:
        visit(v)

cycles = [c for c in sccs if len(c) > 1]
if not cycles:
    print(f"no import cycles ({len(nodes)} modules, {len(edges)} edges)")
    sys.exit(0)
for i, comp in enumerate(sorted(cycles), 1):
    print(f"cycle {i}: {', '.join(comp)}")
    for (a, b) in sorted(edges):
        if a in comp and b in comp:
            where = edges[(a, b)]
            more = f" (+{len(where) - 4} more)" if len(where) > 4 else ""
            print(f"  {a} -> {b}   {', '.join(where[:4])}{more}")
print(f"{len(cycles)} import cycle(s) among {len(nodes)} modules")
sys.exit(1)
PY
