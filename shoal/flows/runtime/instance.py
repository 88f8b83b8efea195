"""One instance of one flow stage, run as an ordinary shoal task:

    python -m shoal.flows.runtime.instance RUN ATTEMPT STAGE INDEX

It reads the run's spec from etcd, listens for its upstream streams (publishing its data
address in etcd), connects to every instance of each downstream stage, and then moves
batches: in from its source chunks or its streams, through its work (a built-in operator,
a shell command or a Python function), out through routers (with a combiner where the
downstream operator aggregates) and into its sink. It is done once everything it owes
downstream has been sent and acknowledged by the END frames. Either way it writes its
outcome (flows.outcome) to etcd before it exits; the driver decides from that.

Its settings come from the environment the node gives it, read once, here at the entry
point, into InstanceSettings and passed down."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cloudpickle
import polars as pl

from ...errors import BadRecordsExceeded, FilterFailed, StreamBroken, UpstreamFailed, UpstreamLost
from ...exec.filter import run_filter
from ..outcome import EXIT_BAD_RECORDS, EXIT_COMMAND, EXIT_FAILED, EXIT_LOST, EXIT_UPSTREAM, Outcome, OutcomeKind
from ..plan import Output, Plan, StagePlan, plan_or_raise
from ..run import CLIENT
from ..spec import EdgeSpec
from ...store import Store
from ...streams.framing import END, FRAME, decode_batch, encode_batch
from ...streams.inbox import Inbox
from ...streams.outbox import Link
from .routing import Router
from .merge import SortedMerge
from .ops import OpContext, make_combiner, make_op
from .records import count_records, to_frame, to_text
from .sinks import make_sink
from .sources import plan_pieces, read_chunk

OUTCOME_TIMEOUT_S = 10.0        # how long writing the outcome may take before the exit code alone says it


@dataclass(frozen=True)
class InstanceSettings:
    etcd: list[str]                     # the node's etcd endpoints
    prefix: str = "/shoal/"             # the cluster's key prefix
    data_host: str = "127.0.0.1"        # the address to serve this instance's input on
    flow_dir: str | None = None         # the flow's directory: relative paths and 'module:function'
    node: str | None = None             # the node running it, for counters and messages
    spill_bytes: int = 0                # sort's in-memory budget (0: the stage's memory, else default_memory())
    connect_timeout_s: float = 120.0    # for every peer to publish its address
    stats_every_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "InstanceSettings":
        """What the node (SHOAL_ETCD, SHOAL_PREFIX, SHOAL_DATA_HOST, SHOAL_NODE), the driver
        (SHOAL_FLOW_DIR) and the stage's env (SHOAL_SPILL_BYTES) hand an instance."""
        return cls(etcd=env.get("SHOAL_ETCD", "http://127.0.0.1:2379").split(","),
                   prefix=env.get("SHOAL_PREFIX", "/shoal/"), data_host=env.get("SHOAL_DATA_HOST", "127.0.0.1"),
                   flow_dir=env.get("SHOAL_FLOW_DIR") or None, node=env.get("SHOAL_NODE") or None,
                   spill_bytes=int(env.get("SHOAL_SPILL_BYTES") or 0))


class Stats:
    def __init__(self, node: str | None):
        self.node = node
        self.started = time.time()
        self.records_in = self.records_out = 0
        self.bad = 0
        self.bad_examples: list[str] = []

    def as_dict(self, inbox: Inbox | None, links: list[Link], done: bool = False) -> dict:
        return {"in": self.records_in, "out": self.records_out, "bad": self.bad,
                "bad_examples": self.bad_examples[:5], "bytes_in": inbox.bytes_in if inbox else 0,
                "bytes_out": sum(lk.bytes_out for lk in links), "started": self.started,
                "updated": time.time(), "done": done, "node": self.node}


def default_memory() -> int:
    """Sort's in-memory budget when the stage sets none: an eighth of the machine."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return max(256 << 20, min(4 << 30, total // 8))


def load_function(ref, settings: InstanceSettings):
    """A stage's function: 'module:name' (found from the flow's directory) or a pickled callable."""
    if isinstance(ref, str) and ref.startswith("pickle:"):
        return cloudpickle.loads(base64.b64decode(ref[7:]))
    module, _, name = str(ref).partition(":")
    base = settings.flow_dir
    if base and base not in sys.path:
        sys.path.insert(0, base)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"function {ref!r}: cannot load it on node {settings.node}: {e}") from None
    return fn


def _records_out(result, sep: str) -> list[str]:
    """What a per-record function returned, as lines: None (nothing), a str (a line), a
    tuple/list (the fields of one record), or a generator of those."""
    if result is None:
        return []
    if isinstance(result, types.GeneratorType):
        return [line for item in result for line in _records_out(item, sep)]
    if isinstance(result, str):
        return [result]
    if isinstance(result, (tuple, list)):
        return [sep.join(map(str, result))]
    return [str(result)]


class Instance:
    def __init__(self, store: Store, settings: InstanceSettings, run: str, attempt: int, plan: Plan,
                 stage: StagePlan, index: int, bounds: dict[str, list[str]] | None = None):
        self.settings = settings
        self.bounds = bounds or {}
        self.store, self.run, self.attempt, self.plan, self.st, self.index = store, run, attempt, plan, stage, index
        self.sep = plan.spec.separator
        self.limit = plan.spec.bad_records
        self.stats = Stats(settings.node)
        self.spill = Path(tempfile.mkdtemp(prefix=f"shoal-flow-{stage.name}-"))
        self.ctx = OpContext(sep=self.sep, spill_dir=self.spill,
                             memory_bytes=settings.spill_bytes or stage.spec.memory or default_memory())
        self.inbox: Inbox | None = None
        self.outs: list[tuple[Output, Router, list[Link], object]] = []
        self.links: list[Link] = []
        self.part = None
        self.writer: asyncio.Task | None = None
        self.sink_queue: asyncio.Queue | None = None
        self.merge: SortedMerge | None = None
        self.op = None

    # -- set-up -------------------------------------------------------------------

    async def _connect(self, out: Output) -> tuple[Output, Router, list[Link], object]:
        addrs = await self.store.flows.wait_endpoints(self.run, self.attempt, out.target, out.parallelism,
                                                      self.settings.connect_timeout_s)
        links = [Link(a, {"run": self.run, "attempt": self.attempt, "stage": out.target, "index": j,
                          "from": self.st.name, "from_index": self.index, "port": out.port})
                 for j, a in enumerate(addrs)]
        await asyncio.gather(*(lk.open() for lk in links))
        self.links.extend(links)
        combiner = make_combiner(out.combine, self.ctx) if out.combine is not None else None
        router = Router(out.edge, len(links), self.sep, self.index, list(out.route_key),
                        self.bounds.get(f"{self.st.name}>{out.target}"))
        return out, router, links, combiner

    async def run_(self) -> None:
        st = self.st
        if any(st.senders):
            self.inbox = Inbox(self.run, self.attempt, st.name, self.index, st.senders)
            addr = await self.inbox.start(self.settings.data_host)
            await self.store.flows.put_endpoint(self.run, self.attempt, st.name, self.index, addr)
        outputs = list(st.outputs)
        if st.to_client:
            outputs.append(Output(CLIENT, EdgeSpec(source=st.name, edge="collect"), 0, 1))
        self.outs = list(await asyncio.gather(*(self._connect(o) for o in outputs)))
        if st.sink is not None and not st.sink.stdout:
            self.part = await asyncio.to_thread(make_sink(st.sink, self.sep).part, self.run, self.attempt, self.index)
        if st.merge is not None:
            m = st.merge
            self.merge = SortedMerge(st.senders[0], m.key, m.numeric, m.reverse, self.sep)
        publisher = asyncio.create_task(self._publish())
        try:
            await self._work()
            await self._flush_outputs()
            if self.part is not None:
                await self._close_sink()
        except BaseException as e:
            reason = f"{st.name}[{self.index}] failed: {e}"
            await asyncio.gather(*(lk.abort(reason) for lk in self.links), return_exceptions=True)
            if self.writer is not None:
                self.writer.cancel()
                await asyncio.gather(self.writer, return_exceptions=True)
            if self.part is not None:
                await asyncio.to_thread(self.part.discard)
            raise
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            with contextlib.suppress(Exception):   # counters are best effort
                await self.store.flows.put_stats(self.run, self.attempt, st.name, self.index,
                                                 self.stats.as_dict(self.inbox, self.links, done=True))
            if self.inbox is not None:
                await self.inbox.close()
            shutil.rmtree(self.spill, ignore_errors=True)

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_every_s)
            try:
                await self.store.flows.put_stats(self.run, self.attempt, self.st.name, self.index,
                                                 self.stats.as_dict(self.inbox, self.links))
            except Exception:   # counters are best effort; the data path must not stop for them
                pass

    # -- input ---------------------------------------------------------------------

    async def _events(self):
        """("batch", port, batch) for each input batch (merged into key order for a
        merge_sorted input) and ("end", port, None) when a port has ended."""
        st = self.st
        if st.source is not None and not st.from_client:
            async for block in self._read_source():
                self.stats.records_in += block.count(b"\n")
                yield "batch", 0, block
            yield "end", 0, None
            return
        async for port, sender, kind, payload in self.inbox.items():
            if kind == END:
                if sender < 0:
                    if self.merge is not None:
                        for df in self.merge.pop():
                            yield "batch", port, df
                    yield "end", port, None
                elif self.merge is not None:
                    self.merge.end(sender)
                    for df in self.merge.pop():
                        yield "batch", port, df
                continue
            batch = await asyncio.to_thread(decode_batch, kind, payload) if kind == FRAME else payload
            self.stats.records_in += count_records(batch)
            if self.merge is not None:
                self.merge.push(sender, batch)
                for df in await asyncio.to_thread(self.merge.pop):
                    yield "batch", port, df
            else:
                yield "batch", port, batch

    async def _read_source(self):
        """This instance's chunks of the source (chunk j goes to instance j mod N), read
        ahead in a thread so the reading overlaps the work."""
        src = self.st.source
        n = self.st.parallelism
        # about four chunks per instance, so none waits idle behind one big chunk
        chunks = await asyncio.to_thread(plan_pieces, src, 4 * n)
        chunks = chunks[self.index::n]
        queue: asyncio.Queue = asyncio.Queue(4)
        loop = asyncio.get_running_loop()

        def reader():
            try:
                for chunk in chunks:
                    for block in read_chunk(chunk, src.storage_options):
                        asyncio.run_coroutine_threadsafe(queue.put(block), loop).result()
                asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
            except BaseException as e:
                asyncio.run_coroutine_threadsafe(queue.put(e), loop).result()

        fut = loop.run_in_executor(None, reader)
        try:
            while (block := await queue.get()) is not None:
                if isinstance(block, BaseException):
                    raise block
                yield block
        finally:
            while not fut.done():   # let a reader blocked on a full queue finish
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)

    # -- work ------------------------------------------------------------------------

    async def _work(self) -> None:
        spec = self.st.spec
        if self.st.op is not None:
            op = self.op = make_op(self.st.op, self.ctx, combined_input=self.st.combined[0] if self.st.combined else False)
            async for what, port, batch in self._events():
                if what == "batch":
                    await self._emit(await asyncio.to_thread(op.push, batch, port))
                else:
                    await self._emit(await asyncio.to_thread(op.end_port, port))
                self._check_bad()
            it = await asyncio.to_thread(op.finish)
            while (out := await asyncio.to_thread(next, it, None)) is not None:
                await self._emit([out])
            self._check_bad()
        elif spec.command is not None:
            async def text():
                async for what, _, batch in self._events():
                    if what == "batch":
                        yield await asyncio.to_thread(to_text, batch, self.sep) if isinstance(batch, pl.DataFrame) else batch

            async def emit(block: bytes) -> None:
                await self._emit([block])
            await run_filter(spec.command, text(), emit)
        else:
            fn = load_function(spec.function, self.settings)
            call = (lambda b: fn(to_frame(b, self.sep)[0])) if spec.batch else (lambda b: self._per_record(fn, b))
            async for what, _, batch in self._events():
                if what == "batch":
                    out = await asyncio.to_thread(call, batch)
                    if out is not None and not (isinstance(out, bytes) and not out):
                        await self._emit([out])

    def _per_record(self, fn, batch) -> bytes:
        text = to_text(batch, self.sep) if isinstance(batch, pl.DataFrame) else batch
        out: list[str] = []
        for line in text.decode().splitlines():
            out.extend(_records_out(fn(tuple(line.split(self.sep))), self.sep))
        return ("\n".join(out) + "\n").encode() if out else b""

    def _check_bad(self) -> None:
        """Bad records seen by the operator, the combiners and the routers."""
        found = [self.op.bad] if self.op is not None else []
        found += [c.bad for _, _, _, c in self.outs if c is not None] + [r.bad for _, r, _, _ in self.outs]
        self.stats.bad = sum(b.count for b in found)
        if len(self.stats.bad_examples) < 5:
            more = [e for b in found for e in b.examples]
            self.stats.bad_examples = list(dict.fromkeys(self.stats.bad_examples + more))[:5]
        if self.stats.bad > self.limit:
            raise BadRecordsExceeded(
                f"{self.stats.bad} bad records (over the limit of {self.limit}; set bad_records: to "
                f"tolerate more). A bad record lacks a field this stage needs; e.g. "
                + "; ".join(repr(e) for e in self.stats.bad_examples[:3]))

    # -- output ----------------------------------------------------------------------

    async def _emit(self, batches) -> None:
        for b in batches:
            if b is None:
                continue
            n = count_records(b)
            if n == 0:
                continue
            self.stats.records_out += n
            for out, router, links, combiner in self.outs:
                parts = await asyncio.to_thread(combiner.push, b) if combiner is not None else [b]
                for p in parts:
                    await self._send(router, links, p)
            if self.part is not None:
                await self._to_sink(b)
        self._check_bad()

    async def _to_sink(self, batch) -> None:
        """Hand a batch to the sink writer, which formats and writes it beside the work."""
        if self.writer is None:
            self.sink_queue = asyncio.Queue(4)
            self.writer = asyncio.create_task(self._write_sink())
        elif self.writer.done():
            await self.writer          # it failed: raise its error here
        await self.sink_queue.put(batch)

    async def _write_sink(self) -> None:
        while (b := await self.sink_queue.get()) is not None:
            def write(b=b):
                self.part.write(to_text(b, self.sep) if isinstance(b, pl.DataFrame) else b)
            await asyncio.to_thread(write)

    async def _close_sink(self) -> None:
        if self.writer is not None:
            await self.sink_queue.put(None)
            await self.writer
            self.writer = None
        await asyncio.to_thread(self.part.close)
        self.part = None

    async def _send(self, router: Router, links: list[Link], batch) -> None:
        routed = await asyncio.to_thread(router.route, batch)
        for j, part in routed:
            kind, payload = (await asyncio.to_thread(encode_batch, part)) if isinstance(part, pl.DataFrame) \
                else encode_batch(part)
            await links[j].send(kind, payload)

    async def _flush_outputs(self) -> None:
        for out, router, links, combiner in self.outs:
            if combiner is not None:
                it = await asyncio.to_thread(combiner.finish)
                while (b := await asyncio.to_thread(next, it, None)) is not None:
                    await self._send(router, links, b)
        self._check_bad()
        await asyncio.gather(*(lk.end() for lk in self.links))


def ending(e: BaseException) -> tuple[Outcome, int]:
    """What an exception that ended the instance says about it, and the exit status that
    says the same when the outcome cannot be written."""
    if isinstance(e, FilterFailed):
        how = f"was killed by signal {-e.code}" if e.code < 0 else f"exited with status {e.code}"
        return Outcome(kind=OutcomeKind.failed, message=f"command {how}", stderr=e.stderr_tail.strip()), EXIT_COMMAND
    if isinstance(e, BadRecordsExceeded):
        return Outcome(kind=OutcomeKind.bad_records, message=str(e)), EXIT_BAD_RECORDS
    if isinstance(e, UpstreamFailed):
        return Outcome(kind=OutcomeKind.upstream_aborted, message=f"stopped: {e}"), EXIT_UPSTREAM
    if isinstance(e, (UpstreamLost, StreamBroken, ConnectionError, TimeoutError)):
        return Outcome(kind=OutcomeKind.peer_lost, message=f"lost a peer: {type(e).__name__}: {e}"), EXIT_LOST
    return Outcome(kind=OutcomeKind.failed, message=f"{type(e).__name__}: {e}"), EXIT_FAILED


async def main(settings: InstanceSettings, run: str, attempt: int, stage: str, index: int) -> int:
    if settings.flow_dir and os.path.isdir(settings.flow_dir):
        os.chdir(settings.flow_dir)
    store = Store(settings.etcd, settings.prefix)
    instance = None
    try:
        await store.connect(wait_s=10)
        record = await store.flows.get_run(run)
        plan = plan_or_raise(record.spec)
        instance = Instance(store, settings, run, attempt, plan, plan.stages[stage], index, record.bounds)
        await instance.run_()
        stats = instance.stats
        outcome, code = Outcome(kind=OutcomeKind.succeeded, bad=stats.bad, bad_examples=stats.bad_examples), 0
    except Exception as e:
        outcome, code = ending(e)
        if instance is not None:
            outcome = outcome.model_copy(update={"bad": instance.stats.bad,
                                                 "bad_examples": instance.stats.bad_examples})
        # the node keeps the end of stderr in the task record: a summary for `shoal logs`
        print(f"stage {stage}[{index}]: {outcome.message}" + (f"\n{outcome.stderr}" if outcome.stderr else ""),
              file=sys.stderr)
    try:
        await asyncio.wait_for(store.flows.put_outcome(run, attempt, stage, index, outcome), OUTCOME_TIMEOUT_S)
    except Exception as e:   # the exit code says what it can
        print(f"stage {stage}[{index}]: could not record its outcome: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await store.close()
    return code


if __name__ == "__main__":
    run_id, attempt_s, stage_name, index_s = sys.argv[1:5]
    sys.exit(asyncio.run(main(InstanceSettings.from_env(os.environ), run_id, int(attempt_s), stage_name,
                              int(index_s))))
