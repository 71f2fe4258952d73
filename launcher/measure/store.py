"""Tuned plans on disk: one JSON file per model + quant + machine fingerprint + llama.cpp build, read as a typed
TuneRecord.

Edge module (reads and writes `<config>/tuned/`). A record keeps the goal, what was chosen (its knobs and
figures), llama.cpp's default as measured, and every candidate, so `runq plan` can show the last measured
speed next to the prediction and every front end's plan (through the pipeline) uses the chosen knobs.
Records are runq's own files: unknown keys are ignored (a newer runq may add some), a record that does not
validate is treated as absent (tune again), never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from launcher.machine.spec import Machine
from launcher.measure.calibrate import fingerprint
from launcher.measure.tune import Knobs, Measured
from launcher.paths import tuned_dir


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class KnobsRecord(_Record):
    threads: int
    ubatch: int
    flash_attn: str = "auto"
    load_mode: str = "mmap"
    expert_delta: int = 0
    baseline: bool = False
    spec: str = "none"
    moe_cache_mib: int = 0

    def knobs(self) -> Knobs:
        return Knobs(self.threads, self.ubatch, self.flash_attn, self.load_mode, self.expert_delta, self.baseline,
                     self.spec, self.moe_cache_mib)  # fmt: skip

    @classmethod
    def of(cls, k: Knobs) -> KnobsRecord:
        return cls.model_validate(k.as_json())


class MeasuredRecord(_Record):
    label: str
    argv: list[str] = []
    pp_tps: float | None = None
    tg_tps: float | None = None
    peak_bytes: dict[str, int] = {}
    error: str | None = None
    knobs: KnobsRecord | None = None
    depth: int = 0
    via: str = "llama-bench"

    @classmethod
    def of(cls, m: Measured) -> MeasuredRecord:
        return cls.model_validate({**m.as_json(), "knobs": m.knobs.as_json()})


class TuneRecord(_Record):
    model: str
    quant: str
    fingerprint: dict[str, Any]
    goal: str
    tuned_at: str
    chosen: MeasuredRecord
    baseline: MeasuredRecord | None = None
    candidates: list[MeasuredRecord] = []

    @property
    def knobs(self) -> Knobs:
        assert self.chosen.knobs is not None  # save() always writes them
        return self.chosen.knobs.knobs()

    @property
    def note(self) -> str:
        c = self.chosen
        shown = [f"{name} {v:.1f} t/s" for name, v in (("decode", c.tg_tps), ("prompt", c.pp_tps)) if v]
        at = f" at {c.depth:,} tokens of context" if c.depth else ""
        return f"tuned {self.tuned_at[:10]}: measured {', '.join(shown)}{at} ({c.label}, for {self.goal})"


def model_key(target: Any) -> str:
    """A local file by its absolute path; a catalog model by its profile name."""
    if target.model_path is not None:
        return str(Path(target.model_path).resolve())
    return str(target.profile.name)


def tune_fingerprint(machine: Machine, build_key: str) -> dict[str, Any]:
    """The machine a tune result holds for: the calibration's fingerprint and, with --rpc/--worker, the workers'
    devices (knobs measured on this host alone say nothing about a plan that spreads over workers)."""
    fp = fingerprint(machine, build_key)
    if machine.workers:
        fp["workers"] = [[w.endpoint, [[d.kind, round(d.total_bytes / 2**30)] for d in w.devices]]
                         for w in machine.workers]  # fmt: skip
    return fp


def _path(machine: Machine, build_key: str, key: str, quant: str) -> Path:
    ident = json.dumps([tune_fingerprint(machine, build_key), key, quant], sort_keys=True)
    return tuned_dir() / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def save(machine: Machine, build_key: str, key: str, quant: str, goal: str, chosen: Measured,
         measured: Sequence[Measured]) -> Path:  # fmt: skip
    base = next((m for m in measured if m.knobs.baseline), None)
    rec = TuneRecord(
        model=key, quant=quant, fingerprint=tune_fingerprint(machine, build_key), goal=goal,
        tuned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), chosen=MeasuredRecord.of(chosen),
        baseline=MeasuredRecord.of(base) if base else None, candidates=[MeasuredRecord.of(m) for m in measured],
    )  # fmt: skip
    path = _path(machine, build_key, key, quant)
    _write_atomic(path, rec.model_dump_json(indent=1))
    index = path.parent / "latest.json"  # model key -> quant tuned last (for runs that do not pin a quant)
    try:
        latest = json.loads(index.read_text())
    except (OSError, ValueError):
        latest = {}
    latest[f"{build_key}|{key}"] = quant
    _write_atomic(index, json.dumps(latest, indent=1))
    return path


def load(machine: Machine, build_key: str, key: str, quant: str | None) -> TuneRecord | None:
    """The saved result for this model (and quant; without one, the quant tuned last), or None."""
    if quant is None:
        try:
            quant = json.loads((tuned_dir() / "latest.json").read_text()).get(f"{build_key}|{key}")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(quant, str):
            return None
    try:
        rec = TuneRecord.model_validate_json(_path(machine, build_key, key, quant).read_text())
    except (OSError, ValueError, ValidationError):
        return None
    if rec.fingerprint != tune_fingerprint(machine, build_key) or rec.chosen.knobs is None:
        return None
    return rec
