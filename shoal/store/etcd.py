"""etcd access for shoal. Every state change is one transaction that compares what
it read (mod_revision, create_revision) so concurrent nodes never double-apply."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable
from urllib.parse import urlparse

import aetcd
import grpc
import orjson
from aetcd import rpc
from aetcd.exceptions import ClientError, ConnectionFailedError, ConnectionTimeoutError
from aetcd.exceptions import RevisionCompactedError
from aetcd.utils import prefix_range_end
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ..errors import Conflict, InvalidSpec, NotFound, StoreFull, StoreUnavailable, TooLarge
from ..model import NodeInfo, TaskRecord, TaskState
from ..model.keys import Keys
from ..logic import dag, transitions
from .flows import Flows

log = logging.getLogger("shoal.store")

# etcd refuses requests over 1.5 MiB by default; leave room for keys and framing.
MAX_REQUEST_BYTES = 1536 * 1024
MAX_VALUE_BYTES = MAX_REQUEST_BYTES - 64 * 1024
_TRANSIENT = (ConnectionFailedError, ConnectionTimeoutError)


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


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


class WatchReset:
    """Yielded by watch() when etcd compacted past the watcher: re-read, then go on."""
    def __init__(self, revision: int):
        self.revision = revision


def _grpc_target(endpoints: list[str]) -> tuple[str, int]:
    """aetcd builds its gRPC target as f'{host}:{port}'. For several endpoints we hand it
    an 'ipv4:a:p,b:p' list so gRPC's pick_first fails over between them."""
    addrs = []
    for ep in endpoints:
        u = urlparse(ep if "//" in ep else f"http://{ep}")
        if u.scheme not in ("http", ""):
            raise StoreUnavailable(f"etcd endpoint {ep!r}: only http:// endpoints are supported")
        host, port = u.hostname or "127.0.0.1", u.port or 2379
        ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        addrs.append(f"{ip}:{port}")
    if len(addrs) == 1:
        ip, port = addrs[0].rsplit(":", 1)
        return ip, int(port)
    head, last_port = ",".join(addrs).rsplit(":", 1)
    return "ipv4:" + head, int(last_port)


def encode(record: TaskRecord) -> bytes:
    return record.model_dump_json(exclude_defaults=False).encode()


def decode(value: bytes) -> TaskRecord:
    return TaskRecord.model_validate_json(value)


def _cmp(key: bytes, target: str, value: int, result: str = "EQUAL"):
    c = rpc.Compare(key=key, target=getattr(rpc.Compare, target), result=getattr(rpc.Compare, result))
    if target == "MOD":
        c.mod_revision = value
    elif target == "CREATE":
        c.create_revision = value
    elif target == "VERSION":
        c.version = value
    return c


def _put(key: bytes, value: bytes, lease: int = 0):
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def _delete(key: bytes):
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def _get(key: bytes):
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def _sub(compare, success, failure=()):
    return rpc.RequestOp(request_txn=rpc.TxnRequest(compare=compare, success=success, failure=list(failure)))


def _kv(kv) -> KV:
    return KV(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)


class Store:
    """One connection to an etcd cluster, with shoal's transactions on top."""

    def __init__(self, endpoints: list[str] | str, prefix: str = "/shoal/", timeout_s: float = 5.0,
                 max_txn_ops: int = 128, retention_s: float = 7 * 86400, retry_for_s: float = 30.0):
        self.endpoints = [e for e in (endpoints.split(",") if isinstance(endpoints, str) else endpoints) if e]
        self.keys = Keys(prefix if prefix.endswith("/") else prefix + "/")
        self.timeout_s = timeout_s
        self.max_txn_ops = max_txn_ops
        self.retention_s = retention_s
        self.retry_for_s = retry_for_s
        host, port = _grpc_target(self.endpoints)
        self._client = aetcd.Client(host=host, port=port, timeout=timeout_s, options={
            "grpc.keepalive_time_ms": 2000, "grpc.keepalive_timeout_ms": 2000,
            "grpc.keepalive_permit_without_calls": 1,
            "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1000,
            "grpc.max_receive_message_length": 64 << 20,
        })
        self._retention: tuple[float, int] | None = None  # (expires_at, lease id)
        self.flows = Flows(self)

    # -- connection ---------------------------------------------------------------

    async def connect(self, wait_s: float = 0.0) -> None:
        """Connect and check etcd answers; wait up to `wait_s` for it to come up."""
        await self._client.connect()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                await self._client.kvstub.Range(rpc.RangeRequest(key=b"\0", serializable=True),
                                                timeout=min(self.timeout_s, 2.0))
                return
            except Exception as e:  # grpc raises its own types here
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"cannot reach etcd at {', '.join(self.endpoints)} ({type(e).__name__}). "
                        "Is etcd running there? Start a local cluster with `shoal up`, or pass "
                        "--etcd http://HOST:2379[,http://HOST2:2379] (SHOAL_ETCD)") from None
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, method: str, *args, retry: bool = True, **kw):
        """Run one etcd RPC; ride out etcd restarts and leader changes for retry_for_s."""
        if not retry:
            return await self._rpc(method, *args, **kw)
        async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_TRANSIENT), reraise=True,
                stop=stop_after_delay(self.retry_for_s),
                wait=wait_exponential(multiplier=0.05, max=1.0)):
            with attempt:
                return await self._rpc(method, *args, **kw)

    async def _rpc(self, method: str, *args, **kw):
        await self._client.connect()
        stub, name = method.split(".")
        fn = getattr(getattr(self._client, stub), name)  # stubs exist only once connected
        try:
            return await fn(*args, timeout=self.timeout_s, **kw)
        except rpc.AioRpcError as e:
            if e.code() == rpc.StatusCode.RESOURCE_EXHAUSTED and "space exceeded" in (e.details() or ""):
                raise StoreFull(
                    f"etcd at {', '.join(self.endpoints)} refuses writes: {e.details()}. Free space with "
                    "`etcdctl compact` + `etcdctl defrag` and `etcdctl alarm disarm`, raise its "
                    "--quota-backend-bytes, or keep finished tasks for less time (--retention)") from None
            aetcd.exceptions._handle_exception(e)

    async def _txn(self, compare, success, failure=(), retry: bool = True):
        req = rpc.TxnRequest(compare=compare, success=success, failure=list(failure))
        return await self._call("kvstub.Txn", req, retry=retry)

    async def _range(self, key: bytes, range_end: bytes | None = None, limit: int = 0,
                     descend: bool = False, revision: int = 0, keys_only: bool = False):
        req = rpc.RangeRequest(key=key, limit=limit, revision=revision, keys_only=keys_only)
        if range_end is not None:
            req.range_end = range_end
        if descend:
            req.sort_order = rpc.RangeRequest.DESCEND
            req.sort_target = rpc.RangeRequest.KEY
        resp = await self._call("kvstub.Range", req)
        return [_kv(kv) for kv in resp.kvs], resp.more, resp.header.revision

    async def get_prefix(self, prefix: bytes, limit: int = 0) -> tuple[list[KV], bool, int]:
        return await self._range(prefix, prefix_range_end(prefix), limit=limit)

    # -- leases -------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> int:
        resp = await self._call("leasestub.LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl_s, ID=0))
        return resp.ID

    async def keepalive(self, lease: int) -> int:
        """Refresh a lease once; the TTL left, or 0 when etcd no longer has it."""
        await self._client.connect()
        try:
            async for reply in self._client.leasestub.LeaseKeepAlive(
                    [rpc.LeaseKeepAliveRequest(ID=lease)], timeout=self.timeout_s):
                return reply.TTL
        except rpc.AioRpcError as e:
            aetcd.exceptions._handle_exception(e)
        return 0

    async def revoke_lease(self, lease: int) -> None:
        try:
            await self._call("leasestub.LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease), retry=False)
        except ClientError:
            pass

    async def _retention_lease(self) -> int:
        """Finished tasks are put under a shared lease so etcd deletes them after the
        retention period: nothing has to scan for old tasks. One lease per tenth of it."""
        if self.retention_s <= 0:
            return 0
        now = time.time()
        if self._retention and self._retention[0] > now:
            return self._retention[1]
        bucket = max(1.0, self.retention_s / 10)
        lease = await self.grant_lease(int(self.retention_s + bucket))
        self._retention = (now + bucket, lease)
        return lease

    # -- nodes --------------------------------------------------------------------

    async def put_node(self, info: NodeInfo, lease: int) -> None:
        await self._call("kvstub.Put", rpc.PutRequest(
            key=self.keys.node(info.id), value=info.model_dump_json().encode(), lease=lease))

    async def delete_node(self, node_id: str) -> None:
        await self._call("kvstub.DeleteRange", rpc.DeleteRangeRequest(key=self.keys.node(node_id)))

    async def nodes(self) -> list[NodeInfo]:
        kvs, _, _ = await self.get_prefix(self.keys.nodes)
        return [NodeInfo.model_validate_json(kv.value) for kv in kvs]

    async def node(self, node_id: str) -> NodeInfo | None:
        kvs, _, _ = await self._range(self.keys.node(node_id))
        return NodeInfo.model_validate_json(kvs[0].value) if kvs else None

    # -- tasks: submit, read, list ------------------------------------------------

    def check_size(self, record: TaskRecord, value: bytes | None = None) -> bytes:
        value = value if value is not None else encode(record)
        if 2 * len(value) > MAX_VALUE_BYTES:  # the record is written twice (task and queue)
            raise TooLarge(
                f"task {record.spec.name or record.id}: its spec is {len(value):,} bytes encoded; etcd takes "
                f"at most {MAX_REQUEST_BYTES:,} bytes a request and a task is stored twice while queued "
                f"(keep it under {MAX_VALUE_BYTES // 2:,}). Put large env values or inputs in a file.")
        return value

    async def submit(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Write new tasks; return them as written. Each is put only if its id is new, so
        a retried submit cannot reset a task a node already claimed. A task with
        dependencies goes in through submit_dependent, in order, after the ones before it."""
        if any(r.spec.depends_on for r in records):
            # all or none: every dependency outside the batch must exist before any is written
            mine = {r.id for r in records}
            outside = list(dict.fromkeys(d for r in records for d in r.spec.depends_on if d not in mine))
            found = await self._get_many(outside)
            missing = [f"tasks[{i}].depends_on: no task {d!r} (unknown id, or past its retention)"
                       for i, r in enumerate(records) for d in r.spec.depends_on if d not in mine and d not in found]
            if missing:
                raise InvalidSpec(missing)
            out: list[TaskRecord] = []
            for r in records:
                out += [await self.submit_dependent(r)] if r.spec.depends_on else await self.submit([r])
            return out
        encoded = [(r, self.check_size(r)) for r in records]
        batch, size = [], 0
        for record, value in encoded + [(None, b"")]:
            if record is None or len(batch) >= self.max_txn_ops or size + 2 * len(value) > MAX_VALUE_BYTES:
                if batch:
                    await self._txn([], batch)
                batch, size = [], 0
            if record is None:
                break
            batch.append(_sub([_cmp(self.keys.task(record.id), "CREATE", 0)], self._put_task_ops(record, value)))
            size += 2 * len(value)
        return records

    def _put_task_ops(self, record: TaskRecord, value: bytes | None = None, lease: int = 0) -> list:
        """Put a task record, and its queue entry when it is queued (the two stay equal)."""
        value = value if value is not None else encode(record)
        ops = [_put(self.keys.task(record.id), value, lease)]
        if record.state == TaskState.queued:
            ops.append(_put(self.keys.queue(record.spec.priority, record.id), value))
        return ops

    async def submit_dependent(self, record: TaskRecord) -> TaskRecord:
        """Write a task that depends on others, in one transaction with its dependencies'
        records (each gains it as a dependent), checking none of them moved meanwhile.
        Its state follows from theirs: queued, waiting, or upstream_failed at once."""
        deps = list(dict.fromkeys(record.spec.depends_on))
        for _ in range(50):
            current = await self._get_many(deps)
            missing = [d for d in deps if d not in current]
            if missing:
                raise InvalidSpec([f"depends_on: no task {m!r} (unknown id, or past its retention)"
                                   for m in missing])
            states = {d: rec.state for d, (rec, _) in current.items()}
            state, left, reason = dag.initial_state(states, record.spec.allow_failed_deps)
            new = record.model_copy(update={"state": state, "deps_left": left, "reason": reason,
                                            "finished_at": record.submitted_at if state.value == "upstream_failed" else None})
            value = self.check_size(new)
            compares = [_cmp(self.keys.task(new.id), "CREATE", 0)]
            lease = await self._retention_lease() if new.is_final else 0
            ops = self._put_task_ops(new, value, lease)
            if new.state == TaskState.waiting:
                for d, (rec, rev) in current.items():
                    if not rec.is_final:
                        compares.append(_cmp(self.keys.task(d), "MOD", rev))
                        ops += self._put_task_ops(rec.model_copy(update={"dependents": [*rec.dependents, new.id]}))
            size = sum(op.request_put.ByteSize() for op in ops)
            if size > MAX_REQUEST_BYTES - 64 * 1024:
                raise TooLarge(
                    f"task {new.spec.name or new.id}: it depends on {len(deps)} tasks that have not ended, "
                    f"and recording that takes a {size:,}-byte etcd request (at most {MAX_REQUEST_BYTES:,}). "
                    "Fan in through intermediate tasks (e.g. sum groups of 100, then the groups)")
            resp = await self._txn(compares, ops)
            if resp.succeeded:
                return new
            existing = await self._get_many([new.id])
            if existing:
                return existing[new.id][0]  # a retried request that had landed
        raise Conflict(f"task {record.id}: its dependencies kept changing; try again")

    async def _get_many(self, ids: list[str]) -> dict[str, tuple[TaskRecord, int]]:
        """Records and mod revisions of `ids`, read together (one txn per 128)."""
        out: dict[str, tuple[TaskRecord, int]] = {}
        for i in range(0, len(ids), 128):
            chunk = ids[i:i + 128]
            resp = await self._txn([], [_get(self.keys.task(t)) for t in chunk])
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    out[self.keys.id_of(kv.key)] = (decode(kv.value), kv.mod_revision)
        return out

    async def cascade(self, finished: TaskRecord, touched: set[str] | None = None
                      ) -> tuple[list, list, set[str]] | None:
        """Compares and ops that move the dependents of a task that just ended (and, when
        they fail upstream, theirs in turn), to commit in the same transaction. Returns
        None if a dependent is already in `touched` (another change in this transaction
        moves it: try again next transaction)."""
        compares, ops, seen = [], [], set()
        frontier = [finished] if finished.is_final and finished.dependents else []
        while frontier:
            want = [d for f in frontier for d in f.dependents if d not in seen]
            if not want:
                break
            if touched is not None and touched.intersection(want):
                return None
            current = await self._get_many(list(dict.fromkeys(want)))
            updated: dict[str, TaskRecord] = {}
            for f in frontier:
                for d in f.dependents:
                    if d not in current:
                        continue
                    rec = updated.get(d) or current[d][0]
                    updated[d] = dag.dependency_finished(rec, f.id, f.state, time.time())
            frontier = []
            retention = 0
            for d, new in updated.items():
                rec, rev = current[d]
                if new == rec:
                    continue
                seen.add(d)
                compares.append(_cmp(self.keys.task(d), "MOD", rev))
                if new.is_final and not retention:
                    retention = await self._retention_lease()
                ops += self._put_task_ops(new, lease=retention if new.is_final else 0)
                if new.is_final and new.dependents:
                    frontier.append(new)
        return compares, ops, seen

    async def get_task(self, task_id: str) -> tuple[TaskRecord, int]:
        kvs, _, _ = await self._range(self.keys.task(task_id))
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
            kvs, more, rev = await self._range(start, hi, limit=5000, revision=revision)
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
        end = self.keys.task(before) if before else prefix_range_end(self.keys.tasks)
        while len(out) < limit:
            kvs, more, _ = await self._range(self.keys.tasks, end, limit=min(max(limit * 2, 200), 2000),
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
        its own compare, so one lost race does not undo the rest."""
        k = self.keys
        ops = []
        retention = await self._retention_lease() if any(c.record.is_final for c in completions) else 0
        touched: set[str] = set()
        for c in completions:
            rec = c.record
            running = k.running(node_id, rec.id)
            compares = [_cmp(running, "CREATE", c.attempt_rev), _cmp(k.task(rec.id), "MOD", c.read_rev)]
            success = [_delete(running), _delete(k.cancel(node_id, rec.id)),
                       *self._put_task_ops(rec, lease=retention if rec.is_final else 0)]
            if rec.is_final and rec.dependents:
                # a DAG edge: its dependents move on in this very transaction, so no
                # promotion is lost if this node dies right after
                more = await self.cascade(rec, touched)
                if more is None:  # shares a dependent with an earlier completion here
                    compares = [_cmp(k.task(rec.id), "CREATE", -1)]  # cannot hold: next step
                else:
                    compares += more[0]
                    success += more[1]
                    touched |= more[2]
            ops.append(_sub(compares, success, [_get(k.task(rec.id)), _get(running)]))
        for c in claims:
            ops.append(_sub(
                [_cmp(c.queue_key, "MOD", c.queued_rev), _cmp(k.task(c.task_id), "MOD", c.queued_rev)],
                [_delete(c.queue_key), _put(k.running(node_id, c.task_id), str(c.record.attempt).encode(), lease),
                 _put(k.task(c.task_id), encode(c.record))]))
        result = StepResult(revision=0)
        if not ops:
            return result
        resp = await self._txn([], ops)
        result.revision = resp.header.revision
        for c, r in zip(completions, resp.responses[:len(completions)]):
            ok = r.response_txn.succeeded
            result.completed.append(ok)
            if not ok:
                task_kvs = r.response_txn.responses[0].response_range.kvs
                run_kvs = r.response_txn.responses[1].response_range.kvs
                if run_kvs and run_kvs[0].create_revision == c.attempt_rev and task_kvs:
                    # the task record moved (a cancel request, a new dependent) or a
                    # dependent did: recompute from what is there now and retry
                    result.current[c.record.id] = (decode(task_kvs[0].value), task_kvs[0].mod_revision)
                else:
                    result.current[c.record.id] = (None, 0)  # fenced: the attempt is stale
        result.claimed = [r.response_txn.succeeded for r in resp.responses[len(completions):]]
        return result

    async def delete_tasks(self, ids: list[str]) -> None:
        """Remove task records (a deleted job). Running ones keep their running key until
        their node notices the cancel; their late completion finds no record and is dropped."""
        for i in range(0, len(ids), 64):
            recs = await self._get_many(ids[i:i + 64])
            ops = []
            for tid, (rec, _) in recs.items():
                ops += [_delete(self.keys.task(tid)), _delete(self.keys.queue(rec.spec.priority, tid))]
            if ops:
                await self._txn([], ops)

    async def put_progress(self, node_id: str, record: TaskRecord, read_rev: int, attempt_rev: int) -> int:
        """Write a running task's progress if its attempt is still ours and the record
        unchanged; the new mod revision, or 0 when something moved meanwhile."""
        k = self.keys
        resp = await self._txn([_cmp(k.running(node_id, record.id), "CREATE", attempt_rev),
                                _cmp(k.task(record.id), "MOD", read_rev)], [_put(k.task(record.id), encode(record))])
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
            now = time.time()
            if rec.is_final:
                raise Conflict(f"task {task_id} already ended {rec.state.value}; nothing to cancel")
            if rec.state in (TaskState.queued, TaskState.waiting, TaskState.held):
                new = transitions.cancel_queued(rec, now)
                lease = await self._retention_lease()
                compares, ops, _ = await self.cascade(new)
                resp = await self._txn([_cmp(k.task(task_id), "MOD", rev), *compares], [
                    _delete(k.queue(rec.spec.priority, task_id)), _put(k.task(task_id), encode(new), lease), *ops])
            elif unstarted_only:
                node = await self.node(rec.node or "")
                if node is None or rec.cancel_requested:
                    return rec
                new = rec
                resp = await self._txn([_cmp(k.task(task_id), "MOD", rev)],
                                       [_put(k.cancel(node.id, task_id), b"unstarted", node.lease)])
            else:
                node = await self.node(rec.node or "")
                new = transitions.request_cancel(rec)
                ops = [_put(k.task(task_id), encode(new))]
                if node is not None:
                    ops.append(_put(k.cancel(node.id, task_id), b"", node.lease))
                resp = await self._txn([_cmp(k.task(task_id), "MOD", rev)], ops)
            if resp.succeeded:
                return new
        raise Conflict(f"task {task_id} kept changing while cancelling it; try again")

    async def requeue_lost(self, task_id: str, node_id: str) -> TaskRecord | None:
        """The reaper's move for a task whose node died: if its current attempt is still
        the one on `node_id` and that node's running key is gone, retry it or fail it."""
        k = self.keys
        for _ in range(20):
            try:
                rec, rev = await self.get_task(task_id)
            except NotFound:
                return None
            if rec.state != TaskState.running or rec.node != node_id:
                return None
            new = transitions.node_lost(rec, node_id, time.time())
            value = encode(new)
            lease = await self._retention_lease() if new.is_final else 0
            ops = [_put(k.task(task_id), value, lease), _delete(k.cancel(node_id, task_id))]
            if new.state == TaskState.queued:
                ops.append(_put(k.queue(new.spec.priority, task_id), value))
            more_cmp, more_ops, _ = await self.cascade(new)
            resp = await self._txn([_cmp(k.task(task_id), "MOD", rev),
                                    _cmp(k.running(node_id, task_id), "CREATE", 0), *more_cmp], ops + more_ops)
            if resp.succeeded:
                return new
            # a live attempt (the running key exists) or a concurrent change: look again
            kvs, _, _ = await self._range(k.running(node_id, task_id))
            if kvs:
                return None
        return None

    async def release_orphan(self, node_id: str, task_id: str, attempt_rev: int) -> None:
        """Drop a running key its node does not know it holds, and requeue the task."""
        key = self.keys.running(node_id, task_id)
        resp = await self._txn([_cmp(key, "CREATE", attempt_rev)], [_delete(key)])
        if resp.succeeded:
            await self.requeue_lost(task_id, node_id)

    async def tasks_in_state(self, state: str):
        """Every task record in `state`, oldest first, read in pages."""
        start, stop = self.keys.tasks, prefix_range_end(self.keys.tasks)
        marker = f'"state":"{state}"'.encode()
        while True:
            kvs, more, _ = await self._range(start, stop, limit=2000)
            for kv in kvs:
                if marker in kv.value:
                    yield decode(kv.value)
            if not more or not kvs:
                return
            start = kvs[-1].key + b"\0"

    async def running_tasks(self) -> dict[str, set[str]]:
        """node -> task ids with a live running key."""
        kvs, _, _ = await self.get_prefix(self.keys.all_running)
        out: dict[str, set[str]] = {}
        for kv in kvs:
            out.setdefault(self.keys.node_of_running(kv.key), set()).add(self.keys.id_of(kv.key))
        return out

    async def running_on(self, node_id: str, revision: int = 0) -> list[KV]:
        """The running keys of a node, now or as they were at `revision`."""
        prefix = self.keys.running_on(node_id)
        kvs, _, _ = await self._range(prefix, prefix_range_end(prefix), revision=revision)
        return kvs

    # -- elections ---------------------------------------------------------------

    async def campaign(self, role: str, node_id: str, lease: int) -> bool:
        """Become `role` if nobody holds it. The key lives on our lease, so it passes
        to another node when we die."""
        key = self.keys.election(role)
        resp = await self._txn([_cmp(key, "CREATE", 0)], [_put(key, node_id.encode(), lease)], [_get(key)])
        if resp.succeeded:
            return True
        kvs = resp.responses[0].response_range.kvs
        return bool(kvs) and kvs[0].value.decode() == node_id and kvs[0].lease == lease

    async def resign(self, role: str, node_id: str, lease: int) -> bool:
        """Give up `role` if we hold it (under this lease); False if someone else does."""
        key = self.keys.election(role)
        mine = [rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=node_id.encode()),
                rpc.Compare(key=key, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL, lease=lease)]
        resp = await self._txn(mine, [_delete(key)])
        return resp.succeeded

    async def leader(self, role: str) -> str | None:
        kvs, _, _ = await self._range(self.keys.election(role))
        return kvs[0].value.decode() if kvs else None

    # -- watches ------------------------------------------------------------------

    async def watch(self, prefix: bytes, start_revision: int, prev_kv: bool = False
                    ) -> AsyncIterator[list[tuple[str, KV, KV | None]] | WatchReset]:
        """Events under `prefix` from `start_revision` on, as lists of (kind, kv, prev).
        Rides out etcd restarts by watching again from the last revision seen; when etcd
        has compacted past it, yields a WatchReset so the caller re-reads its snapshot."""
        next_rev = start_revision
        failures = 0
        while True:
            call = None
            try:
                await self._client.connect()
                # one gRPC Watch stream per watch, holding exactly one watch. aetcd's shared
                # Watcher pairs each "created" reply with whichever callback is pending, so
                # after a stream failure it can hand one prefix's events to another watch
                # (seen after an etcd restart: the queue watch got nodes/ events, the task
                # feed went silent for good)
                call = rpc.WatchStub(self._client.channel).Watch(metadata=self._client.metadata)
                await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=prefix, range_end=prefix_range_end(prefix), start_revision=next_rev,
                    prev_kv=prev_kv)))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise ConnectionFailedError("watch stream closed")
                    if resp.compact_revision:
                        raise RevisionCompactedError(resp.compact_revision)
                    if resp.canceled:
                        raise ClientError(f"watch cancelled by etcd: {resp.cancel_reason}")
                    if resp.created:
                        failures = 0
                    if not resp.events:
                        continue
                    batch = []
                    for ev in resp.events:
                        batch.append(("DELETE" if ev.type == rpc.Event.DELETE else "PUT", _kv(ev.kv),
                                      _kv(ev.prev_kv) if ev.HasField("prev_kv") else None))
                        next_rev = ev.kv.mod_revision + 1
                    yield batch
            except RevisionCompactedError:
                rev = await self.revision()
                next_rev = rev + 1
                yield WatchReset(rev)
            except (ClientError, rpc.AioRpcError, asyncio.TimeoutError) as e:
                failures += 1
                log.info("watch on %s interrupted (%s); resuming at revision %d", prefix, e, next_rev)
                await asyncio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)))
            finally:
                if call is not None:
                    call.cancel()

    async def cluster_id(self) -> str:
        """Which cluster this is: etcd's cluster id and shoal's key prefix."""
        req = rpc.RangeRequest(key=b"\0", serializable=True)
        resp = await self._call("kvstub.Range", req)
        return f"{resp.header.cluster_id:x}{self.keys.prefix}"

    async def revision(self) -> int:
        _, _, rev = await self._range(b"\0")
        return rev

