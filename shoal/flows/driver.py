"""The driver of one flow run, in the cluster: a node holding the elected role `flow/<run>`
runs `FlowDriver.serve()`. It starts each attempt's instances as tasks, follows how they
end (their outcomes), asks flows.state what comes next, and carries it out: restart,
stop, commit the sinks once, finish. Only this role writes the run's record, and each
write checks that this node still holds the role.

It resumes from the record, so a driver taking over from one that died goes on where that
one stopped: a run found running keeps the current attempt, submitting again (under the
same ids, which changes nothing for those that exist) any instance its predecessor had not
submitted, and follows it; instances lost with the dead node make the attempt restart,
counted like any loss. A run found committing commits again (commits are idempotent) and
succeeds, so the output appears once.

Blocking work (checks, range sampling, sink commits and aborts) runs in threads, and what
it needs (polars, pyarrow, psycopg, fsspec) is imported there, never on the node's loop."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, AsyncContextManager, Protocol

from ..errors import (FlowFailed, InvalidSpec, LostDriverRole, NotFound, ShoalError, StoreCompacted,
                      StoreUnavailable)
from ..logic.clock import SYSTEM_CLOCK, Clock
from ..model import TaskRecord, TaskSpec
from ..model.ids import new_ids
from .outcome import outcome_of
from .plan import Plan, plan_or_raise
from .run import Failure, FlowRunRecord, FlowState
from .state import (AbortSinks, Action, ClientGone, CancelRequested, Begin, Commit, CommitFailed, Committed,
                    Event, Finish, FollowAttempt, InstanceEnded, Prepare, Prepared, Refused, RunState,
                    StartAttempt, StopInstances, Tick, WakeAt, Who, decide)

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("shoal.flows.driver")

SIGNALS_EVERY_S = 0.5     # how often the driver looks for a cancel request and for its client
MAX_DRIVER_CRASHES = 3    # unexpected driver errors a run survives: the role passes on, then the run fails
# errors of the moment, not of the run: the role passes on and the next driver goes on
PASSING = (LostDriverRole, StoreUnavailable, StoreCompacted)


class TaskFeed(Protocol):
    def subscribe(self, ids: list[str]) -> AsyncContextManager[asyncio.Queue]:
        """A queue of each new value (bytes) of the given tasks, or a reset marker."""


class _Crashed:
    """The driver's follower task failed: the driver stops with its error, and the role
    passes on (to this node or another), which resumes from the record."""
    def __init__(self, error: BaseException):
        self.error = error


def instance_argv(run: str, attempt: int, stage: str, index: int) -> list[str]:
    # the node's own Python (SHOAL_PYTHON), so an instance runs the shoal the node runs
    return ["/bin/sh", "-c", 'exec "${SHOAL_PYTHON:-python3}" -m shoal.flows.runtime.instance "$@"', "shoal-flow",
            run, str(attempt), stage, str(index)]


def polars_threads(cluster_cpus: float, parallelism: int) -> int:
    """Threads for an instance's vectorised work: its share of the cluster's cores, so the
    instances of a stage do not fight over the same cores (a stage's env may set its own)."""
    return max(1, int(cluster_cpus // parallelism))


def instances_of(plan: Plan) -> list[Who]:
    return [(st.name, i) for st in plan.stages.values() for i in range(st.parallelism)]


def _prepare(plan: Plan) -> dict[str, list[str]]:
    from .runtime.extra import require
    require()   # a node without the flows extra fails the run saying what to install
    from .runtime.preflight import check_run, range_bounds
    check_run(plan)
    return range_bounds(plan)


def _sinks(plan: Plan, what: str, run: str, attempt: int) -> None:
    from .runtime.sinks import make_sink
    for st in plan.stages.values():
        if st.sink is not None and not st.sink.stdout:
            getattr(make_sink(st.sink, plan.spec.separator), what)(run, attempt, st.parallelism)


class FlowDriver:
    def __init__(self, store: "Store", run: str, node_id: str, feed: TaskFeed,
                 clock: Clock = SYSTEM_CLOCK):
        self.store, self.run, self.node_id, self.feed, self.clock = store, run, node_id, feed, clock
        self.record: FlowRunRecord | None = None
        self.plan: Plan | None = None
        self.state: RunState | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.follower: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    async def serve(self) -> None:
        try:
            record = await self.store.flows.get_run(self.run)
        except NotFound:
            return
        if record.is_final:
            return
        self.plan = plan_or_raise(record.spec)
        self.record = record.model_copy(update={"driver": self.node_id})
        await self._put()
        log.info("driving flow run %s (%s, attempt %d)", self.run, record.state.value, record.attempt)
        self.state = RunState.of(record, instances_of(self.plan))
        signals = asyncio.create_task(self._watch_signals())
        try:
            await self._handle(Begin())
            while not self.done:
                event = await self.events.get()
                if isinstance(event, _Crashed):
                    raise event.error
                await self._handle(event)
        except PASSING:
            raise
        except Exception as e:
            # a bug, or a failure nobody foresaw: count it in the record so the next driver
            # (another node, or this one) knows; past the limit the run fails instead of
            # bouncing between nodes for ever
            await self._count_crash(e)
            raise
        finally:
            for t in (signals, self.follower):
                if t is not None:
                    t.cancel()
            await asyncio.gather(*(t for t in (signals, self.follower) if t is not None), return_exceptions=True)
            if self.timer is not None:
                self.timer.cancel()

    async def _handle(self, event: Event) -> None:
        self.state, actions = decide(self.state, event, self.clock.time())
        for action in actions:
            await self._do(action)

    # -- carrying out -----------------------------------------------------------------------

    async def _do(self, action: Action) -> None:
        if isinstance(action, Prepare):
            await self._prepare()
        elif isinstance(action, StartAttempt):
            await self._start(action)
        elif isinstance(action, FollowAttempt):
            await self._submit_and_follow(action.attempt, self.record.tasks)
        elif isinstance(action, StopInstances):
            await self._stop()
        elif isinstance(action, AbortSinks):
            try:
                await asyncio.to_thread(_sinks, self.plan, "abort", self.run, action.attempt)
            except Exception as e:   # leftovers of a failed attempt: worth a line, not the run
                log.warning("flow run %s: aborting attempt %d's sinks: %s", self.run, action.attempt, e)
        elif isinstance(action, Commit):
            await self._commit(action.attempt)
        elif isinstance(action, Finish):
            await self._finish(action)
        elif isinstance(action, WakeAt):
            self._wake_at(action.when)

    async def _put(self) -> None:
        if not await self.store.flows.put_run(self.record, self.node_id):
            raise LostDriverRole(f"flow run {self.run}: node {self.node_id} no longer drives it")

    async def _prepare(self) -> None:
        try:
            self._instance_specs(1)
            bounds = await asyncio.to_thread(_prepare, self.plan)
        except InvalidSpec as e:
            self.events.put_nowait(Refused("\n".join(e.problems)))
            return
        except ShoalError as e:
            self.events.put_nowait(Refused(str(e)))
            return
        except Exception as e:   # a source that cannot be sampled, a database away: the run's, not ours
            self.events.put_nowait(Refused(f"{type(e).__name__}: {e}"))
            return
        self.record = self.record.model_copy(update={"bounds": bounds})
        await self._put()
        self.events.put_nowait(Prepared())

    async def _start(self, action: StartAttempt) -> None:
        ids = iter(new_ids(self.plan.instances))
        tasks: dict[str, list[str]] = {}
        for stage, _ in instances_of(self.plan):
            tasks.setdefault(stage, []).append(next(ids))
        restarted = self.record.restarted + ([action.restart] if action.restart else [])
        # the ids go into the record before the tasks exist: a driver taking over submits
        # whatever is missing under the same ids (a submit never overwrites a task)
        self.record = self.record.model_copy(update={"state": FlowState.running, "attempt": action.attempt,
                                                     "tasks": tasks, "restarted": restarted})
        await self._put()
        await self._submit_and_follow(action.attempt, tasks)

    async def _submit_and_follow(self, attempt: int, tasks: dict[str, list[str]]) -> None:
        if self.follower is not None:
            self.follower.cancel()
            await asyncio.gather(self.follower, return_exceptions=True)
        cpus = sum(n.cpus for n in await self.store.nodes.nodes()) or 1
        specs = self._instance_specs(attempt, cpus)
        now = self.clock.time()
        await self.store.tasks.submit([TaskRecord(id=tid, spec=specs[(stage, i)], submitted_at=now)
                                       for stage, ids in tasks.items() for i, tid in enumerate(ids)],
                                      keep_existing=True)
        self.follower = asyncio.create_task(self._follow(attempt, tasks), name=f"follow {self.run}/{attempt}")
        self.follower.add_done_callback(self._crashed)

    def _crashed(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.events.put_nowait(_Crashed(task.exception()))

    def _instance_specs(self, attempt: int, cpus: float = 1) -> dict[Who, TaskSpec]:
        """The instance tasks of an attempt (InvalidSpec when a stage asks for what no task can)."""
        specs = {}
        for st in self.plan.stages.values():
            s = st.spec
            env = {"POLARS_MAX_THREADS": str(polars_threads(cpus, st.parallelism)), **s.env,
                   "SHOAL_FLOW_DIR": self.record.base_dir, "PYTHONUNBUFFERED": "1"}
            for i in range(st.parallelism):
                specs[(st.name, i)] = TaskSpec.parse({
                    "command": instance_argv(self.run, attempt, st.name, i), "cpus": s.cpus, "memory": s.memory,
                    "labels": s.labels, "slots": 0, "retries": 0,
                    # a lost instance is the driver's to handle: it restarts the attempt (`restarts:`)
                    "node_loss_retries": 0, "name": f"{self.run}/{st.name}[{i}]",
                    "job": self.run, "env": env})
        return specs

    async def _follow(self, attempt: int, tasks: dict[str, list[str]]) -> None:
        """Turn each instance task's end into an InstanceEnded event, with its outcome."""
        who = {tid: (stage, i) for stage, ids in tasks.items() for i, tid in enumerate(ids)}
        reported: set[str] = set()

        async def report(rec: TaskRecord) -> None:
            if not rec.is_final or rec.id in reported:
                return
            reported.add(rec.id)
            stage, i = who[rec.id]
            written = await self.store.flows.get_outcome(self.run, attempt, stage, i)
            self.events.put_nowait(InstanceEnded(attempt, (stage, i), outcome_of(rec, written)))

        async def snapshot() -> None:
            found, _ = await self.store.tasks.get_tasks(list(who))
            for rec in found.values():
                await report(rec)

        async with self.feed.subscribe(list(who)) as changes:   # before the snapshot: miss nothing
            await snapshot()
            while len(reported) < len(who):
                value = await changes.get()
                if isinstance(value, bytes):
                    await report(TaskRecord.model_validate_json(value))
                else:    # events may have been missed: read them all again
                    await snapshot()

    async def _stop(self) -> None:
        await self.store.tasks.cancel_all([t for ids in self.record.tasks.values() for t in ids])

    async def _commit(self, attempt: int) -> None:
        self.record = self.record.model_copy(update={"state": FlowState.committing})
        await self._put()
        try:
            # idempotent: a driver taking over a run found committing commits again
            await asyncio.to_thread(_sinks, self.plan, "commit", self.run, attempt)
        except Exception as e:
            self.events.put_nowait(CommitFailed(f"committing the output: {type(e).__name__}: {e}"))
            return
        self.events.put_nowait(Committed())

    async def _finish(self, action: Finish) -> None:
        error = None
        if action.state == FlowState.failed:
            f = action.failure
            error = str(FlowFailed(self.run, f.message if f else "failed", f.stage if f else None,
                                   f.stderr if f else ""))
        elif action.state == FlowState.cancelled:
            error = f"flow run {self.run} was cancelled"
        self.record = self.record.model_copy(update={
            "state": action.state, "ended": self.clock.time(), "failure": action.failure, "error": error,
            "bad_records": action.bad_records})
        await self._put()
        self.done = True
        log.info("flow run %s %s", self.run, action.state.value)

    async def _count_crash(self, error: Exception) -> None:
        crashes = self.record.driver_crashes + 1
        self.record = self.record.model_copy(update={"driver_crashes": crashes})
        # past its commit point a run is never failed: some of its output may be visible
        # already, and only committing again (idempotent) makes it whole
        if crashes < MAX_DRIVER_CRASHES or self.record.state == FlowState.committing:
            with contextlib.suppress(Exception):
                await self._put()
            return
        message = (f"its driver failed {crashes} times on an unexpected error (last: {type(error).__name__}: "
                   f"{error}); the logs of nodes {self.node_id} and others name it; nothing was committed")
        attempt = self.record.attempt
        # the actions flows.state gives a failed attempt; each is tried whatever became of the last
        give_up: list[Action] = [StopInstances(attempt), *([AbortSinks(attempt)] if attempt else []),
                                 Finish(FlowState.failed, Failure(message=message))]
        for action in give_up:
            with contextlib.suppress(Exception):
                await self._do(action)

    def _wake_at(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(max(0.0, when - self.clock.time()), self.events.put_nowait, Tick())

    # -- signals ----------------------------------------------------------------------------

    async def _watch_signals(self) -> None:
        """A cancel request, and the client (for runs that read stdin or write stdout) going away."""
        cancel_seen = client_gone = False
        link = self.record.client
        while True:
            await asyncio.sleep(SIGNALS_EVERY_S)
            try:
                if not cancel_seen and await self.store.flows.cancel_requested(self.run):
                    cancel_seen = True
                    self.events.put_nowait(CancelRequested())
                if link is not None and not client_gone and not await self.store.flows.client_alive(self.run):
                    client_gone = True
                    what = "input" if link.feeds else "output"
                    self.events.put_nowait(ClientGone(
                        f"its {what} client went away (a flow that reads stdin or a Python iterable, or "
                        "writes to stdout, needs the client that started it until it ends); nothing was committed"))
            except Exception as e:   # etcd away for a moment: look again on the next round
                log.info("flow run %s: reading its signals: %s", self.run, e)

