"""What every sink is: a place written in parts by the instances, committed once by the driver."""
from __future__ import annotations

import re
from typing import Protocol
from ....errors import InvalidSpec


RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z")


NAME_MAX = 255             # bytes in a file name


class PartWriter(Protocol):
    def write(self, data: bytes) -> None:
        """A TEXT batch: whole lines, fields split by the separator."""

    def close(self) -> None:
        """Flush and make durable: the part is complete."""

    def discard(self) -> None:
        """The instance failed: remove what was written."""


class Sink:
    """Base of every sink. `sep` is the flow's field separator."""
    sep: str = "\t"

    def check(self) -> None:
        """Before any task starts: raise InvalidSpec naming what makes the place unusable."""

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        raise NotImplementedError

    def commit(self, run: str, attempt: int, parts: int) -> None:
        raise NotImplementedError

    def abort(self, run: str, attempt: int, parts: int) -> None:
        """Remove what a failed attempt left; nothing by default."""


def check_ids(run: str, attempt: int, index: int | None = None) -> None:
    if not isinstance(run, str) or not RUN_ID.match(run):
        raise InvalidSpec([f"run: expected letters, digits, '_', '.' and '-' (got {run!r})"])
    if not isinstance(attempt, int) or attempt < 0:
        raise InvalidSpec([f"attempt: expected a whole number, 0 or more (got {attempt!r})"])
    if index is not None and (not isinstance(index, int) or index < 0):
        raise InvalidSpec([f"index: expected a whole number, 0 or more (got {index!r})"])
