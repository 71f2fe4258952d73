"""The one progress model the CLI's bars and the TUI's task screens show: rate, time left, restarts per file."""

from __future__ import annotations

from launcher.progress import Meter, fmt_eta
from launcher.units import MiB


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_and_eta_count_only_what_moved_since_the_start() -> None:
    clock = Clock()
    m = Meter(clock)
    first = m.update(40 * MiB, 100 * MiB)  # 40 MiB kept from an interrupted download: not speed
    assert first.rate == 0 and first.text().endswith("ETA ?")
    clock.t += 2
    r = m.update(60 * MiB, 100 * MiB)
    assert r.rate == 10 * MiB and r.eta_s == 4 and r.pct == 60
    assert r.text() == "60.0 MiB of 100 MiB, 10.0 MiB/s, ETA 0m04s"


def test_the_next_file_starts_over() -> None:
    clock = Clock()
    m = Meter(clock)
    m.update(0, 10 * MiB)
    clock.t += 1
    assert m.update(10 * MiB, 10 * MiB).rate == 10 * MiB
    clock.t += 1
    m.update(1 * MiB, 50 * MiB)  # done went back: a new file
    clock.t += 1
    assert m.update(3 * MiB, 50 * MiB).rate == 2 * MiB


def test_eta_text() -> None:
    assert fmt_eta(65) == "1m05s" and fmt_eta(3725) == "1h02m" and fmt_eta(float("inf")) == "?"
