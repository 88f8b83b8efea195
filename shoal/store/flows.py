"""Flow runs in etcd: the run record, the data endpoint of each stage instance, and the
counters each instance publishes. Data itself never goes through etcd."""
from __future__ import annotations

import asyncio

import orjson
from aetcd import rpc
from aetcd.utils import prefix_range_end

from ..errors import NotFound
from .etcd import Store, WatchReset


async def _put(store: Store, key: bytes, value: bytes) -> None:
    """Flow keys live as long as finished tasks do: under the retention lease."""
    lease = await store._retention_lease()
    await store._call("kvstub.Put", rpc.PutRequest(key=key, value=value, lease=lease))


async def put_run(store: Store, run: str, record: dict) -> None:
    await _put(store, store.keys.flow(run), orjson.dumps(record))


async def get_run(store: Store, run: str) -> dict:
    kvs, _, _ = await store._range(store.keys.flow(run))
    if not kvs:
        raise NotFound(f"no flow run {run!r} (see `shoal flow ls`)")
    return orjson.loads(kvs[0].value)


async def list_runs(store: Store, limit: int = 100) -> list[dict]:
    prefix = store.keys.flows
    kvs, _, _ = await store._range(prefix, prefix_range_end(prefix))
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

    kvs, _, rev = await store._range(prefix, prefix_range_end(prefix))
    take(kvs)
    if len(found) < count:
        async def watch():
            async for batch in store.watch(prefix, rev + 1):
                if isinstance(batch, WatchReset):
                    take((await store._range(prefix, prefix_range_end(prefix)))[0])
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
    kvs, _, _ = await store._range(prefix, prefix_range_end(prefix))
    out: dict[str, dict[int, dict]] = {}
    for kv in kvs:
        stage, index = kv.key[len(prefix):].decode().rsplit("/", 1)
        out.setdefault(stage, {})[int(index)] = orjson.loads(kv.value)
    return out


async def put_cancel(store: Store, run: str) -> None:
    await _put(store, store.keys.flow_cancel(run), b"1")


async def cancel_requested(store: Store, run: str) -> bool:
    kvs, _, _ = await store._range(store.keys.flow_cancel(run))
    return bool(kvs)
