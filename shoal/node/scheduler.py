"""The node's work loop: watch the queue, claim what fits, run it, commit how it ended.
Completions and claims go out together in one etcd transaction per step, so under
load one round trip both frees a slot and fills it again."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass

from ..exec import attempt as run
from ..logic import placement, transitions
from ..model import Attempt, TaskRecord, TaskState
from ..settings import NodeSettings
from ..store import Store
from ..store.kv import WatchReset
from ..store.tasks import Claim, Completion
from .queue_view import QueueView

log = logging.getLogger("shoal.node")
OUTPUT_FIELDS = ("stdout_tail", "stderr_tail", "stdout_bytes", "stderr_bytes", "result", "result_ref", "error")


@dataclass
class Running:
    record: TaskRecord       # the running record as we wrote it
    read_rev: int            # its mod_revision
    attempt_rev: int         # create_revision of our running key
    proc: run.Attempt | None


class Scheduler:
    def __init__(self, settings: NodeSettings, store: Store):
        self.s = settings
        self.store = store
        self.total = placement.Capacity(settings.cpus, settings.memory_bytes, settings.gpus,
                                        settings.slots, settings.disk_bytes)
        self.queue = QueueView()
        self.running: dict[str, Running] = {}
        self.finished: dict[str, tuple[Running, TaskRecord]] = {}   # task id -> (run, new record)
        self.lease = 0
        self.wake = asyncio.Event()
        self.accepting = True
        self.draining = False
        self.completed_total = 0
        # claimed but not started: when the queue is deep a node claims a few tasks beyond
        # its free slots, so a finished attempt is replaced at once, not one txn later
        self.ready: deque[str] = deque()
        self.avg_runtime_s: float | None = None   # moving average of attempt run times
        self.log_dir = settings.log_dir    # set again by the node once its id is final
        self.pool = None                   # the node's warm Python workers (function tasks)
        self.base_env = dict(os.environ)   # copied once: os.environ decodes on every read
        self.steps = 0
        self.fences = 0          # times fence() ran: a step begun before one is stale
        self.last_rev = 0        # revision of the last step whose reply we processed
        self._retry_timer: asyncio.TimerHandle | None = None

    # -- capacity ---------------------------------------------------------------

    def free(self) -> placement.Capacity:
        """What is free now: total minus the attempts whose process is alive."""
        cap = self.total
        for r in self.running.values():
            if r.proc is not None and not r.proc.done.done():
                cap = cap.minus(r.record.spec)
        return cap

    def prefetch(self) -> int:
        """How many tasks to hold beyond free slots. Only while recent attempts are short:
        then the claim round trip, not the work, is what limits throughput. Long tasks are
        never claimed ahead, so they never queue behind each other on a busy node while
        another node sits idle."""
        if self.avg_runtime_s is None or self.avg_runtime_s > self.s.prefetch_below_s:
            return 0
        # no more than the slots will start within the horizon: tasks held here are tasks
        # another node cannot take, and that the reaper must hand on if we die
        per_slot = min(self.s.prefetch_per_slot, int(self.s.prefetch_horizon_s / max(self.avg_runtime_s, 1e-4)))
        return per_slot * self.s.slots

    def busy(self) -> int:
        return sum(1 for r in self.running.values() if r.proc is not None and not r.proc.done.done())

    # -- loops --------------------------------------------------------------------

    async def watch_queue(self) -> None:
        """Keep the queue view current. Reload when etcd compacted past us, and when the
        view ran dry while the last load was cut short."""
        await self._load_queue()
        async for batch in self.store.kv.watch(self.store.keys.queues, self.queue.loaded_rev + 1):
            if isinstance(batch, WatchReset):
                await self._load_queue()
            elif self.queue.apply(batch):
                self.wake.set()
            if not self.queue.complete and len(self.queue) < 100:
                await self._load_queue()

    async def _load_queue(self) -> None:
        kvs, more, rev = await self.store.kv.get_prefix(self.store.keys.queues, limit=5000)
        self.queue.load(kvs, rev, more)
        self.wake.set()

    async def watch_cancels(self) -> None:
        prefix = self.store.keys.cancels_for(self.s.node_id)
        rev = await self.store.kv.revision()
        kvs, _, _ = await self.store.kv.get_prefix(prefix)
        self._cancel([(self.store.keys.id_of(kv.key), kv.value) for kv in kvs])
        async for batch in self.store.kv.watch(prefix, rev + 1):
            if isinstance(batch, WatchReset):
                kvs, _, _ = await self.store.kv.get_prefix(prefix)
                self._cancel([(self.store.keys.id_of(kv.key), kv.value) for kv in kvs])
                continue
            self._cancel([(self.store.keys.id_of(kv.key), kv.value) for kind, kv, _ in batch if kind == "PUT"])

    def _cancel(self, requests: list[tuple[str, bytes]]) -> None:
        """Cancel requests: b"" cancels, b"unstarted" only one claimed ahead and not started."""
        for tid, how in requests:
            r = self.running.get(tid)
            if r is None:
                continue
            if r.proc is not None:
                if how != b"unstarted":
                    r.proc.kill("cancelled while running", self.s.cancel_grace_s)
            elif tid in self.ready:
                self.ready.remove(tid)
                if how == b"unstarted":  # the record in etcd is not flagged: flag the one we write
                    r.record = r.record.model_copy(update={"cancel_requested": True,
                                                           "reason": "cancelled before it started"})
                now = time.time()
                self._finish(tid, run.AttemptResult(None, None, now, now, 0.0, 0, reason="cancelled"))

    async def run(self) -> None:
        """The step loop: decide, commit, act; repeat while there is anything to do."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            claims = self._choose_claims() if self.accepting else []
            if claims and self.busy():
                await asyncio.sleep(placement.claim_delay_s(self.busy(), self.s.slots))
                claims = self._choose_claims() if self.accepting else []
            completions = [Completion(rec, r.read_rev, r.attempt_rev) for r, rec in self.finished.values()]
            if not claims and not completions:
                continue
            fences = self.fences
            try:
                result = await self.store.tasks.step(self.s.node_id, self.lease, completions, claims)
            except Exception as e:  # etcd away for longer than the store rides out
                log.warning("step failed (%s); will retry", e)
                await asyncio.sleep(0.5)
                self.wake.set()
                continue
            if self.fences != fences:
                # fenced while the step was in flight (etcd away longer than the TTL): its
                # attempts are killed and forgotten, and what it claimed holds keys on the
                # old lease; the reaper requeues those like the rest of the fenced work
                log.info("step of lease %x ended after fencing; its result is dropped", self.lease)
                self.wake.set()
                continue
            self.last_rev = result.revision
            self.steps += 1
            self._after_completions(completions, result)
            self._after_claims(claims, result)
            # after any claims go again: on success there may be room for more, and when
            # another node won the race the lost keys are out of the view, so the next
            # pass tries other queued tasks (nothing else wakes an idle node that lost)
            if self.finished or claims:
                self.wake.set()

    def _choose_claims(self) -> list[Claim]:
        """What to claim now: placement decides over the queue head (read lazily), this
        turns its choice into claim transactions."""
        now = time.time()
        free = self.free()
        for tid in self.ready:
            free = free.minus(self.running[tid].record.spec)
        # beyond what is free, a deep queue lets us hold `prefetch` more, each of which
        # must fit the whole node
        extra = max(0, self.prefetch() - len(self.ready)) if len(self.queue) > self.s.slots else 0
        by_id = {}

        def candidates():
            for key, kv, rec in self.queue.head(self.s.claim_scan):
                if rec.id not in self.running:
                    by_id[rec.id] = (key, kv, rec)
                    yield rec.id, rec.spec, rec.not_before
        ids, soonest = placement.plan_claims(candidates(), free, self.s.labels, now,
                                             total=self.total, extra=extra)
        claims = [Claim(tid, transitions.start_attempt(by_id[tid][2], self.s.node_id, now), by_id[tid][0],
                        by_id[tid][1].mod_revision) for tid in ids]
        if soonest is not None:
            self._arm_retry_timer(soonest - now)
        return claims

    def _arm_retry_timer(self, delay_s: float) -> None:
        if self._retry_timer is not None:
            return

        def fire():
            self._retry_timer = None
            self.wake.set()
        self._retry_timer = asyncio.get_running_loop().call_later(max(0.0, delay_s) + 0.001, fire)

    def _after_completions(self, completions: list[Completion], result) -> None:
        for c, ok in zip(completions, result.completed):
            tid = c.record.id
            r, new = self.finished.pop(tid)
            if ok:
                self.running.pop(tid, None)
                self.completed_total += 1
                continue
            current, rev = result.current.get(tid, (None, 0))
            if current is None:
                log.info("attempt %d of %s was fenced (its lease or claim is gone); dropped", c.record.attempt, tid)
                self.running.pop(tid, None)
                continue
            # someone changed the task meanwhile (a cancel request): redo from their record
            r.read_rev = rev
            res = new.last
            output = new.model_dump(include=set(OUTPUT_FIELDS))
            self.finished[tid] = (r, transitions.finish_attempt(current, res, output, time.time()))

    def _after_claims(self, claims: list[Claim], result) -> None:
        for c, ok in zip(claims, result.claimed):
            self.queue.discard(c.queue_key, None if ok else c.queued_rev)
            if ok:
                self.running[c.task_id] = Running(c.record, result.revision, result.revision, None)
                self.ready.append(c.task_id)
        if len(self.ready) > 1:
            # start in queue order (priority, then age): a task claimed now may be ahead of
            # those claimed earlier, e.g. one requeued from a lost node or of higher priority,
            # and must not wait behind the tasks held ahead of free slots
            key = self.store.keys.queue
            self.ready = deque(sorted(self.ready, key=lambda t: key(self.running[t].record.spec.priority, t)))
        self._start_ready()

    def _start_ready(self) -> None:
        """Start claimed attempts, in queue order, while they fit what is free."""
        while self.ready:
            tid = self.ready[0]
            r = self.running[tid]
            if not placement.fits(r.record.spec, self.free(), self.s.labels):
                return
            self.ready.popleft()
            try:
                if r.record.spec.is_function:
                    r.proc = self.pool.start(r.record, self.log_dir, self.s.log_tail_bytes, self.base_env)
                else:
                    r.proc = run.start(r.record.spec, tid, r.record.attempt, self.log_dir, self.s.node_id,
                                       self.s.log_tail_bytes, self.s.kill_grace_s, self.base_env)
            except run.SetupError as e:
                now = time.time()
                self._finish(tid, run.AttemptResult(None, None, now, now, 0.0, 0, reason=str(e)))
                continue
            except OSError as e:  # e.g. the log disk is full
                now = time.time()
                self._finish(tid, run.AttemptResult(None, None, now, now, 0.0, 0,
                                                    reason=f"node {self.s.node_id} could not start it: {e}"))
                continue
            r.proc.done.add_done_callback(lambda fut, tid=tid: self._finish(tid, fut.result()))

    def _finish(self, task_id: str, res: run.AttemptResult) -> None:
        r = self.running.get(task_id)
        if r is None:
            return
        ok = res.exit_code == 0 and res.reason is None
        attempt = Attempt(n=r.record.attempt, node=self.s.node_id,
                          state=TaskState.succeeded if ok else TaskState.failed,
                          started_at=res.started_at, finished_at=res.finished_at,
                          exit_code=res.exit_code, signal=res.signal, cpu_s=res.cpu_s,
                          max_rss_bytes=res.max_rss_bytes, reason=res.reason)
        took = max(0.0, res.finished_at - res.started_at)
        self.avg_runtime_s = took if self.avg_runtime_s is None else 0.9 * self.avg_runtime_s + 0.1 * took
        output = {f: getattr(res, f) for f in OUTPUT_FIELDS}
        if self.draining:
            new = transitions.release_attempt(r.record, attempt, output, res.finished_at)
        else:
            new = transitions.finish_attempt(r.record, attempt, output, res.finished_at)
        self.finished[task_id] = (r, new)
        self.wake.set()
        if r.proc is not None:
            self._start_ready()

    # -- fencing --------------------------------------------------------------------

    def fence(self) -> None:
        """Our lease is gone: every attempt we run may already be running elsewhere.
        Kill them all now and forget them; their writes would be refused anyway."""
        self.fences += 1
        for tid, r in list(self.running.items()):
            if r.proc is not None:
                r.proc.kill("fenced: the node lost its lease", 0.0)
        self.running.clear()
        self.finished.clear()
        self.ready.clear()

    async def drain(self, grace_s: float) -> None:
        """Stop claiming; kill running attempts, wait for them to exit, and hand every
        task we hold back to the queue without counting it against its retries."""
        self.accepting = False
        self.draining = True
        while self.ready:
            tid = self.ready.popleft()
            now = time.time()
            self._finish(tid, run.AttemptResult(None, None, now, now, 0.0, 0, reason="not started"))
        procs = [r.proc for r in self.running.values() if r.proc is not None]
        for p in procs:
            p.kill(f"node {self.s.node_id} shut down", grace_s)
        if procs:
            await asyncio.wait([p.done for p in procs], timeout=grace_s + 2)
        deadline = time.monotonic() + 5
        while self.finished and time.monotonic() < deadline:
            self.wake.set()
            await asyncio.sleep(0.02)

    async def reconcile(self) -> None:
        """Running keys of ours with no attempt here (a claim whose reply was lost)
        go back to the queue."""
        kvs = await self.store.tasks.running_on(self.s.node_id)
        for kv in kvs:
            tid = self.store.keys.id_of(kv.key)
            if tid not in self.running and kv.lease == self.lease and kv.create_revision <= self.last_rev:
                await self.store.tasks.release_orphan(self.s.node_id, tid, kv.create_revision)
