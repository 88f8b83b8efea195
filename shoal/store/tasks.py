"""Tasks in etcd: submit, read and list them, the node's step (complete finished attempts
and claim new ones in one transaction), progress, cancel and requeue. Every state change
is one transaction that compares what it read (mod_revision, create_revision) so
concurrent nodes never double-apply."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

import orjson

from ..errors import Conflict, InvalidSpec, NotFound, TooLarge
from ..logic import dag, transitions
from ..logic.clock import SYSTEM_CLOCK, Clock
from ..model import EndedBy, TaskRecord, TaskState
from ..model.task import DEFAULT_NODE_LOSS_RETRIES
from ..model.keys import Keys
from .dag import DagStore, Edges, created_since
from .kv import KV, Etcd, cmp, delete_op, get_op, prefix_end, put_op, sub_txn
from .nodes import NodeStore
from .records import MAX_REQUEST_BYTES, MAX_VALUE_BYTES, decode, encode, put_record_ops, read_records


# ends of tasks with dependents committed together (each edge they consume costs ops)
ENDS_PER_CASCADE = 8


@dataclass(frozen=True)
class Completion:
    """Commit the end of an attempt: `record` is the new state, computed from `read_rev`."""
    record: TaskRecord
    read_rev: int            # mod_revision of tasks/<id> the record was computed from
    attempt_rev: int         # create_revision of running/<node>/<id>: fences stale attempts


@dataclass(frozen=True)
class Claim:
    task_id: str
    record: TaskRecord       # the running record to write
    queue_key: bytes
    queued_rev: int          # mod_revision of the queue key (== tasks/<id> when queued)


@dataclass
class StepResult:
    revision: int
    completed: list[bool] = field(default_factory=list)
    # when a completion lost its compare: the current task record (or None if gone)
    current: dict[str, tuple[TaskRecord | None, int]] = field(default_factory=dict)
    claimed: list[bool] = field(default_factory=list)
    # the revision that committed each completion (its own transaction when it had dependents)
    completed_rev: dict[str, int] = field(default_factory=dict)


class TaskStore:
    def __init__(self, kv: Etcd, keys: Keys, cascade: DagStore, nodes: NodeStore, max_txn_ops: int = 128,
                 clock: Clock = SYSTEM_CLOCK):
        self.kv = kv
        self.keys = keys
        self.clock = clock      # the time transitions stamp (cancel, node lost)
        self.dag = cascade      # moves a finished task's dependents in the same transaction
        self.nodes = nodes      # a running task's node, to tell it to cancel
        self.max_txn_ops = max_txn_ops

    # -- submit, read, list ---------------------------------------------------------

    def check_size(self, record: TaskRecord, value: bytes | None = None) -> bytes:
        value = value if value is not None else encode(record)
        if 2 * len(value) > MAX_VALUE_BYTES:  # the record is written twice (task and queue)
            raise TooLarge(
                f"task {record.spec.name or record.id}: its spec is {len(value):,} bytes encoded; etcd takes "
                f"at most {MAX_REQUEST_BYTES:,} bytes a request and a task is stored twice while queued "
                f"(keep it under {MAX_VALUE_BYTES // 2:,}). Put large env values or inputs in a file.")
        return value

    async def submit(self, records: list[TaskRecord], keep_existing: bool = False) -> list[TaskRecord]:
        """Write new tasks; return them as written. Each is put only if its id is new, so
        a retried submit cannot reset a task a node already claimed: an id that exists
        with the same spec answers with the task that is there (the retry of a request
        that had landed), with another spec it is a Conflict, unless `keep_existing`
        (a flow driver taking over submits what is missing of ids it chose itself, with
        specs that name the new driver: what is there stays). A task with dependencies
        goes in through submit_dependent, in order, after the ones before it."""
        if any(r.spec.depends_on for r in records):
            # all or none: every dependency outside the batch must exist before any is written
            mine = {r.id for r in records}
            outside = list(dict.fromkeys(d for r in records for d in r.spec.depends_on if d not in mine))
            found = await self.get_many(outside)
            missing = [f"tasks[{i}].depends_on: no task {d!r} (unknown id, or past its retention)"
                       for i, r in enumerate(records) for d in r.spec.depends_on if d not in mine and d not in found]
            if missing:
                raise InvalidSpec(missing)
            out: list[TaskRecord] = []
            for r in records:
                out += [await self.submit_dependent(r)] if r.spec.depends_on else await self.submit([r])
            return out
        encoded = [(r, self.check_size(r)) for r in records]
        written: dict[str, TaskRecord] = {}
        batch: list[TaskRecord] = []
        ops, size = [], 0
        for record, value in encoded + [(None, b"")]:
            if record is None or len(ops) >= self.max_txn_ops or size + 2 * len(value) > MAX_VALUE_BYTES:
                if ops:
                    resp = await self.kv.txn([], ops)
                    for r, sub in zip(batch, resp.responses):
                        if not sub.response_txn.succeeded:  # the id exists: what is there answers
                            kvs = sub.response_txn.responses[0].response_range.kvs
                            written[r.id] = (decode(kvs[0].value) if keep_existing and kvs
                                             else self._same_task(r, kvs))
                batch, ops, size = [], [], 0
            if record is None:
                break
            batch.append(record)
            ops.append(sub_txn([cmp(self.keys.task(record.id), "CREATE", 0)],
                               put_record_ops(self.keys, record, value), [get_op(self.keys.task(record.id))]))
            size += 2 * len(value)
        return [written.get(r.id, r) for r in records]

    @staticmethod
    def _same_task(record: TaskRecord, kvs) -> TaskRecord:
        """The task already stored under `record`'s id, if it is the same task submitted
        again; a Conflict naming the id if that id holds another spec."""
        if not kvs:  # deleted between the compare and the read: cannot happen inside one txn
            raise Conflict(f"task {record.id}: its id is taken; submit it again with a new id")
        existing = decode(kvs[0].value)
        if existing.spec.model_dump(mode="json") != record.spec.model_dump(mode="json"):
            raise Conflict(f"id {record.id}: a task with another spec has this id (a client must "
                           "give each new task a new id; resending one names the same task)")
        return existing

    async def submit_dependent(self, record: TaskRecord) -> TaskRecord:
        """Write a task that depends on others. Its dependencies are recorded as edges a
        chunk a transaction (store/dag.py), none of their records rewritten, so it may
        depend on 10,000 tasks that have not ended. Its state follows from theirs: queued,
        waiting, or upstream_failed at once. A retried submit of an id that is there
        finishes recording what a first one left half done."""
        new = await self.dag.create(record, self.check_size)
        if new is None:  # the id is there: this task sent again, or another spec (a Conflict)
            existing, _, _ = await self.kv.range(self.keys.task(record.id))
            if existing:
                self._same_task(record, existing)
        if new is None or len(set(record.spec.depends_on)) > dag.REGISTER_CHUNK:
            await self.dag.record_rest(record.id)
        if new is not None and new.state != TaskState.waiting:
            return new
        try:
            return (await self.get_task(record.id))[0]
        except NotFound:
            raise Conflict(f"task {record.id}: its dependencies kept changing; try again") from None

    async def get_many(self, ids: list[str]) -> dict[str, tuple[TaskRecord, int]]:
        """Records and mod revisions of `ids`, read together (one txn per 128)."""
        return await read_records(self.kv, self.keys, ids)

    async def get_task(self, task_id: str) -> tuple[TaskRecord, int]:
        kvs, _, _ = await self.kv.range(self.keys.task(task_id))
        if not kvs:
            raise NotFound(f"no task {task_id!r} (it may never have existed, or has passed its retention)")
        return decode(kvs[0].value), kvs[0].mod_revision

    async def get_tasks(self, ids: list[str]) -> tuple[dict[str, TaskRecord], int]:
        """Records for `ids` (missing ones left out) and the revision they were read at."""
        raw, revision = await self.get_task_values(ids)
        return {tid: decode(value) for tid, value in raw.items()}, revision

    async def get_task_values(self, ids: list[str]) -> tuple[dict[str, bytes], int]:
        """Encoded records for `ids`, for callers that only peek at a few fields. Ids are
        time-ordered, so one range read between the smallest and largest covers them."""
        if not ids:
            return {}, 0
        want = set(ids)
        lo, hi = self.keys.task(min(ids)), self.keys.task(max(ids)) + b"\0"
        found, revision = {}, 0
        start = lo
        while True:
            kvs, more, rev = await self.kv.range(start, hi, limit=5000, revision=revision)
            revision = revision or rev
            for kv in kvs:
                tid = self.keys.id_of(kv.key)
                if tid in want:
                    found[tid] = kv.value
            if not more or not kvs:
                return found, revision
            start = kvs[-1].key + b"\0"

    async def list_tasks(self, limit: int = 100, before: str | None = None,
                         match=None) -> tuple[list[TaskRecord], str | None]:
        """Newest first. `match(record) -> bool` filters; returns (records, next cursor)."""
        out: list[TaskRecord] = []
        end = self.keys.task(before) if before else prefix_end(self.keys.tasks)
        while len(out) < limit:
            kvs, more, _ = await self.kv.range(self.keys.tasks, end, limit=min(max(limit * 2, 200), 2000),
                                               descend=True)
            for kv in kvs:
                rec = decode(kv.value)
                if match is None or match(rec):
                    out.append(rec)
                    if len(out) >= limit:
                        return out, rec.id
            if not more or not kvs:
                return out, None
            end = kvs[-1].key
        return out, (out[-1].id if out else None)

    # -- the node's step: complete finished attempts and claim new ones in one txn ----

    async def step(self, node_id: str, lease: int, completions: list[Completion],
                   claims: list[Claim]) -> StepResult:
        """One transaction: each completion and each claim is a nested transaction with
        its own compare, so one lost race does not undo the rest. A task that ends is
        taken to have no dependents (a compare checks it); one that has some is completed
        again right after, in a transaction of its own that moves them too."""
        k = self.keys
        ops = []
        retention = await self.kv.retention_lease() if any(c.record.is_final for c in completions) else 0
        for c in completions:
            rec = c.record
            compares, success = self._completion(node_id, c, retention)
            failure = [get_op(k.task(rec.id)), get_op(k.running(node_id, rec.id))]
            if rec.is_final:
                compares.append(created_since(k.edges_of(rec.id), 0))   # nothing depends on it
                failure.append(self.dag.edges_op(rec.id))                # else: what does
            ops.append(sub_txn(compares, success, failure))
        for c in claims:
            ops.append(sub_txn(
                [cmp(c.queue_key, "MOD", c.queued_rev), cmp(k.task(c.task_id), "MOD", c.queued_rev)],
                [delete_op(c.queue_key), put_op(k.running(node_id, c.task_id), str(c.record.attempt).encode(), lease),
                 put_op(k.task(c.task_id), encode(c.record))]))
        result = StepResult(revision=0)
        if not ops:
            return result
        resp = await self.kv.txn([], ops)
        result.revision = resp.header.revision
        with_dependents: dict[int, Edges] = {}
        for c, r in zip(completions, resp.responses[:len(completions)]):
            ok = r.response_txn.succeeded
            result.completed.append(ok)
            if ok:
                result.completed_rev[c.record.id] = resp.header.revision
                continue
            task_kvs = r.response_txn.responses[0].response_range.kvs
            run_kvs = r.response_txn.responses[1].response_range.kvs
            if run_kvs and run_kvs[0].create_revision == c.attempt_rev and task_kvs:
                if task_kvs[0].mod_revision == c.read_rev:
                    # only the edges compare failed: the failure branch read them
                    with_dependents[len(result.completed) - 1] = self.dag.edges_of(
                        r.response_txn.responses[2], resp.header.revision)
                else:
                    # the task record moved (a cancel request): recompute from what is there now
                    result.current[c.record.id] = (decode(task_kvs[0].value), task_kvs[0].mod_revision)
            else:
                result.current[c.record.id] = (None, 0)  # fenced: the attempt is stale
        result.claimed = [r.response_txn.succeeded for r in resp.responses[len(completions):]]
        # as few transactions as fit: a wide fan-in ends many tasks with the same dependent
        todo = list(with_dependents)
        counts = [dag.INLINE_EDGES + 1 if e.more else len(e.kvs) for e in with_dependents.values()]
        for group in dag.pack(counts, most=ENDS_PER_CASCADE):
            await self._complete_with_dependents(
                node_id, completions, [todo[i] for i in group], retention, result,
                {completions[todo[i]].record.id: with_dependents[todo[i]] for i in group})
        return result

    def _completion(self, node_id: str, c: Completion, retention: int) -> tuple[list, list]:
        """The compares and ops that commit the end of an attempt (without its dependents)."""
        k, rec = self.keys, c.record
        running = k.running(node_id, rec.id)
        compares = [cmp(running, "CREATE", c.attempt_rev), cmp(k.task(rec.id), "MOD", c.read_rev)]
        success = [delete_op(running), delete_op(k.cancel(node_id, rec.id)),
                   *put_record_ops(self.keys, rec, lease=retention if rec.is_final else 0)]
        return compares, success

    async def _complete_with_dependents(self, node_id: str, completions: list[Completion], todo: list[int],
                                        retention: int, result: StepResult, edges: dict[str, Edges]) -> None:
        """Commit the ends of tasks that others depend on, in one transaction that moves
        their dependents too (or leaves a marker for many); record the outcomes in
        `result`. `edges`: theirs, as the step read them. One whose record moved or whose
        attempt was fenced is reported as such; when a dependent moved meanwhile, the rest
        are tried again with what the failed transaction read."""
        k = self.keys
        for _ in range(20):
            if not todo:
                return
            compares, success, failure = [], [], []
            for i in todo:
                c = completions[i]
                more = self._completion(node_id, c, retention)
                compares += more[0]
                success += more[1]
                failure += [get_op(k.task(c.record.id)), get_op(k.running(node_id, c.record.id))]
            cascade = await self.dag.plan(*(completions[i].record for i in todo), edges=edges, cached=True)
            resp = await self.kv.txn(compares + cascade.compares, success + cascade.ops,
                                     failure + self.dag.probe(cascade))
            if resp.succeeded:
                self.dag.committed(cascade, resp.header.revision)
                for i in todo:
                    result.completed[i] = True
                    result.completed_rev[completions[i].record.id] = resp.header.revision
                return
            edges = self.dag.refresh(cascade, resp.responses[2 * len(todo):], resp.header.revision)
            still = []
            for n, i in enumerate(todo):
                c = completions[i]
                task_kvs = resp.responses[2 * n].response_range.kvs
                run_kvs = resp.responses[2 * n + 1].response_range.kvs
                if not (run_kvs and run_kvs[0].create_revision == c.attempt_rev and task_kvs):
                    result.current[c.record.id] = (None, 0)   # fenced
                elif task_kvs[0].mod_revision != c.read_rev:
                    result.current[c.record.id] = (decode(task_kvs[0].value), task_kvs[0].mod_revision)
                else:
                    still.append(i)   # a dependent moved meanwhile, or a new one came: again
            todo = still
        for i in todo:   # the node tries again next step
            result.current[completions[i].record.id] = (completions[i].record, completions[i].read_rev)

    async def delete_tasks(self, ids: list[str]) -> None:
        """Remove task records (a deleted job). Running ones keep their running key until
        their node notices the cancel; their late completion finds no record and is dropped."""
        for i in range(0, len(ids), 64):
            recs = await self.get_many(ids[i:i + 64])
            ops = []
            for tid, (rec, _) in recs.items():
                ops += [delete_op(self.keys.task(tid)), delete_op(self.keys.queue(rec.spec.priority, tid)),
                        delete_op(self.keys.waits(tid)), delete_op(self.keys.cascade(tid))]
            if ops:
                await self.kv.txn([], ops)

    async def put_progress(self, node_id: str, record: TaskRecord, read_rev: int, attempt_rev: int) -> int:
        """Write a running task's progress if its attempt is still ours and the record
        unchanged; the new mod revision, or 0 when something moved meanwhile."""
        k = self.keys
        resp = await self.kv.txn([cmp(k.running(node_id, record.id), "CREATE", attempt_rev),
                                  cmp(k.task(record.id), "MOD", read_rev)],
                                 [put_op(k.task(record.id), encode(record))])
        return resp.header.revision if resp.succeeded else 0

    # -- cancel, requeue ---------------------------------------------------------------

    async def cancel(self, task_id: str, unstarted_only: bool = False) -> TaskRecord:
        """Queued: cancelled at once. Running: flagged, and the node running it is told
        through cancel/<node>/<id> (under the node's lease). Finished: Conflict.
        `unstarted_only`: a running task is only cancelled if its node claimed it ahead
        and has not started its process yet (the node decides; the record stays as is)."""
        k = self.keys
        for _ in range(20):
            rec, rev = await self.get_task(task_id)
            now = self.clock.time()
            if rec.is_final:
                raise Conflict(f"task {task_id} already ended {rec.state.value}; nothing to cancel")
            if rec.state in (TaskState.queued, TaskState.waiting, TaskState.held):
                new = transitions.cancel_queued(rec, now)
                lease = await self.kv.retention_lease()
                compares, ops, _ = await self.dag.cascade(new)
                resp = await self.kv.txn([cmp(k.task(task_id), "MOD", rev), *compares], [
                    delete_op(k.queue(rec.spec.priority, task_id)), delete_op(k.waits(task_id)),
                    put_op(k.task(task_id), encode(new), lease), *ops])
            elif unstarted_only:
                node = await self.nodes.node(rec.node or "")
                if node is None or rec.cancel_requested:
                    return rec
                new = rec
                resp = await self.kv.txn([cmp(k.task(task_id), "MOD", rev)],
                                         [put_op(k.cancel(node.id, task_id), b"unstarted", node.lease)])
            else:
                node = await self.nodes.node(rec.node or "")
                new = transitions.request_cancel(rec)
                ops = [put_op(k.task(task_id), encode(new))]
                if node is not None:
                    ops.append(put_op(k.cancel(node.id, task_id), b"", node.lease))
                resp = await self.kv.txn([cmp(k.task(task_id), "MOD", rev)], ops)
            if resp.succeeded:
                return new
        raise Conflict(f"task {task_id} kept changing while cancelling it; try again")

    async def cancel_all(self, ids: list[str]) -> int:
        """Cancel every task of `ids` that has not ended, all at once; how many were. Ones
        already ended or gone are skipped. For tasks that do not depend on each other (a
        flow's instances): cancels inside one DAG would race on their cascades."""
        async def one(task_id: str) -> bool:
            try:
                await self.cancel(task_id)
                return True
            except (Conflict, NotFound):
                return False
        return sum(await asyncio.gather(*(one(t) for t in ids)))

    async def requeue_lost(self, task_id: str, node_id: str, limit: int = DEFAULT_NODE_LOSS_RETRIES,
                           ended_by: EndedBy = EndedBy.node_lost) -> TaskRecord | None:
        """The reaper's move for a task whose node died (or lost its lease): if its current
        attempt is still the one on `node_id` and that node's running key is gone, requeue
        it or, past its node-loss limit (`limit` unless the task sets its own), fail it."""
        return await self._end_lost(task_id, node_id, lambda rec, now: transitions.node_lost(
            rec, node_id, now, limit, ended_by))

    async def _end_lost(self, task_id: str, node_id: str, decide) -> TaskRecord | None:
        k = self.keys
        for _ in range(20):
            try:
                rec, rev = await self.get_task(task_id)
            except NotFound:
                return None
            if rec.state != TaskState.running or rec.node != node_id:
                return None
            new = decide(rec, self.clock.time())
            lease = await self.kv.retention_lease() if new.is_final else 0
            ops = [*put_record_ops(k, new, lease=lease), delete_op(k.cancel(node_id, task_id))]
            more_cmp, more_ops, _ = await self.dag.cascade(new)
            resp = await self.kv.txn([cmp(k.task(task_id), "MOD", rev),
                                      cmp(k.running(node_id, task_id), "CREATE", 0), *more_cmp], ops + more_ops)
            if resp.succeeded:
                return new
            # a live attempt (the running key exists) or a concurrent change: look again
            kvs, _, _ = await self.kv.range(k.running(node_id, task_id))
            if kvs:
                return None
        return None

    async def release_orphan(self, node_id: str, task_id: str, attempt_rev: int) -> None:
        """Drop a running key its node does not know it holds, and requeue the task (its
        process never started, so this counts against neither limit)."""
        key = self.keys.running(node_id, task_id)
        resp = await self.kv.txn([cmp(key, "CREATE", attempt_rev)], [delete_op(key)])
        if resp.succeeded:
            await self._end_lost(task_id, node_id, lambda rec, now: transitions.release_orphan(rec, node_id, now))

    async def explain_queued(self, why: Callable[[dict], str | None]) -> int:
        """One pass over the queue: each queued task's reason says why no live node can run
        it (`why(spec as JSON data)`, None when one can), or loses such a reason once one
        can. Only a record whose reason changes is rewritten, and only if it has not moved
        since it was read (a claim wins). Returns how many were rewritten."""
        k, rewritten = self.keys, 0
        start, stop = k.queues, prefix_end(k.queues)
        while True:
            kvs, more, _ = await self.kv.range(start, stop, limit=2000)
            for kv in kvs:
                data = orjson.loads(kv.value)   # a peek: most records are left as they are
                changed, reason = transitions.explain_unplaceable(data.get("reason"), why(data["spec"]))
                if not changed:
                    continue
                new = decode(kv.value).model_copy(update={"reason": reason})
                resp = await self.kv.txn([cmp(kv.key, "MOD", kv.mod_revision), cmp(k.task(new.id), "MOD", kv.mod_revision)],
                                         put_record_ops(k, new))
                rewritten += resp.succeeded
            if not more or not kvs:
                return rewritten
            start = kvs[-1].key + b"\0"

    async def tasks_in_state(self, state: str):
        """Every task record in `state`, oldest first, read in pages."""
        start, stop = self.keys.tasks, prefix_end(self.keys.tasks)
        marker = f'"state":"{state}"'.encode()
        while True:
            kvs, more, _ = await self.kv.range(start, stop, limit=2000)
            for kv in kvs:
                if marker in kv.value:
                    yield decode(kv.value)
            if not more or not kvs:
                return
            start = kvs[-1].key + b"\0"

    async def running_tasks(self) -> dict[str, set[str]]:
        """node -> task ids with a live running key."""
        kvs, _, _ = await self.kv.get_prefix(self.keys.all_running)
        out: dict[str, set[str]] = {}
        for kv in kvs:
            out.setdefault(self.keys.node_of_running(kv.key), set()).add(self.keys.id_of(kv.key))
        return out

    async def running_on(self, node_id: str, revision: int = 0) -> list[KV]:
        """The running keys of a node, now or as they were at `revision` (StoreCompacted
        when etcd no longer holds that revision)."""
        prefix = self.keys.running_on(node_id)
        kvs, _, _ = await self.kv.range(prefix, prefix_end(prefix), revision=revision)
        return kvs
