"""Sorting more records than fit in memory.

Frames pile up in memory; past `memory_bytes` they are sorted and written to a run file
(Arrow IPC, uncompressed, in a private directory under `spill_dir`). At the end, with no
runs the records are sorted in memory; otherwise the runs are merged, each read back a
slice at a time from a memory map, so memory stays bounded. Run files go away when the
sort is done or closed.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.ipc

from .merge import SortedMerge, drop_keys, sort_keyed, with_sort_keys
from .records import concat_frames, slices

RUN_BATCH_ROWS = 65536


class ExternalSort:
    """Collect frames (columns "1", "2", ...) with add(), then iterate results() once."""

    def __init__(self, key: list[int], numeric: bool = False, reverse: bool = False,
                 memory_bytes: int = 512 << 20, spill_dir: Path | str | None = None,
                 batch_rows: int = 1_000_000):
        self.key = list(key)
        self.numeric = numeric
        self.reverse = reverse
        self.memory_bytes = max(int(memory_bytes), 1)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.batch_rows = max(int(batch_rows), 1)
        self.runs: list[Path] = []
        self.spilled_bytes = 0
        self._buf: list[pl.DataFrame] = []
        self._size = 0
        self._dir: Path | None = None

    def add(self, df: pl.DataFrame) -> None:
        if not df.height:
            return
        self._buf.append(df)
        self._size += df.estimated_size()
        if self._size > self.memory_bytes:
            self._spill()

    def _sorted_buffer(self) -> pl.DataFrame:
        df = with_sort_keys(concat_frames(self._buf), self.key, self.numeric)
        self._buf, self._size = [], 0
        return sort_keyed(df, len(self.key), self.reverse)

    def _spill(self) -> None:
        if self._dir is None:
            base = self.spill_dir or Path(tempfile.gettempdir())
            base.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="shoal-sort-", dir=base))
        run = self._sorted_buffer()
        path = self._dir / f"run-{len(self.runs):05d}.arrow"
        drop_keys(run).write_ipc(path, compression="uncompressed", record_batch_size=RUN_BATCH_ROWS)
        self.runs.append(path)
        self.spilled_bytes += path.stat().st_size

    def results(self) -> Iterator[pl.DataFrame]:
        """All records in sort order, in frames of at most batch_rows rows."""
        try:
            if not self.runs:
                if self._buf:
                    yield from slices(drop_keys(self._sorted_buffer()), self.batch_rows)
                return
            if self._buf:
                self._spill()
            yield from self._merge_runs()
        finally:
            self.close()

    def _merge_runs(self) -> Iterator[pl.DataFrame]:
        merge = SortedMerge(len(self.runs), self.key, self.numeric, self.reverse)
        readers = [_RunReader(path) for path in self.runs]
        try:
            while not merge.done:
                for i in merge.wanted():
                    piece = readers[i].next()
                    if piece is None:
                        merge.end(i)
                    else:
                        merge.push_keyed(i, with_sort_keys(piece, self.key, self.numeric))
                out = merge.pop_keyed()
                if out is not None:
                    yield from slices(drop_keys(out), self.batch_rows)
        finally:
            for r in readers:
                r.close()

    def close(self) -> None:
        """Delete the run files (safe to call more than once)."""
        self._buf, self._size = [], 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.runs = []


class _RunReader:
    """One run file, read a record batch at a time from a memory map."""

    def __init__(self, path: Path):
        self._src = pa.memory_map(str(path))
        self._file = pa.ipc.open_file(self._src)
        self._next = 0

    def next(self) -> pl.DataFrame | None:
        while self._next < self._file.num_record_batches:
            batch = self._file.get_batch(self._next)
            self._next += 1
            if batch.num_rows:
                return pl.from_arrow(batch)
        return None

    def close(self) -> None:
        self._src.close()
