"""Flow files: a flow written in YAML, checked in full before anything runs. Every problem
is reported at once, each with its line: `line 9: stages[1] (counts).input.from: no stage
named 'word' (did you mean 'words'?)`. Pure: it reads only the text it is given.

    name: wordcount
    separator: "\\t"           # between the fields of a record (default: a tab)
    restarts: 2                # whole-run restarts after an instance or its node is lost
    bad_records: 0             # records lacking a needed field tolerated before failing
    stages:
      - name: words
        read: data/*.txt       # path, glob, s3://..., or '-' for stdin; relative to this file
        parallelism: 2         # instances; the source's chunks are dealt round-robin
        op: words              # or command: "grep x | cut -f2", or function: module:fn
      - name: counts
        input: {from: words, edge: hash, key: 1}
        parallelism: 2
        op: count              # the sender pre-aggregates (a combiner), so few records cross
      - name: top
        input: {from: counts, edge: collect}
        op: {top: {k: 10, by: 2}}
        write: {path: top10.tsv, overwrite: true}   # or '-' for stdout
"""
from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidSpec
from .spec import FlowSpec
from .iospec import absolute
from ..logic.dagfile import LineDict, LineList, load_yaml, plain
from .plan import Plan, check, where


def _line_of(doc: Any, path: tuple) -> int:
    """The line of the deepest part of `path` that the document has."""
    line, node = getattr(doc, "line", 1), doc
    for p in path:
        if isinstance(node, LineDict) and p in node:
            line = node.key_lines.get(p, line)
            node = node[p]
            line = getattr(node, "line", line)
        elif isinstance(node, LineList) and isinstance(p, int) and 0 <= p < len(node):
            line = node.lines[p]
            node = node[p]
        else:
            break
    return line


def _resolve(value: Any, base: str) -> Any:
    """Relative local paths in read/write are taken from the flow file's directory."""
    def fix(p):
        return absolute(p, base) if isinstance(p, str) and p != "-" else p
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, list):
        return [fix(v) for v in value]
    if isinstance(value, dict) and "path" in value:
        return dict(value, path=fix(value["path"]) if isinstance(value["path"], str)
                    else [fix(v) for v in value["path"]])
    return value


def _stage_name(doc, path: tuple) -> str:
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
        try:
            return f" ({doc['stages'][path[1]]['name']})"
        except (KeyError, IndexError, TypeError):
            return ""
    return ""


def parse_flow(text: str, base_dir: str = ".", name: str | None = None) -> tuple[FlowSpec, Plan]:
    doc = load_yaml(text)
    if not isinstance(doc, dict):
        raise InvalidSpec(["line 1: a flow file is a mapping with name, stages (and optionally separator, "
                           "restarts, bad_records)"])
    data = plain(doc)
    if name and "name" not in data:
        data["name"] = name
    for st in data.get("stages") or []:
        if isinstance(st, dict):
            for field in ("read", "write"):
                if field in st:
                    st[field] = _resolve(st[field], base_dir)
    problems: list[tuple[int, str]] = []
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "union["))))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required"
            problems.append((_line_of(doc, loc), f"{where(loc)}{_stage_name(doc, loc)}: {msg}"))
        raise InvalidSpec([f"line {ln}: {m}" for ln, m in sorted(dict.fromkeys(problems), key=lambda x: x[0])])
    plan, found = check(spec)
    if found:
        raise InvalidSpec([f"line {_line_of(doc, path)}: {where(path)}{_stage_name(doc, path)}: {msg}"
                           for path, msg in sorted(found, key=lambda pm: _line_of(doc, pm[0]))])
    return spec, plan


def load_flow(path: str) -> tuple[FlowSpec, Plan]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidSpec([f"{path}: cannot read the flow file ({e.strerror})"]) from None
    base = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    return parse_flow(text, base, name=stem)
