"""Progress of a long step as people read it: percent, bytes, rate and time left.

Pure (the clock is the only input besides the numbers). The CLI's printers and the TUI's task screens both
show a Meter's Reading, so a download says the same thing in both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from launcher.units import fmt_bytes


def fmt_eta(seconds: float) -> str:
    """'1m05s'; '1h02m' past an hour; '?' when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


@dataclass(frozen=True)
class Reading:
    done: int
    total: int
    rate: float  # bytes per second since this transfer (re)started; 0 when not known yet
    elapsed_s: float

    @property
    def pct(self) -> int:
        return min(100, self.done * 100 // self.total) if self.total else 100

    @property
    def eta_s(self) -> float:
        return (self.total - self.done) / self.rate if self.rate > 0 else float("inf")

    def text(self) -> str:
        """'1.20 GiB of 3.00 GiB, 41.0 MiB/s, ETA 0m45s'."""
        return f"{fmt_bytes(self.done)} of {fmt_bytes(self.total)}, {fmt_bytes(self.rate)}/s, ETA {fmt_eta(self.eta_s)}"


class Meter:
    """Rate and time left of one transfer. It starts over when `done` goes back (the next file), and the rate
    counts only bytes moved since the start (bytes kept from an interrupted download do not inflate it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.start: int | None = None
        self.last_done = 0

    def restart(self) -> None:
        self.start = None

    def update(self, done: int, total: int) -> Reading:
        now = self.clock()
        if self.start is None or done < self.last_done:
            self.start, self.t0 = done, now
        self.last_done = done
        elapsed = now - self.t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        return Reading(done, total, rate, elapsed)
