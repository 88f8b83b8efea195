"""The flow runtime's own dependencies (polars, pyarrow, numpy; psycopg for PostgreSQL
sinks) come with the `flows` extra, so a node or a client without them still runs tasks.
What needs them checks here first and says how to get them."""
from __future__ import annotations

import importlib.util

from ...errors import ShoalError

INSTALL = "pip install 'shoal[flows]'"
RUNTIME = ("polars", "pyarrow", "numpy")


def _missing(modules) -> list[str]:
    out = []
    for m in modules:
        try:   # found, not imported: a node or client checking stays light
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):   # ValueError: blocked in sys.modules
            found = False
        if not found:
            out.append(m)
    return out


def require(modules=RUNTIME) -> None:
    """ShoalError naming the extra when this Python lacks what flows need."""
    missing = _missing(modules)
    if missing:
        raise ShoalError(f"flows need {', '.join(missing)}, which this Python does not have: {INSTALL}")
