"""Frames on a flow stream: a 6-byte header (kind, input port, payload length) and the
payload. A stream opens with HELLO (who is sending, as JSON), carries TEXT (whole lines)
and FRAME (a polars DataFrame as Arrow IPC) batches, and ends with END, or with ABORT
and the reason when the sender failed."""
from __future__ import annotations

import asyncio
import io
import struct

import orjson
import polars as pl

from ..errors import StreamBroken

HEADER = struct.Struct("!BBI")
HELLO, TEXT, FRAME, END, ABORT = 1, 2, 3, 4, 5
MAX_PAYLOAD = 1 << 31


def encode_batch(batch: bytes | pl.DataFrame) -> tuple[int, bytes]:
    if isinstance(batch, (bytes, bytearray, memoryview)):
        return TEXT, bytes(batch)
    buf = io.BytesIO()
    batch.write_ipc_stream(buf, compression="uncompressed")
    return FRAME, buf.getvalue()


def decode_batch(kind: int, payload: bytes) -> bytes | pl.DataFrame:
    return payload if kind == TEXT else pl.read_ipc_stream(io.BytesIO(payload))


def header(kind: int, port: int, length: int) -> bytes:
    return HEADER.pack(kind, port, length)


def hello(info: dict) -> bytes:
    body = orjson.dumps(info)
    return header(HELLO, 0, len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(kind, port, payload); StreamBroken if the stream ends mid-frame or is garbage."""
    try:
        head = await reader.readexactly(HEADER.size)
        kind, port, length = HEADER.unpack(head)
        if kind not in (HELLO, TEXT, FRAME, END, ABORT) or length > MAX_PAYLOAD:
            raise StreamBroken(f"not a flow frame (kind {kind}, length {length})")
        payload = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise StreamBroken(f"the sender went away ({type(e).__name__})") from None
    return kind, port, payload
