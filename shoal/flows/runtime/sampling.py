"""Key ranges for a range edge: sample keys from the sending stage's files and cut the
sorted sample into equal parts, so each receiving instance gets about as many records."""
from __future__ import annotations

from ..iospec import SourceSpec
from .records import text_to_frame
from .sources import plan_pieces, read_chunk


def sample_keys(spec: SourceSpec, key: int, sep: str, windows: int = 128,
                window_bytes: int = 128 << 10) -> list[str]:
    """Keys of the lines at the start of `windows` evenly spread pieces of the input."""
    chunks = plan_pieces(spec, windows)
    keys: list[str] = []
    for chunk in chunks[::max(1, len(chunks) // windows)]:
        block = next(iter(read_chunk(chunk, spec.storage_options, block_bytes=window_bytes)), b"")
        df, _ = text_to_frame(block, sep, key)
        keys.extend(k for k in df.get_column(df.columns[key - 1]).to_list() if k is not None)
    return keys


def bounds(keys: list[str], parts: int) -> list[str]:
    """parts - 1 ascending cut points (bytewise order) splitting `keys` evenly."""
    ordered = sorted(keys, key=lambda k: k.encode())
    if not ordered or parts < 2:
        return []
    return [ordered[len(ordered) * i // parts] for i in range(1, parts)]
