"""What was measured on this machine, applied to a plan request: its calibrated decode constants
(measure/calibrate.py) and a saved `runq tune` result for the model (measure/store.py).

An edge (reads the stores, may calibrate). Only pipeline/plan.py calls these, for every front end alike; a
described machine (`--gpu`, `--ram`, `--machine`) is not this machine, so it gets neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from launcher.machine.spec import Machine

if TYPE_CHECKING:
    from launcher.llama.binaries import Binaries
    from launcher.measure.store import TuneRecord
    from launcher.pipeline.target import ModelTarget
    from launcher.plan.types import Request

# Pins after which a tuned placement does not apply: the user placed (part of) the model themselves.
PLACEMENT_PINS = frozenset({"ot", "ngl", "ubatch", "threads"})


def _quiet(_text: str) -> None:
    pass


def with_speed(
    machine: Machine, binaries: Binaries | None, *, calibrate_now: bool = False, say: Callable[[str], None] = _quiet
) -> Machine:
    """The machine with its measured decode constants, when it is this machine (probed) and has them. With
    `calibrate_now` (a real run or tune, without --no-calibrate) and no calibration for this machine and build yet,
    calibrate first (once; RUNQ_AUTO_CALIBRATE=0 turns that off); a provisional one (incomplete, or taken under
    load) is measured again when the machine is idle now."""
    if machine.source != "probed" or binaries is None or machine.speed is not None:
        return machine
    from launcher.measure import calibrate as calibration

    model = calibration.load(machine, binaries.key)
    auto = os.environ.get("RUNQ_AUTO_CALIBRATE", "1") != "0"  # the test suite turns it off (tests/conftest.py)
    again = model is not None and bool(model.provisional) and calibration.idle_now(machine)
    if (model is None or again) and calibrate_now and auto and binaries.has("llama-bench"):
        say(calibration.announce(machine, model))
        model, rec, path = calibration.calibrate(machine, binaries.bin_dir, binaries.key, cuda=bool(machine.gpus),
                                                 say=say)  # fmt: skip
        made = f", {rec['generating_s']:.0f} s of it generating its models" if rec["generating_s"] >= 1 else ""
        say(f"  calibrated in {rec['took_s']:.0f} s{made}; saved in {path}; `runq calibrate` measures again")
        if model.provisional:
            say(f"  provisional: {model.provisional}; the next run on an idle machine measures again")
    return replace(machine, speed=model) if model else machine


def tune_record(
    machine: Machine, binaries: Binaries | None, target: ModelTarget, quant: str | None
) -> TuneRecord | None:
    """The saved `runq tune` result for this model here (this quant; None: the quant tuned last), if any."""
    if machine.source != "probed" or binaries is None:
        return None
    from launcher.measure import store

    return store.load(machine, binaries.key, store.model_key(target), quant)


def apply_tuned(req: Request, rec: TuneRecord, target: ModelTarget, pins: Mapping[str, Any]) -> Request:
    """The request with the tuned knobs as its own fields (the planner and the argv builder read them there);
    unchanged where the user pinned placement. More expert layers per GPU is a lower margin, by the model's
    largest expert layer each."""
    if set(pins) & PLACEMENT_PINS or req.user_overrides:
        return req
    k = rec.knobs
    if k.baseline:
        return replace(req, llama_default=True, tuned=rec.note, spec_type=k.spec, moe_cache_mib=k.moe_cache_mib)
    biggest = 0
    if k.expert_delta:
        src = next((s for s in target.sources if s.name == rec.quant), None)
        if src is not None:
            biggest = max((src.tensors.expert_bytes(il) for il in src.tensors.expert_layers), default=0)
    return replace(
        req, ubatch=req.ubatch or k.ubatch, threads=req.threads or k.threads, tuned=rec.note,
        margin_extra_bytes=req.margin_extra_bytes - k.expert_delta * biggest,
        flash_attn=k.flash_attn, load_mode=k.load_mode, spec_type=k.spec,  # type: ignore[arg-type]
        moe_cache_mib=k.moe_cache_mib,
    )  # fmt: skip
