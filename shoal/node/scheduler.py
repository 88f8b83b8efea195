"""The node's work loop: watch the queue and our cancel keys, run steps against etcd,
start and kill attempt processes, all as the core (node/core.py) decides. Completions
and claims go out together in one etcd transaction per step, so under load one round
trip both frees a slot and fills it again."""
from __future__ import annotations

import asyncio
import logging
import os

from ..errors import SetupError
from ..exec import attempt as run
from ..exec.result import AttemptResult
from ..logic.clock import SYSTEM_CLOCK, Clock
from ..model import TaskRecord
from ..settings import NodeSettings
from ..store import Store
from ..store.kv import WatchReset
from .core import (ArmTimer, AttemptEnded, CancelRequested, DelayClaims, DrainRequested, KillAttempt, LeaseLost,
                   NodeState, ProgressPublished, QueueChanged, QueueLoaded, Registered, RetryStep, RunningAttempt,
                   RunningKeysRead, StartAttempt, Step, StepCommitted, StepDue, StepFailed, TimerFired, Wake)

log = logging.getLogger("shoal.node")
_STEP_DUE, _CLAIM_NOW = StepDue(), StepDue(claim_delayed=True)


class Scheduler:
    def __init__(self, settings: NodeSettings, store: Store, clock: Clock = SYSTEM_CLOCK):
        self.s = settings
        self.store = store
        self.clock = clock
        self.core = NodeState(settings, store.keys)
        self.procs: dict[str, object] = {}   # task id -> its live attempt (exec Attempt or FunctionAttempt)
        self.lease = 0
        self.wake = asyncio.Event()
        self.log_dir = settings.log_dir    # set again by the node once its id is final
        self.pool = None                   # the node's warm Python workers (function tasks)
        self.base_env = dict(os.environ)   # copied once: os.environ decodes on every read
        self._timer: asyncio.TimerHandle | None = None

    # -- what others may ask and tell --------------------------------------------------------

    def free(self):
        return self.core.free()

    def busy(self) -> int:
        return self.core.busy()

    @property
    def steps(self) -> int:
        return self.core.steps

    @property
    def completed_total(self) -> int:
        return self.core.completed_total

    def running_attempts(self) -> list[RunningAttempt]:
        """The attempts whose process runs now (a snapshot)."""
        return list(self.core.running())

    def progress_published(self, task_id: str, attempt_rev: int, record: TaskRecord, read_rev: int) -> None:
        """A running attempt's record was rewritten (with its progress) at `read_rev`."""
        self._handle(ProgressPublished(task_id, attempt_rev, record, read_rev))

    def lease_lost(self) -> None:
        """Fence: our lease is gone, so every attempt we run is killed and forgotten."""
        self._handle(LeaseLost())

    def registered(self, lease: int) -> None:
        self.lease = lease
        self._handle(Registered())

    # -- carrying out -------------------------------------------------------------------------

    def _handle(self, event):
        """Hand one event to the core and carry out what it says; a Step or a pause is
        returned for the step loop."""
        pending = None
        for ins in self.core.handle(event, now=self.clock.time()):
            kind = type(ins)
            if kind is Wake:
                self.wake.set()
            elif kind is StartAttempt:
                self._start(ins.record)
            elif kind is KillAttempt:
                proc = self.procs.get(ins.task_id)
                if proc is not None:
                    proc.kill(ins.reason, ins.grace_s)
            elif kind is ArmTimer:
                self._arm_timer(ins.at)
            else:
                pending = ins
        return pending

    def _start(self, record: TaskRecord) -> None:
        tid, n = record.id, record.attempt
        try:
            if record.spec.is_function:
                proc = self.pool.start(record, self.log_dir, self.s.log_tail_bytes, self.base_env)
            else:
                proc = run.start(record.spec, tid, n, self.log_dir, self.s.node_id,
                                 self.s.log_tail_bytes, self.s.kill_grace_s, self.base_env)
        except SetupError as e:
            reason = str(e)
        except OSError as e:  # e.g. the log disk is full
            reason = f"node {self.s.node_id} could not start it: {e}"
        else:
            self.procs[tid] = proc
            proc.done.add_done_callback(lambda fut, tid=tid, n=n, proc=proc: self._ended(tid, n, proc, fut))
            return
        self._handle(AttemptEnded(tid, n, AttemptResult.not_run(self.clock.time(), reason)))

    def _ended(self, task_id: str, n: int, proc, fut: asyncio.Future) -> None:
        if self.procs.get(task_id) is proc:
            del self.procs[task_id]
        self._handle(AttemptEnded(task_id, n, fut.result()))

    def _arm_timer(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # a millisecond late rather than early: early would find the task still held back
        delay_s = max(0.0, at - self.clock.time()) + 0.001
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._timer_fired, at)

    def _timer_fired(self, at: float) -> None:
        self._timer = None
        self._handle(TimerFired(at))

    # -- loops ------------------------------------------------------------------------------------

    async def watch_queue(self) -> None:
        """Keep the queue view current. Reload when etcd compacted past us, and when the
        view ran dry while the last load was cut short."""
        await self._load_queue()
        queue = self.core.queue
        async for batch in self.store.kv.watch(self.store.keys.queues, queue.loaded_rev + 1):
            if isinstance(batch, WatchReset):
                await self._load_queue()
            else:
                self._handle(QueueChanged(batch))
            if not queue.complete and len(queue) < 100:
                await self._load_queue()

    async def _load_queue(self) -> None:
        kvs, more, rev = await self.store.kv.get_prefix(self.store.keys.queues, limit=5000)
        self._handle(QueueLoaded(kvs, rev, more))

    async def watch_cancels(self) -> None:
        """Our cancel keys: read whole at first and when etcd compacted past the watch,
        then as they are put."""
        prefix = self.store.keys.cancels_for(self.s.node_id)
        rev = await self.store.kv.revision()
        kvs, _, _ = await self.store.kv.get_prefix(prefix)
        self._cancels(kvs)
        async for batch in self.store.kv.watch(prefix, rev + 1):
            if isinstance(batch, WatchReset):
                kvs, _, _ = await self.store.kv.get_prefix(prefix)
                self._cancels(kvs)
            else:
                self._cancels(kv for kind, kv, _ in batch if kind == "PUT")

    def _cancels(self, kvs) -> None:
        """Cancel requests: b"" cancels, b"unstarted" only one claimed ahead and not started."""
        for kv in kvs:
            self._handle(CancelRequested(self.store.keys.id_of(kv.key), kv.value == b"unstarted"))

    async def run(self) -> None:
        """The step loop: the core decides, etcd commits, the core takes the reply; repeat
        while there is anything to do."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            todo = self._handle(_STEP_DUE)
            if type(todo) is DelayClaims:
                await asyncio.sleep(todo.seconds)
                todo = self._handle(_CLAIM_NOW)
            if type(todo) is not Step:
                continue
            try:
                result = await self.store.tasks.step(self.s.node_id, self.lease, todo.completions, todo.claims)
            except Exception as e:  # etcd away for longer than the store rides out
                log.warning("step failed (%s); will retry", e)
                pause = self._handle(StepFailed(todo))
                await asyncio.sleep(pause.seconds if type(pause) is RetryStep else 0.0)
                self.wake.set()
                continue
            self._handle(StepCommitted(todo, result))

    async def drain(self, grace_s: float) -> None:
        """Stop claiming; kill running attempts, wait for them to exit, and hand every
        task we hold back to the queue without counting it against its retries."""
        self._handle(DrainRequested(grace_s))
        procs = [p.done for p in self.procs.values()]
        if procs:
            await asyncio.wait(procs, timeout=grace_s + 2)
        deadline = self.clock.monotonic() + 5
        while self.core.finished and self.clock.monotonic() < deadline:
            self.wake.set()
            await asyncio.sleep(0.02)

    async def reconcile(self) -> None:
        """Running keys of ours with no attempt here (a claim whose reply was lost) go
        back to the queue."""
        kvs = await self.store.tasks.running_on(self.s.node_id)
        keys = [(self.store.keys.id_of(kv.key), kv.create_revision) for kv in kvs if kv.lease == self.lease]
        for ins in self.core.handle(RunningKeysRead(keys), now=self.clock.time()):
            await self.store.tasks.release_orphan(self.s.node_id, ins.task_id, ins.create_revision)
