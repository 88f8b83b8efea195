"""Flow runs in etcd: the run record, the data endpoint of each stage instance, and the
counters each instance publishes. Data itself never goes through etcd."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson

from ..errors import NotFound
from .kv import WatchReset

if TYPE_CHECKING:
    from . import Store


async def _put(store: Store, key: bytes, value: bytes) -> None:
    """Flow keys live as long as finished tasks do: under the retention lease."""
    lease = await store.kv.retention_lease()
    await store.kv.put(key, value, lease)


async def put_run(store: Store, run: str, record: dict) -> None:
    await _put(store, store.keys.flow(run), orjson.dumps(record))


async def get_run(store: Store, run: str) -> dict:
    kvs, _, _ = await store.kv.range(store.keys.flow(run))
    if not kvs:
        raise NotFound(f"no flow run {run!r} (see `shoal flow ls`)")
    return orjson.loads(kvs[0].value)


async def list_runs(store: Store, limit: int = 100) -> list[dict]:
    prefix = store.keys.flows
    kvs, _, _ = await store.kv.get_prefix(prefix)
    runs = [orjson.loads(kv.value) for kv in kvs]
    runs.sort(key=lambda r: r.get("started", 0), reverse=True)
    return runs[:limit]


async def put_endpoint(store: Store, run: str, attempt: int, stage: str, index: int, addr: str) -> None:
    await _put(store, store.keys.flow_endpoint(run, attempt, stage, index), addr.encode())


async def wait_endpoints(store: Store, run: str, attempt: int, stage: str, count: int,
                         timeout_s: float) -> list[str]:
    """The addresses of instances 0..count-1 of a stage, waiting until all have published."""
    prefix = store.keys.flow_endpoints(run, attempt, stage)
    found: dict[int, str] = {}

    def take(kvs) -> None:
        for kv in kvs:
            found[int(kv.key.rsplit(b"/", 1)[1])] = kv.value.decode()

    kvs, _, rev = await store.kv.get_prefix(prefix)
    take(kvs)
    if len(found) < count:
        async def watch():
            async for batch in store.kv.watch(prefix, rev + 1):
                if isinstance(batch, WatchReset):
                    take((await store.kv.get_prefix(prefix))[0])
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


async def put_stats(store: Store, run: str, attempt: int, stage: str, index: int, stats: dict) -> None:
    await _put(store, store.keys.flow_stats(run, attempt, stage, index), orjson.dumps(stats))


async def get_stats(store: Store, run: str, attempt: int) -> dict[str, dict[int, dict]]:
    """stage -> instance -> its last published counters."""
    prefix = store.keys.flow_all_stats(run, attempt)
    kvs, _, _ = await store.kv.get_prefix(prefix)
    out: dict[str, dict[int, dict]] = {}
    for kv in kvs:
        stage, index = kv.key[len(prefix):].decode().rsplit("/", 1)
        out.setdefault(stage, {})[int(index)] = orjson.loads(kv.value)
    return out


async def put_cancel(store: Store, run: str) -> None:
    await _put(store, store.keys.flow_cancel(run), b"1")


async def cancel_requested(store: Store, run: str) -> bool:
    kvs, _, _ = await store.kv.range(store.keys.flow_cancel(run))
    return bool(kvs)


class Flows:
    """The functions above bound to one store, as `store.flows`."""

    def __init__(self, store: Store):
        self.store = store

    async def put_run(self, run: str, record: dict) -> None:
        await put_run(self.store, run, record)

    async def get_run(self, run: str) -> dict:
        return await get_run(self.store, run)

    async def list_runs(self, limit: int = 100) -> list[dict]:
        return await list_runs(self.store, limit)

    async def put_endpoint(self, run: str, attempt: int, stage: str, index: int, addr: str) -> None:
        await put_endpoint(self.store, run, attempt, stage, index, addr)

    async def wait_endpoints(self, run: str, attempt: int, stage: str, count: int,
                             timeout_s: float) -> list[str]:
        return await wait_endpoints(self.store, run, attempt, stage, count, timeout_s)

    async def put_stats(self, run: str, attempt: int, stage: str, index: int, stats: dict) -> None:
        await put_stats(self.store, run, attempt, stage, index, stats)

    async def get_stats(self, run: str, attempt: int) -> dict[str, dict[int, dict]]:
        return await get_stats(self.store, run, attempt)

    async def put_cancel(self, run: str) -> None:
        await put_cancel(self.store, run)

    async def cancel_requested(self, run: str) -> bool:
        return await cancel_requested(self.store, run)
