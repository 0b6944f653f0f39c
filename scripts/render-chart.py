#!/usr/bin/env python3
"""Render deploy/helm/tessera with its default values, for CI (helm itself
is not installable here). The chart's templates keep to a subset of Helm's
template language that this renders exactly as Helm does:

  {{ .Values.a.b }}   {{ .Values.a.b | quote }}   {{ .Release.Namespace }}
  {{- if .Values.a.b }} ... {{- end }}   (each on a line of its own)

Anything else between braces is an error, so a template cannot drift
outside what is checked. Writes one file per template into OUT_DIR (the
release namespace is "tessera").

    scripts/render-chart.py deploy/helm/tessera OUT_DIR [VALUES_FILE]

VALUES_FILE, like `helm -f`, overrides the chart's values key by key.
"""
import json
import os
import re
import sys

import yaml

EXPR = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def lookup(values, path):
    node = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"no value .Values.{path}")
        node = node[part]
    return node


def show(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def evaluate(expr, values, where):
    pipe = [p.strip() for p in expr.split("|")]
    head = pipe[0]
    if head == ".Release.Namespace":
        v = "tessera"
    elif head.startswith(".Values."):
        v = lookup(values, head[len(".Values."):])
    else:
        raise SyntaxError(f"{where}: unsupported template expression {{{{ {expr} }}}}")
    for f in pipe[1:]:
        if f == "quote":
            v = json.dumps(show(v))
        else:
            raise SyntaxError(f"{where}: unsupported function {f!r}")
    return show(v)


def render(text, values, name):
    out, stack = [], []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{name}:{n}"
        s = line.strip()
        m = re.fullmatch(r"\{\{-\s*if\s+\.Values\.([\w.]+)\s*\}\}", s)
        if m:
            stack.append(bool(lookup(values, m.group(1))))
            continue
        if re.fullmatch(r"\{\{-\s*end\s*\}\}", s):
            if not stack:
                raise SyntaxError(f"{where}: end without if")
            stack.pop()
            continue
        if not all(stack):
            continue
        out.append(EXPR.sub(lambda m: evaluate(m.group(1), values, where), line))
    if stack:
        raise SyntaxError(f"{name}: if without end")
    return "\n".join(out) + "\n"


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def main():
    chart, out_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    if len(sys.argv) > 3:
        with open(sys.argv[3]) as f:
            merge(values, yaml.safe_load(f) or {})
    os.makedirs(out_dir, exist_ok=True)
    tdir = os.path.join(chart, "templates")
    for name in sorted(os.listdir(tdir)):
        with open(os.path.join(tdir, name)) as f:
            text = render(f.read(), values, name)
        # A template whose every part was switched off renders nothing.
        if any(doc for doc in yaml.safe_load_all(text)):
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
