"""Run one attempt of a command task: its own process group, stdout/stderr to files,
timeout as SIGTERM -> grace -> SIGKILL of the group, a memory limit where the OS
allows, and CPU seconds and max RSS from wait4(). Exit is noticed through a pidfd
on the event loop, so no thread waits per child."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SetupError
from ..model import TaskSpec
from .capture import Capture
from .limits import MemoryLimit
from .result import AttemptResult


def tail(path: Path, nbytes: int) -> tuple[str, int]:
    """The last `nbytes` of a file as text, and the file's full size."""
    try:
        size = os.stat(path).st_size
        if size == 0:  # the common case costs one stat, not an open
            return "", 0
        with open(path, "rb") as f:
            f.seek(max(0, size - nbytes))
            data = f.read()
    except OSError:
        return "", 0
    return data.decode("utf-8", "replace"), size


@dataclass
class Attempt:
    """A running attempt. `done` resolves to its AttemptResult."""
    task_id: str
    n: int
    pid: int
    started_at: float
    out_path: Path
    err_path: Path
    tail_bytes: int
    done: asyncio.Future
    _pidfd: int = -1
    _timers: list = field(default_factory=list)
    _kill_reason: str | None = None
    _timed_out: bool = False
    _limit: MemoryLimit | None = None
    parent_peak_rss: int = 0
    _out: Capture | None = None
    _err: Capture | None = None
    _exit: tuple | None = None   # (status, rusage, finished_at) once the leader has exited

    def kill(self, reason: str, grace_s: float) -> None:
        """SIGTERM the group now, SIGKILL it after grace_s if it is still there."""
        if self.done.done() or self._kill_reason:
            return
        self._kill_reason = reason
        _signal_group(self.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(grace_s, _signal_group, self.pid, signal.SIGKILL))

    def _on_timeout(self, grace_s: float, timeout_s: float) -> None:
        if not self.done.done():
            self._timed_out = True
            self.kill(f"timed out after {timeout_s:g}s", grace_s)

    def _max_rss(self, ru) -> int | None:
        """The attempt's peak RSS. Linux folds the spawning process's own peak into a
        child's ru_maxrss (the exec'd image replaces a vfork'd copy of the node), so a
        figure at or below the node's peak says nothing: use the cgroup's peak then, if
        the attempt had one, else report it unknown rather than the node's size."""
        rss = ru.ru_maxrss * 1024 if ru else 0
        if rss > self.parent_peak_rss:
            return rss
        if self._limit is not None:
            return self._limit.peak_bytes()
        return None

    def _on_exit(self) -> None:
        try:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, ru = self.pid, 0, None
        if pid == 0:
            return  # spurious wake-up
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        for t in self._timers:
            t.cancel()
        # whatever the leader left behind in its group goes with it
        _signal_group(self.pid, signal.SIGKILL)
        if _guard is not None:
            _guard.forget(self.pid)
        self._exit = (status, ru, time.time())
        # the pipes close when the last writer is gone; one that escaped the group (a
        # daemon of its own session) must not hold the attempt open
        self._timers.append(loop.call_later(1.0, self._give_up_streams))
        self._maybe_done()

    def _give_up_streams(self) -> None:
        for c in (self._out, self._err):
            if c is not None:
                c.close()

    def _maybe_done(self) -> None:
        if self._exit is None or self.done.done():
            return
        if any(c is not None and not c.closed for c in (self._out, self._err)):
            return
        for t in self._timers:
            t.cancel()
        status, ru, finished = self._exit
        if self._limit:
            if self._limit.oom_killed() and not self._kill_reason:
                self._kill_reason = "killed for exceeding its memory limit"
            self._limit.release()
        out, err = self._out, self._err
        code = os.waitstatus_to_exitcode(status)
        sig = -code if code < 0 else None
        if (out.disk_full or err.disk_full) and not self._kill_reason:
            self._kill_reason = (f"exit code {code}; the node's log disk ({self.out_path.parent}) is full, "
                                 "so its output could not be kept")
        result = AttemptResult(
            exit_code=None if sig else code, signal=sig, started_at=self.started_at,
            finished_at=finished,
            cpu_s=round(ru.ru_utime + ru.ru_stime, 6) if ru else 0.0,
            max_rss_bytes=self._max_rss(ru),
            stdout_tail=out.text(), stderr_tail=err.text(), stdout_bytes=out.size, stderr_bytes=err.size,
            reason=self._kill_reason, timed_out=self._timed_out)
        self.done.set_result(result)


_guard = None  # this process's attempt guard, if it started one (see guard.py)


def use_guard(guard) -> None:
    """Report every attempt's process group to `guard` from now on."""
    global _guard
    _guard = guard


_peak = [0.0, 0]  # (read at, bytes)


def _own_peak_rss() -> int:
    """This process's peak RSS (VmHWM), re-read at most once a second."""
    now = time.monotonic()
    if now - _peak[0] > 1.0:
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        _peak[1] = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        _peak[0] = now
    return _peak[1]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(argv: list[str], env: dict, stdin, out: int, err: int, cwd: str | None) -> int:
    """Start argv in a new process group with the given stdio; return its pid.
    posix_spawn (vfork + exec in libc) is the cheap path; it cannot change directory,
    so a task with a cwd goes through Popen."""
    if cwd is None:
        stdin_fd = stdin.fileno() if stdin is not subprocess.DEVNULL else None
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0) if stdin_fd is None
                   else (os.POSIX_SPAWN_DUP2, stdin_fd, 0),
                   (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
        # every other descriptor of the node is close-on-exec (Python's default).
        # posix_spawnp searches the node's PATH; a task's own PATH is searched here
        exe = argv[0]
        if "/" not in exe and env.get("PATH") != os.environ.get("PATH"):
            exe = shutil.which(exe, path=env.get("PATH", "")) or exe
        return os.posix_spawnp(exe, argv, env, file_actions=actions, setpgroup=0)
    proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err, cwd=cwd, env=env,
                            process_group=0, close_fds=True)
    proc.returncode = 0  # waited on through a pidfd by the caller; keep Popen's destructor quiet
    return proc.pid


def log_paths(log_dir: Path, task_id: str, n: int) -> tuple[Path, Path]:
    """Files of attempt n, flat in the node's log directory (no directory per task)."""
    return log_dir / f"{task_id}.{n}.out", log_dir / f"{task_id}.{n}.err"


def check_cwd(spec: TaskSpec, node_id: str) -> None:
    """SetupError unless the task's directory is here: a task runs in its submitter's
    directory by default, which another machine may not have."""
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise SetupError(f"cwd {spec.cwd} does not exist on node {node_id} (a task runs in the "
                         "directory it was submitted from unless given --cwd / cwd=)")


def start(spec: TaskSpec, task_id: str, n: int, log_dir: Path, node_id: str,
          tail_bytes: int = 4096, grace_s: float = 5.0, base_env: dict | None = None) -> Attempt:
    """Spawn the attempt; raise SetupError (with the reason in words) if it cannot start."""
    check_cwd(spec, node_id)
    stdin = subprocess.DEVNULL
    if spec.stdin is not None:
        try:
            stdin = open(spec.stdin, "rb")
        except OSError as e:
            raise SetupError(f"stdin: cannot open {spec.stdin!r} on node {node_id}: {e.strerror}") from None
    out_path, err_path = log_paths(log_dir, task_id, n)
    env = dict(base_env) if base_env is not None else dict(os.environ)
    env.update(spec.env)
    env["SHOAL_TASK_ID"] = task_id
    env["SHOAL_ATTEMPT"] = str(n)
    env["SHOAL_NODE"] = node_id
    env["SHOAL_PROGRESS_FILE"] = str(out_path.with_suffix(".progress"))
    argv = spec.argv()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = _spawn(argv, env, stdin, out_w, err_w, spec.cwd)
    except OSError as e:
        for fd in (out_r, err_r):
            os.close(fd)
        if isinstance(e, FileNotFoundError):
            raise SetupError(f"command not found on node {node_id}: {argv[0]!r}") from None
        if isinstance(e, PermissionError):
            raise SetupError(f"command not executable on node {node_id}: {argv[0]!r}") from None
        raise SetupError(f"could not start {argv[0]!r} on node {node_id}: {e}") from None
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()
        os.close(out_w)
        os.close(err_w)
    started = time.time()
    loop = asyncio.get_running_loop()
    att = Attempt(task_id, n, pid, started, out_path, err_path, tail_bytes, loop.create_future(),
                  parent_peak_rss=_own_peak_rss())
    if spec.memory:
        att._limit = MemoryLimit.apply(pid, spec.memory, f"{task_id}-{n}")
    if _guard is not None:
        _guard.watch(pid)
    att._out = Capture(out_r, out_path, tail_bytes, att._maybe_done)
    att._err = Capture(err_r, err_path, tail_bytes, att._maybe_done)
    att._pidfd = os.pidfd_open(pid)
    loop.add_reader(att._pidfd, att._on_exit)
    if spec.timeout:
        att._timers.append(loop.call_later(float(spec.timeout), att._on_timeout, grace_s, float(spec.timeout)))
    return att
