"""Run a flow from the client: check it, submit one task per stage instance, feed stdin or
a Python iterable to the stages that read it, receive what goes to stdout, watch the
instances, restart the whole run when an instance is lost, and commit the sinks once,
when every instance of one attempt has succeeded.

The run's record lives in etcd (`shoal flow status` and `shoal flow cancel` work from
any terminal); its data moves over direct TCP between the instances."""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable
from urllib.parse import urlparse

from ..client.aio import AsyncClient
from ..errors import Conflict, FlowCancelled, FlowFailed, InvalidSpec, NotFound, ShoalError
from .instance import CLIENT, EXIT_LOST, EXIT_UPSTREAM
from .records import to_text
from .sampling import bounds, sample_keys
from .sinks import make_sink
from .sources import expand, iterable_blocks, read_stream
from .plan import Plan, plan_or_raise
from .spec import FlowSpec
from ..model.ids import new_ids
from ..streams.framing import END, FRAME, decode_batch
from ..streams.inbox import Inbox
from ..streams.outbox import Link

SETTLE_S = 1.0      # after the first failure, how long the other instances get to end on their own


@dataclass
class FlowResult:
    run: str
    attempts: int
    seconds: float
    stages: list[dict] = field(default_factory=list)   # the last status: per stage, per instance
    bad_records: int = 0
    output: Path | None = None                           # what went to stdout, when kept


def _instance_argv(run: str, attempt: int, stage: str, index: int) -> list[str]:
    # the node's own Python (SHOAL_PYTHON), so an instance runs the shoal the node runs
    return ["/bin/sh", "-c", 'exec "${SHOAL_PYTHON:-python3}" -m shoal.flows.instance "$@"', "shoal-flow",
            run, str(attempt), stage, str(index)]


def _threads(cluster_cpus: float, parallelism: int) -> int:
    """Threads for an instance's vectorised work: its share of the cluster's cores, so the
    instances of a stage do not fight over the same cores (a stage's env may set its own)."""
    return max(1, int(cluster_cpus // parallelism))


def _own_address(api: str) -> str:
    """The address nodes can reach this client at: loopback for a local cluster."""
    host = urlparse(api).hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def _at(stage, field: str, problem: str) -> str:
    """A problem from a source or sink check, placed at its stage."""
    where = f"stages[{stage.index}] ({stage.name})"
    return f"{where}.{problem}" if problem.startswith(field) else f"{where}.{field}: {problem}"


def classify(records: list) -> tuple[str, Any]:
    """("fail", record) when an instance failed by itself (its command, its function, bad
    records), else ("restart", record): an instance or its node was lost."""
    failed = [r for r in records if r.state.value in ("failed", "cancelled")]
    own = [r for r in failed if r.exit_code is not None and r.exit_code not in (EXIT_LOST, EXIT_UPSTREAM)
           and r.exit_code > 0 and "was lost" not in (r.reason or "")]
    if own:
        return "fail", own[0]
    return "restart", failed[0] if failed else None


class FlowRun:
    def __init__(self, client: AsyncClient, spec: FlowSpec, base_dir: str | Path = ".",
                 stdin: BinaryIO | None = None, items: Iterable | None = None,
                 stdout: BinaryIO | None = None, on_status: Callable[[dict], None] | None = None,
                 status_every_s: float = 1.0):
        self.client = client
        self.spec = spec
        self.plan: Plan = plan_or_raise(spec)
        self.base_dir = str(Path(base_dir).resolve())
        self.stdin, self.items, self.stdout = stdin, items, stdout
        self.on_status = on_status
        self.status_every_s = status_every_s
        self.run = f"{spec.name}-{new_ids(1, 'f')[0][-10:].lower()}"
        self.record: dict = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="shoal-flowrun-"))
        self.spool_in: Path | None = None
        self.status: dict = {}
        self.output: Path | None = None      # what a stage sent to stdout, once an attempt succeeded

    # -- checks before any task starts ---------------------------------------------------

    def check(self) -> None:
        problems: list[str] = []
        for st in self.plan.stages.values():
            src = st.source
            if src is not None and not (src.stdin or src.iterable):
                try:
                    expand(src.paths, src.storage_options)
                except InvalidSpec as e:
                    problems += [_at(st, "read", p) for p in e.problems]
            if st.from_client and src.iterable and self.items is None:
                problems.append(f"stages[{st.index}] ({st.name}).read: give the records to run(items=...)")
            if st.sink is not None and not st.sink.stdout:
                try:
                    make_sink(st.sink, self.spec.separator).check()
                except InvalidSpec as e:
                    problems += [_at(st, "write", p) for p in e.problems]
        to_client = [s.name for s in self.plan.stages.values() if s.to_client]
        if len(to_client) > 1:
            problems.append(f"only one stage can write to stdout (write: '-'): {', '.join(to_client)}")
        if problems:
            raise InvalidSpec(problems)

    # -- the run ----------------------------------------------------------------------------

    async def execute(self) -> FlowResult:
        self.check()
        t0 = time.time()
        self.record = {"id": self.run, "name": self.spec.name, "state": "running", "attempt": 0,
                       "restarts": self.spec.restarts, "started": t0, "tasks": {}, "base_dir": self.base_dir,
                       "spec": self.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)}
        try:
            self.record["bounds"] = await asyncio.to_thread(self._range_bounds)
            await self._spool_input()
            for attempt in range(1, self.spec.restarts + 2):
                outcome = await self._attempt(attempt)
                if outcome is None:
                    return await self._succeed(attempt, t0)
                why, rec = outcome
                if why == "cancel":
                    raise FlowCancelled(f"flow run {self.run} was cancelled")
                if why == "fail":
                    raise self._failure(rec)
                if attempt > self.spec.restarts:
                    raise FlowFailed(self.run, f"an instance was lost on each of {attempt} attempts "
                                               f"(restarts: {self.spec.restarts}); last: {self._who(rec)} "
                                               f"{rec.reason if rec else ''}")
                self.record["restarted"] = self.record.get("restarted", []) + [
                    {"attempt": attempt, "why": f"{self._who(rec)}: {rec.reason if rec else 'lost'}"}]
        except BaseException as e:
            self.record.update(state="cancelled" if isinstance(e, (FlowCancelled, asyncio.CancelledError,
                                                                   KeyboardInterrupt)) else "failed",
                               ended=time.time(), error=str(e)[:2000])
            with contextlib.suppress(Exception):
                await asyncio.shield(self._put())
            raise
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _range_bounds(self) -> dict[str, list[str]]:
        """For each range edge, the key cut points sampled from its sender's files."""
        out = {}
        for st in self.plan.stages.values():
            for e in st.spec.edges:
                if e.edge == "range":
                    src = self.plan.stages[e.source].source
                    keys = sample_keys(src, e.key[0], self.spec.separator)
                    out[f"{e.source}>{st.name}"] = bounds(keys, st.parallelism)
        return out

    def _who(self, rec) -> str:
        if rec is None:
            return "an instance"
        for stage, ids in self.record.get("tasks", {}).items():
            if rec.id in ids:
                return f"{stage}[{ids.index(rec.id)}]"
        return rec.id

    def _failure(self, rec) -> FlowFailed:
        who = self._who(rec)
        stderr = (rec.stderr_tail or "").strip()
        return FlowFailed(self.run, f"stage instance {who} {rec.reason or 'failed'}",
                          stage=who.split("[")[0], stderr=stderr)

    async def _put(self) -> None:
        await self.client.request_json("PUT", f"/v1/flows/{self.run}", json=self.record)

    async def _spool_input(self) -> None:
        """stdin or the iterable, kept in a file so a restarted run reads the same records."""
        if not any(s.from_client for s in self.plan.stages.values()):
            return
        self.spool_in = self.tmp / "input"
        sep = self.spec.separator

        def spool():
            with open(self.spool_in, "wb") as f:
                blocks = iterable_blocks(self.items, sep) if self.items is not None else \
                    read_stream(self.stdin or sys.stdin.buffer)
                for block in blocks:
                    f.write(block)
        await asyncio.to_thread(spool)

    async def _attempt(self, attempt: int):
        """None when every instance succeeded, else ("fail" | "restart" | "cancel", record)."""
        self.record.update(attempt=attempt, tasks={})
        await self._put()
        inbox = None
        side: list[asyncio.Task] = []
        out_path = self.tmp / f"out.{attempt}"
        to_client = next((s for s in self.plan.stages.values() if s.to_client), None)
        if to_client is not None:
            inbox = Inbox(self.run, attempt, CLIENT, 0, (to_client.parallelism,))
            addr = await inbox.start(_own_address(self.client.address))
            await self.client.request_json("PUT", f"/v1/flows/{self.run}/{attempt}/endpoints/{CLIENT}/0",
                                    json={"address": addr})
            side.append(asyncio.create_task(self._receive(inbox, out_path)))
        specs, names = [], []
        cpus = sum(n.get("cpus", 0) for n in await self.client.nodes()) or 1
        for st in self.plan.stages.values():
            for i in range(st.parallelism):
                s = st.spec
                specs.append({"command": _instance_argv(self.run, attempt, st.name, i), "cpus": s.cpus,
                              "memory": s.memory, "labels": s.labels, "slots": 0, "retries": 0,
                              "name": f"{self.run}/{st.name}[{i}]",
                              "env": {"POLARS_MAX_THREADS": str(_threads(cpus, st.parallelism)), **s.env,
                                      "SHOAL_FLOW_DIR": self.base_dir, "PYTHONUNBUFFERED": "1"}})
                names.append(st.name)
        try:
            ids = await self.client.submit_many(specs, job=self.run)
            for name, tid in zip(names, ids):
                self.record["tasks"].setdefault(name, []).append(tid)
            await self._put()
            feeder = next((s for s in self.plan.stages.values() if s.from_client), None)
            if feeder is not None:
                side.append(asyncio.create_task(self._feed(attempt, feeder)))
            watcher = asyncio.create_task(self._watch(ids))
            ticker = asyncio.create_task(self._tick())
            try:
                outcome = await watcher
            finally:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            if outcome is None:
                for t in side:   # the stdout stream has ended once every instance succeeded
                    await t
                self.output = out_path if to_client is not None else None
                return None
            await self._stop(ids)
            await self._abort_sinks(attempt)
            return outcome
        finally:
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            if inbox is not None:
                await inbox.close()

    async def _watch(self, ids: list[str]):
        failed = None
        pending = set(ids)
        ended: dict[str, Any] = {}
        queue: asyncio.Queue = asyncio.Queue()

        async def follow():   # the stream stays in this one task (its cancel scope is task-bound)
            try:
                async for rec in self.client.as_finished(ids):
                    queue.put_nowait(rec)
            except Exception as e:      # handed to the loop below, which raises it
                queue.put_nowait(e)

        follower = asyncio.create_task(follow())
        try:
            while pending:
                # after the first failure, the others get SETTLE_S to end on their own
                try:
                    rec = await asyncio.wait_for(queue.get(), SETTLE_S if failed else None)
                except asyncio.TimeoutError:
                    break
                if isinstance(rec, Exception):
                    raise rec
                pending.discard(rec.id)
                ended[rec.id] = rec
                if rec.state.value != "succeeded" and failed is None:
                    failed = rec
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        if failed is None:
            return None
        if await self._cancel_requested():
            return "cancel", failed
        return classify(list(ended.values()))

    async def _cancel_requested(self) -> bool:
        try:
            status = await self.client.request_json("GET", f"/v1/flows/{self.run}")
        except NotFound:
            return False
        return bool(status.get("cancel_requested"))

    async def _stop(self, ids: list[str]) -> None:
        async def one(tid):
            with contextlib.suppress(Conflict, NotFound):
                await self.client.cancel(tid)
        await asyncio.gather(*(one(t) for t in ids))

    async def _abort_sinks(self, attempt: int) -> None:
        for st in self.plan.stages.values():
            if st.sink is not None and not st.sink.stdout:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(make_sink(st.sink, self.spec.separator).abort,
                                            self.run, attempt, st.parallelism)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.status_every_s)
            with contextlib.suppress(ShoalError):
                self.status = await self.client.request_json("GET", f"/v1/flows/{self.run}")
                if self.on_status is not None:
                    self.on_status(self.status)

    async def _feed(self, attempt: int, stage) -> None:
        """Send the spooled input to the stage that reads it, a block to each instance in turn."""
        body = await self.client.request_json("GET", f"/v1/flows/{self.run}/{attempt}/endpoints/{stage.name}",
                                       params={"count": stage.parallelism, "timeout": 120})
        links = [Link(a, {"run": self.run, "attempt": attempt, "stage": stage.name, "index": j,
                          "from": CLIENT, "from_index": 0, "port": 0}) for j, a in enumerate(body["endpoints"])]
        await asyncio.gather(*(lk.open() for lk in links))
        try:
            with open(self.spool_in, "rb") as f:
                for n, block in enumerate(read_stream(f)):
                    await links[n % len(links)].send_batch(block)
            await asyncio.gather(*(lk.end() for lk in links))
        except BaseException:
            await asyncio.gather(*(lk.close() for lk in links), return_exceptions=True)
            raise

    async def _receive(self, inbox: Inbox, path: Path) -> None:
        with open(path, "wb") as f:
            async for _, sender, kind, payload in inbox.items():
                if kind == END:
                    continue
                if kind == FRAME:
                    payload = await asyncio.to_thread(lambda: to_text(decode_batch(kind, payload),
                                                                      self.spec.separator))
                await asyncio.to_thread(f.write, payload)

    async def _succeed(self, attempt: int, t0: float) -> FlowResult:
        status = await self.client.request_json("GET", f"/v1/flows/{self.run}")
        bad = sum(i.get("bad", 0) for s in status.get("stages", []) for i in s["instances"])
        if bad > self.spec.bad_records:
            examples = [e for s in status["stages"] for i in s["instances"] for e in i.get("bad_examples", [])]
            await self._abort_sinks(attempt)
            raise FlowFailed(self.run, f"{bad} bad records in all (over the limit of {self.spec.bad_records}; "
                                       f"set bad_records: to tolerate more), e.g. {examples[:3]}")
        for st in self.plan.stages.values():
            if st.sink is not None and not st.sink.stdout:
                await asyncio.to_thread(make_sink(st.sink, self.spec.separator).commit,
                                        self.run, attempt, st.parallelism)
        out = self.output
        if out is not None and self.stdout is not None:
            with open(out, "rb") as f:
                await asyncio.to_thread(shutil.copyfileobj, f, self.stdout, 1 << 20)
            self.stdout.flush()
        kept = None
        if out is not None and self.stdout is None:
            kept = Path(tempfile.mkstemp(prefix="shoal-flow-out-")[1])
            shutil.move(out, kept)
        self.record.update(state="succeeded", ended=time.time(), bad_records=bad)
        await self._put()
        self.status = dict(status, state="succeeded", ended=self.record["ended"], bad_records=bad)
        if self.on_status is not None:
            self.on_status(self.status)
        return FlowResult(self.run, attempt, time.time() - t0, self.status.get("stages", []), bad, kept)


async def run_flow(client: AsyncClient, spec: FlowSpec, base_dir: str | Path = ".", **kw) -> FlowResult:
    return await FlowRun(client, spec, base_dir, **kw).execute()

