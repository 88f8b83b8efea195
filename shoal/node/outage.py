"""What a node says while etcd is out of reach, as a pure decision: a warning when etcd
first stops answering, another every `every_s` saying for how long, a line when it
answers again, and, if the node was given a limit (`shoal up` gives one), the word to
exit once the outage has lasted that long. Without a limit the node keeps retrying."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EtcdOutage:
    where: str = "etcd"                # "etcd at <endpoints>", for the messages
    exit_after_s: float | None = None
    every_s: float = 30.0
    down_since: float | None = None   # when etcd last answered, while it does not
    said_at: float | None = None      # when the last warning went out

    def observe(self, now: float, down_since: float | None, error: str = "") -> tuple[str | None, bool]:
        """`down_since`: when etcd last answered if a call has failed since, else None.
        Returns (a line to log or None, whether to exit)."""
        if down_since is None:
            was, self.down_since, self.said_at = self.down_since, None, None
            return (f"{self.where} answers again after {now - was:.0f}s" if was is not None else None), False
        self.down_since = down_since
        away = now - down_since
        if self.exit_after_s is not None and away >= self.exit_after_s:
            return (f"{self.where} has been unreachable for {away:.0f}s; exiting "
                    f"(--etcd-gone-exit {self.exit_after_s:g})"), True
        if self.said_at is None:
            self.said_at = now
            return f"{self.where} is unreachable" + (f": {error}" if error else "") + "; retrying", False
        if now - self.said_at >= self.every_s:
            self.said_at = now
            return f"{self.where} has been unreachable for {away:.0f}s; still retrying", False
        return None, False
