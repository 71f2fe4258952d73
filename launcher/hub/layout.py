"""How GGUF repos lay out their quants, and how that maps to a profile. Pure: no I/O.

Unsloth's layout (models.md §0): a quant stored as one file sits at the repo
root (`DeepSeek-V3.1-UD-TQ1_0.gguf`); a split quant sits in a folder named
after it (`UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-00001-of-00006.gguf`). Group by
the first path part, else parse the tag from the root file's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from launcher.catalog.profiles import Profile, QuantSpec
from launcher.model.shards import SHARD_RE

# The quant tag at the end of a file stem: UD-Q2_K_XL, Q4_K_M, IQ1_S, TQ1_0, BF16, MXFP4_MOE …
_TAG_RE = re.compile(r"(?:^|[-.])((?:UD-)?(?:I?Q\d[\w]*|TQ\d_\d|BF16|F16|F32|MXFP4\w*))$", re.IGNORECASE)
SIZE_MISMATCH_TOLERANCE = 0.02  # published sizes in docs run 1-4% off the Hub's


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


@dataclass(frozen=True)
class RemoteQuant:
    name: str
    files: tuple[RemoteFile, ...]  # shard order

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def first(self) -> RemoteFile:
        return self.files[0]


def quant_tag(path: str) -> str | None:
    """The quant a .gguf file belongs to: its folder, or the tag at the end of its name."""
    parts = path.split("/")
    if len(parts) > 1:
        return parts[0]
    stem = parts[0].removesuffix(".gguf")
    m = SHARD_RE.match(parts[0])
    if m:
        stem = m.group("prefix")
    t = _TAG_RE.search(stem)
    return t.group(1) if t else None


def group_quants(files: Iterable[RemoteFile]) -> list[RemoteQuant]:
    """GGUF files grouped by quant, each group's shards in order; smallest quant first."""
    groups: dict[str, list[RemoteFile]] = {}
    for f in files:
        if not f.path.endswith(".gguf") or "mmproj" in f.path.lower():
            continue
        tag = quant_tag(f.path)
        if tag:
            groups.setdefault(tag, []).append(f)
    out = [RemoteQuant(tag, tuple(sorted(fs, key=lambda f: f.path))) for tag, fs in groups.items()]
    return sorted(out, key=lambda q: q.size_bytes)


def _norm(name: str) -> str:
    return name.upper().removeprefix("UD-")


@dataclass(frozen=True)
class QuantMatch:
    spec: QuantSpec | None  # None: on the Hub, not in the profile
    remote: RemoteQuant | None  # None: in the profile, not on the Hub
    warning: str | None = None


def match_profile(profile: Profile, remote: list[RemoteQuant]) -> list[QuantMatch]:
    """Pair the profile's quants with the repo's; warn where sizes or layouts disagree."""
    by_name = {r.name.upper(): r for r in remote}
    used: set[str] = set()
    out = []
    for q in profile.quants_by_size():
        r = by_name.get(q.name.upper()) or next((x for x in remote if _norm(x.name) == _norm(q.name)), None)
        if r is None:
            out.append(QuantMatch(q, None))
            continue
        used.add(r.name)
        warning = None
        if abs(r.size_bytes - q.size_bytes) > SIZE_MISMATCH_TOLERANCE * q.size_bytes:
            warning = (
                f"{q.name}: the Hub has {r.size_bytes / 1e9:.1f} GB, the profile says {q.size_bytes / 1e9:.1f} GB "
                f"(using the Hub's)"
            )
        elif len(r.files) != q.shards:
            warning = f"{q.name}: the Hub has {len(r.files)} files, the profile says {q.shards} (using the Hub's)"
        out.append(QuantMatch(q, r, warning))
    for r in remote:
        if r.name not in used:
            out.append(QuantMatch(None, r))
    return out


def missing_warning(profile: Profile, matches: list[QuantMatch]) -> str | None:
    """One line for the profile's quants the repo does not have."""
    missing = [m.spec.name for m in matches if m.remote is None and m.spec is not None]
    if not missing:
        return None
    return (
        f"{len(missing)} of {len(profile.quants)} quants of the profile are not in {profile.repo}: {', '.join(missing)}"
    )


def quants_by_name(profile: Profile, files: Iterable[RemoteFile]) -> dict[str, RemoteQuant]:
    """The repo's quants under the profile's names (the repo's own name for quants the profile lacks)."""
    return {
        (m.spec.name if m.spec else m.remote.name): m.remote
        for m in match_profile(profile, group_quants(files))
        if m.remote is not None
    }
