"""The shortest `-ot` list that puts exactly the planned tensors on a buffer.

Pure: no I/O. llama.cpp's rules (common/arg.cpp, llama-model-loader): each
`-ot PATTERN=BUFT` is an ECMAScript std::regex applied with regex_search
(unanchored) to the tensor name, and the first matching pattern wins.

A pattern here is `blk\\.(LAYERS)\\.(KINDS)` with a numeric-range alternation for
the layers ("9-60" is `(9|[1-5][0-9]|60)`, not 52 patterns). Tensors that end
up on the same buffer either way (say, layers llama.cpp keeps on the CPU
because of -ngl) are "don't care": patterns may cover them when that makes the
list shorter. Every result is checked against the names before it is returned;
the fallback is one pattern per tensor, which is always exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from launcher.errors import UsageError

_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Override:
    pattern: str
    buffer: str  # "CPU", "CUDA0", …

    def __str__(self) -> str:
        return f"{self.pattern}={self.buffer}"


def parse_user_overrides(texts: Iterable[str], buffers: Sequence[str]) -> tuple[Override, ...]:
    """The user's own `-ot PATTERN=BUF[,PATTERN=BUF…]` as llama.cpp reads them, checked: the pattern compiles and
    the buffer is one the planned machine has (`buffers`, e.g. CPU, CUDA0), or llama.cpp would refuse the command."""
    out = []
    for text in texts:
        for item in text.split(","):
            pattern, sep, buf = item.rpartition("=")
            if not sep or not pattern or not buf:
                raise UsageError(
                    f"--ot {item!r}: expected PATTERN=BUFFER", hint=r"e.g. --ot 'blk\.(3|4)\.ffn_.*_exps=CPU'"
                )
            try:
                re.compile(pattern)
            except re.error as e:
                raise UsageError(
                    f"--ot {item!r}: the pattern is not a valid regex: {e}", hint=r"e.g. --ot 'blk\.(3|4)\.ffn_.*=CPU'"
                ) from None
            if buf not in buffers:
                raise UsageError(
                    f"--ot {item!r}: this machine has no buffer {buf!r}",
                    hint="the buffers it has: " + ", ".join(buffers),
                )
            out.append(Override(pattern, buf))
    return tuple(out)


def int_range_regex(lo: int, hi: int) -> str:
    """A regex matching exactly the decimal integers lo..hi (no leading zeros)."""
    if lo > hi:
        raise ValueError("empty range")
    parts: list[str] = []
    _range_parts(lo, hi, parts)
    return "|".join(parts)


def _range_parts(lo: int, hi: int, out: list[str]) -> None:
    if len(str(lo)) < len(str(hi)):  # split at each power of ten
        top = 10 ** len(str(lo)) - 1
        _range_parts(lo, top, out)
        _range_parts(top + 1, hi, out)
        return
    out.extend(_same_length(str(lo), str(hi)))


def _same_length(lo: str, hi: str) -> list[str]:
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [_digit_class(lo, hi)]
    # Same leading digit: recurse on the rest.
    if lo[0] == hi[0]:
        return [lo[0] + r for r in _alts(_same_length(lo[1:], hi[1:]))]
    out: list[str] = []
    rest = len(lo) - 1
    lo_tail_min = lo[1:] == "0" * rest
    hi_tail_max = hi[1:] == "9" * rest
    first = int(lo[0]) if lo_tail_min else int(lo[0]) + 1
    last = int(hi[0]) if hi_tail_max else int(hi[0]) - 1
    if not lo_tail_min:
        out += [lo[0] + r for r in _alts(_same_length(lo[1:], "9" * rest))]
    if first <= last:
        out.append(_digit_class(str(first), str(last)) + "[0-9]" * rest)
    if not hi_tail_max:
        out += [hi[0] + r for r in _alts(_same_length("0" * rest, hi[1:]))]
    return out


def _alts(parts: list[str]) -> list[str]:
    return parts if len(parts) == 1 else ["(?:" + "|".join(parts) + ")"]


def _digit_class(a: str, b: str) -> str:
    if a == b:
        return a
    if a == "0" and b == "9":
        return "[0-9]"
    return f"[{a}-{b}]"


def layers_regex(layers: Iterable[int]) -> str:
    """{9..60} -> '9|[1-5][0-9]|60'; consecutive runs become ranges."""
    nums = sorted(set(layers))
    runs: list[tuple[int, int]] = []
    for n in nums:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return "|".join(int_range_regex(a, b) for a, b in runs)


def _kinds_regex(kinds: Sequence[str]) -> str:
    """['ffn_up_exps', 'ffn_down_exps'] -> 'ffn_(?:down|up)_exps' (common prefix and suffix factored out)."""
    kinds = sorted(set(kinds))
    if len(kinds) == 1:
        return re.escape(kinds[0])
    prefix = _common_prefix(kinds)
    suffix = _common_prefix([k[len(prefix) :][::-1] for k in kinds])[::-1]
    # Keep whole "_"-separated words in the factored parts so they read naturally.
    prefix = prefix[: prefix.rfind("_") + 1]
    suffix = suffix[suffix.find("_") :] if "_" in suffix else ""
    middles = [k[len(prefix) : len(k) - len(suffix)] for k in kinds]
    if any(not m for m in middles):
        return "(?:" + "|".join(re.escape(k) for k in kinds) + ")"
    return f"{re.escape(prefix)}(?:{'|'.join(re.escape(m) for m in middles)}){re.escape(suffix)}"


def _common_prefix(items: Sequence[str]) -> str:
    first, last = min(items), max(items)
    i = 0
    while i < len(first) and i < len(last) and first[i] == last[i]:
        i += 1
    return first[:i]


def selects(patterns: Sequence[str], name: str) -> bool:
    return any(re.search(p, name) for p in patterns)


def build(
    target: Iterable[str],
    names: Iterable[str],
    *,
    dont_care: Iterable[str] = (),
) -> list[str]:
    """Shortest regex list (for one buffer) that matches every target name and no name outside
    target ∪ dont_care."""
    all_names = list(dict.fromkeys(names))
    tgt = set(target)
    if not tgt:
        return []
    free = tgt | set(dont_care)
    forbidden = [n for n in all_names if n not in free]
    for candidate in _candidates(tgt, free, all_names):
        hits = re.compile("|".join(f"(?:{p})" for p in candidate)).search  # one search per name, not one per pattern
        if all(hits(n) for n in tgt) and not any(hits(n) for n in forbidden):
            return candidate
    return [f"^{re.escape(n)}$" for n in sorted(tgt)]  # always exact


def _candidates(tgt: set[str], free: set[str], all_names: list[str]) -> Iterable[list[str]]:
    """Pattern lists to try, shortest ideas first."""
    # Group target tensors by kind ("ffn_up_exps"), with the layers each kind is wanted in.
    parsed = _parse(tuple(all_names))
    layers_of: dict[str, set[int]] = {}
    others: list[str] = []
    for n in tgt:
        got = parsed.get(n) or _parse_one(n)
        if got is None:
            others.append(n)
            continue
        layers_of.setdefault(got[0], set()).add(got[1])
    # Layers of each kind that may be covered without harm.
    free_layers: dict[str, set[int]] = {}
    present: dict[str, set[int]] = {}
    for n, (kind, layer) in parsed.items():
        present.setdefault(kind, set()).add(layer)
        if n in free:
            free_layers.setdefault(kind, set()).add(layer)
    other_patterns = [f"^{re.escape(n)}$" for n in sorted(others)]

    # Idea 1: one pattern per group of kinds that share a layer set; "every layer" needs no layer part.
    for widen in (True, False):
        groups: dict[frozenset[int] | None, list[str]] = {}
        for kind, wanted in layers_of.items():
            layers: set[int] = set(wanted)
            if widen:
                layers = _widen(layers, free_layers.get(kind, set()))
            key = None if layers >= present.get(kind, set()) else frozenset(layers)
            groups.setdefault(key, []).append(kind)
        patterns = []
        for layers_key, kinds in sorted(groups.items(), key=lambda kv: (kv[0] is not None, sorted(kv[1]))):
            k = _kinds_regex(kinds)
            if layers_key is None:
                patterns.append(rf"\.{k}\.")
            else:
                patterns.append(rf"blk\.(?:{layers_regex(layers_key)})\.{k}\.")
        yield patterns + other_patterns
    # Idea 2: one pattern per kind, exact layers.
    yield [
        rf"blk\.(?:{layers_regex(layers)})\.{re.escape(kind)}\." for kind, layers in sorted(layers_of.items())
    ] + other_patterns


def _parse_one(name: str) -> tuple[str, int] | None:
    """blk.N.KIND.suffix -> (KIND, N); None for a name outside the layers."""
    m = _BLK_RE.match(name)
    return (m.group(2).split(".", 1)[0], int(m.group(1))) if m else None


@lru_cache(maxsize=8)
def _parse(names: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    """Every layer tensor's (kind, layer): a model's names are parsed once, not once per plan and buffer."""
    return {n: got for n in names if (got := _parse_one(n)) is not None}


def _widen(wanted: set[int], free: set[int]) -> set[int]:
    """Fill gaps between wanted layers (and extend past the ends) with layers that are free to cover,
    so ranges merge: wanted {3,4,7} with 5,6 free -> {3..7}."""
    if not wanted:
        return wanted
    out = set(wanted)
    lo, hi = min(wanted), max(wanted)
    for n in range(lo, hi + 1):
        if n in free:
            out.add(n)
    n = hi + 1
    while n in free:
        out.add(n)
        n += 1
    n = lo - 1
    while n in free:
        out.add(n)
        n -= 1
    if all(n in out for n in range(lo, hi + 1)):
        return out
    return set(wanted) | {n for n in out if n in free}


def effective_buffers(
    names: Iterable[str],
    overrides: Sequence[Override],
    default: dict[str, str],
) -> dict[str, str]:
    """What llama.cpp does: the first matching override wins, else the tensor's default buffer."""
    out = {}
    for n in names:
        for o in overrides:
            if re.search(o.pattern, n):
                out[n] = o.buffer
                break
        else:
            out[n] = default[n]
    return out
