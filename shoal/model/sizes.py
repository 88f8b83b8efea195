"""Sizes written the way people write them: 512M, 2G, 1.5GiB, 1024."""
from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as '512M' or '2G'; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (use 512M, 2G)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative (use 512M, 2G)")
        return value
    if isinstance(value, float) and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"{value!r} is not a size (use 512M, 2G)")


def format_size(n: int | float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" or n == int(n) else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)
