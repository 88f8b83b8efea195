"""Standard output as a sink: the parts stream to the client that started the run."""
from __future__ import annotations

import sys
from typing import BinaryIO

from .base import PartWriter, Sink


class _StreamPart:
    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def close(self) -> None:
        self.stream.flush()

    def discard(self) -> None:
        """What reached the stream stays there."""


class StdoutSink(Sink):
    """Records written straight to a byte stream (this process's stdout by default). A
    stream cannot take back what it has shown: parts are not held until commit."""

    def __init__(self, stream: BinaryIO | None = None):
        self.stream = stream

    def part(self, run: str, attempt: int, index: int) -> PartWriter:
        return _StreamPart(self.stream if self.stream is not None else sys.stdout.buffer)

    def commit(self, run: str, attempt: int, parts: int) -> None:
        pass
