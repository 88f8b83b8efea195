"""DAG edges in etcd: recording a new task's dependencies (in chunks), and carrying an
ended task to its dependents: in the transaction that ends it when it has few, else
through a durable marker (`cascades/<task>`) finished chunk by chunk by `finish`. What
moves where is decided in logic/dag.py; this module reads the keys and builds the ops.

Keys (see logic/dag.py): `deps/<dependency>/<dependent>` is an edge, b"w" while pending
and b"c" once consumed (kept under the retention lease, so a result's dependents are
still known); `waits/<task>` holds a waiting task's counters. Each edge is consumed
exactly once: the transaction that counts it off compares it pending and marks it
consumed. An edge is only added while its dependency's record is unchanged from a read
that found it not ended, and a dependency ends only with a compare that no edge appeared
since it read them (or with a marker that is finished after), so no edge is missed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import orjson

from ..logic import dag
from ..logic.clock import SYSTEM_CLOCK, Clock
from ..logic.dag import Move, Wait
from ..model import TaskRecord, TaskState
from ..model.keys import Keys
from .kv import Etcd, cmp, delete_op, get_op, prefix_end, prefix_op, put_op, sub_txn
from .records import encode, put_record_ops, read_records

PENDING, CONSUMED = b"w", b"c"
# counters of waiting tasks a store keeps from its own reads and commits
SEEN_WAITS = 10_000


def created_since(prefix: bytes, revision: int):
    """A compare that holds while no key under `prefix` was created after `revision`
    (with 0: while there is no key under it at all)."""
    c = cmp(prefix, "CREATE", revision + 1, "LESS")
    c.range_end = prefix_end(prefix)
    return c


@dataclass
class _Plan:
    """What one cascade transaction reads and writes, as it is built."""
    compares: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    edges: list = field(default_factory=list)     # (dependency, its state, dependent), in order
    waits: dict = field(default_factory=dict)     # dependent -> (Wait | None, mod revision)
    records: dict = field(default_factory=dict)   # settled dependent -> (record, mod revision)
    moves: dict = field(default_factory=dict)     # dependent -> its counters after (None: settled)
    bytes: int = 0


@dataclass(frozen=True)
class Edges:
    """A task's edges as read at `revision`: the first few (`more`: there were others)."""
    kvs: list
    more: bool
    revision: int


@dataclass
class Cascade:
    """What carries some tasks' ends to their dependents, in the transaction that ends them."""
    ended: list[str] = field(default_factory=list)     # the tasks that end, whose edges it read
    compares: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    moved: set[str] = field(default_factory=set)
    waits: dict = field(default_factory=dict)          # dependent -> counters it writes (None: settled)


class DagStore:
    def __init__(self, kv: Etcd, keys: Keys, clock: Clock = SYSTEM_CLOCK):
        self.kv = kv
        self.keys = keys
        self.clock = clock
        # waiting tasks' counters (and mod revisions) as this store last read or wrote
        # them: a node ending a fan-in's tasks one after another need not read them again
        self._seen: dict[str, tuple[Wait, int]] = {}

    # -- reads ----------------------------------------------------------------------

    async def states(self, ids: list[str]) -> dict[str, tuple[TaskState, int]]:
        """The state and mod revision of each task of `ids` that exists, peeked from its
        record without building it (one txn per 128)."""
        out: dict[str, tuple[TaskState, int]] = {}
        for i in range(0, len(ids), 128):
            resp = await self.kv.txn([], [get_op(self.keys.task(t)) for t in ids[i:i + 128]])
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    out[self.keys.id_of(kv.key)] = (TaskState(orjson.loads(kv.value)["state"]), kv.mod_revision)
        return out

    async def _waits(self, ids: list[str], cached: bool = False) -> dict[str, tuple[Wait | None, int]]:
        """Each of `ids`' counters and their mod revision; (None, 0) when it does not wait.
        `cached`: those this store last committed or read are not read again."""
        out: dict[str, tuple[Wait | None, int]] = {t: (None, 0) for t in ids}
        if cached:
            out.update((t, self._seen[t]) for t in ids if t in self._seen)
            ids = [t for t in ids if t not in self._seen]
        for i in range(0, len(ids), 128):
            resp = await self.kv.txn([], [get_op(self.keys.waits(t)) for t in ids[i:i + 128]])
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    t, wait = self.keys.id_of(kv.key), Wait.from_dict(orjson.loads(kv.value))
                    out[t] = (wait, kv.mod_revision)
                    self._remember(t, wait, kv.mod_revision)
        return out

    async def dependents(self, task_id: str) -> list[str]:
        """Every task recorded as depending on `task_id` (pending or consumed edges)."""
        prefix = self.keys.edges_of(task_id)
        out, start = [], prefix
        while True:
            kvs, more, _ = await self.kv.range(start, prefix_end(prefix), limit=5000, keys_only=True)
            out += [self.keys.id_of(kv.key) for kv in kvs]
            if not more or not kvs:
                return out
            start = kvs[-1].key + b"\0"

    async def pending(self) -> list[str]:
        """Tasks whose cascade marker is still there: their dependents are not all moved."""
        kvs, _, _ = await self.kv.get_prefix(self.keys.cascades)
        return [self.keys.id_of(kv.key) for kv in kvs]

    # -- recording a new task's dependencies ------------------------------------------

    async def create(self, record: TaskRecord, value_check) -> TaskRecord | None:
        """Write a new task that depends on others, with its first chunk of dependencies
        recorded; the rest follow in `record_rest`. None when its id exists already.
        `value_check(record) -> bytes` encodes it (refusing one too large)."""
        deps = dag.dependencies(record.spec.depends_on)
        chunk = deps[:dag.REGISTER_CHUNK]
        for _ in range(50):
            states = await self.states(chunk)
            first = Wait(left=len(deps), recorded=0, total=len(deps), allow_failed=record.spec.allow_failed_deps)
            move, edges = dag.record_chunk(first, chunk, {d: s for d, (s, _) in states.items()})
            left = move.wait.left if move.wait else 0
            new = record.model_copy(update={"deps_left": left, "state": move.state, "reason": move.reason,
                                            "finished_at": record.submitted_at if move.settled and
                                            move.state != TaskState.queued else None})
            value = value_check(new)
            lease = await self.kv.retention_lease() if new.is_final else 0
            compares = [cmp(self.keys.task(new.id), "CREATE", 0)]
            compares += [cmp(self.keys.task(d), "MOD", states[d][1]) for d in edges]
            ops = put_record_ops(self.keys, new, value, lease)
            ops += [put_op(self.keys.edge(d, new.id), PENDING) for d in edges]
            if not move.settled:
                ops.append(put_op(self.keys.waits(new.id), _dumps(move.wait)))
            resp = await self.kv.txn(compares, ops)
            if resp.succeeded:
                return new
            if await read_records(self.kv, self.keys, [new.id]):
                return None
        return None

    async def record_rest(self, task_id: str) -> None:
        """Record the dependencies of a waiting task not recorded yet, a chunk a
        transaction. Safe to run twice at once, or after a crash between chunks: the
        progress is in waits/<id>, and each chunk compares it."""
        record, states, reuse = None, {}, False
        (wait, wrev), = (await self._waits([task_id])).values()
        while True:
            if wait is None or wait.recorded >= wait.total:
                return
            if record is None:
                found = await read_records(self.kv, self.keys, [task_id])
                if not found:
                    return
                record = found[task_id][0]
            chunk = dag.dependencies(record.spec.depends_on)[wait.recorded:wait.recorded + dag.REGISTER_CHUNK]
            if not reuse:
                states = await self.states(chunk)
            move, edges = dag.record_chunk(wait, chunk, {d: s for d, (s, _) in states.items()})
            compares = [cmp(self.keys.waits(task_id), "MOD", wrev)]
            compares += [cmp(self.keys.task(d), "MOD", states[d][1]) for d in edges]
            ops = [put_op(self.keys.edge(d, task_id), PENDING) for d in edges]
            if move.settled:
                current, rev = (await read_records(self.kv, self.keys, [task_id]))[task_id]
                compares.append(cmp(self.keys.task(task_id), "MOD", rev))
                ops += await self._settle_ops(task_id, current, move)
            else:
                ops.append(put_op(self.keys.waits(task_id), _dumps(move.wait)))
            resp = await self.kv.txn(compares, ops, [get_op(self.keys.waits(task_id))])
            if resp.succeeded:
                if move.settled:
                    return
                wait, wrev, reuse = move.wait, resp.header.revision, False
                continue
            # lost a race, most often to an end that counted one off the counter meanwhile:
            # go again with the counter the failure read and the states already read; if
            # it fails again, read the states too
            kvs = resp.responses[0].response_range.kvs
            seen = Wait.from_dict(orjson.loads(kvs[0].value)) if kvs else None
            reuse = not reuse and seen is not None and seen.recorded == wait.recorded
            wait, wrev = seen, kvs[0].mod_revision if kvs else 0

    async def record_all_rest(self) -> None:
        """Finish every recording left half done (its submitter died between chunks)."""
        kvs, _, _ = await self.kv.get_prefix(self.keys.all_waits)
        for kv in kvs:
            w = Wait.from_dict(orjson.loads(kv.value))
            if w.recorded < w.total:
                await self.record_rest(self.keys.id_of(kv.key))

    # -- carrying an end to the dependents ----------------------------------------------

    async def cascade(self, *finished: TaskRecord) -> tuple[list, list, set[str]]:
        """Compares and ops that carry the end of the `finished` tasks to their
        dependents, to commit in the transaction that ends them (which must also compare
        their records); see `plan`. Returns (compares, ops, the dependents it moves)."""
        c = await self.plan(*finished)
        return c.compares, c.ops, c.moved

    async def plan(self, *finished: TaskRecord, edges: dict[str, Edges] | None = None,
                   cached: bool = False) -> Cascade:
        """The cascade of the `finished` tasks' ends, to commit in the transaction that
        ends them. A few edges are consumed right there, in waves (a dependent that fails
        upstream passes it on); a task with more than the budget left gets a marker
        instead, and `finish` does the rest in chunks. `edges`: ranges already read (by a
        step's failure branch); the others are read, a wave in one round trip. `cached`:
        take counters this store committed itself instead of reading them (the commit's
        compares catch a stale one; `refresh` then takes what the failure branch read)."""
        ended = [f for f in finished if f.is_final]
        out = Cascade(ended=[f.id for f in ended])
        if not ended:
            return out
        known = dict(edges or {})
        plan, frontier, budget = _Plan(), ended, dag.INLINE_EDGES
        while frontier:
            known.update(await self.read_edges([f.id for f in frontier if f.id not in known]))
            wave = []
            for f in frontier:
                found = known[f.id]
                if found.more or not dag.inline(len(found.kvs), budget):
                    plan.ops.append(self._marker_op(f))
                    continue
                budget -= len(found.kvs)
                plan.compares.append(created_since(self.keys.edges_of(f.id), found.revision))
                wave += [(f.id, f.state, self.keys.id_of(kv.key)) for kv in found.kvs]
                if found.kvs:
                    retention = await self.kv.retention_lease()
                for kv in found.kvs:
                    plan.compares.append(cmp(kv.key, "VALUE", PENDING))
                    plan.ops.append(put_op(kv.key, CONSUMED, retention))
            frontier = await self._fold(plan, wave, cached) if wave else []
        if plan.bytes > dag.CASCADE_BYTES:  # settled records too big for one request: chunks
            out.ops = [self._marker_op(f) for f in ended]
            return out
        await self._emit(plan, conditional_markers=False)
        out.compares, out.ops, out.moved, out.waits = plan.compares, plan.ops, set(plan.waits), plan.moves
        return out

    def edges_op(self, task_id: str):
        """Read a task's edges inside a transaction: as many as an ending transaction
        consumes, and one more to tell that it has too many."""
        return prefix_op(self.keys.edges_of(task_id), dag.INLINE_EDGES + 1)

    @staticmethod
    def edges_of(reply, revision: int) -> Edges:
        """Edges from the reply to an `edges_op` in a transaction committed at `revision`
        (the transaction writes no edge of its own, so that is the revision they hold at)."""
        r = reply.response_range
        return Edges(list(r.kvs), r.more, revision)

    async def read_edges(self, ids: list[str]) -> dict[str, Edges]:
        """Several tasks' edges (see `edges_op`), in one round trip per 128."""
        out: dict[str, Edges] = {}
        for i in range(0, len(ids), 128):
            chunk = ids[i:i + 128]
            resp = await self.kv.txn([], [self.edges_op(t) for t in chunk])
            out.update({t: self.edges_of(r, resp.header.revision) for t, r in zip(chunk, resp.responses)})
        return out

    def probe(self, c: Cascade) -> list:
        """Reads for the failure branch of the transaction that commits `c`: the counters
        it compared and the ended tasks' edges, so a retry needs no read of its own."""
        return [get_op(self.keys.waits(d)) for d in c.waits] + [self.edges_op(t) for t in c.ended]

    def refresh(self, c: Cascade, replies: list, revision: int) -> dict[str, Edges]:
        """Take in what `probe` read when `c`'s transaction failed: the counters into the
        cache; returns the edges, for the next `plan`."""
        for d, r in zip(c.waits, replies):
            kvs = r.response_range.kvs
            self._seen.pop(d, None)
            if kvs:
                self._remember(d, Wait.from_dict(orjson.loads(kvs[0].value)), kvs[0].mod_revision)
        return {t: self.edges_of(r, revision) for t, r in zip(c.ended, replies[len(c.waits):])}

    def committed(self, c: Cascade, revision: int) -> None:
        """`c` was committed at `revision`: its counters are what it wrote."""
        for d, wait in c.waits.items():
            self._seen.pop(d, None)
            if wait is not None:
                self._remember(d, wait, revision)

    def _remember(self, task_id: str, wait: Wait, revision: int) -> None:
        if len(self._seen) >= SEEN_WAITS:   # a cache, not a record: drop it all and start over
            self._seen.clear()
        self._seen[task_id] = (wait, revision)

    async def finish(self, task_id: str) -> int:
        """Carry an ended task to every dependent its marker stands for, a chunk a
        transaction, then drop the marker; how many edges it consumed. A crash between
        chunks loses nothing: each chunk consumes its edges as it moves their dependents,
        so the next run (here, or the reaper's) goes on with the edges still pending."""
        marker = self.keys.cascade(task_id)
        kvs, _, _ = await self.kv.range(marker)
        if not kvs:
            return 0
        state, marker_rev = TaskState(json.loads(kvs[0].value)["state"]), kvs[0].create_revision
        prefix = self.keys.edges_of(task_id)
        start, consumed, size = prefix, 0, dag.CHUNK_EDGES
        while True:
            page, more, _ = await self.kv.range(start, prefix_end(prefix), limit=200)
            todo = [kv for kv in page if kv.value == PENDING][:size]
            if not todo:
                if more and page:
                    start = page[-1].key + b"\0"
                    continue
                await self.kv.txn([cmp(marker, "CREATE", marker_rev)], [delete_op(marker)])
                return consumed
            plan = _Plan(compares=[cmp(marker, "CREATE", marker_rev)])
            for kv in todo:
                plan.compares.append(cmp(kv.key, "VALUE", PENDING))
                plan.ops.append(put_op(kv.key, CONSUMED, await self.kv.retention_lease()))
            await self._fold(plan, [(task_id, state, self.keys.id_of(kv.key)) for kv in todo])
            if plan.bytes > dag.CASCADE_BYTES and len(todo) > 1:
                size = max(1, len(todo) // 2)      # big records: fewer a transaction
                continue
            await self._emit(plan, conditional_markers=True)
            resp = await self.kv.txn(plan.compares, plan.ops)
            if resp.succeeded:
                consumed += len(todo)
                start = todo[-1].key + b"\0"
                size = dag.CHUNK_EDGES
            elif not (await self.kv.range(marker))[0]:
                return consumed          # someone else finished it

    async def finish_all(self) -> int:
        """Finish every cascade marker there is; how many edges that consumed."""
        done = 0
        while ids := await self.pending():
            for t in ids:
                done += await self.finish(t)
        return done

    def _marker_op(self, record: TaskRecord):
        return put_op(self.keys.cascade(record.id), json.dumps({"state": record.state.value}).encode())

    async def _fold(self, plan: _Plan, wave: list[tuple[str, TaskState, str]], cached: bool = False
                    ) -> list[TaskRecord]:
        """Add a wave of consumed edges to `plan`: read what it reaches for the first
        time, fold every edge so far, and return the dependents this wave failed upstream
        (they pass it on)."""
        plan.edges += wave
        new = list(dict.fromkeys(d for _, _, d in wave if d not in plan.waits))
        plan.waits.update(await self._waits(new, cached))
        before = {d for d, m in dag.consume(plan.edges[:-len(wave)], self._initial(plan)).items() if m.settled}
        moves = dag.consume(plan.edges, self._initial(plan))
        settled = [d for d, m in moves.items() if m.settled and d not in before]
        plan.records.update(await read_records(self.kv, self.keys, [d for d in settled if d not in plan.records]))
        now = self.clock.time()
        out = []
        for d in settled:
            if d in plan.records and moves[d].state != TaskState.queued:
                out.append(dag.settle(plan.records[d][0], moves[d], now))
        plan.bytes = sum(2 * len(encode(r)) for r, _ in plan.records.values())
        return out

    @staticmethod
    def _initial(plan: _Plan) -> dict[str, Wait | None]:
        return {d: w for d, (w, _) in plan.waits.items()}

    async def _emit(self, plan: _Plan, conditional_markers: bool) -> None:
        """The compares and puts of the folded moves (once per dependent)."""
        now, retention = self.clock.time(), 0
        for d, move in dag.consume(plan.edges, self._initial(plan)).items():
            plan.compares.append(cmp(self.keys.waits(d), "MOD", plan.waits[d][1]))
            plan.moves[d] = move.wait
            if not move.settled:
                plan.ops.append(put_op(self.keys.waits(d), _dumps(move.wait)))
                continue
            if d not in plan.records:   # its record is gone: drop the counters with it
                plan.ops.append(delete_op(self.keys.waits(d)))
                continue
            record, rev = plan.records[d]
            plan.compares.append(cmp(self.keys.task(d), "MOD", rev))
            new = dag.settle(record, move, now)
            if new.is_final and not retention:
                retention = await self.kv.retention_lease()
            plan.ops += put_record_ops(self.keys, new, lease=retention if new.is_final else 0)
            plan.ops.append(delete_op(self.keys.waits(d)))
            if new.is_final and conditional_markers:
                plan.ops.append(self._marker_if_edges(new))

    def _marker_if_edges(self, record: TaskRecord):
        """A marker for a task this transaction ends, if anything waits on it: its
        dependents are then moved by `finish`. Nothing can add an edge after this
        transaction (it changes the record the adder compares)."""
        return sub_txn([created_since(self.keys.edges_of(record.id), 0)], [], [self._marker_op(record)])

    async def _settle_ops(self, task_id: str, record: TaskRecord, move: Move) -> list:
        new = dag.settle(record, move, self.clock.time())
        lease = await self.kv.retention_lease() if new.is_final else 0
        ops = [*put_record_ops(self.keys, new, lease=lease), delete_op(self.keys.waits(task_id))]
        if new.is_final:
            ops.append(self._marker_if_edges(new))
        return ops


def _dumps(wait: Wait | None) -> bytes:
    return orjson.dumps(wait.as_dict())
