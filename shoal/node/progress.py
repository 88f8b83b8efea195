"""Progress of running attempts, published to etcd a few times a second at most.
A command reports by printing `::progress 0.4 step 2 of 5` on stdout or writing such a
line (without the `::progress`) to $SHOAL_PROGRESS_FILE; a function calls
shoal.progress(0.4, "step 2 of 5"), which writes that file."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass

from ..exec.attempt import log_paths

log = logging.getLogger("shoal.progress")
_STDOUT_LINE = re.compile(rb"^::progress\s+([0-9.]+)\s*(.*)$", re.MULTILINE)
_FILE_LINE = re.compile(rb"^\s*([0-9.]+)\s*(.*)$", re.MULTILINE)
SCAN_BYTES = 256 * 1024


def last_progress(data: bytes, from_stdout: bool) -> tuple[float, str] | None:
    """The last well-formed progress line in `data`: (fraction clamped to 0..1, message)."""
    found = None
    for m in (_STDOUT_LINE if from_stdout else _FILE_LINE).finditer(data):
        try:
            found = (min(1.0, max(0.0, float(m.group(1)))), m.group(2).decode("utf-8", "replace").strip()[:200])
        except ValueError:
            continue
    return found


@dataclass
class _Watch:
    out_pos: int = 0
    file_pos: int = 0
    latest: tuple[float, str] | None = None
    published: tuple[float, str] | None = None
    published_at: float = 0.0


class ProgressPublisher:
    def __init__(self, scheduler, store, every_s: float = 0.5):
        self.scheduler = scheduler
        self.store = store
        self.every_s = every_s
        self._watches: dict[tuple[str, int], _Watch] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.tick()
            except Exception as e:  # etcd away: try again next tick
                log.info("progress: %s", e)

    async def tick(self) -> None:
        sched = self.scheduler
        live = set()
        for tid, r in list(sched.running.items()):
            if r.proc is None or r.proc.done.done() or tid in sched.finished:
                continue
            key = (tid, r.record.attempt)
            live.add(key)
            w = self._watches.setdefault(key, _Watch())
            self._scan(w, tid, r.record.attempt, command=not r.record.spec.is_function)
            if w.latest is None or w.latest == w.published or time.time() - w.published_at < self.every_s:
                continue
            fraction, message = w.latest
            new = r.record.model_copy(update={"progress": {"fraction": fraction, "message": message,
                                                           "at": round(time.time(), 3)}})
            rev = await self.store.tasks.put_progress(sched.s.node_id, new, r.read_rev, r.attempt_rev)
            # only if nothing moved meanwhile (the attempt may have ended while we wrote)
            if rev and sched.running.get(tid) is r and tid not in sched.finished:
                r.record, r.read_rev = new, rev
            w.published, w.published_at = w.latest, time.time()
        for key in list(self._watches):
            if key not in live:
                del self._watches[key]

    def _scan(self, w: _Watch, task_id: str, n: int, command: bool) -> None:
        out_path, _ = log_paths(self.scheduler.log_dir, task_id, n)
        if command:
            w.out_pos, found = _read_new(out_path, w.out_pos, True)
            w.latest = found or w.latest
        w.file_pos, found = _read_new(out_path.with_suffix(".progress"), w.file_pos, False)
        w.latest = found or w.latest


def _read_new(path, pos: int, from_stdout: bool) -> tuple[int, tuple[float, str] | None]:
    try:
        size = os.stat(path).st_size
    except OSError:
        return pos, None
    if size <= pos:
        return pos, None
    start = max(pos, size - SCAN_BYTES)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(size - start)
    # only whole lines: a half-written line is read again next time
    cut = data.rfind(b"\n") + 1
    return start + cut, last_progress(data[:cut], from_stdout)
