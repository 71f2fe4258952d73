"""llama.cpp's fit as a placement (plan/fit_compare.py): its answer read and replayed, runq's plan grown to it, and
runq's own model against what fit does on a real GPU (the H200 rows in bench/gpu_fit_rows.json). Pure."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import parse_profile, require_profile
from launcher.model.tensors import TensorSet, loaded_tensors
from launcher.plan import memory as mem
from launcher.plan.fit_compare import FitAnswer, compare, fit_placement, grow_to, layer_devices, parse_fit_line
from launcher.plan.place import plan
from launcher.plan.types import CPU, Request
from launcher.units import GiB, MiB
from tests.helpers import machine

# What llama-fit-params printed (CPU build, loopback RPC devices; /work/notes/23-research.md).
ONE_DEVICE = (
    '-c 4096 -ngl 13 -ot "blk\\.8\\.ffn_down.*=CPU,blk\\.9\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,'
    "blk\\.10\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,blk\\.11\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU,"
    'blk\\.12\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU"\n'
)
TWO_DEVICES = (
    '-c 4096 -ngl 13 -ts 5,8 -ot "blk\\.4\\.ffn_(gate|gate_up|down).*=RPC0[127.0.0.1:50233],'
    'blk\\.8\\.ffn_(gate|gate_up|down).*=CPU,blk\\.9\\.ffn_(up|down|gate_up|gate)_(ch|)exps=CPU"\n'
)
ROWS = Path(__file__).resolve().parents[2] / "bench" / "gpu_fit_rows.json"


def test_fit_line_is_read_with_its_overrides_and_split() -> None:
    a = parse_fit_line("llama_fit_params: printing fitted CLI arguments to stdout...\n" + ONE_DEVICE)
    assert (a.ctx, a.ngl, a.tensor_split) == (4096, 13, None)
    assert a.overrides[0] == (r"blk\.8\.ffn_down.*", "CPU") and len(a.overrides) == 5
    b = parse_fit_line(TWO_DEVICES)
    assert b.tensor_split == (5.0, 8.0) and b.overrides[0][1] == "RPC0[127.0.0.1:50233]"
    assert parse_fit_line("-c 4096 -ngl -1\n").overrides == ()  # everything fits: nothing changed
    assert b.bench_flags()[:4] == ["-ngl", "13", "-ts", "5/8"] and ";" in b.bench_flags()[5]
    with pytest.raises(ValueError):
        parse_fit_line("error: failed to fit CLI arguments to free memory, exiting...\n")


def test_layers_go_to_the_devices_as_llama_cpp_splits_them() -> None:
    assert set(layer_devices(12, 13, [1.0], ["CUDA0"]).values()) == {"CUDA0"}
    back = layer_devices(12, 2, [1.0], ["CUDA0"])
    assert [il for il, d in back.items() if d == "CUDA0"] == [11, 12] and back[0] == CPU
    split = layer_devices(12, 13, [5, 8], ["A", "B"])
    assert [split[il] for il in range(13)] == ["A"] * 5 + ["B"] * 8
    assert set(layer_devices(12, -1, [1.0], ["CUDA0"]).values()) == {"CUDA0"}  # -ngl -1: fit changed nothing


def _tiny() -> tuple[TensorSet, int]:
    e = estimate(require_profile("qwen3-30b-a3b-2507"), require_profile("qwen3-30b-a3b-2507").quants_by_size()[0])
    return loaded_tensors(e.tensors, e.hparams.n_layer, e.hparams.n_layer_nextn), e.hparams.n_layer


def test_fit_placement_replays_the_overrides_first_match_wins() -> None:
    tensors, n_layer = _tiny()
    lines = "|".join(str(i) for i in range(10, n_layer + 1))
    rest = (rf"blk\.({lines})\.ffn_(up|down|gate_up|gate)_(ch|)exps", CPU)
    answer = FitAnswer(4096, n_layer + 1, None, ((r"blk\.9\.ffn_down.*", CPU), rest), "")
    placed = fit_placement(tensors, n_layer, answer, ["CUDA0"], {"CUDA0": 24 * GiB})
    assert placed["token_embd.weight"] == CPU and placed["output.weight"] == "CUDA0"
    assert placed["blk.9.ffn_down_exps.weight"] == CPU and placed["blk.9.ffn_up_exps.weight"] == "CUDA0"
    assert placed["blk.10.ffn_up_exps.weight"] == CPU and placed["blk.10.attn_q.weight"] == "CUDA0"
    assert placed["blk.0.ffn_gate_exps.weight"] == "CUDA0"


def test_a_plan_short_of_fit_grows_to_it_by_the_least_margin() -> None:
    """runq's plan on a 12 GiB GPU against a fit that kept one more expert layer: grown by lowering the margin,
    by no more than that layer, and never below fit's expert bytes."""
    e = estimate(require_profile("qwen3-30b-a3b-2507"), require_profile("qwen3-30b-a3b-2507").quant("UD-Q4_K_XL"))
    t, hp = e.tensors, e.hparams
    m = machine(12, ram_gib=64)
    p = plan(m, t, hp, Request(ctx=8192))
    on_gpu = sorted(p.expert_layers["CUDA0"])
    assert on_gpu and len(on_gpu) < hp.n_layer
    k = max(on_gpu) + 2  # fit: one more whole layer than runq, and no partial one
    rest = "|".join(str(i) for i in range(k, hp.n_layer + 1))
    answer = FitAnswer(8192, hp.n_layer + 1, None, ((rf"blk\.({rest})\.ffn_(up|down|gate_up|gate)_(ch|)exps", CPU),),
                       "")  # fmt: skip
    fit = fit_placement(loaded_tensors(t, hp.n_layer, 0), hp.n_layer, answer, ["CUDA0"], {})
    cmp = compare(t, p, fit, ["CUDA0"])
    assert cmp.deficits["CUDA0"] > 0
    req = Request(ctx=8192, ubatch=p.ubatch, gpu_margins=(("CUDA0", p.devices[0].margin_bytes),))
    grown, greq, after = grow_to(m, t, hp, req, p, cmp, lambda q: compare(t, q, fit, ["CUDA0"]))
    assert not after.deficits and after.runq_total >= cmp.fit_total and grown.fits
    cut = p.devices[0].margin_bytes - grown.devices[0].margin_bytes
    assert 0 < cut <= cmp.deficits["CUDA0"]
    less = replace(greq, gpu_margins=(("CUDA0", grown.devices[0].margin_bytes + 2 * MiB),))
    assert compare(t, plan(m, t, hp, less), fit, ["CUDA0"]).deficits  # 2 MiB less cut and it would be short again


# --- runq's own model for GPUs no build can see, against llama.cpp's fit on the H200 --------------------------
# llama.cpp's fit (common/fit.cpp) on one CUDA device: every layer there, then the experts of the front layers
# while they fit, then one more layer's ffn_up_exps (UP), or its up and gate (GATE), moving that layer's other
# ffn tensors (router, shared expert) to the CPU. Memory = weights there + KV + the compute buffer the H200 row of
# that shape, context and ubatch recorded with experts on the CPU (the copied expert tensor included); target = free
# minus -fitt. Compared at the same budget as runq's (free less runq's margin).
FIT_PARTIALS = (r"ffn_(gate|gate_up|down).*", r"ffn_down.*")  # UP, then GATE


def _fit_weights(t: TensorSet, target: int, kv: int, compute: int) -> int:
    dense = sum(x.nbytes for x in t.tensors if not x.is_expert and x.role.value != "token_embd")
    used, kept = dense + kv + compute, dense
    for il in t.expert_layers:
        if used + t.expert_bytes(il) <= target:
            used += t.expert_bytes(il)
            kept += t.expert_bytes(il)
            continue
        extra = 0
        for pattern in FIT_PARTIALS:
            moved = [x for x in t.tensors if x.layer == il and re.search(rf"blk\.{il}\.{pattern}", x.name)]
            gain = sum(x.nbytes for x in t.tensors if x.layer == il and x.is_expert and x not in moved)
            gain -= sum(x.nbytes for x in moved if not x.is_expert)
            if used + gain >= target:
                break
            extra = gain
        return kept + extra
    return kept


def _h200_row(shape: str, ctx: int, ubatch: int) -> dict:  # type: ignore[type-arg]
    rows = json.loads(ROWS.read_text())["rows"]
    return next(r for r in rows if r["shape"].startswith(shape) and (r["ctx"], r["ubatch"], r["experts"], r["fa"])
                == (ctx, ubatch, "cpu", "auto"))  # fmt: skip


QWEN3_235B_SHAPE = """
name = "qwen3-235b-shape"
display_name = "Qwen3-235B-A22B (shape)"
repo = "unsloth/Qwen3-235B-A22B-GGUF"
default_ctx = 16384
[arch]
name = "qwen3moe"
n_layer = 94
n_embd = 4096
n_vocab = 151936
context_length = 262144
n_head = 64
n_head_kv = 4
key_length = 128
value_length = 128
n_ff_exp = 1536
n_expert = 128
n_expert_used = 8
[[quants]]
name = "UD-Q2_K_XL"
path = "UD-Q2_K_XL/Qwen3-235B-A22B-UD-Q2_K_XL-00001-of-00002.gguf"
size_bytes = 88_000_000_000
expert_bits = { down = 3.5, up = 2.5, gate = 2.5 }
"""  # bench/shapes.py's Qwen3-235B shape (GQA), the one the H200 rows were recorded on


@pytest.mark.parametrize("shape", ["DeepSeek-R1-0528", "Qwen3-235B"])
@pytest.mark.parametrize("gib", [24, 48, 80])
def test_described_gpu_keeps_gpu_weights_within_half_a_gib_of_llama_fit(shape: str, gib: int) -> None:
    prof = require_profile("deepseek-r1-0528") if shape.startswith("DeepSeek") else parse_profile(QWEN3_235B_SHAPE, "")
    e = estimate(prof, prof.quant("UD-Q2_K_XL"))
    t = loaded_tensors(e.tensors, e.hparams.n_layer, e.hparams.n_layer_nextn)
    p = plan(machine(gib, ram_gib=512), e.tensors, e.hparams, Request(ctx=32768))
    gpu = p.gpu_devices[0]
    assert p.ngl == e.hparams.n_layer + 1 and gpu.margin_bytes == mem.CUDA_CONTEXT_BYTES + mem.GPU_MARGIN_BYTES
    row = _h200_row(shape, 32768, p.ubatch)
    kv, compute = row["devices"]["CUDA0"][1] * MiB, row["compute_mib"] * MiB
    fit = _fit_weights(t, gpu.budget_bytes, kv, compute)
    assert abs(fit - gpu.weights_bytes) <= GiB // 2, (fit / GiB, gpu.weights_bytes / GiB)
    assert gpu.compute_bytes >= compute  # never below what llama.cpp allocated there
