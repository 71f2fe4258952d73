"""Byte sizes: parse what users type, print what they can't misread.

Pure: no I/O. Decimal units (GB) are 10^9, binary units (GiB) 2^30; the bare
letters K/M/G/T mean binary, as in `free -g` and nvidia-smi. Output always
spells the binary unit ("23.5 GiB").
"""

from __future__ import annotations

import re

from launcher.errors import UsageError

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": TiB, "tib": TiB, "tb": 1000**4,
}  # fmt: skip

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, what: str = "size") -> int:
    """'24GiB' -> 25769803776. A bare number without a unit is refused: too easy to misread."""
    m = _SIZE_RE.match(text)
    if not m and text.strip().startswith("-"):
        raise UsageError(f"{what} {text!r}: a size cannot be negative", hint="e.g. 24GiB, 256GB or 512MiB")
    if not m:
        raise UsageError(
            f"cannot read {what} {text!r}",
            hint="write a number and a unit, e.g. 24GiB, 256GB or 512MiB",
        )
    number, unit = m.group(1), m.group(2).lower()
    if not unit:
        raise UsageError(
            f"{what} {text!r} has no unit",
            hint=f"say which: {text}GiB (binary) or {text}GB (decimal)",
        )
    if unit not in _UNITS:
        raise UsageError(
            f"unknown unit {m.group(2)!r} in {what} {text!r}",
            hint="use B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)",
        )
    return int(float(number) * _UNITS[unit])


def fmt_bytes(n: int | float) -> str:
    """Binary units, 3 significant digits: '1.23 GiB', '512 MiB', '17 B'."""
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value >= size:
            scaled = value / size
            digits = 2 if scaled < 10 else 1 if scaled < 100 else 0
            return f"{sign}{scaled:.{digits}f} {unit}"
    return f"{sign}{int(value)} B"


def fmt_gib(n: int | float) -> str:
    """Fixed GiB with one decimal, for tables where columns must line up."""
    return f"{n / GiB:.1f}"


def fmt_decimal(n: int | float) -> str:
    """Decimal units, as the Hub shows file sizes: '255.4 GB', '14.9 MB'."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
