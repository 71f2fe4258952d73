"""Sampling settings and where each value comes from: the profile, the GGUF's `general.sampling.*`, or llama.cpp.

Pure: no I/O. llama.cpp (PR #17120) applies a GGUF's `general.sampling.*` keys as
defaults under the user's flags; runq passes the profile's values as flags (they
win), and for a model without a profile passes the GGUF's own, so the command
line says what will be used whatever the build. Defaults are common/common.h's
at the pinned commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.catalog.profiles import Sampling

# Sampling field -> GGUF key (llama-arch.cpp LLM_KV_GENERAL_SAMPLING_*). There is no presence-penalty key.
GGUF_KEYS = {
    "temperature": "general.sampling.temp",
    "top_p": "general.sampling.top_p",
    "min_p": "general.sampling.min_p",
    "top_k": "general.sampling.top_k",
    "repeat_penalty": "general.sampling.penalty_repeat",
}
# common_params_sampling at 0c1e570: temp 0.80, top_k 40, top_p 0.95, min_p 0.05, penalties off, random seed.
LLAMA_DEFAULTS = Sampling(temperature=0.8, top_p=0.95, min_p=0.05, top_k=40, repeat_penalty=1.0, presence_penalty=0.0)
FIELDS = ("temperature", "top_p", "min_p", "top_k", "repeat_penalty", "presence_penalty", "seed")


def from_gguf(metadata: Mapping[str, Any]) -> Sampling | None:
    """The `general.sampling.*` defaults a GGUF carries (None when it has none, or only values runq cannot use)."""
    values: dict[str, Any] = {}
    for field, key in GGUF_KEYS.items():
        v = metadata.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        values[field] = int(v) if field == "top_k" else float(v)
    if not values:
        return None
    try:
        return Sampling(**values)
    except ValueError:  # out-of-range values in a file: llama.cpp would clamp or ignore them; runq ignores them
        return None


@dataclass(frozen=True)
class SamplingValue:
    name: str
    value: float | int | None  # None: random (seed)
    source: str  # "profile", "GGUF", "llama.cpp default"


def effective(profile: Sampling | None, gguf: Sampling | None) -> list[SamplingValue]:
    """Every value llama.cpp will use, with its source: the profile wins, then the GGUF, then llama.cpp's default."""
    out = []
    for name in FIELDS:
        for source, s in (("profile", profile), ("GGUF", gguf), ("llama.cpp default", LLAMA_DEFAULTS)):
            value = getattr(s, name) if s is not None else None
            if value is not None:
                out.append(SamplingValue(name, value, source))
                break
        else:
            out.append(SamplingValue(name, None, "llama.cpp default"))
    return out


def to_pass(profile: Sampling | None, gguf: Sampling | None) -> Sampling | None:
    """What runq passes as flags: the profile's settings, and the GGUF's own for what the profile leaves open
    (all of them for a model without a profile), so the command says what runs on any build."""
    if profile is None or gguf is None:
        return profile if profile is not None else gguf
    merged = {f: getattr(profile, f) if getattr(profile, f) is not None else getattr(gguf, f) for f in FIELDS}
    return Sampling(**merged)


def describe(values: list[SamplingValue]) -> str:
    """'temperature 0.6 (profile), top_k 40 (llama.cpp default), seed random (llama.cpp default)'."""
    return ", ".join(f"{v.name} {'random' if v.value is None else _num(v.value)} ({v.source})" for v in values)


def _num(x: float | int) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
