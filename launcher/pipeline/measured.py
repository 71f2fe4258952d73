"""What was measured on this machine, applied to plans: its calibrated decode constants (launcher/calibration.py)
and a saved `runq tune` result for the model (launcher/tuned_store.py).

An edge (reads the stores, may calibrate). `run`, `plan`, `service install` and `tune` call these hooks; a
described machine (`--gpu`, `--ram`, `--machine`) is not this machine, so it gets neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launcher.machine.spec import Machine


def _quiet(_text: str) -> None:
    pass


def current_build(machine: Machine, llama_bin: str | None = None) -> tuple[Path, str] | None:
    """(bin dir, build key) of the llama.cpp runq would run here: --llama-bin, or the newest cached build of the
    pinned commit for this machine's backend."""
    if llama_bin:
        path = Path(llama_bin).resolve()
        return path, f"custom:{path}"
    from launcher.llama import build as bld

    found = bld.find_build("cuda" if machine.gpus else "cpu")
    return (found.bin_dir, found.key) if found else None


def with_speed(
    machine: Machine, llama_bin: str | None = None, *, calibrate_now: bool = False, say: Callable[[str], None] = _quiet
) -> Machine:
    """The machine with its measured decode constants, when it is this machine (probed). With `calibrate_now`
    (a real run or tune, without --no-calibrate) and no calibration for this machine and build yet, calibrate
    first (once; RUNQ_AUTO_CALIBRATE=0 turns that off); a provisional one (incomplete, or taken under load) is
    measured again when the machine is idle now."""
    if machine.source != "probed":
        return machine
    from launcher.measure import calibrate as calibration

    found = current_build(machine, llama_bin)
    if found is None:
        return machine
    bin_dir, key = found
    model = calibration.load(machine, key)
    auto = os.environ.get("RUNQ_AUTO_CALIBRATE", "1") != "0"  # the test suite turns it off (tests/conftest.py)
    again = model is not None and bool(model.provisional) and calibration.idle_now(machine)
    if (model is None or again) and calibrate_now and auto and (bin_dir / "llama-bench").is_file():
        say(calibration.announce(machine, model))
        model, rec, path = calibration.calibrate(machine, bin_dir, key, cuda=bool(machine.gpus), say=say)
        made = f", {rec['generating_s']:.0f} s of it generating its models" if rec["generating_s"] >= 1 else ""
        say(f"  calibrated in {rec['took_s']:.0f} s{made}; saved in {path}; `runq calibrate` measures again")
        if model.provisional:
            say(f"  provisional: {model.provisional}; the next run on an idle machine measures again")
    return replace(machine, speed=model) if model else machine


@dataclass(frozen=True)
class Tuned:
    knobs: Any  # tune.Knobs
    quant: str
    note: str

    def argv(self, argv: list[str]) -> list[str]:
        from launcher.measure import tune

        return tune.apply_to_argv(argv, self.knobs)


def tuned_request(machine: Machine, target: Any, req: Any, pins: dict[str, Any] | None = None,
                  llama_bin: str | None = None) -> tuple[Any, str | None, Tuned | None]:  # fmt: skip
    """(request, pinned quant, tuned) with a saved tune result for this model, machine and build applied;
    unchanged when there is none, the machine is described, or the user pinned placement flags."""
    from launcher.measure import store as tuned_store

    if machine.source != "probed" or (pins and set(pins) & {"ot", "ngl", "ubatch", "threads"}) or req.user_overrides:
        return req, target.pinned, None
    found = current_build(machine, llama_bin)
    if found is None:
        return req, target.pinned, None
    rec = tuned_store.load(machine, found[1], tuned_store.model_key(target), target.pinned)
    if rec is None:
        return req, target.pinned, None
    from launcher.measure.tune import Knobs

    k = Knobs.from_json(rec["chosen"]["knobs"])
    if not k.baseline:
        biggest = 0
        if k.expert_delta:
            src = next((s for s in target.sources if s.name == rec["quant"]), None)
            if src is not None:
                biggest = max((src.tensors.expert_bytes(il) for il in src.tensors.expert_layers), default=0)
        req = replace(req, ubatch=req.ubatch or k.ubatch, threads=req.threads or k.threads,
                      margin_extra_bytes=req.margin_extra_bytes - k.expert_delta * biggest)  # fmt: skip
    return req, rec["quant"], Tuned(k, rec["quant"], tuned_store.note(rec))


def measured_note(machine: Machine, target: Any, quant: str) -> str | None:
    """'last measured N t/s (tuned DATE, LABEL)' for `runq plan`, when this model was tuned here."""
    from launcher.measure import store as tuned_store

    if machine.source != "probed":
        return None
    found = current_build(machine)
    rec = tuned_store.load(machine, found[1], tuned_store.model_key(target), quant) if found else None
    return tuned_store.note(rec) if rec else None
