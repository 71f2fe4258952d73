"""Text and JSON views of core values (machines, models). Pure: returns strings and dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.machine.spec import Machine
from launcher.model.shards import GGUFModel
from launcher.model.tensors import Role, layer_ranges, unknown_tensors
from launcher.units import fmt_bytes


def _rows(rows: list[tuple[str, str]], indent: int = 2) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{' ' * indent}{k.ljust(width)}  {v}" for k, v in rows]


def _tilde(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + "/") else path


def machine_text(m: Machine) -> str:
    rows: list[tuple[str, str]] = []
    if not m.gpus:
        rows.append(("GPUs", f"none — {m.gpu_note}" if m.gpu_note else "none"))
    for g in m.gpus:
        bits = [f"{fmt_bytes(g.total_bytes)} total", f"{fmt_bytes(g.free_bytes)} free"]
        if g.sm:
            bits.append(f"sm_{g.sm}")
        if g.memory_bandwidth:
            bits.append(f"{g.memory_bandwidth / 1e9:.0f} GB/s")
        rows.append((f"GPU {g.index}", f"{g.name}: " + ", ".join(bits)))
    if m.driver_version:
        rows.append(("Driver", m.driver_version + (f" (CUDA {m.cuda_version})" if m.cuda_version else "")))
    rows.append(("RAM", f"{fmt_bytes(m.ram_total_bytes)} total, {fmt_bytes(m.ram_available_bytes)} available"))
    rows.append(
        (
            "Swap",
            f"{fmt_bytes(m.swap_total_bytes)} total, {fmt_bytes(m.swap_free_bytes)} free"
            if m.swap_total_bytes
            else "none",
        )
    )
    c = m.cpu
    cores = f"{c.physical_cores or '?'} physical / {c.logical_cores or '?'} logical cores"
    rows.append(("CPU", f"{c.model}, {cores}" if c.model else cores))
    if c.flags:
        rows.append(("SIMD", " ".join(c.simd) or "none of AVX/AVX2/AVX-512/AMX/NEON"))
    if m.disk_free_bytes is not None:
        where = f" in {_tilde(m.disk_path)}" if m.disk_path else ""
        rows.append(("Disk", f"{fmt_bytes(m.disk_free_bytes)} free{where}"))
    for w in m.workers:
        devs = ", ".join(f"RPC{d.index} {'GPU' if d.kind == 'gpu' else 'CPU+RAM'} {fmt_bytes(d.free_bytes)} free"
                         for d in w.devices)  # fmt: skip
        rows.append(("Worker", f"{w.endpoint}{' (described)' if w.described else ''}: {devs or 'no devices'}"))
    rows += [("Note", n) for n in m.notes]
    title = {
        "probed": "This machine",
        "described": "Described machine",
        "mixed": "This machine, as described",
    }
    return "\n".join([f"{title[m.source]}:", *_rows(rows)])


def machine_json(m: Machine) -> dict[str, Any]:
    return {
        "source": m.source,
        "notes": list(m.notes),
        "workers": [
            {
                "endpoint": w.endpoint,
                "described": w.described,
                "net_bytes_s": w.net_bytes_s,
                "devices": [
                    {"index": d.index, "kind": d.kind, "total_bytes": d.total_bytes, "free_bytes": d.free_bytes}
                    for d in w.devices
                ],
            }
            for w in m.workers
        ],
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "total_bytes": g.total_bytes,
                "free_bytes": g.free_bytes,
                "compute_capability": ".".join(map(str, g.compute_capability)) if g.compute_capability else None,
                "mem_bus_width_bits": g.mem_bus_width_bits,
                "mem_clock_mhz": g.mem_clock_mhz,
                "bandwidth_bytes_s": g.memory_bandwidth,
            }
            for g in m.gpus
        ],
        "gpu_note": m.gpu_note,
        "driver_version": m.driver_version,
        "cuda_version": m.cuda_version,
        "ram_total_bytes": m.ram_total_bytes,
        "ram_available_bytes": m.ram_available_bytes,
        "swap_total_bytes": m.swap_total_bytes,
        "swap_free_bytes": m.swap_free_bytes,
        "cpu": {
            "model": m.cpu.model,
            "physical_cores": m.cpu.physical_cores,
            "logical_cores": m.cpu.logical_cores,
            "simd": m.cpu.simd,
        },
        "disk_path": m.disk_path,
        "disk_free_bytes": m.disk_free_bytes,
    }


def expert_layer_runs(per_layer: dict[int, int]) -> list[tuple[str, int]]:
    """Group consecutive layers with the same expert bytes: [('3-60', 6_000_000), …]."""
    runs: list[tuple[list[int], int]] = []
    for layer, n in per_layer.items():
        if runs and runs[-1][1] == n and runs[-1][0][-1] == layer - 1:
            runs[-1][0].append(layer)
        else:
            runs.append(([layer], n))
    return [(layer_ranges(ls), n) for ls, n in runs]


def model_text(m: GGUFModel) -> str:
    hp = m.hparams
    ts = m.tensors
    total = ts.total_bytes
    rows: list[tuple[str, str]] = [("Architecture", hp.arch + (f'  "{hp.name}"' if hp.name else ""))]
    dense = f" ({hp.n_dense_lead} dense leading)" if hp.n_dense_lead else ""
    rows.append(("Layers", f"{hp.n_layer}{dense}"))
    if hp.is_moe:
        shared = f", {hp.n_expert_shared} shared" if hp.n_expert_shared else ""
        rows.append(
            (
                "Experts",
                f"{hp.n_expert} routed, {hp.n_expert_used} used per token{shared}; expert FFN {hp.n_ff_exp}",
            )
        )
    heads = hp.n_head[0] if hp.n_head else 0
    kv = hp.n_head_kv[0] if hp.n_head_kv else 0
    attn = f"{heads} heads, {kv} KV head{'s' if kv != 1 else ''}, key {hp.key_length} / value {hp.value_length}"
    if hp.is_mla:
        attn += f" (MLA: kv_lora {hp.kv_lora_rank}, q_lora {hp.q_lora_rank})"
    if hp.sliding_window:
        attn += f", sliding window {hp.sliding_window}"
    rows.append(("Attention", attn))
    rows.append(("Context", f"{hp.n_ctx_train:,} tokens (trained)"))
    rows.append(("Embedding", f"{hp.n_embd:,}, vocabulary {hp.n_vocab:,}"))
    rows.append(("Tensors", f"{len(ts):,}, {fmt_bytes(total)} of tensor data ({total:,} B)"))
    experts = ts.expert_bytes()
    if total:
        rows.append(
            (
                "By role",
                f"routed experts {fmt_bytes(experts)} ({100 * experts / total:.1f}%), "
                f"everything else {fmt_bytes(total - experts)} ({total - experts:,} B)",
            )
        )
    by_role = ts.bytes_by_role()
    detail = ", ".join(f"{r.value} {fmt_bytes(n)}" for r, n in sorted(by_role.items(), key=lambda kv: -kv[1]))
    rows.append(("", detail))
    unknown = unknown_tensors(t.name for t in ts.tensors)
    if unknown:
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        rows.append(("Unknown", f"{', '.join(unknown[:8])}{more} (kept on the GPU side of a plan, never as experts)"))
    runs = expert_layer_runs(ts.expert_bytes_per_layer())
    for i, (layers, n) in enumerate(runs[:8]):
        rows.append(("Experts/layer" if i == 0 else "", f"layers {layers}: {fmt_bytes(n)} each"))
    if len(runs) > 8:
        rows.append(("", f"… {len(runs) - 8} more runs (see --json)"))
    type_bytes = ts.type_bytes()
    hist = ", ".join(f"{name} {count} ({fmt_bytes(type_bytes[name])})" for name, count in ts.type_histogram().items())
    rows.append(("Types", hist))
    shard_total = m.file_bytes
    if len(m.shards) == 1:
        rows.append(("File", f"{fmt_bytes(shard_total)} ({shard_total:,} B)"))
    else:
        rows.append(("Shards", f"{len(m.shards)} files, {fmt_bytes(shard_total)} ({shard_total:,} B)"))
        for i, s in enumerate(m.shards, 1):
            rows.append(("", f"{i}: {Path(s.name).name}  {s.n_tensors} tensors, {fmt_bytes(s.size)}"))
    return "\n".join([f"{m.name}:", *_rows(rows)])


def model_json(m: GGUFModel) -> dict[str, Any]:
    hp = m.hparams
    ts = m.tensors
    by_role = ts.bytes_by_role()
    return {
        "path": m.name,
        "architecture": hp.arch,
        "name": hp.name,
        "hparams": {
            "n_layer": hp.n_layer,
            "n_dense_lead": hp.n_dense_lead,
            "n_expert": hp.n_expert,
            "n_expert_used": hp.n_expert_used,
            "n_expert_shared": hp.n_expert_shared,
            "n_ff_exp": hp.n_ff_exp,
            "n_head": hp.n_head[0] if hp.n_head else 0,
            "n_head_kv": hp.n_head_kv[0] if hp.n_head_kv else 0,
            "key_length": hp.key_length,
            "value_length": hp.value_length,
            "kv_lora_rank": hp.kv_lora_rank,
            "sliding_window": hp.sliding_window,
            "n_ctx_train": hp.n_ctx_train,
            "n_embd": hp.n_embd,
            "n_vocab": hp.n_vocab,
        },
        "tensor_count": len(ts),
        "tensor_bytes": ts.total_bytes,
        "expert_bytes": ts.expert_bytes(),
        "non_expert_bytes": ts.non_expert_bytes(),
        "bytes_by_role": {r.value: by_role.get(r, 0) for r in Role},
        "unknown_tensors": unknown_tensors(t.name for t in ts.tensors),
        "expert_bytes_per_layer": {str(k): v for k, v in ts.expert_bytes_per_layer().items()},
        "types": {name: {"tensors": c, "bytes": ts.type_bytes()[name]} for name, c in ts.type_histogram().items()},
        "shards": [
            {"path": s.name, "size_bytes": s.size, "tensors": s.n_tensors, "data_offset": s.data_offset}
            for s in m.shards
        ],
        "file_bytes": m.file_bytes,
    }
