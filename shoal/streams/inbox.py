"""The receiving end of a stage instance: a TCP server that accepts the streams of every
upstream instance and hands their batches on through one bounded queue. When the queue is
full the server stops reading, TCP's window fills, and the senders' drain() waits: that is
the backpressure, end to end, with no buffer growing anywhere."""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import orjson

from ..errors import StreamBroken, UpstreamFailed, UpstreamLost
from .framing import ABORT, END, FRAME, HELLO, TEXT, read_frame


@dataclass
class Item:
    sender: str         # "stage[index]"
    index: int          # the sender's instance index
    port: int
    kind: int           # TEXT, FRAME, or END (that sender finished that port)
    payload: bytes


class Inbox:
    """Accept `senders[port]` streams per input port for (run, attempt, stage, index)."""

    def __init__(self, run: str, attempt: int, stage: str, index: int, senders: tuple[int, ...],
                 depth: int = 8):
        self.who = {"run": run, "attempt": attempt, "stage": stage, "index": index}
        self.expected = list(senders)
        self.queue: asyncio.Queue[Item | Exception] = asyncio.Queue(depth)
        self.server: asyncio.AbstractServer | None = None
        self.bytes_in = 0
        self._seen: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str) -> str:
        self.server = await asyncio.start_server(self._accept, host, 0, limit=1 << 20)
        sock = self.server.sockets[0]
        return "%s:%d" % sock.getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        sender = "?"
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            kind, _, payload = await read_frame(reader)
            hello = orjson.loads(payload) if kind == HELLO else {}
            if any(hello.get(k) != v for k, v in self.who.items()):
                return   # a stream meant for another run, attempt or instance: drop it
            sender, port, idx = f"{hello['from']}[{hello['from_index']}]", hello["port"], hello["from_index"]
            if (sender, port) in self._seen or port >= len(self.expected):
                return
            self._seen.add((sender, port))
            while True:
                kind, _, payload = await read_frame(reader)
                if kind in (TEXT, FRAME):
                    self.bytes_in += len(payload)
                    await self.queue.put(Item(sender, idx, port, kind, payload))
                elif kind == END:
                    await self.queue.put(Item(sender, idx, port, END, b""))
                    return
                elif kind == ABORT:
                    raise UpstreamFailed(f"{sender} failed: {payload.decode(errors='replace')}")
        except StreamBroken as e:
            await self.queue.put(UpstreamLost(f"the stream from {sender} broke: {e}"))
        except UpstreamFailed as e:
            await self.queue.put(e)
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def items(self):
        """(port, sender index, kind, payload) for each batch and each sender's END, then
        (port, -1, END, b"") once a port has ended for every sender; stops when all have."""
        left = list(self.expected)
        for port, n in enumerate(left):
            if n == 0:
                yield port, -1, END, b""
        while any(left):
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield item.port, item.index, item.kind, item.payload
            if item.kind == END:
                left[item.port] -= 1
                if left[item.port] == 0:
                    yield item.port, -1, END, b""
