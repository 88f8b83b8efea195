"""Memory limits: a cgroup (v2, or v1's memory controller) when this process may make
one, else RLIMIT_AS on the process. Placement always counts the task's memory."""
from __future__ import annotations

import resource
from pathlib import Path


def _own_memory_cgroup() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if (base / "memory.limit_in_bytes").exists():
                return base
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            if "memory" in (base / "cgroup.controllers").read_text():
                return base
    return None


_BASE = _own_memory_cgroup()


class MemoryLimit:
    def __init__(self, path: Path | None):
        self.path = path

    @classmethod
    def apply(cls, pid: int, limit_bytes: int, name: str) -> "MemoryLimit":
        global _BASE
        if _BASE is not None:
            group = _BASE / f"shoal-{name}"
            try:
                group.mkdir(exist_ok=True)
                v1 = (group / "memory.limit_in_bytes").exists()
                (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(str(limit_bytes))
                if v1:
                    try:  # also cap swap, or the limit only moves pages out
                        (group / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                    except OSError:
                        pass
                (group / "cgroup.procs").write_text(str(pid))
                return cls(group)
            except OSError:
                try:
                    group.rmdir()
                except OSError:
                    pass
                _BASE = None  # not allowed here; use rlimits from now on
        try:
            resource.prlimit(pid, resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        except (OSError, ValueError):
            pass
        return cls(None)

    @classmethod
    def group(cls, pid: int, name: str) -> "MemoryLimit | None":
        """A cgroup of its own for a long-lived process (a warm worker), no limit yet;
        None where this process may not make cgroups."""
        if _BASE is None:
            return None
        group = _BASE / f"shoal-{name}"
        try:
            group.mkdir(exist_ok=True)
            (group / "cgroup.procs").write_text(str(pid))
        except OSError:
            try:
                group.rmdir()
            except OSError:
                pass
            return None
        return cls(group)

    def set_limit(self, limit_bytes: int | None) -> bool:
        """Cap (or uncap, with None) the group's memory. False if the kernel refused
        (a cap below what the group already uses)."""
        if self.path is None:
            return False
        v1 = (self.path / "memory.limit_in_bytes").exists()
        value = str(limit_bytes) if limit_bytes else ("-1" if v1 else "max")
        files = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] if v1 else ["memory.max"]
        if v1 and not limit_bytes:
            files.reverse()  # v1 keeps memsw >= limit: raise memsw first, lower it last
        ok = True
        for name in files:
            try:
                (self.path / name).write_text(value)
            except OSError:
                ok = ok and name.startswith("memory.memsw")  # swap accounting may be off
        return ok

    def reset_peak(self) -> None:
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            try:
                (self.path / name).write_text("0")
                return
            except OSError:
                continue

    def peak_bytes(self) -> int | None:
        if self.path is None:
            return None
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            try:
                return int((self.path / name).read_text())
            except (OSError, ValueError):
                continue
        return None

    def oom_killed(self) -> bool:
        if self.path is None:
            return False
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                    return True
        except OSError:
            pass
        try:  # cgroup v1: the group is the attempt's own, so any OOM kill in it counts
            # (memory.failcnt can stay 0 when the kernel OOM-kills the task)
            for line in (self.path / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def release(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass
