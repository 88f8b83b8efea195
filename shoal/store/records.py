"""Task records as etcd holds them: their encoding, the puts that keep a queued record
and its queue entry equal, and reading many records at once. Shared by tasks and dag."""
from __future__ import annotations

from ..model import TaskRecord, TaskState
from ..model.keys import Keys
from .kv import Etcd, get_op, put_op

# etcd refuses requests over 1.5 MiB by default; leave room for keys and framing.
MAX_REQUEST_BYTES = 1536 * 1024
MAX_VALUE_BYTES = MAX_REQUEST_BYTES - 64 * 1024


def encode(record: TaskRecord) -> bytes:
    return record.model_dump_json(exclude_defaults=False).encode()


def decode(value: bytes) -> TaskRecord:
    return TaskRecord.model_validate_json(value)


def put_record_ops(keys: Keys, record: TaskRecord, value: bytes | None = None, lease: int = 0) -> list:
    """Put a task record, and its queue entry when it is queued (the two stay equal)."""
    value = value if value is not None else encode(record)
    ops = [put_op(keys.task(record.id), value, lease)]
    if record.state == TaskState.queued:
        ops.append(put_op(keys.queue(record.spec.priority, record.id), value))
    return ops


async def read_records(kv: Etcd, keys: Keys, ids: list[str]) -> dict[str, tuple[TaskRecord, int]]:
    """Records and mod revisions of `ids`, read together (one txn per 128)."""
    out: dict[str, tuple[TaskRecord, int]] = {}
    for i in range(0, len(ids), 128):
        chunk = ids[i:i + 128]
        resp = await kv.txn([], [get_op(keys.task(t)) for t in chunk])
        for r in resp.responses:
            for kv_ in r.response_range.kvs:
                out[keys.id_of(kv_.key)] = (decode(kv_.value), kv_.mod_revision)
    return out
