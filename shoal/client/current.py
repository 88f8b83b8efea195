"""Which client `@shoal.task` submissions go to: the one whose `with` (or `async with`)
block encloses the call, kept in a context variable so threads and asyncio tasks each
see their own, and nested blocks restore the outer client when they end."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from ..errors import ShoalError

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("shoal_client", default=None)


def current_client() -> Any:
    """The innermost client entered in this thread or task (sync Client or AsyncClient)."""
    client = _current.get()
    if client is None:
        raise ShoalError("no shoal client is current: submit inside `with shoal.connect() as c:` "
                         "(or `async with shoal.aconnect() as c:`, or `with c.as_current():`)")
    return client


def enter(client: Any) -> contextvars.Token:
    """Make `client` current; the token undoes it (see leave)."""
    return _current.set(client)


def leave(token: contextvars.Token, client: Any) -> None:
    """Undo enter(). A token made in another context (a block entered in one thread and
    left in another) cannot be reset; then only stop `client` being current here."""
    try:
        _current.reset(token)
    except ValueError:
        if _current.get() is client:
            _current.set(token.old_value if token.old_value is not contextvars.Token.MISSING else None)


@contextlib.contextmanager
def using(client: Any) -> Iterator[Any]:
    """`client` is current inside the block."""
    token = enter(client)
    try:
        yield client
    finally:
        leave(token, client)
