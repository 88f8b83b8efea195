"""A run's checks before any instance starts (do the sources match files, are the sinks
usable, does at most one stage write to stdout) and the sampling of range edges' key
bounds. Blocking I/O (files, object stores, databases): call it from a thread. Only the
sampling needs polars, so only a run with a range edge loads it here."""
from __future__ import annotations

from ...errors import InvalidSpec
from ..plan import Plan
from .sinks import make_sink
from .sources import expand


def _at(stage, field: str, problem: str) -> str:
    """A problem from a source or sink check, placed at its stage."""
    where = f"stages[{stage.index}] ({stage.name})"
    return f"{where}.{problem}" if problem.startswith(field) else f"{where}.{field}: {problem}"


def check_run(plan: Plan, items_given: bool | None = None) -> None:
    """InvalidSpec naming every problem at once. `items_given`: whether the caller has the
    records for a stage that reads a Python iterable (None: not the caller's to say)."""
    problems: list[str] = []
    sep = plan.spec.separator
    for st in plan.stages.values():
        src = st.source
        if src is not None and not (src.stdin or src.iterable):
            try:
                expand(src.paths, src.storage_options)
            except InvalidSpec as e:
                problems += [_at(st, "read", p) for p in e.problems]
        if st.from_client and src.iterable and items_given is False:
            problems.append(f"stages[{st.index}] ({st.name}).read: give the records to run(items=...)")
        if st.sink is not None and not st.sink.stdout:
            try:
                make_sink(st.sink, sep).check()
            except InvalidSpec as e:
                problems += [_at(st, "write", p) for p in e.problems]
    to_client = [s.name for s in plan.stages.values() if s.to_client]
    if len(to_client) > 1:
        problems.append(f"only one stage can write to stdout (write: '-'): {', '.join(to_client)}")
    if problems:
        raise InvalidSpec(problems)


def range_bounds(plan: Plan) -> dict[str, list[str]]:
    """For each range edge 'sender>receiver', the key cut points sampled from the sender's files."""
    out: dict[str, list[str]] = {}
    for st in plan.stages.values():
        for e in st.spec.edges:
            if e.edge == "range":
                from .sampling import bounds, sample_keys
                src = plan.stages[e.source].source
                keys = sample_keys(src, e.key[0], plan.spec.separator)
                out[f"{e.source}>{st.name}"] = bounds(keys, st.parallelism)
    return out
