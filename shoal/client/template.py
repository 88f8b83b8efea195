"""Command templates filled as GNU parallel fills them (`{}`, `{1}`, `{.}`, ...), for
`map`: the pure code lives in logic/, shown here as part of the SDK."""
from ..logic.template import as_command, combine, fill

__all__ = ["as_command", "combine", "fill"]
