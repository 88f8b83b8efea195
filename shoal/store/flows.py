"""Flow runs in etcd, as `store.flows`: the run record (written only by the node driving
the run, fenced by its election key), the outcome each instance writes before it exits,
the data endpoint of each instance, the counters it publishes, a cancel request, and the
lease of the client that feeds or receives a run's data. Data itself never goes through etcd."""
from __future__ import annotations

import asyncio
import logging

import orjson
from pydantic import ValidationError

from ..errors import Conflict, NotFound
from ..flows.outcome import Outcome
from ..flows.run import FlowRunRecord, driver_role
from ..model.keys import Keys
from .kv import Etcd, WatchReset, cmp, put_op

log = logging.getLogger("shoal.store.flows")


class Flows:
    def __init__(self, kv: Etcd, keys: Keys):
        self.kv = kv
        self.keys = keys

    async def _put(self, key: bytes, value: bytes) -> None:
        """Flow keys live as long as finished tasks do: under the retention lease."""
        await self.kv.put(key, value, await self.kv.retention_lease())

    async def _per_instance(self, prefix: bytes) -> list[tuple[str, int, bytes]]:
        """(stage, index, value) of each key <prefix><stage>/<index>."""
        kvs, _, _ = await self.kv.get_prefix(prefix)
        out = []
        for kv in kvs:
            stage, index = kv.key[len(prefix):].decode().rsplit("/", 1)
            out.append((stage, int(index), kv.value))
        return out

    # -- the run record -------------------------------------------------------------------

    async def create_run(self, record: FlowRunRecord) -> int:
        """Write a new run's record; Conflict if the id is taken. A run with a client link
        gets the client's key on a lease of its own, written first, so a driver never sees
        the run without it; returns that lease (0 without a client)."""
        client_lease = 0
        ops = []
        if record.client is not None:
            client_lease = await self.kv.grant_lease(record.client.ttl_s)
            ops.append(put_op(self.keys.flow_client(record.id), b"1", client_lease))
        key = self.keys.flow(record.id)
        ops.append(put_op(key, orjson.dumps(record.to_json()), await self.kv.retention_lease()))
        resp = await self.kv.txn([cmp(key, "CREATE", 0)], ops)
        if not resp.succeeded:
            if client_lease:
                await self.kv.revoke_lease(client_lease)
            raise Conflict(f"flow run {record.id} exists already")
        return client_lease

    async def put_run(self, record: FlowRunRecord, driver: str) -> bool:
        """Write the record as the node `driver`, only while it holds the run's driver role
        (a driver that lost it must not overwrite its successor's decisions)."""
        role = self.keys.election(driver_role(record.id))
        resp = await self.kv.txn([cmp(role, "VALUE", driver.encode())],
                                 [put_op(self.keys.flow(record.id), orjson.dumps(record.to_json()),
                                         await self.kv.retention_lease())])
        return resp.succeeded

    async def get_run(self, run: str) -> FlowRunRecord:
        return (await self.get_run_rev(run))[0]

    async def get_run_rev(self, run: str) -> tuple[FlowRunRecord, int]:
        """The record and its mod revision."""
        kvs, _, _ = await self.kv.range(self.keys.flow(run))
        if not kvs:
            raise NotFound(f"no flow run {run!r} (see `shoal flow ls`)")
        return FlowRunRecord.model_validate_json(kvs[0].value), kvs[0].mod_revision

    async def wait_run(self, run: str, after: int, timeout_s: float) -> tuple[FlowRunRecord, int]:
        """The record once its mod revision passes `after`, or as it is after `timeout_s`."""
        record, rev = await self.get_run_rev(run)
        if rev > after:
            return record, rev
        key = self.keys.flow(run)

        async def changed():
            async for batch in self.kv.watch(key, rev + 1):
                if isinstance(batch, WatchReset):   # compacted past us: read it again
                    return await self.get_run_rev(run)
                for kind, kv, _ in batch:
                    if kv.key == key and kind == "PUT":
                        return FlowRunRecord.model_validate_json(kv.value), kv.mod_revision
        try:
            return await asyncio.wait_for(changed(), timeout_s)
        except asyncio.TimeoutError:
            return record, rev

    async def runs(self) -> tuple[list[FlowRunRecord], int]:
        """Every run's record, and the revision they were read at."""
        kvs, _, rev = await self.kv.get_prefix(self.keys.flows)
        out = []
        for kv in kvs:
            try:
                out.append(FlowRunRecord.model_validate_json(kv.value))
            except ValidationError as e:   # not a run shoal can read: leave it out, say so
                log.warning("flow record %s is not readable: %s", kv.key.decode(errors="replace"), e)
        return out, rev

    async def list_runs(self, limit: int = 100) -> list[FlowRunRecord]:
        runs, _ = await self.runs()
        runs.sort(key=lambda r: r.started or 0, reverse=True)
        return runs[:limit]

    # -- what instances publish -------------------------------------------------------------

    async def put_outcome(self, run: str, attempt: int, stage: str, index: int, outcome: Outcome) -> None:
        await self._put(self.keys.flow_outcome(run, attempt, stage, index), outcome.model_dump_json().encode())

    async def get_outcomes(self, run: str, attempt: int) -> dict[tuple[str, int], Outcome]:
        return {(stage, index): Outcome.model_validate_json(value)
                for stage, index, value in await self._per_instance(self.keys.flow_outcomes(run, attempt))}

    async def get_outcome(self, run: str, attempt: int, stage: str, index: int) -> Outcome | None:
        kvs, _, _ = await self.kv.range(self.keys.flow_outcome(run, attempt, stage, index))
        return Outcome.model_validate_json(kvs[0].value) if kvs else None

    async def put_endpoint(self, run: str, attempt: int, stage: str, index: int, addr: str) -> None:
        await self._put(self.keys.flow_endpoint(run, attempt, stage, index), addr.encode())

    async def wait_endpoints(self, run: str, attempt: int, stage: str, count: int,
                             timeout_s: float) -> list[str]:
        """The addresses of instances 0..count-1 of a stage, waiting until all have published."""
        prefix = self.keys.flow_endpoints(run, attempt, stage)
        found: dict[int, str] = {}

        def take(kvs) -> None:
            for kv in kvs:
                found[int(kv.key.rsplit(b"/", 1)[1])] = kv.value.decode()

        kvs, _, rev = await self.kv.get_prefix(prefix)
        take(kvs)
        if len(found) < count:
            async def watch():
                async for batch in self.kv.watch(prefix, rev + 1):
                    if isinstance(batch, WatchReset):   # compacted past us: read them again
                        take((await self.kv.get_prefix(prefix))[0])
                    else:
                        take(kv for kind, kv, _ in batch if kind == "PUT")
                    if len(found) >= count:
                        return
            try:
                await asyncio.wait_for(watch(), timeout_s)
            except asyncio.TimeoutError:
                missing = [i for i in range(count) if i not in found]
                raise TimeoutError(f"stage {stage!r}: instances {missing} did not start within {timeout_s:.0f} s "
                                   "(is the cluster big enough to run every instance at once?)") from None
        return [found[i] for i in range(count)]

    async def put_stats(self, run: str, attempt: int, stage: str, index: int, stats: dict) -> None:
        await self._put(self.keys.flow_stats(run, attempt, stage, index), orjson.dumps(stats))

    async def get_stats(self, run: str, attempt: int) -> dict[str, dict[int, dict]]:
        """stage -> instance -> its last published counters."""
        out: dict[str, dict[int, dict]] = {}
        for stage, index, value in await self._per_instance(self.keys.flow_all_stats(run, attempt)):
            out.setdefault(stage, {})[index] = orjson.loads(value)
        return out

    # -- signals to the driver -------------------------------------------------------------

    async def put_cancel(self, run: str) -> None:
        await self._put(self.keys.flow_cancel(run), b"1")

    async def cancel_requested(self, run: str) -> bool:
        kvs, _, _ = await self.kv.range(self.keys.flow_cancel(run))
        return bool(kvs)

    async def client_alive(self, run: str) -> bool:
        """Whether the client that feeds or receives the run's data still renews its lease."""
        kvs, _, _ = await self.kv.range(self.keys.flow_client(run))
        return bool(kvs)

    async def keep_client(self, run: str, lease: int) -> bool:
        """Renew the client's lease; False once it is gone (the run counts the client gone)."""
        kvs, _, _ = await self.kv.range(self.keys.flow_client(run))
        if not kvs or kvs[0].lease != lease:
            return False
        return await self.kv.keepalive(lease) > 0

    async def release_client(self, run: str, lease: int) -> None:
        kvs, _, _ = await self.kv.range(self.keys.flow_client(run))
        if kvs and kvs[0].lease == lease:
            await self.kv.revoke_lease(lease)
