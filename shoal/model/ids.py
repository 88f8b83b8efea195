"""Time-ordered ids: the sort order of ids is the order they were made (per process),
so queue keys sort by submit time within a priority."""
from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_lock = threading.Lock()
_last = [0, 0]  # last millisecond, counter within it
_node_bits = int.from_bytes(os.urandom(3), "big")


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_ids(count: int, prefix: str = "t", now_ms: int | None = None) -> list[str]:
    """`count` ids, strictly increasing, each 18 chars after the prefix:
    10 chars of milliseconds, 4 of a per-millisecond counter, 4 random per process."""
    ids = []
    with _lock:
        ms = now_ms if now_ms is not None else int(time.time() * 1000)
        if ms <= _last[0]:
            ms = _last[0]
        else:
            _last[0], _last[1] = ms, 0
        for _ in range(count):
            if _last[1] >= 32 ** 4:
                ms += 1
                _last[0], _last[1] = ms, 0
            ids.append(prefix + _b32(ms, 10) + _b32(_last[1], 4) + _b32(_node_bits, 4)[-4:])
            _last[1] += 1
    return ids


ID_FORM = "t and 18 characters of 0-9 a-z without i l o u, as shoal.model.new_ids makes"
_ID = re.compile(r"t[0-9a-hjkmnp-tv-z]{18}")


def is_task_id(text: object) -> bool:
    """Whether `text` has the form of an id new_ids makes (a client may choose its ids)."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def new_task_id() -> str:
    return new_ids(1)[0]


def id_time_ms(task_id: str) -> int:
    """The millisecond an id was made."""
    n = 0
    for ch in task_id[1:11]:
        n = n * 32 + _ALPHABET.index(ch)
    return n
