"""Check a flow's graph and work out, per stage, who sends to it and where it sends.
Pure: no files, no network. Every problem is reported at once, each with the path of the
field it concerns (("stages", 2, "input", "from"), ...) so a YAML reader can add lines."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSpec, Problem, Problems
from .spec import EdgeSpec, FlowSpec, StageSpec
from .iospec import parse_sink, parse_source
from .opspec import parse_op
from ..logic.dag import find_cycle

Path = tuple


@dataclass(frozen=True)
class Output:
    """One edge out of a stage."""
    target: str
    edge: EdgeSpec
    port: int               # which input of the target this feeds (join: 0 = left, 1 = right)
    parallelism: int        # the target's instances
    combine: Any = None     # the target's op spec when the sender pre-aggregates for it
    route_key: tuple[int, ...] = ()   # the hash key's fields in what is sent (combiner output differs)


@dataclass(frozen=True)
class StagePlan:
    name: str
    index: int              # position in the flow as written
    parallelism: int
    spec: StageSpec
    op: Any = None                      # OpSpec for built-in operators
    source: Any = None                  # SourceSpec when the stage reads one
    sink: Any = None                    # SinkSpec when the stage writes one
    senders: tuple[int, ...] = ()       # per input port: how many senders will connect
    combined: tuple[bool, ...] = ()     # per input port: the senders pre-aggregated
    merge: EdgeSpec | None = None       # the input is a merge_sorted edge
    outputs: tuple[Output, ...] = ()

    @property
    def from_client(self) -> bool:
        """stdin and Python iterables are pushed by the client that runs the flow."""
        return bool(self.source and (self.source.stdin or self.source.iterable))

    @property
    def to_client(self) -> bool:
        return bool(self.sink and self.sink.stdout)


@dataclass
class Plan:
    spec: FlowSpec
    stages: dict[str, StagePlan] = field(default_factory=dict)   # in topological order

    @property
    def instances(self) -> int:
        return sum(s.parallelism for s in self.stages.values())

    @property
    def feeder(self) -> StagePlan | None:
        """The stage the client feeds (stdin or a Python iterable), if any."""
        return next((s for s in self.stages.values() if s.from_client), None)

    @property
    def receiver(self) -> StagePlan | None:
        """The stage whose output goes to the client (stdout), if any."""
        return next((s for s in self.stages.values() if s.to_client), None)


def _parse(fn, value, path: Path, p: Problems):
    try:
        return fn(value)
    except InvalidSpec as e:  # its problems name the field first (read.chunk: ...)
        p.extend(path[:-1], e.problems)
    return None


def check(spec: FlowSpec) -> tuple[Plan | None, list[Problem]]:
    """The plan, or the problems found (each with the path of its field)."""
    p = Problems()
    names: dict[str, int] = {}
    for i, s in enumerate(spec.stages):
        if s.name in names:
            p.add(("stages", i, "name"), f"stage {s.name!r} is defined twice (first as stages[{names[s.name]}])")
        names.setdefault(s.name, i)

    ops, sources, sinks = {}, {}, {}
    for i, s in enumerate(spec.stages):
        if s.op is not None:
            ops[s.name] = _parse(parse_op, s.op, ("stages", i, "op"), p)
        if s.read is not None:
            sources[s.name] = _parse(parse_source, s.read, ("stages", i, "read"), p)
        if s.write is not None:
            sinks[s.name] = _parse(parse_sink, s.write, ("stages", i, "write"), p)

    readers: dict[str, list[tuple[str, EdgeSpec, int]]] = {s.name: [] for s in spec.stages}
    for i, s in enumerate(spec.stages):
        edge_path = ("stages", i, "input") if s.input else ("stages", i, "inputs")
        want = ops[s.name].inputs if ops.get(s.name) is not None else 1
        if s.read is not None and want != 1:
            p.add(("stages", i, "read"), f"op {_op_name(s.op)} takes {want} inputs (use inputs: [left, right])")
        if s.inputs and len(s.inputs) != want:
            p.add(edge_path, f"takes {want} input{'s' if want > 1 else ''} for this stage's work "
                             f"(got {len(s.inputs)})" + (" (use input: for one)" if want == 1 else ""))
        if s.input and want != 1:
            p.add(edge_path, f"op {_op_name(s.op)} takes {want} inputs: use inputs: [left, right]")
        for port, e in enumerate(s.edges):
            path = edge_path + ((port,) if s.inputs else ()) + ("from",)
            if e.source not in names:
                close = difflib.get_close_matches(e.source, list(names), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (stages: {', '.join(names)})"
                p.add(path, f"no stage named {e.source!r}{hint}")
                continue
            if e.source == s.name:
                p.add(path, f"stage {s.name!r} reads its own output (a cycle)")
                continue
            readers[e.source].append((s.name, e, port))
            if e.edge in ("collect", "merge_sorted") and s.parallelism != 1:
                p.add(("stages", i, "parallelism"),
                      f"a {e.edge} edge gathers into one instance: parallelism must be 1 (got {s.parallelism})")
    for i, s in enumerate(spec.stages):
        if s.edges and len(s.edges) == 2 and all(e.edge == "hash" for e in s.edges):
            if len(s.edges[0].key) != len(s.edges[1].key):
                p.add(("stages", i, "inputs"), "both hash edges of a join need keys of the same length")
        if s.inputs and len(s.inputs) == 2:
            kinds = {e.edge for e in s.inputs}
            if s.parallelism > 1 and not (kinds == {"hash"} or "broadcast" in kinds):
                p.add(("stages", i, "inputs"), "with parallelism > 1 a join's inputs must both be hash edges "
                                               "on the key (or one of them broadcast)")

    for i, s in enumerate(spec.stages):
        for port, e in enumerate(s.edges):
            up = sources.get(e.source)
            if e.edge == "range" and (up is None or up.stdin or up.iterable):
                p.add(("stages", i, "input") if s.input else ("stages", i, "inputs", port),
                      f"a range edge needs a sender that reads files (its key ranges are sampled from them); "
                      f"{e.source!r} does not")
    for i, s in enumerate(spec.stages):
        op = ops.get(s.name)
        if op is None or op.name not in ("count", "reduce", "distinct") or s.parallelism == 1:
            continue
        for port, e in enumerate(s.edges):
            path = ("stages", i, "input") if s.input else ("stages", i, "inputs", port)
            if e.edge != "hash":
                p.add(path, f"{op.name} with parallelism {s.parallelism} needs a hash edge on its key, so each "
                            f"key meets in one instance (got {e.edge})")
            elif op.combined_edge_key(e.key) is None:
                p.add(path, f"hash key {e.key} is not among {op.name}'s key fields {op.key_fields}: one key's "
                            "records would be split across instances")
        if s.read is not None:
            p.add(("stages", i, "read"), f"{op.name} with parallelism {s.parallelism} cannot read a source "
                                         "directly: read in a stage before it and hash on the key")

    deps = {s.name: [e.source for e in s.edges if e.source in names] for s in spec.stages}
    cycle = find_cycle(deps)
    if cycle:
        i = names[cycle[0]]
        p.add(("stages", i, "input" if spec.stages[i].input else "inputs"),
              "the stages form a cycle: " + " <- ".join(cycle))
    for i, s in enumerate(spec.stages):
        if not readers[s.name] and s.write is None:
            p.add(("stages", i), f"the output of stage {s.name!r} goes nowhere: give it write: (a file, "
                                 f"'-' for stdout) or make another stage read it")
    client_sources = [s.name for s in spec.stages if sources.get(s.name) and sources[s.name].stdin]
    if len(client_sources) > 1:
        p.add(("stages",), f"only one stage can read stdin (read: '-'): {', '.join(client_sources)}")
    if p.items or cycle:
        return None, p.items
    return _plan(spec, ops, sources, sinks, readers, deps), []


def _op_name(op: Any) -> str:
    return op if isinstance(op, str) else next(iter(op), "?") if isinstance(op, dict) else type(op).__name__


def _combines(op, edge: EdgeSpec) -> bool:
    """Whether senders pre-aggregate for `op` over this edge: only into an aggregating
    operator, and for a hash edge only when its key is made of the operator's key fields."""
    if op is None or not op.combinable or op.inputs != 1 or edge.edge not in ("hash", "collect"):
        return False
    return edge.edge == "collect" or op.combined_edge_key(edge.key) is not None


def _plan(spec, ops, sources, sinks, readers, deps) -> Plan:
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(spec.stages):
        for s in spec.stages:
            if s.name not in done and all(d in done for d in deps[s.name]):
                order.append(s.name)
                done.add(s.name)
    plan = Plan(spec)
    by_name = {s.name: (i, s) for i, s in enumerate(spec.stages)}
    for name in order:
        i, s = by_name[name]
        op = ops.get(name)
        outputs = []
        for target, e, port in readers[name]:
            t_i, t = by_name[target]
            t_op = ops.get(target)
            combine = t_op if _combines(t_op, e) else None
            route = combine.combined_edge_key(e.key) if combine is not None and e.edge == "hash" else e.key
            outputs.append(Output(target, e, port, t.parallelism, combine, tuple(route)))
        if s.read is not None:
            senders: tuple[int, ...] = (1,) if sources[name].stdin or sources[name].iterable else (0,)
            combined: tuple[bool, ...] = (False,)
        else:
            senders = tuple(by_name[e.source][1].parallelism for e in s.edges)
            combined = tuple(_combines(op, e) for e in s.edges)
        merge = next((e for e in s.edges if e.edge == "merge_sorted"), None)
        plan.stages[name] = StagePlan(name, i, s.parallelism, s, op, sources.get(name), sinks.get(name),
                                      senders, combined, merge, tuple(outputs))
    return plan


def plan_or_raise(spec: FlowSpec) -> Plan:
    plan, problems = check(spec)
    if problems:
        raise InvalidSpec([str(problem) for problem in problems])
    return plan
