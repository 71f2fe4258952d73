"""How long a llama.cpp build takes here, said before any build starts: from the last build's manifest.

Edge: reads build manifests, this cache's and, when RUNQ_HOME or RUNQ_CACHE_DIR moved the cache, the default
cache's too (a moved cache starts empty: the build it would redo may be sitting in the old place).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.paths import cache_dir, default_cache_dir

# With no build here to time: what 2 cores took for the pinned commit (CPU: 1,059 s measured on a loaded 2-core
# VM, 2026-12; a CUDA build for one architecture takes about as long again).
UNTIMED = "no earlier build here to time it by: 10-25 minutes on 2 cores, less with more"


def _manifests(root: Path) -> list[dict[str, Any]]:
    out = []
    for m in sorted((root / "builds").glob("*/manifest.json")) if (root / "builds").is_dir() else []:
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("seconds"), int | float):
            out.append({**data, "_dir": str(m.parent)})
    return sorted(out, key=lambda d: str(d.get("built_at", "")), reverse=True)


def build_time_text(backend: str) -> str:
    """'the last cpu build here took 18 min (1,059 s, 2026-12-02)', or what to expect without one."""
    seen = _manifests(cache_dir()) + (_manifests(default_cache_dir()) if moved() else [])
    same = [m for m in seen if m.get("backend") == backend] or seen
    if not same:
        return UNTIMED
    last = same[0]
    secs = float(last["seconds"])
    kind = str(last.get("backend", "?"))
    when = str(last.get("built_at", ""))[:10]
    return f"the last {kind} build here took {secs / 60:.0f} min ({secs:,.0f} s{', ' + when if when else ''})"


def moved() -> bool:
    return cache_dir().resolve() != default_cache_dir().resolve()


def build_elsewhere(commit: str, backend: str) -> Path | None:
    """The cache directory that holds a finished build of `commit` for `backend`, when it is not the one in use:
    the default cache, left behind by RUNQ_HOME or RUNQ_CACHE_DIR."""
    if not moved():
        return None
    for m in _manifests(default_cache_dir()):
        if m.get("commit") == commit and m.get("backend") == backend and (Path(m["_dir"]) / "bin").is_dir():
            return default_cache_dir()
    return None
