"""DAG files: steps (commands) and the order they run in, described in YAML, parsed and
checked in full before anything is submitted. Pure: it reads only the text it is given.

    name: nightly               # job id prefix: each run is the job `nightly-<6 chars>`
    defaults:                   # TaskSpec fields for every step that does not set them
      retries: 1
      cpus: 1
      cwd: .                    # a relative cwd is taken from the YAML file's directory
    steps:                      # step name -> its fields; the name is the task's name
      fetch:
        command: curl -fsS http://example/x -o /tmp/x   # a string runs under /bin/sh -c
      clean:
        command: ["python", "clean.py"]                # a list is an argv
        after: [fetch]          # steps that must succeed first: a name or a list of names
        memory: 2G
      report:
        command: make report
        after: [clean]
        allow_failed_deps: false  # true: run even when a step in `after` failed

Top level: `name` (letters, digits, `_ . -`; default: the file's name), `defaults`
(optional) and `steps` (required, at least one). A step takes `after` and every
TaskSpec field except those the DAG sets itself: `name` (the step's key), `job`
(`<name>-<suffix>`, one per run) and `depends_on` (the task ids of `after`). A step's
field replaces the default, except `env`, which is merged (the step's values win).
Keys are read as text, so a step may be called `on` or `2`; YAML anchors and merge
keys (`<<: *common`) work. `command` is required (from the step or the defaults).

Every problem is reported at once, each as `line N: steps.<step>.<field>: what is
wrong`: bad YAML, unknown or duplicate keys (which YAML itself would silently drop),
unknown fields and bad values (checked by TaskSpec.parse), an empty step, a missing
command, an `after` naming no step, and cycles (with the steps on them). A problem in
`defaults` is reported once, under `defaults.`, not once per step.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import yaml

from ..errors import InvalidSpec, Problems, join_path, path_parts, suggest
from ..model import TaskSpec
from .dag import find_cycle

TOP_KEYS = ("name", "defaults", "steps")
RESERVED = {
    "name": "set by the DAG: a step's name is its key under steps",
    "job": "set by the DAG: each run is its own job, <name>-<suffix>",
    "depends_on": "set by the DAG from `after` (use after: [step, ...])",
}
RESERVED.update({f: "Python function tasks are submitted from Python (@shoal.task), not from a DAG file"
                 for f in ("function", "function_name", "working_dir") if f in TaskSpec.model_fields})
SPEC_FIELDS = [f for f in TaskSpec.model_fields if f not in RESERVED]
STEP_FIELDS = ["after", *SPEC_FIELDS]
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
MAX_DAG_NAME = 100    # + "-" + 6 chars stays within a job id's 128
MAX_STEP_NAME = 200   # a task name takes 256


# -- a YAML loader that keeps line numbers and sees duplicate keys ----------------------

class LineDict(dict):
    """A mapping from the YAML, with the line of itself and of each key, each scalar
    value's raw text, and the keys given twice: (key, first line, line of the repeat)."""
    line = 1


class LineList(list):
    """A sequence from the YAML, with each item's line and raw text (None if not a scalar)."""
    line = 1


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = LineDict()
    data.line, data.key_lines, data.raw, data.dups, data.bad_keys = node.start_mark.line + 1, {}, {}, [], []
    yield data
    own: dict[str, int] = {}
    for k, _ in node.value:  # before merge keys are expanded: only keys written here
        if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
            line = k.start_mark.line + 1
            if k.value in own:
                data.dups.append((k.value, own[k.value], line))
            else:
                own[k.value] = line
    loader.flatten_mapping(node)
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            data.bad_keys.append(k.start_mark.line + 1)
            continue
        data[k.value] = loader.construct_object(v)  # keys as written: `on` stays "on"
        data.key_lines[k.value] = k.start_mark.line + 1
        data.raw[k.value] = v.value if isinstance(v, yaml.ScalarNode) else None


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = LineList()
    data.line = node.start_mark.line + 1
    data.lines = [n.start_mark.line + 1 for n in node.value]
    data.raws = [n.value if isinstance(n, yaml.ScalarNode) else None for n in node.value]
    yield data
    data.extend(loader.construct_object(n) for n in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml(text: str):
    """The document with line numbers kept; InvalidSpec (with the line) if it is not YAML."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = ", ".join(p for p in (e.context, e.problem) if p)
        raise InvalidSpec([f"line {mark.line + 1 if mark else 1}: not valid YAML: {what}"]) from None
    except yaml.YAMLError as e:
        raise InvalidSpec([f"line 1: not valid YAML: {e}"]) from None
    finally:
        loader.dispose()


def plain(obj, _depth: int = 0):
    """LineDict/LineList turned back into dict/list, all the way down."""
    if _depth > 100:  # an anchor used inside itself (`a: &x {env: *x}`) never ends
        raise InvalidSpec(["line 1: a YAML anchor is used inside itself (&name ... *name), or nested "
                           "over 100 deep"])
    if isinstance(obj, dict):
        return {k: plain(v, _depth + 1) for k, v in obj.items()}
    return [plain(v, _depth + 1) for v in obj] if isinstance(obj, list) else obj


# -- the parsed DAG ---------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    name: str
    line: int
    after: tuple[str, ...]   # step names
    fields: dict             # TaskSpec fields (defaults merged in, name set): what is submitted
    spec: TaskSpec
    layer: int               # 0 for steps with no `after`, else 1 + the deepest of its `after`

    def task(self, job: str, ids: dict[str, str]) -> dict:
        """The fields to submit, given the task ids of the steps submitted before."""
        out = dict(self.fields, job=job)
        if self.after:
            out["depends_on"] = [ids[a] for a in self.after]
        return out


@dataclass(frozen=True)
class Dag:
    name: str
    steps: dict[str, Step]   # in topological order: by layer, then as written

    @property
    def order(self) -> list[str]:
        return list(self.steps)

    def layers(self) -> list[list[Step]]:
        """Steps by layer: each layer depends only on the ones before it."""
        out: list[list[Step]] = [[] for _ in range(1 + max((s.layer for s in self.steps.values()), default=-1))]
        for s in self.steps.values():
            out[s.layer].append(s)
        return out


def _kind(v) -> str:
    return {type(None): "nothing", str: "a string", int: "a number", float: "a number", bool: "true/false",
            LineList: "a list", LineDict: "a mapping"}.get(type(v), type(v).__name__)


def _dups(obj, path: str, p: Problems, seen: set) -> None:
    """Every key given twice, and every key that is not a name, anywhere in the document."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, LineDict):
        for key, first, line in obj.dups:
            what = "step name (first defined" if path == "steps" else "key (first"
            p.add(f"{path}.{key}" if path else key,
                  f"duplicate {what} at line {first}; YAML would silently keep only the last)", line)
        for line in obj.bad_keys:
            p.add(path or "top level", "a key must be a plain name, not a list or mapping", line)
        for k, v in obj.items():
            _dups(v, f"{path}.{k}" if path else k, p, seen)
    elif isinstance(obj, LineList):
        for i, v in enumerate(obj):
            _dups(v, f"{path}[{i}]", p, seen)


def _line_of(obj, parts: list[str | int], fallback: int) -> int:
    """The line of a field path such as ['env', 'HOME'] or ['command', 1]."""
    line = fallback
    for part in parts:
        if isinstance(obj, LineDict) and part in obj:
            line, obj = obj.key_lines[part], obj[part]
        elif isinstance(obj, LineList) and isinstance(part, int) and part < len(obj):
            line, obj = obj.lines[part], obj[part]
        else:
            break
    return line


def _spec_problems(problems: list[str], own: LineDict, where: str, fallback: int,
                   known: list[str], p: Problems, skip=lambda parts: False) -> None:
    """TaskSpec.parse's problems, each placed at its line and prefixed with `where`."""
    for prob in problems:
        loc, sep, msg = prob.partition(": ")
        if not sep:
            loc, msg = "task", prob
        parts = path_parts(loc)
        if skip(parts):
            continue
        if msg.startswith("unknown field"):  # a step knows `after` too, and not the fields the DAG sets
            msg = f"unknown field{suggest(parts[0], known)} (known fields: {', '.join(known)})"
        p.add(join_path(where, loc), msg, _line_of(own, parts, fallback))


def _name(data: LineDict, default_name: str, p: Problems) -> str:
    name, line = data.get("name", default_name), data.key_lines.get("name", 1)
    name = data.raw["name"] if isinstance(name, (int, float)) and not isinstance(name, bool) else name
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_DAG_NAME:
        p.add("name", f"{name!r} is not a DAG name (use letters, digits, _ . - ; at most "
                      f"{MAX_DAG_NAME} characters; it becomes the job id prefix)", line)
        return "dag"
    return name


def _defaults(data: LineDict, base_dir: str | None, p: Problems) -> LineDict:
    raw, line = data.get("defaults"), data.key_lines.get("defaults", 1)
    if raw is not None and not isinstance(raw, LineDict):
        p.add("defaults", f"expected a mapping of task fields (retries: 1, cpus: 2, ...), got {_kind(raw)}", line)
    if not isinstance(raw, LineDict):
        return LineDict()
    fields = {}
    for key, value in raw.items():
        if key in RESERVED or key == "after":
            p.add(f"defaults.{key}", RESERVED.get(key, "steps have their own after; it cannot be a default"),
                  raw.key_lines[key])
        else:
            fields[key] = _resolve_cwd(key, plain(value), base_dir)
    try:
        TaskSpec.parse(dict(fields, command=fields.get("command", "true")))
    except InvalidSpec as e:
        _spec_problems(e.problems, raw, "defaults", line, SPEC_FIELDS, p)
    return raw


def _resolve_cwd(key: str, value, base_dir: str | None):
    if key == "cwd" and base_dir and isinstance(value, str) and value and not posixpath.isabs(value):
        return posixpath.normpath(posixpath.join(base_dir, value))
    return value


def _after(name: str, body: LineDict, p: Problems) -> list[tuple[str, int]]:
    """(step name, line) for each entry of the step's `after`."""
    raw, line = body.get("after"), body.key_lines.get("after", body.line)
    if raw is None:
        return []
    if body.raw.get("after") is not None:  # one name, as written (`after: on` is not true)
        return [(body.raw["after"], line)]
    if not isinstance(raw, LineList):
        p.add(f"steps.{name}.after", f"expected a step name or a list of step names, got {_kind(raw)}", line)
        return []
    out = []
    for i, item in enumerate(raw):
        if raw.raws[i] is None:
            p.add(f"steps.{name}.after[{i}]", f"expected a step name, got {_kind(item)}", raw.lines[i])
        else:
            out.append((raw.raws[i], raw.lines[i]))
    return out


def parse_dag(text: str, default_name: str = "dag", base_dir: str | None = None) -> Dag:
    """Parse and check a DAG file's text. Raises InvalidSpec naming every problem (each
    with its line) when there is any. `default_name` is used when the file sets no
    `name`; a relative `cwd` is joined to `base_dir` (the file's directory) if given."""
    data = load_yaml(text)
    if data is None:
        raise InvalidSpec(["line 1: the file is empty (expected name, defaults and steps)"])
    if not isinstance(data, LineDict):
        raise InvalidSpec([f"line 1: top level: expected a mapping with name, defaults and steps, "
                           f"got {_kind(data)}"])
    p = Problems()
    _dups(data, "", p, set())
    for key in data:
        if key not in TOP_KEYS:
            p.add(key, f"unknown key{suggest(key, TOP_KEYS)} (the top level takes {', '.join(TOP_KEYS)}; "
                       "task fields go under defaults or a step)", data.key_lines[key])
    dag_name = _name(data, default_name, p)
    defaults = _defaults(data, base_dir, p)
    default_fields = {k: _resolve_cwd(k, plain(v), base_dir) for k, v in defaults.items()
                      if k not in RESERVED and k != "after"}

    steps_raw, steps_line = data.get("steps"), data.key_lines.get("steps", 1)
    example = "steps: {hello: {command: echo hi}}"
    if "steps" not in data or steps_raw is None or steps_raw == {}:
        p.add("steps", f"missing (give at least one step: {example})" if "steps" not in data
              else f"no steps (give at least one: {example})", steps_line)
    elif not isinstance(steps_raw, LineDict):
        p.add("steps", f"expected a mapping of step name -> fields, got {_kind(steps_raw)}", steps_line)
    if not isinstance(steps_raw, LineDict):
        steps_raw = LineDict()

    parsed: dict[str, tuple[int, dict, TaskSpec | None]] = {}
    afters: dict[str, list[tuple[str, int]]] = {}
    for name, body in steps_raw.items():
        line, where = steps_raw.key_lines[name], f"steps.{name}"
        if not NAME_RE.match(name) or len(name) > MAX_STEP_NAME:
            p.add(where, f"{name!r} is not a step name (use letters, digits, _ . - ; at most "
                         f"{MAX_STEP_NAME} characters)", line)
        if body is None or body == {}:
            p.add(where, "empty step (give it at least a command: `command: echo hi`)", line)
            afters[name] = []
            continue
        if not isinstance(body, LineDict):
            hint = " (put it under the step as `command: ...`)" if isinstance(body, (str, LineList)) else ""
            p.add(where, f"expected a mapping of fields (command, after, ...), got {_kind(body)}{hint}", line)
            afters[name] = []
            continue
        afters[name] = _after(name, body, p)
        own = {}
        for key, value in body.items():
            if key in RESERVED:
                p.add(f"{where}.{key}", RESERVED[key], body.key_lines[key])
            elif key != "after":
                own[key] = _resolve_cwd(key, plain(value), base_dir)
        merged = dict(default_fields, **own)
        if isinstance(default_fields.get("env"), dict) and isinstance(own.get("env"), dict):
            merged["env"] = {**default_fields["env"], **own["env"]}
        missing = merged.get("command") is None
        if missing:
            p.add(where, "missing command (a shell string, or an argv list such as [sort, -u, x.txt])", line)
        merged = dict(merged, name=name, command="true" if missing else merged["command"])

        def from_defaults(parts: list[str], own=own) -> bool:  # reported once, under defaults
            if parts[0] == "env" and len(parts) > 1 and isinstance(own.get("env"), dict):
                return parts[1] not in own["env"]
            return parts[0] in default_fields and parts[0] not in own

        spec = None
        try:
            spec = TaskSpec.parse(merged)
        except InvalidSpec as e:
            _spec_problems(e.problems, body, where, line, STEP_FIELDS, p, skip=from_defaults)
        if missing:
            merged.pop("command")
            spec = None
        parsed[name] = (line, merged, spec)

    for name, deps in afters.items():
        for dep, line in deps:
            if dep not in steps_raw:
                p.add(f"steps.{name}.after", f"no step {dep!r}{suggest(dep, steps_raw)} "
                                             f"(steps: {', '.join(steps_raw)})", line)
    edges = {n: [d for d, _ in deps] for n, deps in afters.items()}
    position = {n: i for i, n in enumerate(steps_raw)}
    while (cycle := find_cycle(edges)) is not None:
        ring = cycle[:-1]
        start = min(range(len(ring)), key=lambda i: position[ring[i]])
        ring = ring[start:] + ring[:start]
        first, nxt = ring[0], ring[1 % len(ring)]
        line = next(ln for d, ln in afters[first] if d == nxt)
        if len(ring) == 1:
            p.add(f"steps.{first}.after", f"cycle: {first} runs after itself", line)
        else:
            links = ", ".join(f"{a} runs after {b}" for a, b in zip(ring, ring[1:] + ring[:1]))
            p.add(f"steps.{first}.after",
                  f"cycle: {' -> '.join(ring + [first])} ({links}; none of them can start)", line)
        for n in ring:
            edges.pop(n)
    p.raise_if_any()
    return _build(dag_name, parsed, afters)


def _build(dag_name: str, parsed: dict, afters: dict) -> Dag:
    layer: dict[str, int] = {}

    def depth(n: str) -> int:  # iterative: a long chain must not hit the recursion limit
        todo = [n]
        while todo:
            cur = todo[-1]
            pending = [d for d, _ in afters[cur] if d not in layer]
            if pending:
                todo.extend(pending)
                continue
            todo.pop()
            layer[cur] = 1 + max((layer[d] for d, _ in afters[cur]), default=-1)
        return layer[n]

    for n in parsed:
        depth(n)
    order = sorted(parsed, key=lambda n: layer[n])  # stable: as written within a layer
    steps = {}
    for n in order:
        line, fields, spec = parsed[n]
        after = tuple(dict.fromkeys(d for d, _ in afters[n]))
        steps[n] = Step(name=n, line=line, after=after, fields=fields, spec=spec, layer=layer[n])
    return Dag(name=dag_name, steps=steps)
