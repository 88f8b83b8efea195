"""The client's side of a flow run: check it, submit it (a node of the cluster drives it:
instances, restarts, the one commit of its outputs) and follow it to its end.

Only a flow that reads stdin (or a Python iterable) or writes to stdout needs more of the
client: it spools the input and feeds it to each attempt, receives each attempt's output
and hands it over once the run succeeded, and renews a lease that tells the driver it is
still there. If that client dies, the run fails ("its input client went away") and
commits nothing. A flow of files needs nothing from its client once submitted: kill it,
and the run goes on; `shoal flow status RUN -w` follows it again.

Flow files are read here too (load_flow, parse_flow): the one place the client reaches
into the flow package."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable
from urllib.parse import urlparse

import anyio

from ..errors import ClusterError, Conflict, FlowCancelled, FlowFailed, InvalidSpec, ShoalError, StoreUnavailable
from ..flows.file import load_flow, parse_flow
from ..flows.plan import Plan, StagePlan, plan_or_raise
from ..flows.run import CLIENT, ClientLink, FlowRunRecord, FlowState
from ..flows.spec import FlowSpec
from ..model.ids import new_ids

__all__ = ["load_flow", "parse_flow", "FlowFailed", "FlowCancelled", "FlowResult", "run_flow", "start_flow",
           "follow_flow", "check", "require_runtime"]

log = logging.getLogger("shoal.client.flows")

FOLLOW_POLL_S = 20.0       # one long poll of the run record
UNREACHABLE_FOR_S = 15.0   # how long the node may not answer before following gives up


@dataclass
class FlowResult:
    run: str
    attempts: int
    seconds: float
    stages: list[dict] = field(default_factory=list)   # the last status: per stage, per instance
    bad_records: int = 0
    output: Path | None = None                           # what went to stdout, when kept


def new_run_id(name: str) -> str:
    return f"{name}-{new_ids(1, 'f')[0][-10:].lower()}"


def own_address(api: str) -> str:
    """The address nodes can reach this client at: loopback for a local cluster."""
    host = urlparse(api).hostname or "127.0.0.1"
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def client_link(plan: Plan, ttl_s: int = 10) -> ClientLink | None:
    feeder, receiver = plan.feeder, plan.receiver
    if feeder is None and receiver is None:
        return None
    return ClientLink(feeds=feeder and feeder.name, receives=receiver and receiver.name, ttl_s=ttl_s)


def require_runtime() -> None:
    """ShoalError saying what to install when this Python lacks the flows extra."""
    from ..flows.runtime.extra import require
    require()


def check(spec: FlowSpec, items_given: bool | None = None) -> Plan:
    """The checks that need no cluster: the graph, the sources, the sinks."""
    plan = plan_or_raise(spec)
    require_runtime()
    from ..flows.runtime.preflight import check_run
    check_run(plan, items_given)
    return plan


class ClientSide:
    """What this client does for a run that reads stdin or writes stdout: for each attempt,
    feed the spooled input and receive the output; all along, renew the client lease."""

    def __init__(self, client, run: str, plan: Plan, spool: Path | None, tmp: Path, lease: int, ttl_s: int):
        self.client, self.run, self.plan, self.spool, self.tmp = client, run, plan, spool, tmp
        self.lease, self.ttl_s = lease, ttl_s
        self.feeder: StagePlan | None = plan.feeder
        self.receiver: StagePlan | None = plan.receiver
        self.attempt = 0
        self.tasks: list[asyncio.Task] = []
        self.received: asyncio.Task | None = None
        self.keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.client.keep_flow_client(self.run, self.lease)
            except Conflict:
                return          # the run no longer counts on us; it ends failed
            except ShoalError as e:
                log.info("flow run %s: renewing the client lease: %s", self.run, e)

    async def follow(self, record: FlowRunRecord) -> None:
        if record.state != FlowState.running or record.attempt == self.attempt:
            return
        await self._drop()
        self.attempt = attempt = record.attempt
        if self.receiver is not None:
            self.received = asyncio.create_task(self._receive(attempt))
            self.tasks.append(self.received)
        if self.feeder is not None:
            self.tasks.append(asyncio.create_task(self._feed(attempt)))

    async def _drop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks, self.received = [], None

    async def output(self, attempt: int) -> Path | None:
        """What the stdout stage sent in the attempt that succeeded."""
        if self.receiver is None:
            return None
        if self.received is None or self.attempt != attempt:
            raise FlowFailed(self.run, f"this client did not receive attempt {attempt}'s output")
        await asyncio.wait_for(self.received, 60)
        return self.tmp / f"out.{attempt}"

    async def close(self, ended: bool) -> None:
        self.keeper.cancel()
        await asyncio.gather(self.keeper, return_exceptions=True)
        await self._drop()
        if not ended:   # the run cannot go on without us: end it now rather than at the lease's end
            with contextlib.suppress(ShoalError):
                await self.client.cancel_flow(self.run)
        with contextlib.suppress(ShoalError):
            await self.client.release_flow_client(self.run, self.lease)

    async def _feed(self, attempt: int) -> None:
        """Send the spooled input to the stage that reads it, a block to each instance in turn."""
        from ..flows.runtime.sources import read_stream
        from ..streams.outbox import Link
        stage = self.feeder
        try:
            addrs = await self.client.flow_endpoints(self.run, attempt, stage.name, stage.parallelism, 120)
            links = [Link(a, {"run": self.run, "attempt": attempt, "stage": stage.name, "index": j,
                              "from": CLIENT, "from_index": 0, "port": 0}) for j, a in enumerate(addrs)]
            await asyncio.gather(*(lk.open() for lk in links))
        except (ShoalError, OSError) as e:   # the attempt went (the driver decides what next)
            log.info("flow run %s: attempt %d's input: %s", self.run, attempt, e)
            return
        try:
            with open(self.spool, "rb") as f:
                for n, block in enumerate(read_stream(f)):
                    await links[n % len(links)].send_batch(block)
            await asyncio.gather(*(lk.end() for lk in links))
        except (OSError, ConnectionError) as e:
            log.info("flow run %s: feeding attempt %d: %s", self.run, attempt, e)
            await asyncio.gather(*(lk.close() for lk in links), return_exceptions=True)
        except BaseException:
            await asyncio.gather(*(lk.close() for lk in links), return_exceptions=True)
            raise

    async def _receive(self, attempt: int) -> None:
        from ..flows.runtime.records import to_text
        from ..streams.framing import END, FRAME, decode_batch
        from ..streams.inbox import Inbox
        sep = self.plan.spec.separator
        inbox = Inbox(self.run, attempt, CLIENT, 0, (self.receiver.parallelism,))
        try:
            addr = await inbox.start(own_address(self.client.address))
            await self.client.put_flow_endpoint(self.run, attempt, CLIENT, 0, addr)
            with open(self.tmp / f"out.{attempt}", "wb") as f:
                async for _, sender, kind, payload in inbox.items():
                    if kind == END:
                        continue
                    if kind == FRAME:
                        payload = await asyncio.to_thread(lambda: to_text(decode_batch(kind, payload), sep))
                    await asyncio.to_thread(f.write, payload)
        finally:
            await inbox.close()


async def _submit(client, spec: FlowSpec, base_dir: str | Path, link: ClientLink | None,
                  started: Callable[[str], None] | None) -> tuple[str, int | None]:
    run = new_run_id(spec.name)
    body = await client.submit_flow(FlowRunRecord(id=run, name=spec.name, restarts=spec.restarts, spec=spec,
                                                  base_dir=str(Path(base_dir).resolve()), client=link))
    if started is not None:
        started(run)
    return run, body.get("client_lease")


async def start_flow(client, spec: FlowSpec, base_dir: str | Path = ".") -> str:
    """Check a flow of files and submit it; its run id. It runs on in the cluster, whatever
    becomes of this process."""
    plan = await asyncio.to_thread(check, spec, None)
    if client_link(plan) is not None:
        raise InvalidSpec(["a flow that reads stdin (or a Python iterable) or writes to stdout needs the "
                           "client that runs it until it ends: it cannot be detached"])
    return (await _submit(client, spec, base_dir, None, None))[0]


async def run_flow(client, spec: FlowSpec, base_dir: str | Path = ".", *, stdin: BinaryIO | None = None,
                   items: Iterable | None = None, stdout: BinaryIO | None = None,
                   on_status: Callable[[dict], None] | None = None, status_every_s: float = 1.0,
                   client_ttl_s: int = 10, started: Callable[[str], None] | None = None) -> FlowResult:
    """Check, submit and follow a flow to its end; a FlowResult, or FlowFailed/FlowCancelled.
    `started(run)` is called once the run is submitted."""
    t0 = time.time()
    plan = await asyncio.to_thread(check, spec, items is not None)
    link = client_link(plan, client_ttl_s)
    if link is None:
        run, _ = await _submit(client, spec, base_dir, None, started)
        return await follow_flow(client, run, on_status=on_status, status_every_s=status_every_s, t0=t0)
    tmp = Path(tempfile.mkdtemp(prefix="shoal-flowrun-"))
    side = None
    ended = False
    try:
        spool = None
        if link.feeds:   # kept in a file, so a restarted attempt reads the same records
            spool = tmp / "input"
            await asyncio.to_thread(_spool, spool, stdin, items, spec.separator)
        run, lease = await _submit(client, spec, base_dir, link, started)
        side = ClientSide(client, run, plan, spool, tmp, lease, link.ttl_s)
        result = await follow_flow(client, run, on_status=on_status, status_every_s=status_every_s, t0=t0,
                                   side=side)
        ended = True
        out = await side.output(result.attempts)
        if out is not None and stdout is not None:
            with open(out, "rb") as f:
                await asyncio.to_thread(shutil.copyfileobj, f, stdout, 1 << 20)
            stdout.flush()
        elif out is not None:
            kept = Path(tempfile.mkstemp(prefix="shoal-flow-out-")[1])
            shutil.move(out, kept)
            result.output = kept
        return result
    except (FlowFailed, FlowCancelled):
        ended = True
        raise
    finally:
        # shielded: a cancelled run (Ctrl-C, SIGTERM) still ends its client side and
        # removes its spool before the cancellation goes on (asyncio.shield would go on
        # at once and skip both, and the client would close under the shielded call)
        with anyio.CancelScope(shield=True):
            if side is not None:
                with anyio.move_on_after(15):
                    await side.close(ended)
            shutil.rmtree(tmp, ignore_errors=True)


def _spool(path: Path, stdin: BinaryIO | None, items: Iterable | None, sep: str) -> None:
    from ..flows.runtime.sources import iterable_blocks, read_stream
    with open(path, "wb") as f:
        blocks = iterable_blocks(items, sep) if items is not None else read_stream(stdin or sys.stdin.buffer)
        for block in blocks:
            f.write(block)


async def follow_flow(client, run: str, *, on_status: Callable[[dict], None] | None = None,
                      status_every_s: float = 1.0, t0: float | None = None,
                      side: ClientSide | None = None) -> FlowResult:
    """Follow a run to its end (from any client: the one that submitted it, or one that
    re-attaches); a FlowResult, or FlowFailed/FlowCancelled as the run ended."""
    t0 = t0 or time.time()
    ticker = asyncio.create_task(_tick(client, run, on_status, status_every_s)) if on_status else None
    rev, unreachable_since = 0, None
    try:
        while True:
            try:
                body = await client.flow_record(run, after=rev, timeout=FOLLOW_POLL_S)
            except (ClusterError, StoreUnavailable):
                # a node restarting, etcd electing a leader: give it a moment
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_FOR_S:
                    raise
                await asyncio.sleep(0.5)
                continue
            unreachable_since = None
            record, rev = FlowRunRecord.model_validate(body["record"]), body["revision"]
            if side is not None:
                await side.follow(record)
            if record.is_final:
                break
    finally:
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
    status = await client.flow_status(run)
    if on_status is not None:
        on_status(status)
    if record.state == FlowState.failed:
        f = record.failure
        raise FlowFailed(run, f.message if f else (record.error or "failed"), f.stage if f else None,
                         f.stderr if f else "")
    if record.state == FlowState.cancelled:
        raise FlowCancelled(record.error or f"flow run {run} was cancelled")
    took = record.ended - record.started if record.ended and record.started else time.time() - t0
    return FlowResult(run, record.attempt, took, status.get("stages", []), record.bad_records)


async def _tick(client, run: str, on_status: Callable[[dict], None], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(ShoalError):
            on_status(await client.flow_status(run))
