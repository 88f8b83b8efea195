"""The sending end: one TCP stream to each downstream instance. send() returns once the
kernel has taken the bytes or the peer's window has room again (drain), so a slow
consumer slows its producers instead of filling memory."""
from __future__ import annotations

import asyncio
import socket

from .framing import ABORT, END, encode_batch, header, hello


class Link:
    def __init__(self, addr: str, info: dict):
        self.addr = addr
        self.info = info
        self.writer: asyncio.StreamWriter | None = None
        self.bytes_out = 0

    async def open(self, retry_s: float = 10.0) -> None:
        host, port = self.addr.rsplit(":", 1)
        delay, waited = 0.02, 0.0
        while True:
            try:
                _, self.writer = await asyncio.open_connection(host, int(port))
                break
            except OSError:
                if waited >= retry_s:
                    raise ConnectionError(f"cannot connect to stage {self.info['stage']!r} instance "
                                          f"{self.info['index']} at {self.addr}") from None
                await asyncio.sleep(delay)
                waited += delay
                delay = min(0.5, delay * 2)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.writer.transport.set_write_buffer_limits(high=4 << 20)
        self.writer.write(hello(self.info))

    async def send(self, kind: int, payload: bytes) -> None:
        self.writer.write(header(kind, self.info["port"], len(payload)))
        if payload:
            self.writer.write(payload)
        self.bytes_out += len(payload)
        await self.writer.drain()

    async def send_batch(self, batch) -> None:
        kind, payload = encode_batch(batch)
        await self.send(kind, payload)

    async def end(self) -> None:
        await self.send(END, b"")
        await self.close()

    async def abort(self, reason: str) -> None:
        try:
            await self.send(ABORT, reason.encode()[:4000])
        except (ConnectionError, RuntimeError):
            pass
        await self.close()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None
