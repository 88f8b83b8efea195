"""A shell command as a flow stage: records in on stdin, records out on stdout, both as
whole lines. Feeding and reading run side by side, so a command that emits as it reads
(grep, cut, awk) streams, and one that reads everything first (sort) cannot deadlock."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import AsyncIterator, Awaitable, Callable

from ..errors import FilterFailed

BLOCK = 4 << 20


async def run_filter(command: str | list[str], inputs: AsyncIterator[bytes],
                     emit: Callable[[bytes], Awaitable[None]], env: dict | None = None,
                     cwd: str | None = None, tail_bytes: int = 4096) -> None:
    """Run `command`, feed it `inputs`, pass each block of whole output lines to `emit`.
    Raises FilterFailed if it exits non-zero (with the end of its stderr)."""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})}, cwd=cwd, limit=BLOCK)
    tail = bytearray()

    async def feed():
        try:
            async for block in inputs:
                proc.stdin.write(block)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass   # the command stopped reading (head, or it failed): its exit status tells
        finally:
            try:
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass

    async def read_out():
        rest = b""
        while block := await proc.stdout.read(BLOCK):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if cut:
                await emit(block[:cut])
        if rest:
            await emit(rest + b"\n")

    async def read_err():
        while block := await proc.stderr.read(65536):
            sys.stderr.buffer.write(block)
            sys.stderr.flush()
            tail.extend(block)
            del tail[:-tail_bytes]

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(feed())
            tg.create_task(read_out())
            tg.create_task(read_err())
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if code != 0:
        raise FilterFailed(code, tail.decode(errors="replace").strip())
