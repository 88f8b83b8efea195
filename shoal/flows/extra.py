"""The flow runtime's own dependencies (polars, pyarrow, numpy; psycopg for PostgreSQL
sinks) come with the `flows` extra, so a node or a client without them still runs tasks.
What needs them checks here first and says how to get them."""
from __future__ import annotations

import importlib

from ..errors import ShoalError

INSTALL = "pip install 'shoal[flows]'"
RUNTIME = ("polars", "pyarrow", "numpy")


def _missing(modules) -> list[str]:
    out = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            out.append(m)
    return out


def require(modules=RUNTIME) -> None:
    """ShoalError naming the extra when this Python lacks what flows need."""
    missing = _missing(modules)
    if missing:
        raise ShoalError(f"flows need {', '.join(missing)}, which this Python does not have: {INSTALL}")
