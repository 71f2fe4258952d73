"""Step 7 of the pipeline: runq's placement is never behind llama.cpp's own fit.

An edge (runs `llama-fit-params`). Where a build can see the plan's GPUs (a CUDA build for this host's, any build
for a worker's over RPC), it asks llama.cpp what it keeps free on each device (`--list-devices`: after the CUDA
context, which NVML's free before launch still holds) and what its fit would place with the same context, ubatch,
KV types and budget (`-fitt` = what llama.cpp keeps), replays that answer on the tensor list (plan/fit_compare.py)
and compares the expert bytes on each GPU. Where runq's estimate kept fewer, the plan is grown to fit's: that
device's margin is lowered by the difference (the estimate of compute or context was above llama.cpp's own).
Margins follow llama.cpp: a local GPU keeps llama.cpp's measured CUDA context + `-fitt`, not a fixed guess.
The plan says whose placement it took and why (`placed_by`, `placed_why`, a reason line; `plan --json`).
Not done where a measurement decided (a tune record), where the user placed tensors, where the plan leaves
placement to llama.cpp, with MTP drafting (fit-params cannot count its context), or where llama.cpp cannot see
the GPUs (described ones with a CPU build: runq's model stands, tested against recorded H200 fits).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import ProjectionFailed
from launcher.plan import memory as mem
from launcher.units import MiB, fmt_bytes

if TYPE_CHECKING:
    from launcher.catalog.sources import ModelSource
    from launcher.llama.binaries import Binaries
    from launcher.llama.fit import Oracle
    from launcher.machine.spec import Machine
    from launcher.plan.choose import Choice
    from launcher.plan.fit_compare import Comparison, FitAnswer
    from launcher.plan.types import Plan, Request


def placed_by_whom(req: Request) -> tuple[str, str] | None:
    """Whose placement a plan is when the comparison is not made for it: (placed_by, placed_why), or None."""
    if req.llama_default:
        return "llama.cpp", "llama.cpp's own fit places the model at run time (tune measured it fastest here)"
    if req.ngl is not None or req.user_overrides:
        return "yours", "placed around your own -ngl / -ot"
    if req.tuned:
        return "tuned", f"measured on this machine ({req.tuned}): not compared with llama.cpp's fit"
    if req.spec_type == "draft-mtp":
        return "runq", "runq's (llama-fit-params cannot count the MTP draft context, so fit was not asked)"
    return None


def check(
    choice: Choice, machine: Machine, req: Request, binaries: Binaries | None, model: Path | None
) -> tuple[Choice, Request]:
    """The choice with its plan compared with (and if need be grown to) llama.cpp's fit, and the request that
    plans it (its `gpu_margins`). Never raises: a fit that cannot be asked leaves runq's plan, saying why."""
    from launcher.llama.fit import Oracle

    p = choice.chosen.plan
    if not p.fits or all(d.name == "CPU" for d in p.devices):
        return choice, req
    oracle = Oracle.find(binaries)
    why = _not_asked(p, machine, req, oracle is not None and model is not None, oracle is not None and oracle.cpu_only)
    if why is not None:
        return _say(choice, p, *why), req
    assert oracle is not None and model is not None
    try:
        return _compare(choice, machine, req, oracle, model)
    except ProjectionFailed as e:
        return _say(choice, p, "runq", f"runq's (llama.cpp's fit could not be asked: {e.message})"), req


def _not_asked(p: Plan, machine: Machine, req: Request, can_ask: bool, cpu_build: bool) -> tuple[str, str] | None:
    """Why llama.cpp's fit is not asked for this plan, as (placed_by, placed_why); None: it is asked."""
    who = placed_by_whom(req)
    if who is not None:
        return who
    if not can_ask:
        return "runq", "runq's model (no llama.cpp build here to ask its fit)"
    if p.gpu_devices and cpu_build:
        return "runq", "runq's model: this CPU build of llama.cpp cannot see the GPUs described"
    if p.gpu_devices and machine.source != "probed":
        return "runq", "runq's model: the GPUs are described, and llama.cpp would see this machine's own"
    if any(d.remote and not _is_gpu(machine, d.name) for d in p.devices):
        return "runq", "runq's: llama.cpp's fit would treat a worker's RAM as a GPU"
    return None


def _is_gpu(machine: Machine, name: str) -> bool:
    return any(f"RPC{d.index}[{w.endpoint}]" == name and d.kind == "gpu" for w in machine.workers for d in w.devices)


def _say(choice: Choice, p: Plan, by: str, why: str, rows: tuple[tuple[str, int, int, int], ...] = ()) -> Choice:
    plan = replace(p, placed_by=by, placed_why=why, fit_experts=rows, reasons=(*p.reasons, f"placement: {why}"))
    return replace(choice, chosen=replace(choice.chosen, plan=plan))


def _compare(choice: Choice, machine: Machine, req: Request, oracle: Oracle, model: Path) -> tuple[Choice, Request]:
    from launcher.llama.fit import fit_default, list_devices, project, rpc_device_names
    from launcher.plan.fit_compare import grow_to, replan

    src = choice.chosen.source
    p = choice.chosen.plan
    seen = list_devices(oracle, p.rpc)
    order = [name for name, _, _ in seen]
    free = {name: f for name, _, f in seen}
    missing = [d.name for d in p.devices if d.name != "CPU" and d.name not in free]
    if missing:
        return _say(choice, p, "runq", f"runq's (llama.cpp does not list {', '.join(missing)})"), req
    # Each device's margin less the request's extra; a local GPU keeps what llama.cpp does there: the CUDA
    # context (NVML's free before launch, less llama.cpp's own free after it) + -fitt.
    margins = {d.name: d.margin_bytes - req.margin_extra_bytes for d in p.devices if d.name != "CPU"}
    margins.update(dict(req.gpu_margins))
    for d in p.gpu_devices:
        context = d.capacity_bytes - free[d.name]  # below 0: a GPU capped (--gpu-limit): its margin stays
        if d.name not in dict(req.gpu_margins) and context >= 0:
            margins[d.name] = context + mem.GPU_MARGIN_BYTES
    asked = replace(req, ubatch=p.ubatch, gpu_margins=tuple(sorted(margins.items())))
    if any(margins[d.name] + req.margin_extra_bytes != d.margin_bytes for d in p.gpu_devices):
        p = replan(machine, src.tensors, src.hparams, asked, p)
    fitt = [(free[n] - b) // MiB if (b := _budget(p, n)) is not None else free[n] // MiB for n in order]
    answer = fit_default(oracle, model, p, fitt)
    cmp = _comparison(src, p, answer, order, free)
    before = cmp.rows
    if cmp.deficits:
        # llama.cpp's own sizes for fit's placement: a device runq's plan left (nearly) empty was planned on runq's
        # compute estimate, which may be what kept it short.
        rpc = rpc_device_names(machine, p.rpc)
        seen_by_fit = project(oracle, model, p, rpc, placement=answer.server_flags())
        asked = replace(asked, projections=(*asked.projections, seen_by_fit))
        p = replan(machine, src.tensors, src.hparams, asked, p)
        cmp = _comparison(src, p, answer, order, free)
    grown, asked, cmp = grow_to(machine, src.tensors, src.hparams, asked, p, cmp,
                                lambda q: _comparison(src, q, answer, order, free))  # fmt: skip
    cuts = {d.name: d.margin_bytes - g.margin_bytes for d, g in zip(p.devices, grown.devices, strict=True)}
    by, why = _verdict(cmp, before, oracle.build, {n: c for n, c in cuts.items() if c > 0})
    rows = tuple((d, f, r0, r) for (d, f, r0), (_, _, r) in zip(before, cmp.rows, strict=True))
    if grown is choice.chosen.plan:
        asked = req  # nothing changed: the request stays as it came
    return _say(replace(choice, chosen=replace(choice.chosen, plan=grown)), grown, by, why, rows), asked


def _comparison(src: ModelSource, p: Plan, answer: FitAnswer, order: list[str], free: dict[str, int]) -> Comparison:
    """Expert bytes per device: fit's answer replayed on the tensors llama.cpp loads, against the plan."""
    from launcher.model.tensors import loaded_tensors
    from launcher.plan.fit_compare import compare, fit_placement

    hp = src.hparams
    tensors = loaded_tensors(src.tensors, hp.n_layer, hp.n_layer_nextn)
    theirs = fit_placement(tensors, hp.n_layer - hp.n_layer_nextn, answer, order, free)
    return compare(tensors, p, theirs, [d.name for d in p.devices if d.name != "CPU"])


def _budget(p: Plan, name: str) -> int | None:
    return next((d.budget_bytes for d in p.devices if d.name == name), None)


def _verdict(
    cmp: Comparison, before: tuple[tuple[str, int, int], ...], build: str, cuts: dict[str, int]
) -> tuple[str, str]:
    fit_total = sum(f for _, f, _ in before)
    ours = sum(r for _, _, r in before)
    who = f"llama.cpp's fit (llama-fit-params, build {build}, same context, ubatch and budget)"
    if cmp.runq_total > ours:
        how = "planned again on llama.cpp's own sizes for fit's placement"
        if cuts:
            how += ", its margin lowered by " + ", ".join(f"{fmt_bytes(c)} on {n}" for n, c in cuts.items())
        return "llama.cpp fit", (
            f"{who} keeps {fmt_bytes(fit_total - ours)} more expert weights on the GPU than runq's placement did "
            f"({fmt_bytes(fit_total)} against {fmt_bytes(ours)}): runq's grown to {fmt_bytes(cmp.runq_total)}, {how}"
        )
    if cmp.deficits:
        return "runq", f"runq's, though {who} keeps {fmt_bytes(fit_total - ours)} more experts on the GPU: " \
                       "growing runq's placement to it would not fit runq's RAM or other budgets"  # fmt: skip
    if ours == fit_total:
        return "runq", f"runq's: the same expert weights on the GPU as {who} ({fmt_bytes(ours)})"
    return "runq", f"runq's: {fmt_bytes(ours - fit_total)} more expert weights on the GPU than {who} " \
                   f"({fmt_bytes(ours)} against {fmt_bytes(fit_total)})"  # fmt: skip
