"""The reasons a plan gives for where things went, in words the CLI and the TUI show as they are.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from launcher.model.tensors import layer_ranges
from launcher.plan import memory as mem
from launcher.plan import serving
from launcher.plan.types import CPU, DevicePlan, Request
from launcher.plan.work import Work
from launcher.units import fmt_bytes


def explain(w: Work, devices: Sequence[DevicePlan], load_mode: str) -> list[str]:
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
    if w.lazy and w.lazy_mode:
        out.append(serving.lazy_note(tensors, w.lazy, w.lazy_mode, load_mode))
    if req.server:
        out.append(serving.slots_note(req.slots, req.ctx))
    out += _explain_tuned(req)
    return out


def _explain_tuned(req: Request) -> list[str]:
    """What a measurement on this machine chose (`runq tune`), so the plan says why it differs from its own."""
    if not req.tuned:
        return []
    if req.llama_default:
        return [f"{req.tuned}: llama.cpp's own fit measured fastest here, so the command leaves placement, batch "
                "and threads to it (the memory above is runq's plan of the same model, for reference)"]  # fmt: skip
    knobs = [
        f"-ub {req.ubatch}" if req.ubatch else "",
        f"-t {req.threads}" if req.threads else "",
        f"-fa {req.flash_attn}" if req.flash_attn != "auto" else "",
        f"-lm {req.load_mode}" if req.load_mode else "",
    ]
    shown = ", ".join(k for k in knobs if k)
    return [f"{req.tuned}: {shown or 'runq’s own plan'} measured fastest here"]  # fmt: skip


def _explain_workers(w: Work) -> list[str]:
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
