"""Text and JSON views of a Choice (the chosen plan, every candidate, the command). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from launcher.catalog.sampling import SamplingValue, describe
from launcher.llama.argv import shell_quote
from launcher.machine.spec import Machine
from launcher.model.tensors import INPUT_SIDE_ROLES, layer_ranges, unknown_tensors
from launcher.plan.choose import Candidate, Choice
from launcher.plan.types import CPU, Plan
from launcher.units import fmt_bytes, fmt_gib


def machine_line(m: Machine) -> str:
    gpus = ", ".join(f"{g.name} {fmt_bytes(g.free_bytes)} free" for g in m.gpus) or "no GPU"
    line = f"{gpus}; {fmt_bytes(m.ram_available_bytes)} RAM available; {m.cores} cores"
    for w in m.workers:
        devs = ", ".join(f"{'GPU' if d.kind == 'gpu' else 'RAM'} {fmt_bytes(d.free_bytes)}" for d in w.devices)
        line += f"; worker {w.endpoint}{' (described)' if w.described else ''}: {devs or 'no devices'}"
    return line


def fit_badge(c: Candidate) -> str:
    """Where a quant runs, in one word for lists (`runq models`, the TUI): every weight on the GPUs, the experts
    (or more) in RAM too, RAM only, or not at all. The token embedding stays in RAM on every plan (llama.cpp keeps
    the input layer on the CPU), so it does not count."""
    p = c.plan
    if not p.fits:
        return "does not fit"
    if not p.gpu_devices:
        return "RAM"
    heavy = [n for n, d in p.placement.items() if d == CPU and c.source.tensors[n].role not in INPUT_SIDE_ROLES]
    return "GPU + RAM" if heavy else "GPU"


def candidates_table(cands: tuple[Candidate, ...] | list[Candidate], chosen: str | None) -> list[str]:
    head = f"    {'quant':<14}{'size':>10}  {'fits':<5}{'GPU GiB':>9}{'CPU GiB':>9}{'tok/s':>8}  sizes"
    lines = [head]
    for c in cands:
        mark = "> " if c.source.name == chosen else "  "
        p = c.plan
        lines.append(
            f"  {mark}{c.source.name:<14}{fmt_bytes(c.source.size_bytes):>10}  {'yes' if p.fits else 'no':<5}"
            f"{fmt_gib(p.gpu_bytes):>9}{fmt_gib(p.cpu_bytes):>9}{p.predicted_tg_tps:>8.1f}  "
            f"{'exact' if c.source.exact else 'estimated'}"
        )
    return lines


def memory_table(p: Plan) -> list[str]:
    width = max(8, *(len(d.name) + 1 for d in p.devices))  # RPC0[10.0.0.2:50052] for a worker's device
    lines = [
        f"    {'device':<{width}}{'weights':>11}{'KV cache':>11}{'compute':>11}{'other':>11}{'margin':>11}{'free':>11}"
    ]
    for d in p.devices:
        sizes = (d.weights_bytes, d.kv_bytes, d.compute_bytes, d.extra_bytes, d.margin_bytes, d.free_bytes)
        cells = "".join(f"{fmt_bytes(n):>11}" for n in sizes)
        lines.append(f"    {d.name:<{width}}{cells}" + ("" if d.fits else "  DOES NOT FIT"))
    lines += lazy_table_lines(p, width)
    return lines


def lazy_table_lines(p: Plan, width: int = 8) -> list[str]:
    """The lookup tables llama.cpp reads on demand, on a line of their own: they are not in any device's sums."""
    lazy = p.cpu.lazy_bytes
    if not lazy:
        return []
    return [f"    {'lazy':<{width}}{fmt_bytes(lazy):>11}  lookup tables on the CPU, memory-mapped, read a few rows per "
            f"token (-lzm {p.lazy_mode}): disk and page cache, not counted in RAM"]  # fmt: skip


def weights_source(c: Candidate) -> str:
    return "GGUF header" if c.source.exact else "runq estimate"


def source_lines(c: Candidate) -> list[str]:
    """Where each column of the memory table came from: the GGUF header, llama.cpp's projection, or runq."""
    p = c.plan
    out = [f"weights: {weights_source(c)}"]
    for what, attr in (("KV cache", "kv_source"), ("compute", "compute_source")):
        by: dict[str, list[str]] = {}
        for d in p.devices:
            by.setdefault(getattr(d, attr), []).append(d.name)
        if len(by) == 1:
            out.append(f"{what}: {next(iter(by))}")
        else:
            out.append(f"{what}: " + " / ".join(f"{', '.join(devs)} {src}" for src, devs in by.items()))
    return out


def placement_lines(p: Plan) -> list[str]:
    out = []
    if len(p.gpu_layers) > 1 or p.rpc:
        for dev, layers in p.gpu_layers.items():
            out.append(f"{dev}: layers {layer_ranges(layers) or 'none'} (attention, shared weights, KV cache)")
    for dev, layers in p.expert_layers.items():
        if layers:
            out.append(f"experts of layers {layer_ranges(layers)} on {dev}")
    for il, dev, kinds in p.partials:
        out.append(f"layer {il}: {', '.join(kinds)} on {dev}")
    cpu_expert_layers = {
        int(n.split(".")[1]) for n, d in p.placement.items() if d == CPU and "_exps." in n and n.startswith("blk.")
    }
    if cpu_expert_layers:
        out.append(f"experts of layers {layer_ranges(cpu_expert_layers)} on the CPU")
    if p.ngl < p.n_layer + 1 and p.gpu_devices:
        out.append(f"layers 0-{p.n_layer - p.ngl} run entirely on the CPU (-ngl {p.ngl})")
    return out


def choice_text(
    choice: Choice, machine: Machine, argv: list[str], sizes: str = "", sampling: Sequence[SamplingValue] = (),
    notes: Sequence[str] = (),
) -> str:  # fmt: skip
    c = choice.chosen
    p = c.plan
    kind = "exact sizes from the GGUF headers" if c.source.exact else "estimated sizes: no GGUF header read yet"
    lines = [
        f"{choice.model} {c.source.name}: {p.ctx:,} tokens of context, {p.predicted_tg_tps:.1f} tokens/s predicted",
        f"  machine: {machine_line(machine)}",
        f"  sizes: {sizes or kind}",
        f"  speed: {p.speed_source}",
        *(f"  note: {n}" for n in machine.notes),
        "",
    ]
    if len(choice.candidates) > 1:
        lines += ["Quants (> chosen; tokens/s is a prediction from bytes read per token):"]
        lines += candidates_table(choice.candidates, c.source.name)
        lines.append("")
    lines += ["Why:"] + [f"  - {r}" for r in (*choice.reasons, *p.reasons, *notes)]
    lines += ["", "Memory per device:", *memory_table(p)]
    lines.append("    sources: " + "; ".join(source_lines(c)))
    lines += ["", "Placement:"] + [f"  {x}" for x in placement_lines(p) or ["everything on one device"]]
    unknown = unknown_tensors(t.name for t in c.source.tensors.tensors)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        lines.append(f"  tensors runq does not know, kept with their layer (GPU side, never moved as experts): {shown}")
    if sampling:
        lines += ["", "Sampling (source):", f"  {describe(list(sampling))}"]
    lines += ["", "Command:", f"  {shell_quote(argv)}"]
    return "\n".join(lines)


def candidate_json(c: Candidate) -> dict[str, Any]:
    return {
        "quant": c.source.name,
        "fits": c.plan.fits,
        "exact": c.source.exact,
        "size_bytes": c.source.size_bytes,
        "gpu_bytes": c.plan.gpu_bytes,
        "cpu_bytes": c.plan.cpu_bytes,
        "predicted_tg_tps": round(c.plan.predicted_tg_tps, 2),
        "problems": list(c.plan.problems),
    }


def plan_json(p: Plan) -> dict[str, Any]:
    return {
        "fits": p.fits,
        "ctx": p.ctx,
        "cache_type_k": p.cache_type_k,
        "cache_type_v": p.cache_type_v,
        "ubatch": p.ubatch,
        "threads": p.threads,
        "ngl": p.ngl,
        "load_mode": p.load_mode,
        "flash_attn": p.flash_attn,
        "llama_default": p.llama_default,
        "tensor_split": list(p.tensor_split) if p.tensor_split else None,
        "rpc": list(p.rpc),
        "gpu_layers": {k: list(v) for k, v in p.gpu_layers.items()},
        "slots": p.slots,
        "kv_unified": p.kv_unified,
        "lazy_tables": {
            "mode": p.lazy_mode,  # the -lzm passed; null: the model has no lookup tables
            "tensors": list(p.lazy_tables),  # read on demand, memory-mapped on the CPU
            "bytes": p.cpu.lazy_bytes,  # counted as disk and page cache, in no device's used bytes
        },
        "devices": [
            {
                "name": d.name,
                "capacity_bytes": d.capacity_bytes,
                "margin_bytes": d.margin_bytes,
                "budget_bytes": d.budget_bytes,
                "weights_bytes": d.weights_bytes,
                "kv_bytes": d.kv_bytes,
                "compute_bytes": d.compute_bytes,
                "extra_bytes": d.extra_bytes,
                "lazy_bytes": d.lazy_bytes,
                "free_bytes": d.free_bytes,
                "remote": d.remote,
                "kv_source": d.kv_source,
                "compute_source": d.compute_source,
            }
            for d in p.devices
        ],
        "expert_layers": {k: list(v) for k, v in p.expert_layers.items()},
        "partials": [{"layer": il, "device": dev, "tensors": list(kinds)} for il, dev, kinds in p.partials],
        "cpu_tensors": p.cpu_tensors,
        "overrides": [str(o) for o in p.overrides],
        "cache_ram_bytes": p.cache_ram_bytes,
        "predicted_tg_tps": round(p.predicted_tg_tps, 2),
        "speed_source": p.speed_source,
        "placement": {
            "by": p.placed_by,
            "why": p.placed_why,
            "fit": [
                {"device": d, "fit_expert_bytes": f, "runq_expert_bytes_before": r0, "runq_expert_bytes": r}
                for d, f, r0, r in p.fit_experts
            ],
        },
        "reasons": list(p.reasons),
        "problems": list(p.problems),
    }


def choice_json(choice: Choice, argv: list[str], sampling: Sequence[SamplingValue] = ()) -> dict[str, Any]:
    c = choice.chosen
    plan = plan_json(c.plan)
    for d in plan["devices"]:
        d["weights_source"] = weights_source(c)
    return {
        "sampling": [{"name": v.name, "value": v.value, "source": v.source} for v in sampling],
        "model": choice.model,
        "quant": c.source.name,
        "exact": c.source.exact,
        "fit": fit_badge(c),
        **plan,
        "argv": argv,
        "reasons": [*choice.reasons, *c.plan.reasons],
        "candidates": [candidate_json(x) for x in choice.candidates],
    }
