"""Verification against llama.cpp's memory breakdown compares like with like: the CPU's weights as the file range
llama.cpp maps, a worker's compute as the reserve runq keeps, and "please report" only for a real miss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from launcher.llama import log as llama_log
from launcher.machine.spec import MachineSpec, parse_worker_flag
from launcher.measure.synth import SynthModel, write_model
from launcher.pipeline.target import resolve
from launcher.plan.choose import choose
from launcher.plan.types import CPU, Plan, Request
from launcher.units import MiB
from tests.helpers import RPC_CTX, RPC_SPEC, ram_for_one_expert_layer


def _plan(model: SynthModel) -> tuple[Plan, object]:
    target = resolve(str(model.path))
    m = MachineSpec.model_validate({"gpus": [], "ram": ram_for_one_expert_layer(model.path), "cores": 2}).to_machine()
    m = replace(m, workers=(parse_worker_flag("ram=64GiB,at=127.0.0.1:50052", 1),))
    chosen = choose(target.name, m, list(target.sources), Request(ctx=RPC_CTX)).chosen
    return chosen.plan, chosen.source.tensors


def _log(cpu_weights: float, rpc_weights: float, rpc_compute: float, plan: Plan) -> str:
    cpu = next(d for d in plan.devices if d.name == CPU)
    rpc = "RPC0[127.0.0.1:50052]"
    return "\n".join([
        "load_tensors: loading model tensors, this can take a while... (load_mode = mmap)",
        f"load_tensors:   CPU_Mapped model buffer size = {cpu_weights / MiB:10.2f} MiB",
        f"load_tensors: {rpc} model buffer size = {rpc_weights / MiB:10.2f} MiB",
        f"llama_kv_cache:        CPU KV buffer size = {cpu.kv_bytes / MiB:10.2f} MiB",
        f"sched_reserve: {rpc} compute buffer size = {rpc_compute / MiB:10.2f} MiB",
        f"sched_reserve:        CPU compute buffer size = {cpu.compute_bytes / MiB:10.2f} MiB",
    ])  # fmt: skip


def test_a_worker_run_compares_like_with_like(tmp_path: Path) -> None:
    model = write_model(RPC_SPEC, tmp_path / "DeepSeek-V3.1-UD-TQ1_0.gguf")
    plan, tensors = _plan(model)
    rpc = next(d for d in plan.devices if d.remote)
    cpu = next(d for d in plan.devices if d.name == CPU)
    assert plan.load_mode == "mmap" and rpc.weights_bytes and cpu.weights_bytes
    mapped = llama_log.mapped_bytes(plan, tensors)  # type: ignore[arg-type]
    assert mapped > cpu.weights_bytes + rpc.weights_bytes // 2  # the worker's experts lie inside the range
    report = llama_log.parse(_log(mapped, rpc.weights_bytes, 3.6 * MiB, plan))
    check = llama_log.verify(plan, report, has_gpu=False, tensors=tensors)  # type: ignore[arg-type]
    text = "\n".join(check.lines)
    assert check.ok and "please report" not in text, text
    assert "reserve   runq's reserve for a worker (not a prediction); llama.cpp used 3.60 MiB of it" in text
    assert "GGUF header: the file range mmap maps" in text
    # A worker that needs more than the reserve is a real miss; so is a mapped range that is not the file's.
    over = llama_log.parse(_log(mapped, rpc.weights_bytes, rpc.compute_bytes * 2, plan))
    assert "please report" in "\n".join(llama_log.verify(plan, over, has_gpu=False, tensors=tensors).lines)  # type: ignore[arg-type]
    off = llama_log.parse(_log(mapped * 2, rpc.weights_bytes, 3.6 * MiB, plan))
    assert "please report" in "\n".join(llama_log.verify(plan, off, has_gpu=False, tensors=tensors).lines)  # type: ignore[arg-type]
