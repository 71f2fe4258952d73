"""Where every tensor goes: (machine, model tensors, request) -> Plan.

Pure: no I/O. Order of placement (every token reads what is placed first):
1. non-expert weights, KV cache and compute buffers on the GPU(s) — whole
   layers, reducing -ngl only if even those do not fit;
2. routed experts, whole layers at a time, while VRAM lasts (several GPUs: each
   fills its own layers, with a matching tensor split);
3. one partial layer: the largest subset of the next layer's expert tensors that fits;
4. everything else on the CPU, which must fit the RAM that is available minus a
   margin — never "fine because of mmap": paging a model from disk is a cliff.
The plan carries its reasons, so the CLI and the TUI explain without recomputing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from launcher import memory as mem
from launcher import overrides as ovr
from launcher.hparams import HParams
from launcher.machine import Machine
from launcher.overrides import Override
from launcher.tensors import ModelTensor, Role, TensorSet, layer_ranges, loaded_tensors
from launcher.units import fmt_bytes

DEFAULT_UBATCH = 512
LARGE_UBATCH = 2048  # 3.4x faster prompt processing with experts on CPU (llama-cpp.md, H200)
CPU = "CPU"


@dataclass(frozen=True)
class Request:
    ctx: int
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    ubatch: int | None = None  # None: the planner chooses
    ngl: int | None = None  # pinned -ngl
    user_overrides: tuple[Override, ...] = ()  # pinned -ot, applied before runq's
    server: bool = True  # llama-server keeps a host prompt cache; llama-cli does not
    threads: int | None = None
    margin_extra_bytes: int = 0  # extra safety per GPU (the retry after an out-of-memory error)


@dataclass(frozen=True)
class DevicePlan:
    name: str  # "CUDA0", "CPU"
    capacity_bytes: int  # free VRAM, or available RAM
    margin_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    extra_bytes: int = 0  # llama-server's host prompt cache

    @property
    def budget_bytes(self) -> int:
        return self.capacity_bytes - self.margin_bytes

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.extra_bytes

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes

    @property
    def fits(self) -> bool:
        return self.used_bytes <= self.budget_bytes


@dataclass(frozen=True)
class Plan:
    fits: bool
    ctx: int
    cache_type_k: str
    cache_type_v: str
    ubatch: int
    threads: int
    ngl: int
    load_mode: Literal["mmap", "none"]
    devices: tuple[DevicePlan, ...]
    placement: dict[str, str]  # tensor name -> device name
    moved: dict[str, str]  # tensors -ot takes off their layer's device (yours and runq's): what llama.cpp logs
    overrides: tuple[Override, ...]  # the user's first, then runq's
    tensor_split: tuple[int, ...] | None
    expert_layers: dict[str, tuple[int, ...]]  # device -> layers whose experts are all there
    partials: tuple[tuple[int, str, tuple[str, ...]], ...]  # (layer, device, expert kinds on it), one per GPU at most
    predicted_tg_tps: float
    cache_ram_bytes: int | None  # llama-server --cache-ram, None for llama-cli
    reasons: tuple[str, ...]
    problems: tuple[str, ...] = ()
    n_layer: int = 0

    @property
    def gpu_devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.name != CPU)

    @property
    def cpu(self) -> DevicePlan:
        return next(d for d in self.devices if d.name == CPU)

    @property
    def cpu_tensors(self) -> list[str]:
        return [n for n, d in self.placement.items() if d == CPU]

    @property
    def gpu_bytes(self) -> int:
        return sum(d.used_bytes for d in self.gpu_devices)

    @property
    def cpu_bytes(self) -> int:
        return self.cpu.used_bytes


@dataclass
class _Gpu:
    name: str
    index: int
    capacity: int
    margin: int
    bandwidth: float
    layers: list[int] = field(default_factory=list)  # layer slots owned (n_layer = the output layer)


def gpu_usable(machine: Machine, extra_margin: int = 0) -> list[_Gpu]:
    out = []
    for g in machine.gpus:
        out.append(
            _Gpu(
                name=f"CUDA{g.index}",
                index=g.index,
                capacity=g.free_bytes,
                margin=mem.CUDA_CONTEXT_BYTES + mem.GPU_MARGIN_BYTES + extra_margin,
                bandwidth=mem.gpu_bandwidth(g.name, g.memory_bandwidth),
            )
        )
    return out


def plan(machine: Machine, tensors: TensorSet, hp: HParams, req: Request) -> Plan:
    """Place every tensor. With no ubatch pinned, a larger ubatch is chosen when experts live on the CPU
    and it costs at most one expert layer of VRAM."""
    tensors = loaded_tensors(tensors, hp.n_layer, hp.n_layer_nextn)  # NextN/MTP layers are not loaded
    if req.ubatch is not None:
        return _place(machine, tensors, hp, req, req.ubatch)
    small = _place(machine, tensors, hp, req, DEFAULT_UBATCH)
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


def _has_cpu_experts(p: Plan, tensors: TensorSet) -> bool:
    return any(tensors[n].is_expert for n in p.cpu_tensors)


def _gpu_expert_layer_count(p: Plan) -> int:
    return sum(len(v) for k, v in p.expert_layers.items() if k != CPU)


def _layer_bytes(tensors: TensorSet, n_layer: int) -> tuple[dict[int, int], dict[int, list[ModelTensor]]]:
    """Non-expert bytes per layer slot (slot n_layer = output layer), and experts per layer."""
    non_expert: dict[int, int] = dict.fromkeys(range(n_layer + 1), 0)
    experts: dict[int, list[ModelTensor]] = {}
    for t in tensors.tensors:
        if t.role is Role.TOKEN_EMBD:
            continue  # llama.cpp keeps the input layer on the CPU
        slot = t.layer if t.layer is not None else n_layer
        if t.is_expert and t.layer is not None:
            experts.setdefault(t.layer, []).append(t)
        else:
            non_expert[min(slot, n_layer)] = non_expert.get(min(slot, n_layer), 0) + t.nbytes
    return non_expert, experts


def _place(machine: Machine, tensors: TensorSet, hp: HParams, req: Request, ubatch: int) -> Plan:  # noqa: C901, PLR0912, PLR0915 - being split into phases with the multi-GPU placement (issue 16)
    n_layer = hp.n_layer
    threads = req.threads or machine.cores
    kv = mem.kv_layout(hp, req.cache_type_k, req.cache_type_v)
    names = [t.name for t in tensors.tensors]
    reasons: list[str] = []
    problems: list[str] = []

    # Tensors the user pinned with their own -ot stay where they said.
    forced: dict[str, str] = {}
    for name in names:
        for o in req.user_overrides:
            if ovr.selects([o.pattern], name):
                forced[name] = o.buffer
                break
    if forced:
        reasons.append(f"{len(forced)} tensors placed by your own -ot patterns")

    gpus = gpu_usable(machine, req.margin_extra_bytes)
    gpus = [g for g in gpus if g.capacity > g.margin]
    non_expert, experts = _layer_bytes(tensors, n_layer)
    cpu_compute = mem.cpu_compute_bytes(hp, ubatch)
    cache_ram = mem.SERVER_CACHE_RAM_BYTES if req.server else None

    layer_dev: dict[int, str] | None
    if not gpus:
        if machine.gpus:
            reasons.append("no GPU has room beyond its margin: planning for the CPU only")
        ngl = 0
        layer_dev = dict.fromkeys(range(n_layer + 1), CPU)
        tensor_split = None
    else:
        ngl = req.ngl if req.ngl is not None else n_layer + 1
        ngl = max(0, min(ngl, n_layer + 1))
        while True:
            layer_dev, tensor_split = _assign_layers(gpus, ngl, n_layer, non_expert, kv, hp, req.ctx, ubatch)
            if layer_dev is not None or ngl == 0 or req.ngl is not None:
                break
            ngl -= 1
        if layer_dev is None:
            layer_dev = dict.fromkeys(range(n_layer + 1), CPU)
            problems.append(f"-ngl {ngl}: the non-expert weights of those layers do not fit on the GPUs")
        elif ngl < n_layer + 1:
            reasons.append(
                f"-ngl {ngl}: only the last {ngl} layer slots fit on the GPU even with every expert on the CPU"
            )

    # Start: every tensor on its layer's device; experts on the CPU until VRAM is handed out.
    placement: dict[str, str] = {}
    for t in tensors.tensors:
        if t.name in forced:
            placement[t.name] = forced[t.name]
        elif t.role is Role.TOKEN_EMBD or t.is_expert:
            placement[t.name] = CPU
        else:
            slot = t.layer if t.layer is not None else n_layer
            placement[t.name] = layer_dev[min(slot, n_layer)]

    def gpu_state(g: _Gpu) -> DevicePlan:
        layers = [il for il in g.layers if il < n_layer]
        return DevicePlan(
            name=g.name,
            capacity_bytes=g.capacity,
            margin_bytes=g.margin,
            weights_bytes=sum(tensors[n].nbytes for n, d in placement.items() if d == g.name),
            kv_bytes=kv.bytes_for(req.ctx, layers),
            compute_bytes=mem.gpu_compute_bytes(hp, req.ctx, ubatch, has_output=n_layer in g.layers),
        )

    expert_layers: dict[str, list[int]] = {}
    partials: list[tuple[int, str, tuple[str, ...]]] = []
    for g in gpus:
        state = gpu_state(g)
        free = state.free_bytes
        own = [il for il in g.layers if il in experts]
        placed: list[int] = []
        for il in own:
            movable = [t for t in experts[il] if t.name not in forced]
            need = sum(t.nbytes for t in movable)
            if need <= free:
                for t in movable:
                    placement[t.name] = g.name
                free -= need
                placed.append(il)
            else:
                best = _best_subset(movable, free)
                if best:
                    for t in best:
                        placement[t.name] = g.name
                    free -= sum(t.nbytes for t in best)
                    partials.append((il, g.name, tuple(sorted(_kind(t.name) for t in best))))
                break
        expert_layers[g.name] = placed

    gpu_plans = [gpu_state(g) for g in gpus]
    cpu_layers = [il for il in range(n_layer) if layer_dev[il] == CPU]
    cpu_weights = sum(tensors[n].nbytes for n, d in placement.items() if d == CPU)
    cpu_kv = kv.bytes_for(req.ctx, cpu_layers)
    cpu_comp = cpu_compute if gpus else mem.cpu_only_compute_bytes(hp, req.ctx, ubatch)
    ram_avail = machine.ram_available_bytes
    margin = mem.ram_margin(machine.ram_total_bytes or ram_avail)
    cpu_plan = DevicePlan(CPU, ram_avail, margin, cpu_weights, cpu_kv, cpu_comp, cache_ram or 0)
    if cache_ram and not cpu_plan.fits:
        # Give up prompt-cache RAM before giving up the plan.
        room = cpu_plan.budget_bytes - (cpu_plan.used_bytes - cache_ram)
        cache_ram = max(mem.SERVER_CACHE_RAM_MIN_BYTES, min(cache_ram, room // (1 << 20) << 20))
        cpu_plan = replace(cpu_plan, extra_bytes=cache_ram)
        reasons.append(f"--cache-ram {cache_ram >> 20} MiB: the host prompt cache shrunk to leave RAM for weights")

    for gp in gpu_plans:
        if not gp.fits:
            problems.append(
                f"{gp.name}: needs {fmt_bytes(gp.used_bytes)} but has {fmt_bytes(gp.budget_bytes)} "
                f"({fmt_bytes(gp.capacity_bytes)} free minus {fmt_bytes(gp.margin_bytes)} margin)"
            )
    if not cpu_plan.fits:
        problems.append(
            f"RAM: the CPU part needs {fmt_bytes(cpu_plan.used_bytes)} plus a {fmt_bytes(margin)} margin, "
            f"but {fmt_bytes(ram_avail)} is available ({fmt_bytes(cpu_plan.used_bytes - cpu_plan.budget_bytes)} short;"
            f" paging weights from disk would be orders of magnitude slower)"
        )

    # The -ot list: experts (or anything) the plan moves off their layer's device.
    default_dev = {}
    for t in tensors.tensors:
        slot = t.layer if t.layer is not None else n_layer
        default_dev[t.name] = CPU if t.role is Role.TOKEN_EMBD else layer_dev[min(slot, n_layer)]
    plan_overrides: list[Override] = list(req.user_overrides)
    by_buffer: dict[str, set[str]] = {}
    for n, dev in placement.items():
        if n not in forced and dev != default_dev[n]:
            by_buffer.setdefault(dev, set()).add(n)
    for buf, target in sorted(by_buffer.items()):
        # Names already on `buf` by default, or taken by the user's patterns, may be covered harmlessly.
        dont_care = {n for n in names if (default_dev[n] == buf and placement[n] == buf) or n in forced}
        plan_overrides += [Override(p, buf) for p in ovr.build(target, names, dont_care=dont_care)]

    has_overrides = bool(by_buffer) or bool(forced)
    load_mode: Literal["mmap", "none"] = "none" if (gpus and has_overrides) else "mmap"

    devices = (*gpu_plans, cpu_plan)
    tps = predict_tg(
        tensors, hp, placement, {g.name: g.bandwidth for g in gpus}, threads, machine.ram_bandwidth_bytes_s
    )
    reasons += _explain(tensors, req, placement, devices, expert_layers, partials, load_mode)
    return Plan(
        fits=not problems,
        ctx=req.ctx,
        cache_type_k=req.cache_type_k,
        cache_type_v=req.cache_type_v,
        ubatch=ubatch,
        threads=threads,
        ngl=ngl,
        load_mode=load_mode,
        devices=devices,
        placement=placement,
        moved={n: d for n, d in placement.items() if d != default_dev[n]},
        overrides=tuple(plan_overrides),
        tensor_split=tensor_split,
        expert_layers={k: tuple(v) for k, v in expert_layers.items()},
        partials=tuple(partials),
        predicted_tg_tps=tps,
        cache_ram_bytes=cache_ram,
        reasons=tuple(reasons),
        problems=tuple(problems),
        n_layer=n_layer,
    )


def _kind(name: str) -> str:
    return name.split(".")[2] if name.startswith("blk.") else name


def _best_subset(candidates: list[ModelTensor], free: int) -> list[ModelTensor]:
    """The subset of one layer's expert kinds with the most bytes that fits in `free` (3-4 kinds). A kind's
    tensors move together (gpt-oss: ffn_up_exps.weight with ffn_up_exps.bias), so one -ot pattern covers them."""
    kinds: dict[str, list[ModelTensor]] = {}
    for t in candidates:
        kinds.setdefault(_kind(t.name), []).append(t)
    groups = list(kinds.values())
    best: list[ModelTensor] = []
    best_bytes = 0
    n = len(groups)
    for mask in range(1, 1 << n):
        chosen = [t for i in range(n) if mask >> i & 1 for t in groups[i]]
        size = sum(t.nbytes for t in chosen)
        if best_bytes < size <= free:
            best, best_bytes = chosen, size
    return best


def _assign_layers(
    gpus: list[_Gpu],
    ngl: int,
    n_layer: int,
    non_expert: dict[int, int],
    kv: mem.KVLayout,
    hp: HParams,
    ctx: int,
    ubatch: int,
) -> tuple[dict[int, str] | None, tuple[int, ...] | None]:
    """Give each GPU a run of layer slots (llama.cpp's layer split); None if they do not fit."""
    start = n_layer + 1 - ngl
    slots = list(range(start, n_layer + 1))
    for g in gpus:
        g.layers = []

    def base(g: _Gpu, layers: list[int]) -> int:
        kv_layers = [il for il in layers if il < n_layer]
        return (
            sum(non_expert[il] for il in layers)
            + kv.bytes_for(ctx, kv_layers)
            + mem.gpu_compute_bytes(hp, ctx, ubatch, has_output=n_layer in layers)
        )

    # Split slots in proportion to each GPU's budget, then check that each GPU's share fits.
    budgets = [g.capacity - g.margin for g in gpus]
    total = sum(budgets)
    counts = [len(slots) * b // total for b in budgets]
    for i in range(len(slots) - sum(counts)):
        counts[i % len(counts)] += 1
    pos = 0
    for g, c in zip(gpus, counts, strict=True):
        g.layers = slots[pos : pos + c]
        pos += c
    if any(base(g, g.layers) > g.capacity - g.margin for g in gpus if g.layers):
        return None, None
    layer_dev = dict.fromkeys(range(n_layer + 1), CPU)
    for g in gpus:
        for il in g.layers:
            layer_dev[il] = g.name
    split = tuple(len(g.layers) for g in gpus) if len(gpus) > 1 else None
    return layer_dev, split


def predict_tg(
    tensors: TensorSet,
    hp: HParams,
    placement: dict[str, str],
    gpu_bandwidth: dict[str, float],
    threads: int,
    ram_bandwidth: float | None,
) -> float:
    """Decode tokens/s: bytes read per token on each device over its effective bandwidth, plus a per-layer cost."""
    per_device = bytes_per_token(tensors, hp, placement)
    seconds = hp.n_layer * mem.PER_LAYER_OVERHEAD_S
    bw = {name: peak * mem.GPU_BANDWIDTH_EFFICIENCY for name, peak in gpu_bandwidth.items()}
    for dev, n in per_device.items():
        seconds += n / (bw[dev] if dev in bw else mem.cpu_bandwidth(threads, ram_bandwidth))
    return 1.0 / seconds if seconds > 0 else 0.0


def bytes_per_token(tensors: TensorSet, hp: HParams, placement: dict[str, str]) -> dict[str, int]:
    """Weight bytes each device reads per generated token: routed experts in proportion used/total,
    the token embedding not at all (one row), everything else whole."""
    out: dict[str, float] = {}
    frac = hp.expert_fraction or 1.0
    for t in tensors.tensors:
        if t.role is Role.TOKEN_EMBD:
            continue
        dev = placement[t.name]
        out[dev] = out.get(dev, 0.0) + t.nbytes * (frac if t.is_expert else 1.0)
    return {k: int(v) for k, v in out.items()}


def _explain(
    tensors: TensorSet,
    req: Request,
    placement: dict[str, str],
    devices: Sequence[DevicePlan],
    expert_layers: dict[str, list[int]],
    partials: list[tuple[int, str, tuple[str, ...]]],
    load_mode: str,
) -> list[str]:
    out = []
    gpus = [d for d in devices if d.name != CPU]
    for d in gpus:
        non_exp = sum(tensors[n].nbytes for n, dev in placement.items() if dev == d.name and not tensors[n].is_expert)
        out.append(
            f"{d.name}: non-expert weights {fmt_bytes(non_exp)}, KV cache {fmt_bytes(d.kv_bytes)} "
            f"({req.ctx:,} tokens, {req.cache_type_k}), compute {fmt_bytes(d.compute_bytes)} go first: "
            f"every token reads them"
        )
        layers = expert_layers.get(d.name, [])
        if layers:
            exp = sum(tensors.expert_bytes(il) for il in layers)
            out.append(
                f"experts of layers {layer_ranges(layers)} on {d.name}: {fmt_bytes(exp)}; "
                f"{fmt_bytes(d.used_bytes)} used of {fmt_bytes(d.budget_bytes)} "
                f"({fmt_bytes(d.capacity_bytes)} minus {fmt_bytes(d.margin_bytes)} margin)"
            )
    for il, dev, kinds in partials:
        out.append(f"layer {il}: {', '.join(kinds)} on {dev} too (a partial layer uses the last of its VRAM)")
    cpu_layers = {t.layer for t in tensors.tensors if t.is_expert and t.layer is not None and placement[t.name] == CPU}
    if cpu_layers:
        cpu = devices[-1]
        out.append(
            f"experts of layers {layer_ranges(cpu_layers)} on the CPU: "
            f"{fmt_bytes(cpu.weights_bytes)} of weights in RAM, {fmt_bytes(cpu.used_bytes)} used of "
            f"{fmt_bytes(cpu.budget_bytes)} available"
        )
    if not gpus:
        out.append("no GPU: everything runs on the CPU, no overrides")
    if load_mode == "none":
        out.append("-lm none: tensors overridden to the CPU are loaded into RAM instead of memory-mapped")
    return out
