"""Tuned plans on disk: one JSON file per model + quant + machine fingerprint + llama.cpp build.

Edge module (reads and writes `<config>/tuned/`). A record keeps the goal, what was chosen (its knobs and
figures), llama.cpp's default as measured, and every candidate, so `runq plan` can show the last measured
speed next to the prediction and `runq run` / `runq service install` can use the chosen knobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher.machine.spec import Machine
from launcher.measure.calibrate import fingerprint
from launcher.measure.tune import Measured
from launcher.paths import tuned_dir


def model_key(target: Any) -> str:
    """A local file by its absolute path; a catalog model by its profile name."""
    if target.model_path is not None:
        return str(Path(target.model_path).resolve())
    return str(target.profile.name)


def _path(machine: Machine, build_key: str, key: str, quant: str) -> Path:
    ident = json.dumps([fingerprint(machine, build_key), key, quant], sort_keys=True)
    return tuned_dir() / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.json"


def save(machine: Machine, build_key: str, key: str, quant: str, goal: str, chosen: Measured,
         measured: Sequence[Measured]) -> Path:  # fmt: skip
    base = next((m for m in measured if m.knobs.baseline), None)
    rec = {
        "model": key,
        "quant": quant,
        "fingerprint": fingerprint(machine, build_key),
        "goal": goal,
        "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "chosen": {**chosen.as_json(), "knobs": chosen.knobs.as_json()},
        "baseline": base.as_json() if base else None,
        "candidates": [m.as_json() for m in measured],
    }
    path = _path(machine, build_key, key, quant)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)
    index = path.parent / "latest.json"  # model key -> quant tuned last (for runs that do not pin a quant)
    try:
        latest = json.loads(index.read_text())
    except (OSError, ValueError):
        latest = {}
    latest[f"{build_key}|{key}"] = quant
    index.write_text(json.dumps(latest, indent=1))
    return path


def load(machine: Machine, build_key: str, key: str, quant: str | None) -> dict[str, Any] | None:
    """The saved result for this model (and quant; without one, the quant tuned last), or None."""
    if quant is None:
        try:
            quant = json.loads((tuned_dir() / "latest.json").read_text()).get(f"{build_key}|{key}")
        except (OSError, ValueError):
            return None
        if quant is None:
            return None
    try:
        rec = json.loads(_path(machine, build_key, key, quant).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("fingerprint") != fingerprint(machine, build_key):
        return None
    return rec


def note(rec: dict[str, Any]) -> str:
    c = rec["chosen"]
    figures = ", ".join(f"{name} {c[k]:.1f} t/s" for name, k in (("decode", "tg_tps"), ("prompt", "pp_tps")) if c[k])
    return f"tuned {rec['tuned_at'][:10]}: measured {figures} ({c['label']}, for {rec['goal']})"
