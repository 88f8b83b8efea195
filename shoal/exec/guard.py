"""The attempt guard: a small process each node starts beside itself. The node tells it
each attempt's process group as it starts and ends; when the node dies (even by
SIGKILL) the guard reads end-of-file and kills every group still listed, so a dead
node's work cannot keep running while the reaper starts it again elsewhere."""
from __future__ import annotations

import os
import signal
import subprocess
import sys


class Guard:
    """The node's side: a pipe to the guard process."""

    def __init__(self) -> None:
        # the guard must outlive a Ctrl-C of the node's terminal to do its job
        self._proc = subprocess.Popen([sys.executable, "-m", "shoal.exec.guard"], stdin=subprocess.PIPE,
                                      start_new_session=True, close_fds=True)
        self._fd = self._proc.stdin.fileno()
        self.pid = self._proc.pid

    def watch(self, pgid: int) -> None:
        self._send(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        self._send(b"-%d\n" % pgid)

    def _send(self, line: bytes) -> None:
        try:
            os.write(self._fd, line)
        except OSError:
            pass  # the guard is gone; attempts still end with the node's own kill paths

    def close(self) -> None:
        """On a clean exit: every attempt has already ended; let the guard go."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line[:1] == b"+":
            groups.add(pgid)
        else:
            groups.discard(pgid)
    for pgid in groups:  # end of file: the node is gone
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main()
