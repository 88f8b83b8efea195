"""Start and stop long-lived background processes (etcd, nodes) by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def spawn_daemon(argv: list[str], log_path: str, env: dict | None = None, cwd: str | None = None) -> int:
    """Start `argv` in its own session with output to `log_path`; return its pid."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=cwd, close_fds=True)
    proc.returncode = 0  # we track it by pid from here on; silence Popen's destructor
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(pid: int, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> bool:
    """Send `sig`, wait up to grace_s, then SIGKILL. True if it was running."""
    if not alive(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True
