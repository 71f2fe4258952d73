"""Where every tensor goes: (machine, model tensors, request) -> Plan.

Pure: no I/O. Order of placement (every token reads what is placed first):
1. non-expert weights, KV cache and compute buffers on the GPU(s) — whole layers, reducing -ngl only if even those
   do not fit;
2. routed experts, whole layers at a time, while VRAM lasts (several GPUs: each fills its own layers, with a
   matching tensor split);
3. one partial layer: the largest subset of the next layer's expert tensors that fits;
4. everything else on the CPU, which must fit the RAM that is available minus a margin — never "fine because of
   mmap": paging a model from disk is a cliff.
The phases are in phases.py, their shared state in work.py; the plan carries its reasons (explain.py).
"""

from __future__ import annotations

from dataclasses import replace

from launcher.machine.spec import Machine
from launcher.model.hparams import HParams
from launcher.model.tensors import TensorSet, loaded_tensors
from launcher.plan import memory as mem
from launcher.plan import serving
from launcher.plan.explain import explain
from launcher.plan.phases import (
    check_budgets,
    cpu_device,
    default_devices,
    fill_by_cost,
    fill_own_layers,
    initial_placement,
    overrides_for,
    shrink_cache_ram,
    split_layers,
)
from launcher.plan.predict import bytes_per_token, predict
from launcher.plan.projection import SizeBook
from launcher.plan.types import DEFAULT_UBATCH, LARGE_UBATCH, SMALL_UBATCH, LoadMode, Plan, Request
from launcher.plan.work import Work, forced_by_user, gpu_usable, layer_bytes, remote_usable
from launcher.units import fmt_bytes


def plan(machine: Machine, tensors: TensorSet, hp: HParams, req: Request) -> Plan:
    """Place every tensor; the speed is predicted with this machine's measured constants when it has them, and
    then the threads (unless pinned) are the count those constants predict decodes fastest, not simply the
    cores: on a machine where more threads measured slower, fewer are used, and the plan says why."""
    p = _plan_lazy_tables(machine, tensors, hp, req)
    speed = machine.speed
    if speed is None:
        return p
    p = replace(p, speed_source=speed.label)
    if req.threads is not None:
        return p
    per = bytes_per_token(loaded_tensors(tensors, hp.n_layer, _skipped_nextn(hp, req)), hp, p.placement)
    on_gpu = any(n for dev, n in per.items() if dev != "CPU")
    best = speed.fastest_threads(machine.cores, hp.n_layer, per.get("CPU", 0), on_gpu=on_gpu)
    if best == p.threads:
        return p
    q = _plan(machine, tensors, hp, replace(req, threads=best, lazy_mode=p.lazy_mode))
    why = (f"threads {best} of {machine.cores} cores: this machine's calibration predicts {q.predicted_tg_tps:.1f}"
           f" tokens/s at {best}, {p.predicted_tg_tps:.1f} at {p.threads}")  # fmt: skip
    return replace(q, speed_source=speed.label, reasons=(*q.reasons, why))


def beyond_every_budget(machine: Machine, tensors: TensorSet) -> bool:
    """The weights llama.cpp keeps resident outweigh every byte of memory there is (before any margin, cache or
    buffer): no placement, ubatch or context can make it fit, so the planner places it once to say why."""
    lazy = sum(tensors[n].nbytes for n in serving.read_on_demand(tensors, "on"))
    memory = machine.ram_available_bytes + sum(g.free_bytes for g in machine.gpus)
    memory += sum(d.free_bytes for w in machine.workers for d in w.devices)
    return tensors.total_bytes - lazy > memory


def _plan_lazy_tables(machine: Machine, tensors: TensorSet, hp: HParams, req: Request) -> Plan:
    """llama.cpp's own --lazy-mode (auto: tables over 4 GiB read on demand, smaller ones resident), unless the CPU
    part fits the RAM only with every lookup table read on demand (-lzm on) or the mode is pinned."""
    p = _plan(machine, tensors, hp, req)
    if p.fits or req.lazy_mode is not None or p.lazy_mode != "auto":
        return p
    if not set(serving.read_on_demand(tensors, "on")) - set(p.lazy_tables):
        return p
    q = _plan(machine, tensors, hp, replace(req, lazy_mode="on"))
    if not q.fits:
        return p
    why = "-lzm on: the lookup tables under 4 GiB are read on demand too (llama.cpp keeps them resident by default)"
    return replace(q, reasons=(*q.reasons, f"{why}, or the CPU part would not fit the RAM"))


def _plan(machine: Machine, tensors: TensorSet, hp: HParams, req: Request) -> Plan:
    """With no ubatch pinned, a larger ubatch is chosen when experts live on the CPU
    and it costs at most one expert layer of VRAM."""
    tensors = loaded_tensors(tensors, hp.n_layer, _skipped_nextn(hp, req))  # NextN/MTP: only for draft-mtp
    if req.ubatch is not None:
        return _place(machine, tensors, hp, req, req.ubatch)
    if beyond_every_budget(machine, tensors):  # what weighing the ubatches would return (runq models: fast)
        return _place(machine, tensors, hp, req, DEFAULT_UBATCH)
    small = _place(machine, tensors, hp, req, DEFAULT_UBATCH)
    if small.gpu_devices and (small.ngl < hp.n_layer + 1 or not small.fits):
        return _weigh_small_ubatch(machine, tensors, hp, req, small)
    if not small.fits or not small.gpu_devices or not _has_cpu_experts(small, tensors):
        return small
    large = _place(machine, tensors, hp, req, LARGE_UBATCH)
    lost = _gpu_expert_layer_count(small) - _gpu_expert_layer_count(large)
    if large.fits and large.ngl == small.ngl and lost <= 1:
        why = (
            f"ubatch {LARGE_UBATCH}: prompts process several times faster with experts on the CPU "
            f"(3.4x measured), for {fmt_bytes(large.gpu_devices[0].compute_bytes - small.gpu_devices[0].compute_bytes)}"
            f" more compute buffer" + (f" and {lost} expert layer moved to the CPU" if lost else "")
        )
        return replace(large, reasons=(*large.reasons, why))
    if large.fits and large.ngl == small.ngl:
        why = f"ubatch {DEFAULT_UBATCH}: ubatch {LARGE_UBATCH} would move {lost} expert layers to the CPU"
    else:
        why = f"ubatch {DEFAULT_UBATCH}: ubatch {LARGE_UBATCH} needs a compute buffer the weights leave no room for"
    return replace(small, reasons=(*small.reasons, why))


def _skipped_nextn(hp: HParams, req: Request) -> int:
    """NextN/MTP layers llama.cpp leaves unloaded: all of them, unless MTP drafting is on (`--spec-type draft-mtp`
    loads them, with their own KV cache and a second compute buffer: memory.py, projection.SizeBook)."""
    return 0 if req.spec_type == "draft-mtp" else hp.n_layer_nextn


def _weigh_small_ubatch(machine: Machine, tensors: TensorSet, hp: HParams, req: Request, small: Plan) -> Plan:
    """VRAM is short (whole layers on the CPU): a smaller ubatch shrinks the compute buffer; take it when it keeps
    more layers on the GPU (decode reads every layer's weights; prompt processing gets slower instead)."""
    tiny = _place(machine, tensors, hp, req, SMALL_UBATCH)
    if tiny.fits and (tiny.ngl > small.ngl or not small.fits):
        saved = fmt_bytes(small.gpu_devices[0].compute_bytes - tiny.gpu_devices[0].compute_bytes)
        gain = f"-ngl {tiny.ngl} instead of {small.ngl}" if tiny.ngl > small.ngl else "the plan fits"
        why = f"ubatch {SMALL_UBATCH}: a compute buffer {saved} smaller ({gain}); prompts process more slowly"
        return replace(tiny, reasons=(*tiny.reasons, why))
    if small.fits:
        why = f"ubatch {DEFAULT_UBATCH}: ubatch {SMALL_UBATCH} would not keep more layers on the GPU"
        return replace(small, reasons=(*small.reasons, why))
    return small


def _has_cpu_experts(p: Plan, tensors: TensorSet) -> bool:
    return any(tensors[n].is_expert for n in p.cpu_tensors)


def _gpu_expert_layer_count(p: Plan) -> int:
    local = {d.name for d in p.gpu_devices}
    return sum(len(v) for k, v in p.expert_layers.items() if k in local)


def _place(machine: Machine, tensors: TensorSet, hp: HParams, req: Request, ubatch: int) -> Plan:
    w = Work(
        machine, tensors, hp, req, ubatch,
        book=SizeBook(hp, req.ctx, req.cache_type_k, req.cache_type_v, ubatch, req.projections, req.slots,
                      mtp=req.spec_type == "draft-mtp"),
        forced=forced_by_user(tensors, req),
        gpus=gpu_usable(machine, req.margin_extra_bytes, dict(req.gpu_margins)),
        remotes=remote_usable(
            machine, hp.n_embd, mem.cpu_bandwidth(req.threads or machine.cores, machine.ram_bandwidth_bytes_s),
            req.margin_extra_bytes, dict(req.gpu_margins),
        ),
    )  # fmt: skip
    if w.forced:
        w.reasons.append(f"{len(w.forced)} tensors placed by your own -ot patterns")
    non_expert, experts = layer_bytes(tensors, hp.n_layer)
    ngl, tensor_split = split_layers(w, non_expert)
    initial_placement(w)
    fill_own_layers(w, experts)
    cpu_fixed = cpu_device(w, ngl, cache_ram=mem.SERVER_CACHE_RAM_MIN_BYTES if req.server else None)
    fill_by_cost(w, experts, cpu_room=cpu_fixed.free_bytes)
    cpu_plan = cpu_device(w, ngl, cache_ram=mem.SERVER_CACHE_RAM_BYTES if req.server else None)
    cpu_plan = shrink_cache_ram(w, cpu_plan)
    remote_states = [w.gpu_state(d) if d.layers else w.remote_state(d) for d in w.remotes]
    devices = (*[w.gpu_state(g) for g in w.gpus], *remote_states, cpu_plan)
    check_budgets(w, devices)
    default_dev = default_devices(w)
    overrides, has_moves = overrides_for(w, default_dev)
    load_mode: LoadMode = req.load_mode or ("none" if (w.gpus and (has_moves or w.forced)) else "mmap")
    tps = predict(w)
    w.reasons += explain(w, devices, load_mode)
    return Plan(
        fits=not w.problems,
        ctx=req.ctx,
        cache_type_k=req.cache_type_k,
        cache_type_v=req.cache_type_v,
        ubatch=ubatch,
        threads=w.threads,
        ngl=ngl,
        load_mode=load_mode,
        flash_attn=req.flash_attn,
        llama_default=req.llama_default,
        spec_type=req.spec_type,
        moe_cache_mib=req.moe_cache_mib,
        devices=devices,
        placement=w.placement,
        moved={n: d for n, d in w.placement.items() if d != default_dev[n]},
        overrides=overrides,
        tensor_split=tensor_split,
        expert_layers={k: tuple(v) for k, v in w.expert_layers.items()},
        partials=tuple(w.partials),
        predicted_tg_tps=tps,
        cache_ram_bytes=cpu_plan.extra_bytes if req.server else None,
        reasons=tuple(w.reasons),
        problems=tuple(w.problems),
        n_layer=hp.n_layer,
        rpc=tuple(dict.fromkeys(wk.endpoint for wk in machine.workers if _uses(w, wk.endpoint))),
        gpu_layers={g.name: tuple(g.layers) for g in w.layer_devs},
        slots=req.slots,
        lazy_mode=w.lazy_mode,
        lazy_tables=w.lazy,
    )


def _uses(w: Work, endpoint: str) -> bool:
    return any(d.name.endswith(f"[{endpoint}]") for d in w.remotes)
