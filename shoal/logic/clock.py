"""Time as an injected object: decision code asks a `Clock`, so tests can set the time
instead of sleeping (as trio's MockClock)."""
from __future__ import annotations

import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch: what records and other nodes compare."""

    def monotonic(self) -> float:
        """Seconds that only go forward: for deadlines and intervals on this machine."""


class SystemClock:
    """The real clocks."""
    __slots__ = ()

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class TestClock:
    """A clock that moves only when told: `advance(s)` moves both readings forward,
    `set(t)` puts the wall clock at `t` (the monotonic reading never goes back)."""
    __test__ = False   # not a pytest test class, whatever its name says

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0):
        self._wall = float(wall)
        self._mono = float(monotonic)

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self._wall += seconds
        self._mono += seconds

    def set(self, wall: float) -> None:
        """Jump the wall clock (as NTP may); monotonic time moves only forward."""
        self._mono += max(0.0, wall - self._wall)
        self._wall = float(wall)

    def __repr__(self) -> str:
        return f"TestClock(wall={self._wall}, monotonic={self._mono})"
