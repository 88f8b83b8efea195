"""The value a function task returned, from its final record: TaskFailed when it did
not succeed, the inline result decoded here, or None when it must be fetched."""
from __future__ import annotations

import base64
import pickle
from typing import Any

from ..errors import TaskFailed
from ..model import TaskRecord


def raise_for(rec: TaskRecord) -> None:
    if rec.state.value != "succeeded":
        raise TaskFailed(rec)


def load_result(data: bytes) -> Any:
    return pickle.loads(data)


def is_inline(rec: TaskRecord) -> bool:
    """Whether the record alone settles the outcome (a failure, or a small result that
    came inside it): then no round trip is needed."""
    return rec.state.value != "succeeded" or rec.result is not None


def inline_result(rec: TaskRecord) -> Any:
    """The outcome of a record for which is_inline() holds: its value, or TaskFailed."""
    raise_for(rec)
    return load_result(base64.b64decode(rec.result))
