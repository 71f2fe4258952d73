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

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from launcher import memory as mem
from launcher import overrides as ovr
from launcher.hparams import HParams
from launcher.machine import Machine
from launcher.overrides import Override
from launcher.projection import ESTIMATE, Projection, SizeBook
from launcher.speed import SpeedModel
from launcher.tensors import ModelTensor, Role, TensorSet, layer_ranges, loaded_tensors
from launcher.units import fmt_bytes

DEFAULT_UBATCH = 512
SMALL_UBATCH = 256  # weighed when VRAM is short: a smaller compute buffer against layers moved to the CPU
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
    projections: tuple[Projection, ...] = ()  # llama.cpp's own sizes (fitparams.py), used where they apply


@dataclass(frozen=True)
class DevicePlan:
    name: str  # "CUDA0", "CPU"
    capacity_bytes: int  # free VRAM, or available RAM
    margin_bytes: int
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    extra_bytes: int = 0  # llama-server's host prompt cache
    remote: bool = False  # a device on a worker (llama.cpp's RPC backend)
    kv_source: str = ESTIMATE  # "runq estimate" or "llama.cpp projection, build …"
    compute_source: str = ESTIMATE

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
    rpc: tuple[str, ...] = ()  # workers' host:port for llama.cpp's --rpc, in the order their devices are numbered
    gpu_layers: dict[str, tuple[int, ...]] = field(default_factory=dict)  # local GPU -> its layer slots (-ts)
    speed_source: str = "reference constants"  # or "calibrated on this machine, DATE" (launcher/speed.py)

    @property
    def gpu_devices(self) -> tuple[DevicePlan, ...]:
        """This host's GPUs."""
        return tuple(d for d in self.devices if d.name != CPU and not d.remote)

    @property
    def remote_devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for d in self.devices if d.remote)

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
class _Dev:
    """A device the planner hands bytes to: a local GPU, or a device on a worker (llama.cpp's RPC backend)."""

    name: str  # the buffer name -ot takes and llama.cpp logs: CUDA0, RPC0[10.0.0.2:50052]
    index: int
    capacity: int
    margin: int
    bandwidth: float  # effective bytes/s reading weights
    remote: bool = False
    kind: str = "gpu"  # "gpu" or "cpu" (a worker's CPU and RAM)
    net_s: float = 0.0  # network seconds per token for each layer with tensors here
    layers: list[int] = field(default_factory=list)  # layer slots owned (n_layer = the output layer)


def gpu_usable(machine: Machine, extra_margin: int = 0) -> list[_Dev]:
    out = []
    for g in machine.gpus:
        out.append(
            _Dev(
                name=f"CUDA{g.index}",
                index=g.index,
                capacity=g.free_bytes,
                margin=mem.CUDA_CONTEXT_BYTES + mem.GPU_MARGIN_BYTES + extra_margin,
                bandwidth=mem.gpu_bandwidth(g.name, g.memory_bandwidth) * mem.GPU_BANDWIDTH_EFFICIENCY,
            )
        )
    return [g for g in out if g.capacity > g.margin]


def remote_usable(machine: Machine, n_embd: int, cpu_bw: float, extra_margin: int = 0) -> list[_Dev]:
    """The workers' devices in llama.cpp's order (--rpc order, then each worker's own), each with the network
    cost of a layer placed there. A worker's RAM reads as fast as this host's unless described."""
    out = []
    for w in machine.workers:
        loop = w.host in ("localhost", "::1") or w.host.startswith("127.")
        net = w.net_bytes_s or (mem.LOOPBACK_NET_BYTES_S if loop else mem.DEFAULT_NET_BYTES_S)
        net_s = mem.rpc_layer_seconds(n_embd, net, mem.LOOPBACK_LATENCY_S if loop else mem.NET_LATENCY_S)
        for d in w.devices:
            if d.kind == "gpu":
                margin = mem.CUDA_CONTEXT_BYTES + mem.GPU_MARGIN_BYTES + extra_margin
                bw = mem.gpu_bandwidth("", d.bandwidth_bytes_s) * mem.GPU_BANDWIDTH_EFFICIENCY
            else:
                margin = mem.ram_margin(d.total_bytes) + extra_margin
                bw = d.bandwidth_bytes_s or cpu_bw
            dev = _Dev(f"RPC{d.index}[{w.endpoint}]", d.index, d.free_bytes, margin, bw, True, d.kind, net_s)
            if dev.capacity > dev.margin + mem.RPC_COMPUTE_BYTES:
                out.append(dev)
    return out


def plan(machine: Machine, tensors: TensorSet, hp: HParams, req: Request) -> Plan:
    """Place every tensor; the speed is predicted with this machine's measured constants when it has them."""
    p = _plan(machine, tensors, hp, req)
    return replace(p, speed_source=machine.speed.label) if machine.speed else p


def _plan(machine: Machine, tensors: TensorSet, hp: HParams, req: Request) -> Plan:
    """With no ubatch pinned, a larger ubatch is chosen when experts live on the CPU
    and it costs at most one expert layer of VRAM."""
    tensors = loaded_tensors(tensors, hp.n_layer, hp.n_layer_nextn)  # NextN/MTP layers are not loaded
    if req.ubatch is not None:
        return _place(machine, tensors, hp, req, req.ubatch)
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


@dataclass
class _Work:
    """What the placement phases share: the inputs, and the placement as it is built."""

    machine: Machine
    tensors: TensorSet
    hp: HParams
    req: Request
    ubatch: int
    book: SizeBook  # KV cache and compute bytes: llama.cpp's projection where it applies, else memory.py
    forced: dict[str, str]
    gpus: list[_Dev]
    remotes: list[_Dev]
    layer_dev: dict[int, str] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)
    expert_layers: dict[str, list[int]] = field(default_factory=dict)
    partials: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def n_layer(self) -> int:
        return self.hp.n_layer

    @property
    def threads(self) -> int:
        return self.req.threads or self.machine.cores

    @property
    def layer_devs(self) -> list[_Dev]:
        """Where the layers (attention, shared weights, KV) go: this host's GPUs; with none, the workers' GPUs
        (a layer split crosses the network once per device boundary, not per layer); else the CPU."""
        return self.gpus or [d for d in self.remotes if d.kind == "gpu"]

    def placed_bytes(self, device: str) -> int:
        return sum(self.tensors[n].nbytes for n, d in self.placement.items() if d == device)

    def gpu_state(self, g: _Dev) -> DevicePlan:
        n_layer = self.n_layer
        compute, source = self.book.gpu_compute(
            g.name, has_output=n_layer in g.layers, offload_copy_bytes=self.offload_copy_bytes()
        )
        return DevicePlan(
            name=g.name,
            capacity_bytes=g.capacity,
            margin_bytes=g.margin,
            weights_bytes=self.placed_bytes(g.name),
            kv_bytes=self.book.kv_bytes([il for il in g.layers if il < n_layer]),
            compute_bytes=compute,
            remote=g.remote,
            kv_source=self.book.kv_source,
            compute_source=source,
        )

    def offload_copy_bytes(self) -> int:
        """The largest expert tensor left on the CPU: a GPU multiplies prompt batches with it, so llama.cpp copies
        it into the GPU's compute buffer (memory.py, compute buffers). Before placement: the largest expert."""
        on_cpu = [self.tensors[n].nbytes for n, d in self.placement.items() if d == CPU and self.tensors[n].is_expert]
        if self.placement:
            return max(on_cpu, default=0)
        return max((t.nbytes for t in self.tensors.tensors if t.is_expert), default=0)

    def remote_state(self, d: _Dev) -> DevicePlan:
        weights = self.placed_bytes(d.name)
        compute = mem.RPC_COMPUTE_BYTES if weights else 0
        return DevicePlan(d.name, d.capacity, d.margin, weights, 0, compute, remote=True)

    def movable(self, il: int, experts: dict[int, list[ModelTensor]]) -> list[ModelTensor]:
        return [t for t in experts.get(il, []) if t.name not in self.forced]


def _forced(tensors: TensorSet, req: Request) -> dict[str, str]:
    """Tensors the user pinned with their own -ot stay where they said (the first pattern that matches)."""
    forced: dict[str, str] = {}
    for t in tensors.tensors:
        for o in req.user_overrides:
            if ovr.selects([o.pattern], t.name):
                forced[t.name] = o.buffer
                break
    return forced


def _place(machine: Machine, tensors: TensorSet, hp: HParams, req: Request, ubatch: int) -> Plan:
    w = _Work(
        machine, tensors, hp, req, ubatch,
        book=SizeBook(hp, req.ctx, req.cache_type_k, req.cache_type_v, ubatch, req.projections),
        forced=_forced(tensors, req),
        gpus=gpu_usable(machine, req.margin_extra_bytes),
        remotes=remote_usable(
            machine, hp.n_embd, mem.cpu_bandwidth(req.threads or machine.cores, machine.ram_bandwidth_bytes_s),
            req.margin_extra_bytes,
        ),
    )  # fmt: skip
    if w.forced:
        w.reasons.append(f"{len(w.forced)} tensors placed by your own -ot patterns")
    non_expert, experts = _layer_bytes(tensors, hp.n_layer)
    ngl, tensor_split = _split_layers(w, non_expert)
    _initial_placement(w)
    _fill_own_layers(w, experts)
    cpu_fixed = _cpu_plan(w, ngl, cache_ram=mem.SERVER_CACHE_RAM_MIN_BYTES if req.server else None)
    _fill_by_cost(w, experts, cpu_room=cpu_fixed.free_bytes)
    cpu_plan = _cpu_plan(w, ngl, cache_ram=mem.SERVER_CACHE_RAM_BYTES if req.server else None)
    cpu_plan = _shrink_cache_ram(w, cpu_plan)
    remote_states = [w.gpu_state(d) if d.layers else w.remote_state(d) for d in w.remotes]
    devices = (*[w.gpu_state(g) for g in w.gpus], *remote_states, cpu_plan)
    _check_budgets(w, devices)
    default_dev = _default_devices(w)
    overrides, has_moves = _overrides(w, default_dev)
    load_mode: Literal["mmap", "none"] = "none" if (w.gpus and (has_moves or w.forced)) else "mmap"
    tps = _predict(w)
    w.reasons += _explain(w, devices, load_mode)
    return Plan(
        fits=not w.problems,
        ctx=req.ctx,
        cache_type_k=req.cache_type_k,
        cache_type_v=req.cache_type_v,
        ubatch=ubatch,
        threads=w.threads,
        ngl=ngl,
        load_mode=load_mode,
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
    )


def _uses(w: _Work, endpoint: str) -> bool:
    return any(d.name.endswith(f"[{endpoint}]") for d in w.remotes)


def _split_layers(w: _Work, non_expert: dict[int, int]) -> tuple[int, tuple[int, ...] | None]:
    """Phase 1: each local GPU gets a run of layer slots (non-expert weights, KV, compute), in proportion to
    its free VRAM; -ngl drops only if even those do not fit. Workers get no layers (-ts 0): only experts."""
    n_layer, req = w.n_layer, w.req
    if not w.layer_devs:
        if w.machine.gpus:
            w.reasons.append("no GPU has room beyond its margin: planning for the CPU only")
        w.layer_dev = dict.fromkeys(range(n_layer + 1), CPU)
        return 0, None
    ngl = req.ngl if req.ngl is not None else n_layer + 1
    ngl = max(0, min(ngl, n_layer + 1))
    while True:
        layer_dev = _assign_layers(w, ngl, non_expert)
        if layer_dev is not None or ngl == 0 or req.ngl is not None:
            break
        ngl -= 1
    if layer_dev is None:
        w.layer_dev = dict.fromkeys(range(n_layer + 1), CPU)
        w.problems.append(f"-ngl {ngl}: the non-expert weights of those layers do not fit on the GPUs")
        for g in w.layer_devs:
            g.layers = []
        return ngl, None
    w.layer_dev = layer_dev
    if ngl < n_layer + 1:
        w.reasons.append(
            f"-ngl {ngl}: only the last {ngl} layer slots fit on the GPU even with every expert on the CPU"
        )
    if len(w.gpus) + len(w.remotes) == 1:
        return ngl, None
    # llama.cpp lists RPC devices before the local ones; those without layers get 0 (experts only, by -ot).
    return ngl, (*(len(d.layers) for d in w.remotes), *(len(g.layers) for g in w.gpus))


def _assign_layers(w: _Work, ngl: int, non_expert: dict[int, int]) -> dict[int, str] | None:
    """Give each GPU a run of layer slots (llama.cpp's layer split) so that what each has left for experts is
    in proportion to its free VRAM; None if a GPU's share does not fit even without experts."""
    n_layer, gpus = w.n_layer, w.layer_devs
    slots = list(range(n_layer + 1 - ngl, n_layer + 1))
    budgets = [g.capacity - g.margin for g in gpus]
    copy = w.offload_copy_bytes()

    def runs(counts: list[int]) -> list[list[int]]:
        out, pos = [], 0
        for c in counts:
            out.append(slots[pos : pos + c])
            pos += c
        return out

    def left(counts: list[int]) -> list[int]:
        out = []
        for g, layers, budget in zip(gpus, runs(counts), budgets, strict=True):
            compute, _ = w.book.gpu_compute(g.name, has_output=n_layer in layers, offload_copy_bytes=copy)
            base = sum(non_expert[il] for il in layers) + w.book.kv_bytes([il for il in layers if il < n_layer])
            base += compute
            out.append(budget - base if layers else budget)
        return out

    def spread(counts: list[int]) -> float:
        shares = [x / b for x, b in zip(left(counts), budgets, strict=True)]
        return max(shares) - min(shares) + (1.0 if min(left(counts)) < 0 else 0.0)

    counts = [len(slots) * b // sum(budgets) for b in budgets]
    for i in range(len(slots) - sum(counts)):
        counts[i % len(counts)] += 1
    counts = _even_out(counts, spread)
    for g, layers in zip(gpus, runs(counts), strict=True):
        g.layers = layers
    if min(left(counts)) < 0:
        return None
    layer_dev = dict.fromkeys(range(n_layer + 1), CPU)
    for g in gpus:
        for il in g.layers:
            layer_dev[il] = g.name
    return layer_dev


def _even_out(counts: list[int], spread: Callable[[list[int]], float]) -> list[int]:
    """Move one layer slot at a time between GPUs while that lowers `spread` (how unevenly they are left)."""
    best = spread(counts)
    improved = len(counts) > 1
    while improved:
        improved = False
        for i, j in itertools.permutations(range(len(counts)), 2):
            if counts[i] == 0:
                continue
            trial = counts.copy()
            trial[i] -= 1
            trial[j] += 1
            if (score := spread(trial)) < best - 1e-9:
                counts, best, improved = trial, score, True
    return counts


def _initial_placement(w: _Work) -> None:
    """Phase 2: every tensor on its layer's device; experts on the CPU until the next phases hand them out."""
    for t in w.tensors.tensors:
        if t.name in w.forced:
            w.placement[t.name] = w.forced[t.name]
        elif t.role is Role.TOKEN_EMBD or t.is_expert:
            w.placement[t.name] = CPU
        else:
            slot = t.layer if t.layer is not None else w.n_layer
            w.placement[t.name] = w.layer_dev[min(slot, w.n_layer)]


def _fill_own_layers(w: _Work, experts: dict[int, list[ModelTensor]]) -> None:
    """Phase 3: each GPU takes the experts of its own layers (no -ot needed, -ts stays true), whole layers
    while VRAM lasts, then the largest subset of the next layer. The layer split was proportional to free
    VRAM, so every GPU holds expert layers in that proportion, not GPU0 first."""
    for g in w.layer_devs:
        free = w.gpu_state(g).free_bytes
        placed: list[int] = []
        for il in [il for il in g.layers if il in experts]:
            movable = w.movable(il, experts)
            need = sum(t.nbytes for t in movable)
            if need <= free:
                for t in movable:
                    w.placement[t.name] = g.name
                free -= need
                placed.append(il)
                continue
            best = _best_subset(movable, free)
            if best:
                for t in best:
                    w.placement[t.name] = g.name
                w.partials.append((il, g.name, tuple(sorted(_kind(t.name) for t in best))))
            break
        w.expert_layers[g.name] = placed


def _fill_by_cost(w: _Work, experts: dict[int, list[ModelTensor]], cpu_room: int) -> None:
    """Phase 4: the expert layers still on the CPU go, whole, to the device where they cost least per
    token (bytes read over its bandwidth, plus the network for a worker) among those with room: another
    GPU's spare VRAM, a worker's GPU or RAM, this host's RAM. What fits nowhere stays in RAM (and the plan
    says it does not fit)."""
    frac = w.hp.expert_fraction or 1.0
    cpu_bw = mem.cpu_bandwidth(w.threads, w.machine.ram_bandwidth_bytes_s)
    free = {g.name: w.gpu_state(g).free_bytes for g in w.layer_devs}
    free.update({d.name: d.capacity - d.margin - mem.RPC_COMPUTE_BYTES for d in w.remotes if not d.layers})
    pending = [il for il in sorted(experts) if all(w.placement[t.name] == CPU for t in w.movable(il, experts))]
    free[CPU] = cpu_room + sum(t.nbytes for il in pending for t in w.movable(il, experts))  # counted in the room
    speed = {g.name: (g.bandwidth, 0.0) for g in w.gpus}
    speed.update({d.name: (d.bandwidth, d.net_s) for d in w.remotes})
    speed[CPU] = (cpu_bw, 0.0)
    home_net = {d.name: d.net_s for d in w.remotes if d.layers}  # a layer on a worker's GPU: away costs a crossing
    for il in pending:
        movable = w.movable(il, experts)
        need = sum(t.nbytes for t in movable)
        if not movable:
            continue
        per_token = need * frac
        fits = [name for name, room in free.items() if room >= need]
        if not fits:
            continue  # stays in RAM; the budget check reports it
        # Cheapest per token; between equals (two like workers), the one with the most room left.
        home = w.layer_dev[il]
        costs = {
            name: (per_token / speed[name][0] + speed[name][1] + (0.0 if _same_host(name, home) else
                                                                   home_net.get(home, 0.0)), -free[name])
            for name in fits
        }  # fmt: skip
        best = min(fits, key=costs.__getitem__)
        free[best] -= need
        if best == CPU:
            continue
        for t in movable:
            w.placement[t.name] = best
        w.expert_layers.setdefault(best, []).append(il)


def _same_host(a: str, b: str) -> bool:
    """Two buffers on one worker (RPC0[h:p], RPC1[h:p]) copy between themselves there, not through this host."""
    return a == b or (a.endswith("]") and a[a.find("[") :] == b[b.find("[") :])


def _cpu_plan(w: _Work, ngl: int, cache_ram: int | None) -> DevicePlan:
    n_layer = w.n_layer
    cpu_layers = [il for il in range(n_layer) if w.layer_dev[il] == CPU]
    compute, source = w.book.cpu_compute(with_gpus=bool(w.layer_devs))
    ram_avail = w.machine.ram_available_bytes
    margin = mem.ram_margin(w.machine.ram_total_bytes or ram_avail)
    kv = w.book.kv_bytes(cpu_layers)
    return DevicePlan(
        CPU, ram_avail, margin, w.placed_bytes(CPU), kv, compute, cache_ram or 0,
        kv_source=w.book.kv_source, compute_source=source,
    )  # fmt: skip


def _shrink_cache_ram(w: _Work, cpu_plan: DevicePlan) -> DevicePlan:
    """Give up prompt-cache RAM before giving up the plan."""
    cache_ram = cpu_plan.extra_bytes
    if not cache_ram or cpu_plan.fits:
        return cpu_plan
    room = cpu_plan.budget_bytes - (cpu_plan.used_bytes - cache_ram)
    cache_ram = max(mem.SERVER_CACHE_RAM_MIN_BYTES, min(cache_ram, room // (1 << 20) << 20))
    w.reasons.append(f"--cache-ram {cache_ram >> 20} MiB: the host prompt cache shrunk to leave RAM for weights")
    return replace(cpu_plan, extra_bytes=cache_ram)


def _check_budgets(w: _Work, devices: Sequence[DevicePlan]) -> None:
    for d in devices:
        if d.fits:
            continue
        if d.name == CPU:
            w.problems.append(
                f"RAM: the CPU part needs {fmt_bytes(d.used_bytes)} plus a {fmt_bytes(d.margin_bytes)} margin, "
                f"but {fmt_bytes(d.capacity_bytes)} is available ({fmt_bytes(d.used_bytes - d.budget_bytes)} short;"
                f" paging weights from disk would be orders of magnitude slower)"
            )
        else:
            w.problems.append(
                f"{d.name}: needs {fmt_bytes(d.used_bytes)} but has {fmt_bytes(d.budget_bytes)} "
                f"({fmt_bytes(d.capacity_bytes)} free minus {fmt_bytes(d.margin_bytes)} margin)"
            )


def _default_devices(w: _Work) -> dict[str, str]:
    """Where llama.cpp puts each tensor without -ot: its layer's device (the input layer on the CPU)."""
    out = {}
    for t in w.tensors.tensors:
        slot = t.layer if t.layer is not None else w.n_layer
        out[t.name] = CPU if t.role is Role.TOKEN_EMBD else w.layer_dev[min(slot, w.n_layer)]
    return out


def _overrides(w: _Work, default_dev: dict[str, str]) -> tuple[tuple[Override, ...], bool]:
    """The -ot list: the user's first, then the shortest patterns for what the plan moves off its layer's
    device (to the CPU, another GPU, or a worker's RPC<N>[host:port] buffer)."""
    names = [t.name for t in w.tensors.tensors]
    out: list[Override] = list(w.req.user_overrides)
    by_buffer: dict[str, set[str]] = {}
    for n, dev in w.placement.items():
        if n not in w.forced and dev != default_dev[n]:
            by_buffer.setdefault(dev, set()).add(n)
    for buf, target in sorted(by_buffer.items()):
        # Names already on `buf` by default, or taken by the user's patterns, may be covered harmlessly.
        dont_care = {n for n in names if (default_dev[n] == buf and w.placement[n] == buf) or n in w.forced}
        out += [Override(p, buf) for p in ovr.build(target, names, dont_care=dont_care)]
    return tuple(out), bool(by_buffer)


def _predict(w: _Work) -> float:
    gpu_bw = {g.name: g.bandwidth / mem.GPU_BANDWIDTH_EFFICIENCY for g in w.gpus}
    other = {d.name: d.bandwidth for d in w.remotes}
    net = {d.name: d.net_s for d in w.remotes}
    own = {d.name: tuple(d.layers) for d in w.remotes if d.layers}
    return predict_tg(
        w.tensors, w.hp, w.placement, gpu_bw, w.threads, w.machine.ram_bandwidth_bytes_s,
        other_bandwidth=other, net_s_per_layer=net, layer_runs=own, speed=w.machine.speed,
    )  # fmt: skip


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


def predict_tg(
    tensors: TensorSet,
    hp: HParams,
    placement: dict[str, str],
    gpu_bandwidth: Mapping[str, float],
    threads: int,
    ram_bandwidth: float | None,
    *,
    other_bandwidth: Mapping[str, float] | None = None,
    net_s_per_layer: Mapping[str, float] | None = None,
    layer_runs: Mapping[str, tuple[int | None, ...]] | None = None,
    speed: SpeedModel | None = None,
) -> float:
    """Decode tokens/s: bytes read per token on each device over its effective bandwidth, plus a per-layer cost,
    plus the network for every layer with tensors on a worker, and once for a worker's own run of layers
    (`gpu_bandwidth` is peak, `other_bandwidth` effective, e.g. a worker's RAM). With a SpeedModel (this machine,
    measured: `runq calibrate`), its CPU bandwidth and per-layer cost, and its GPU bandwidths where it has them."""
    per_device = bytes_per_token(tensors, hp, placement)
    bw = {name: peak * mem.GPU_BANDWIDTH_EFFICIENCY for name, peak in gpu_bandwidth.items()}
    if speed is None:
        layer_s, cpu_bw = mem.PER_LAYER_OVERHEAD_S, mem.cpu_bandwidth(threads, ram_bandwidth)
    else:
        cpu = speed.cpu_at(threads)
        on_gpu = any(n and dev in gpu_bandwidth for dev, n in per_device.items())
        layer_s = (speed.gpu_layer_s or mem.PER_LAYER_OVERHEAD_S) if on_gpu else cpu.layer_s
        cpu_bw = cpu.bandwidth
        bw.update(speed.gpu_bandwidth)
    bw.update(other_bandwidth or {})
    seconds = hp.n_layer * layer_s
    for dev, nbytes in per_device.items():
        seconds += nbytes / bw.get(dev, cpu_bw)
    net = net_s_per_layer or {}
    if net:
        on: dict[int | None, set[str]] = {}
        for name, d in placement.items():
            on.setdefault(tensors[name].layer, set()).add(d)
        # A layer split between devices crosses the network to and from each worker holding part of it;
        # a worker's own run of whole layers costs one crossing in all.
        for layer, devs in on.items():
            if layer is not None and len(devs) > 1:
                seconds += sum(net.get(d, 0.0) for d in devs)
        seconds += sum(net[d] for d in (layer_runs or {}) if d in net)
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


def _explain(w: _Work, devices: Sequence[DevicePlan], load_mode: str) -> list[str]:
    out = []
    tensors, req, placement = w.tensors, w.req, w.placement
    for d in devices:
        if d.name == CPU or (d.remote and not d.kv_bytes and d.name not in {g.name for g in w.layer_devs}):
            continue
        non_exp = sum(tensors[n].nbytes for n, dev in placement.items() if dev == d.name and not tensors[n].is_expert)
        layers = next((g.layers for g in w.layer_devs if g.name == d.name), [])
        out.append(
            f"{d.name}: layers {layer_ranges(layers) or 'none'}: non-expert weights {fmt_bytes(non_exp)}, "
            f"KV cache {fmt_bytes(d.kv_bytes)} ({req.ctx:,} tokens, {req.cache_type_k}), compute "
            f"{fmt_bytes(d.compute_bytes)} go first: every token reads them"
        )
    for d in devices:
        layers = w.expert_layers.get(d.name, [])
        if layers:
            exp = sum(tensors.expert_bytes(il) for il in layers)
            out.append(
                f"experts of layers {layer_ranges(layers)} on {d.name}: {fmt_bytes(exp)}; "
                f"{fmt_bytes(d.used_bytes)} used of {fmt_bytes(d.budget_bytes)} "
                f"({fmt_bytes(d.capacity_bytes)} minus {fmt_bytes(d.margin_bytes)} margin)"
            )
    for il, dev, kinds in w.partials:
        out.append(f"layer {il}: {', '.join(kinds)} on {dev} too (a partial layer uses the last of its VRAM)")
    cpu_layers = {t.layer for t in tensors.tensors if t.is_expert and t.layer is not None and placement[t.name] == CPU}
    if cpu_layers:
        cpu = devices[-1]
        out.append(
            f"experts of layers {layer_ranges(cpu_layers)} on the CPU: "
            f"{fmt_bytes(cpu.weights_bytes)} of weights in RAM, {fmt_bytes(cpu.used_bytes)} used of "
            f"{fmt_bytes(cpu.budget_bytes)} available"
        )
    out += _explain_workers(w)
    if not w.gpus and not w.remotes:
        out.append("no GPU: everything runs on the CPU, no overrides")
    elif not w.gpus and w.layer_devs:
        out.append("no GPU here: the layers run on the workers' GPUs (-ts), their experts there while VRAM lasts")
    elif not w.gpus:
        out.append("no GPU here: the layers run on this CPU, the experts that do not fit its RAM on the workers")
    if load_mode == "none":
        out.append("-lm none: tensors overridden to the CPU are loaded into RAM instead of memory-mapped")
    return out


def _explain_workers(w: _Work) -> list[str]:
    if not w.machine.workers:
        return []
    out = []
    for wk in w.machine.workers:
        if wk.note:
            out.append(f"worker {wk.endpoint}: {wk.note}")
    used = [d for d in w.remotes if w.expert_layers.get(d.name)]
    if used:
        d = used[0]
        out.append(
            f"network (assumed): {mem.RPC_ROUND_TRIPS_PER_LAYER} round trips and 2 x n_embd x "
            f"{mem.ACTIVATION_BYTES} B of activations per token for each layer with experts on a worker: "
            f"{d.net_s * 1e3:.2f} ms per layer to {d.name} (links 1 Gbit/s unless --worker net= says, "
            f"0.2 ms per round trip; loopback 10 GB/s, 0.042 ms measured)"
        )
    else:
        out.append("workers: nothing placed on them (this host holds the model at less cost per token)")
    return out
