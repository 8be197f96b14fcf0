#!/usr/bin/env python3
"""Fails when the modules of src/ import each other in a cycle.

Every file of src/ is a module (src/lib.rs the crate, src/a.rs and src/a/mod.rs `a`,
src/a/b.rs `a::b`). An edge A -> B means A names an item of B: through `use` (with groups,
`crate::`, `super::`, `self::` and plain paths of its own children) or a path written in code
(`crate::x::y::Z`, `super::y::Z`). A path into a module that only re-exports (a `pub use` in
lib.rs or a mod.rs) is followed to the module that defines the item. A module's edges to its own
descendants are not counted (a parent declares and re-exports its children). Tests (`#[cfg(test)]`
modules) count like the rest. The same check runs again on the top-level modules (every file of
`a/` counted as `a`).

Prints every cycle found (as a chain of modules with the line that makes each edge) and exits 1,
or prints the number of modules and edges and exits 0.
"""

import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"


def module_of(path):
    rel = os.path.relpath(path, SRC)[: -len(".rs")].split(os.sep)
    if rel == ["lib"]:
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


def strip_comments_and_strings(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (as lists of segments)."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        for p in parts:
            if not p:
                continue
            if "{" in p:
                head, rest = p.split("{", 1)
                walk(prefix + [x for x in head.split("::") if x], rest[: rest.rfind("}")])
            else:
                segs = [x for x in re.sub(r"\bas\b.*$", "", p).split("::") if x]
                out.append(prefix + segs)

    walk([], tree)
    return out


def main():
    files = {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[module_of(p)] = p
    modules = set(files)
    texts = {}
    for m, p in files.items():
        with open(p, encoding="utf-8") as f:
            texts[m] = strip_comments_and_strings(f.read())

    # Re-exports of facade modules: name -> the path it stands for.
    reexports = {m: {} for m in modules}
    use_re = re.compile(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);")
    for m, text in texts.items():
        for tree in use_re.findall(text):
            for segs in expand_use(tree):
                if segs and segs[-1] not in ("*", "self"):
                    reexports[m][segs[-1]] = segs

    def absolute(current, segs):
        """Absolute segments of a path written in module `current`, or None (external)."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return list(segs[1:])
        if head == "self":
            return list(current) + list(segs[1:])
        if head == "super":
            base = list(current)
            i = 0
            while i < len(segs) and segs[i] == "super":
                if not base:
                    return None
                base.pop()
                i += 1
            return base + list(segs[i:])
        if tuple(list(current) + [head]) in modules:
            return list(current) + list(segs)
        return None

    def target(segs, seen=0):
        """The module defining the item named by absolute `segs` (following re-exports)."""
        best = ()
        for i in range(len(segs), -1, -1):
            if tuple(segs[:i]) in modules:
                best = tuple(segs[:i])
                rest = segs[i:]
                break
        if rest and seen < 8 and rest[0] in reexports.get(best, {}):
            via = absolute(best, reexports[best][rest[0]])
            if via is not None and tuple(via) != tuple(segs):
                return target(via + list(rest[1:]), seen + 1)
        return best

    edges = {}
    path_re = re.compile(r"\b(?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+")
    plain_use_re = re.compile(r"\buse\s+([^;]+);")
    for m, text in texts.items():
        lines = text.split("\n")
        found = []
        for lineno, line in enumerate(lines, 1):
            for p in path_re.findall(line):
                found.append((lineno, p.split("::")))
        for match in plain_use_re.finditer(text):
            lineno = text.count("\n", 0, match.start()) + 1
            for segs in expand_use(match.group(1)):
                found.append((lineno, segs))
        for lineno, segs in found:
            a = absolute(m, segs)
            if a is None:
                continue
            t = target(a)
            if t == m or t[: len(m)] == m:
                continue  # itself, or one of its own descendants
            edges.setdefault(m, {}).setdefault(t, lineno)

    name = lambda m: "crate::" + "::".join(m) if m else "crate"
    failed = False
    # Cycles between files, then between the top-level modules (a file of `sink` naming an
    # item of `runtime` while a file of `runtime` names one of `sink` is a cycle of the layout
    # even when no two files name each other).
    tops = {}
    for a, targets in edges.items():
        for b, lineno in targets.items():
            if a[:1] and b[:1] and a[:1] != b[:1]:
                tops.setdefault(a[:1], {}).setdefault(b[:1], (a, lineno))
    for level, graph, nodes in (
        ("files", edges, sorted(modules)),
        ("top-level modules", tops, sorted({m[:1] for m in modules if m})),
    ):
        for comp in strongly_connected(graph, nodes):
            failed = True
            members = set(comp)
            print(f"import cycle among {len(comp)} {level}: " + ", ".join(sorted(name(c) for c in comp)))
            for a in sorted(comp):
                for b, how in sorted(graph.get(a, {}).items()):
                    if b in members:
                        src, lineno = how if isinstance(how, tuple) else (a, how)
                        print(f"  {files[src]}:{lineno}: {name(a)} -> {name(b)}")
    if not failed:
        n_edges = sum(len(t) for t in edges.values())
        print(f"no import cycles: {len(modules)} modules, {n_edges} edges")
    return 1 if failed else 0


def strongly_connected(graph, nodes):
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strong(w)
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
            if len(comp) > 1:
                comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            strong(v)
    return comps


if __name__ == "__main__":
    sys.exit(main())
