#!/usr/bin/env python3
"""Fails on any function in src/ longer than 80 lines from its `fn` line to its closing brace.

A function starts at a line whose code (outside comments and strings) has the `fn` keyword
followed by a name, and ends at the brace that closes the first `{` opened after it (a
declaration ending in `;`, as in a trait, has no body and is skipped). Closures and nested
functions count as part of the function that holds them; a nested `fn` is also measured on its
own. Prints each offender as `path:line: name is N lines` and exits 1, or exits 0.
"""

import os
import re
import sys

LIMIT = 80
SRC = sys.argv[1] if len(sys.argv) > 1 else "src"
FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def code_only(text):
    """`text` with comments, strings and char literals blanked, keeping every newline."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
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
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = len(re.match(r"r(#*)\"", text[i:]).group(1))
            end = text.find('"' + "#" * hashes, i + 2 + hashes)
            j = n if end < 0 else end + 1 + hashes
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i : j + 1]))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        elif c == "'" and re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:]):
            m = re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def offenders(path):
    with open(path, encoding="utf-8") as f:
        code = code_only(f.read())
    found = []
    for m in FN.finditer(code):
        start_line = code.count("\n", 0, m.start()) + 1
        j = m.end()
        # The body opens at the first `{` before any `;` at depth 0 of (), [] and <>.
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif ch == ";" and depth == 0:
                j = -1
                break
            elif ch == "{" and depth == 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        braces, k = 0, j
        while k < len(code):
            if code[k] == "{":
                braces += 1
            elif code[k] == "}":
                braces -= 1
                if braces == 0:
                    break
            k += 1
        end_line = code.count("\n", 0, k) + 1
        length = end_line - start_line + 1
        if length > LIMIT:
            found.append((start_line, m.group(1), length))
    return found


def main():
    bad = []
    for root, _, names in os.walk(SRC):
        for n in sorted(names):
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                bad.extend((p, *o) for o in offenders(p))
    for p, line, name, length in sorted(bad):
        print(f"{p}:{line}: {name} is {length} lines (limit {LIMIT})")
    if bad:
        print(f"{len(bad)} functions longer than {LIMIT} lines")
        return 1
    print(f"every function in {SRC}/ is at most {LIMIT} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
