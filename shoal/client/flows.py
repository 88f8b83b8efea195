"""Flow files and outcomes for SDK users and the CLI: the one place the client reaches
into the flow package. Reading a flow file is cheap; the driver (and its data plane)
loads only when its names are used."""
from __future__ import annotations

from ..errors import FlowCancelled, FlowFailed
from ..flows.file import load_flow, parse_flow

__all__ = ["load_flow", "parse_flow", "FlowFailed", "FlowCancelled", "FlowResult"]


def __getattr__(name: str):
    if name == "FlowResult":
        from ..flows import driver
        return driver.FlowResult
    raise AttributeError(name)
