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

from ..errors import InvalidSpec, Problems, path_text, validation_problems
from .spec import EdgeSpec, FlowSpec, StageSpec
from .iospec import absolute
from ..logic.dagfile import LineDict, LineList, load_yaml, plain
from .plan import Plan, check


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


def _where(doc, path: tuple) -> str:
    """The field path, with the name of the stage it is in: `stages[1] (counts).input.from`."""
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
        try:
            name = f" ({doc['stages'][path[1]]['name']})"
        except (KeyError, IndexError, TypeError):
            name = ""
        rest = path_text(path[2:])
        return f"{path_text(path[:2])}{name}" + (rest if rest.startswith("[") or not rest else f".{rest}")
    return path_text(path)


def _fields_at(path: tuple) -> list[str]:
    """The fields of the part of a flow at `path`, as written in YAML."""
    model = {0: FlowSpec, 2: StageSpec}.get(len(path)) if path[:1] in ((), ("stages",)) else None
    if len(path) >= 3 and path[0] == "stages" and path[2] in ("input", "inputs"):
        model = EdgeSpec
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def parse_flow(text: str, base_dir: str = ".", name: str | None = None) -> tuple[FlowSpec, Plan]:
    doc = load_yaml(text)
    if not isinstance(doc, dict):
        raise InvalidSpec(["line 1: a flow file is a mapping with name, stages (and optionally separator, "
                           "restarts, bad_records)"])
    data = plain(doc)
    if name and "name" not in data:
        data["name"] = name
    stages = data.get("stages")
    for st in stages if isinstance(stages, list) else []:  # not a list: the model says so
        if isinstance(st, dict):
            for field in ("read", "write"):
                if field in st:
                    st[field] = _resolve(st[field], base_dir)
    p = Problems()
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as e:
        for loc, msg in validation_problems(e, fields=_fields_at):
            p.add(_where(doc, loc), msg, _line_of(doc, loc))
        p.raise_if_any()
    plan, found = check(spec)
    for problem in found:
        p.add(_where(doc, problem.path), problem.message, _line_of(doc, problem.path))
    p.raise_if_any()
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
