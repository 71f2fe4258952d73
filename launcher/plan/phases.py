"""The placement phases: layers to GPUs, experts to their layer's GPU, the rest by cost per token, the CPU's budget,
and the -ot list.

Pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace

from launcher.model.tensors import INPUT_SIDE_ROLES, ModelTensor
from launcher.plan import memory as mem
from launcher.plan import overrides as ovr
from launcher.plan.overrides import Override
from launcher.plan.types import CPU, DevicePlan
from launcher.plan.work import Work, best_subset, expert_kind, same_host
from launcher.units import fmt_bytes


def split_layers(w: Work, non_expert: dict[int, int]) -> tuple[int, tuple[int, ...] | None]:
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


def _assign_layers(w: Work, ngl: int, non_expert: dict[int, int]) -> dict[int, str] | None:
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


def initial_placement(w: Work) -> None:
    """Phase 2: every tensor on its layer's device; experts on the CPU until the next phases hand them out."""
    lazy = set(w.lazy)  # llama.cpp keeps a table it reads on demand on the CPU, whatever -ot says
    for t in w.tensors.tensors:
        if t.name in w.forced and t.name not in lazy:
            w.placement[t.name] = w.forced[t.name]
        elif t.role in INPUT_SIDE_ROLES or t.is_expert:
            w.placement[t.name] = CPU
        else:
            slot = t.layer if t.layer is not None else w.n_layer
            w.placement[t.name] = w.layer_dev[min(slot, w.n_layer)]


def fill_own_layers(w: Work, experts: dict[int, list[ModelTensor]]) -> None:
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
            best = best_subset(movable, free)
            if best:
                for t in best:
                    w.placement[t.name] = g.name
                w.partials.append((il, g.name, tuple(sorted(expert_kind(t.name) for t in best))))
            break
        w.expert_layers[g.name] = placed


def fill_by_cost(w: Work, experts: dict[int, list[ModelTensor]], cpu_room: int) -> None:
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
            name: (per_token / speed[name][0] + speed[name][1] + (0.0 if same_host(name, home) else
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


def cpu_device(w: Work, ngl: int, cache_ram: int | None) -> DevicePlan:
    n_layer = w.n_layer
    cpu_layers = [il for il in range(n_layer) if w.layer_dev[il] == CPU]
    compute, source = w.book.cpu_compute(with_gpus=bool(w.layer_devs))
    ram_avail = w.machine.ram_available_bytes
    margin = mem.ram_margin(w.machine.ram_total_bytes or ram_avail)
    kv = w.book.kv_bytes(cpu_layers)
    lazy = w.lazy_bytes()  # memory-mapped and read on demand: disk and page cache, not resident RAM
    return DevicePlan(
        CPU, ram_avail, margin, w.placed_bytes(CPU) - lazy, kv, compute, cache_ram or 0,
        kv_source=w.book.kv_source, compute_source=source, lazy_bytes=lazy,
    )  # fmt: skip


def shrink_cache_ram(w: Work, cpu_plan: DevicePlan) -> DevicePlan:
    """Give up prompt-cache RAM before giving up the plan."""
    cache_ram = cpu_plan.extra_bytes
    if not cache_ram or cpu_plan.fits:
        return cpu_plan
    room = cpu_plan.budget_bytes - (cpu_plan.used_bytes - cache_ram)
    cache_ram = max(mem.SERVER_CACHE_RAM_MIN_BYTES, min(cache_ram, room // (1 << 20) << 20))
    w.reasons.append(f"--cache-ram {cache_ram >> 20} MiB: the host prompt cache shrunk to leave RAM for weights")
    return replace(cpu_plan, extra_bytes=cache_ram)


def check_budgets(w: Work, devices: Sequence[DevicePlan]) -> None:
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


def default_devices(w: Work) -> dict[str, str]:
    """Where llama.cpp puts each tensor without -ot: its layer's device (the input layer on the CPU)."""
    out = {}
    for t in w.tensors.tensors:
        slot = t.layer if t.layer is not None else w.n_layer
        out[t.name] = CPU if t.role in INPUT_SIDE_ROLES else w.layer_dev[min(slot, w.n_layer)]
    return out


def overrides_for(w: Work, default_dev: dict[str, str]) -> tuple[tuple[Override, ...], bool]:
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
