"""etcd itself: the connection, retries, leases, transactions, ranges and watches, and
the translation of etcd's failures into shoal's errors. The only module that imports
the etcd client; the rest of the store builds its transactions with the op builders here."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urlparse

import aetcd
import grpc
from aetcd import rpc
from aetcd.exceptions import ClientError, ConnectionFailedError, ConnectionTimeoutError
from aetcd.exceptions import RevisionCompactedError
from aetcd.utils import prefix_range_end
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ..errors import StoreCompacted, StoreFull, StoreUnavailable

log = logging.getLogger("shoal.store")

_TRANSIENT = (ConnectionFailedError, ConnectionTimeoutError)


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class WatchReset:
    """Yielded by watch() when etcd compacted past the watcher: re-read, then go on."""
    def __init__(self, revision: int):
        self.revision = revision


# -- op builders: the pieces of a transaction ------------------------------------------

def cmp(key: bytes, target: str, value: int | bytes, result: str = "EQUAL"):
    """Compare `key`'s MOD, CREATE or VERSION revision, its LEASE or its VALUE."""
    c = rpc.Compare(key=key, target=getattr(rpc.Compare, target), result=getattr(rpc.Compare, result))
    if target == "MOD":
        c.mod_revision = value
    elif target == "CREATE":
        c.create_revision = value
    elif target == "VERSION":
        c.version = value
    elif target == "LEASE":
        c.lease = value
    elif target == "VALUE":
        c.value = value
    return c


def put_op(key: bytes, value: bytes, lease: int = 0):
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes):
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def get_op(key: bytes):
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


def prefix_op(prefix: bytes, limit: int = 0):
    """Read the keys under `prefix` (at most `limit`; the reply says if there were more)
    inside a transaction, so several ranges cost one round trip."""
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=limit))


def sub_txn(compare, success, failure=()):
    """A nested transaction: its own compares, so one lost race does not undo the rest."""
    return rpc.RequestOp(request_txn=rpc.TxnRequest(compare=compare, success=success, failure=list(failure)))


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key under `prefix`."""
    return prefix_range_end(prefix)


def kv_of(kv) -> KV:
    """A KV from a key-value in one of etcd's responses (e.g. a txn's range reply)."""
    return KV(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)


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


class Etcd:
    """One connection to an etcd cluster. Transactions and responses are etcd's own
    (built with the op builders above); failures come out as shoal's errors."""

    def __init__(self, endpoints: list[str] | str, timeout_s: float = 5.0,
                 retention_s: float = 7 * 86400, retry_for_s: float = 30.0):
        self.endpoints = [e for e in (endpoints.split(",") if isinstance(endpoints, str) else endpoints) if e]
        self.timeout_s = timeout_s
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
        try:
            if not retry:
                return await self._rpc(method, *args, **kw)
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(_TRANSIENT), reraise=True,
                    stop=stop_after_delay(self.retry_for_s),
                    wait=wait_exponential(multiplier=0.05, max=1.0)):
                with attempt:
                    return await self._rpc(method, *args, **kw)
        except ClientError as e:
            raise self._unavailable(e) from None

    async def _rpc(self, method: str, *args, **kw):
        await self._client.connect()
        stub, name = method.split(".")
        fn = getattr(getattr(self._client, stub), name)  # stubs exist only once connected
        try:
            return await fn(*args, timeout=self.timeout_s, **kw)
        except rpc.AioRpcError as e:
            details = e.details() or ""
            if e.code() == rpc.StatusCode.RESOURCE_EXHAUSTED and "space exceeded" in details:
                raise StoreFull(
                    f"etcd at {', '.join(self.endpoints)} refuses writes: {details}. Free space with "
                    "`etcdctl compact` + `etcdctl defrag` and `etcdctl alarm disarm`, raise its "
                    "--quota-backend-bytes, or keep finished tasks for less time (--retention)") from None
            if e.code() == rpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
                raise StoreCompacted(f"etcd no longer holds that revision: {details}") from None
            aetcd.exceptions._handle_exception(e)

    def _unavailable(self, e: ClientError) -> StoreUnavailable:
        """etcd did not answer for retry_for_s, or refused in a way shoal cannot act on."""
        if isinstance(e, _TRANSIENT):
            return StoreUnavailable(
                f"etcd at {', '.join(self.endpoints)} did not answer for {self.retry_for_s:.0f} s "
                f"({type(e).__name__}: {e}). Is etcd running, and does it have a leader?")
        return StoreUnavailable(f"etcd at {', '.join(self.endpoints)} refused the request: {e}")

    # -- reads and writes -----------------------------------------------------------

    async def txn(self, compare, success, failure=(), retry: bool = True):
        """One transaction; etcd's TxnResponse (succeeded, header.revision, responses)."""
        req = rpc.TxnRequest(compare=compare, success=success, failure=list(failure))
        return await self._call("kvstub.Txn", req, retry=retry)

    async def range(self, key: bytes, range_end: bytes | None = None, limit: int = 0,
                    descend: bool = False, revision: int = 0, keys_only: bool = False
                    ) -> tuple[list[KV], bool, int]:
        """(kvs, more, revision read at). At a compacted `revision`: StoreCompacted."""
        req = rpc.RangeRequest(key=key, limit=limit, revision=revision, keys_only=keys_only)
        if range_end is not None:
            req.range_end = range_end
        if descend:
            req.sort_order = rpc.RangeRequest.DESCEND
            req.sort_target = rpc.RangeRequest.KEY
        resp = await self._call("kvstub.Range", req)
        return [kv_of(kv) for kv in resp.kvs], resp.more, resp.header.revision

    async def get_prefix(self, prefix: bytes, limit: int = 0) -> tuple[list[KV], bool, int]:
        return await self.range(prefix, prefix_end(prefix), limit=limit)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        await self._call("kvstub.Put", rpc.PutRequest(key=key, value=value, lease=lease))

    async def delete(self, key: bytes) -> None:
        await self._call("kvstub.DeleteRange", rpc.DeleteRangeRequest(key=key))

    async def compact(self, revision: int) -> None:
        """Drop the history before `revision` (what etcd's auto-compaction does)."""
        await self._call("kvstub.Compact", rpc.CompactionRequest(revision=revision))

    async def revision(self) -> int:
        _, _, rev = await self.range(b"\0")
        return rev

    async def cluster_id(self) -> str:
        """etcd's cluster id, in hex."""
        req = rpc.RangeRequest(key=b"\0", serializable=True)
        resp = await self._call("kvstub.Range", req)
        return f"{resp.header.cluster_id:x}"

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
            try:
                aetcd.exceptions._handle_exception(e)
            except ClientError as ce:
                raise self._unavailable(ce) from None
        return 0

    async def revoke_lease(self, lease: int) -> None:
        try:
            await self._rpc("leasestub.LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))
        except ClientError:
            pass

    async def retention_lease(self) -> int:
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
                        batch.append(("DELETE" if ev.type == rpc.Event.DELETE else "PUT", kv_of(ev.kv),
                                      kv_of(ev.prev_kv) if ev.HasField("prev_kv") else None))
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
