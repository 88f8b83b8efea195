"""DAG files run from Python (and by `shoal dag`): read and check the file, submit its
steps as one job in dependency order, optionally wait for them all.

    with shoal.connect() as c:
        run = c.run_dag("pipeline.yaml", wait=True)
        print(run.job, run.ok, {step: rec.state.value for step, rec in run.records.items()})

The format is described in shoal/logic/dagfile.py. A run is one job, `<name>-<6 chars>`;
each step is one task named after the step, with `depends_on` set to the task ids of
its `after` steps. Steps are submitted layer by layer (a layer's steps only wait on
earlier layers), so the first steps start while the rest are being submitted; if
submitting stops part way, the steps already submitted are cancelled.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import anyio

from ..errors import InvalidSpec, ShoalError
from ..model import TaskRecord

if TYPE_CHECKING:  # dagfile needs PyYAML: loaded only when a file is read
    from ..logic.dagfile import Dag
    from .aio import AsyncClient

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


@dataclass
class DagRun:
    """One run of a DAG: its job, the task id of each step, and (once waited for) each
    step's final record."""
    job: str
    dag: "Dag"
    ids: dict[str, str]                                         # step name -> task id
    records: dict[str, TaskRecord] = field(default_factory=dict)  # step name -> final record

    @property
    def ok(self) -> bool:
        """Every step ended and succeeded."""
        return len(self.records) == len(self.ids) and all(
            r.state.value == "succeeded" for r in self.records.values())


def job_id(name: str) -> str:
    """A new job id for one run of the DAG `name`."""
    return f"{name}-" + "".join(secrets.choice(_ALPHABET) for _ in range(6))


def load_dag(path: str | Path) -> "Dag":
    """The DAG in the file at `path`; InvalidSpec with every problem (each with its line)
    when it is not valid. Its name defaults to the file's."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSpec([f"cannot read the file: {getattr(e, 'strerror', None) or e}"]) from None
    try:  # imported here: every other command (and the nodes) must work without PyYAML
        from ..logic.dagfile import parse_dag
    except ModuleNotFoundError as e:
        if e.name != "yaml":
            raise
        raise ShoalError("shoal dag needs PyYAML to read DAG files: pip install pyyaml") from None
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem).lstrip(".-") or "dag"
    return parse_dag(text, default_name=stem, base_dir=str(path.resolve().parent))


async def submit_dag(client: "AsyncClient", dag: "Dag", job: str,
                     on_stopped: Callable[[str], None] | None = None) -> dict[str, str]:
    """Submit the steps layer by layer; step name -> task id. On any failure (or
    cancellation) the steps already submitted are cancelled, best effort, and what was
    done is said in a note on the error (and to `on_stopped`, if given)."""
    ids: dict[str, str] = {}
    try:
        for layer in dag.layers():
            got = await client.submit_many([s.task(job, ids) for s in layer], job=job)
            ids.update(zip((s.name for s in layer), got))
    except BaseException as e:
        if ids:
            with anyio.CancelScope(shield=True):  # cancelled or not, take back what went in
                left = []
                for tid in ids.values():
                    try:
                        await client.cancel(tid)
                    except (ShoalError, OSError):
                        left.append(tid)
            note = (f"submitting stopped part way: cancelled the {len(ids) - len(left)} step(s) of job {job} "
                    "already submitted" + (f" (could not cancel {', '.join(left)})" if left else ""))
            e.add_note(note)
            if on_stopped is not None:
                on_stopped(note)
        raise
    return ids


async def run_dag(client: "AsyncClient", source: "str | Path | Dag", *, job: str | None = None,
                  wait: bool = False, timeout: float | None = None,
                  on_stopped: Callable[[str], None] | None = None) -> DagRun:
    """See AsyncClient.run_dag."""
    dag = source if hasattr(source, "layers") else load_dag(source)
    run = DagRun(job or job_id(dag.name), dag, {})
    run.ids = await submit_dag(client, dag, run.job, on_stopped)
    if wait:
        names = {tid: name for name, tid in run.ids.items()}
        recs = await client.wait(list(run.ids.values()), timeout=timeout)
        run.records = {names[r.id]: r for r in recs}
    return run
