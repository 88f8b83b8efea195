"""Asking the node that holds something (a log file, a big result) on a caller's behalf.
The request is opened before we answer: once our 200 has gone out, the holder's error
could only cut the body short, so its error becomes ours instead, with its own class."""
from __future__ import annotations

from typing import AsyncIterator

import httpx

from ..errors import NodeUnreachable, from_body


async def ask(method: str, url: str, holder: str, what: str, params: dict | None = None,
              timeout: httpx.Timeout | float = 30.0) -> tuple[httpx.AsyncClient, httpx.Response]:
    """The holder's answer, its body not read yet (stream it with `relay`, or read it).
    NodeUnreachable if it does not answer; its own error, named after it, if it refuses."""
    client = httpx.AsyncClient(timeout=timeout)
    try:
        resp = await client.send(client.build_request(method, url, params=params), stream=True)
    except httpx.HTTPError as e:
        await client.aclose()
        raise NodeUnreachable(f"{what} is kept on node {holder}, which did not answer "
                              f"({type(e).__name__}: {e})") from None
    if resp.status_code >= 400:
        try:
            await resp.aread()
        finally:
            await resp.aclose()
            await client.aclose()
        raise from_body(resp.status_code, resp.content, resp.text[:300], origin=f"node {holder}")
    return client, resp


async def relay(client: httpx.AsyncClient, resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    finally:
        await resp.aclose()
        await client.aclose()


async def ask_json(method: str, url: str, holder: str, what: str, params: dict | None = None,
                   timeout: float = 30.0):
    client, resp = await ask(method, url, holder, what, params, timeout)
    try:
        await resp.aread()
    finally:
        await resp.aclose()
        await client.aclose()
    return resp.json()
