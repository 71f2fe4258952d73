"""llama.cpp's projection as a planning input (pure), and the CUDA compute model against the facts we have."""

from __future__ import annotations

import pytest

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import require_profile
from launcher.model.hparams import HParams
from launcher.plan import memory as mem
from launcher.plan.place import plan
from launcher.plan.projection import ESTIMATE, DeviceRow, Projection, SizeBook, distribute, parse_fit_print
from launcher.plan.types import CPU, Request
from launcher.units import GiB, MiB
from tests.helpers import machine

DS = require_profile("deepseek-v3.1")
QWEN3_235B = HParams("qwen3moe", None, 94, 262144, 4096, 151936, (64,) * 94, (4,) * 94, 128, 128, (0,) * 94,
                     128, 8, 0, 1536, 0, 0, 0, 0, None)  # fmt: skip
FIT_OUTPUT = "CUDA0 7161 38 340 \nHost 950 0 266 \n"


def test_parse_fit_print_reads_every_device_row() -> None:
    rows = parse_fit_print("some log line\n" + FIT_OUTPUT)
    assert rows == (DeviceRow("CUDA0", 7161 * MiB, 38 * MiB, 340 * MiB), DeviceRow(CPU, 950 * MiB, 0, 266 * MiB))
    with pytest.raises(ValueError):
        parse_fit_print("error: unknown model architecture: 'deepseek9'\n")


@pytest.mark.parametrize("weights", [[3, 3, 3], [1, 0, 7, 2], [0, 0], [5]])
def test_distribute_sums_exactly(weights: list[int]) -> None:
    for total in (0, 1, 1000, 2_302_672_896):
        parts = distribute(total, weights)
        assert sum(parts) == total and len(parts) == len(weights)
        if sum(weights):
            assert all(p == 0 for p, w in zip(parts, weights, strict=True) if w == 0)


def _ds(quant: str = "UD-Q2_K_XL"):  # type: ignore[no-untyped-def]
    return estimate(DS, DS.quant(quant))


def test_cpu_projection_overrides_the_estimate_and_says_so() -> None:
    e = _ds()
    req = Request(ctx=4096, ubatch=512)
    rows = (DeviceRow(CPU, 224_484 * MiB, 300 * MiB, 500 * MiB),)
    proj = Projection("0c1e570", 4096, 512, "f16", "f16", rows)
    before = plan(machine(ram_gib=512), e.tensors, e.hparams, req)
    after = plan(machine(ram_gib=512), e.tensors, e.hparams, Request(ctx=4096, ubatch=512, projections=(proj,)))
    assert before.cpu.kv_source == ESTIMATE and before.cpu.compute_source == ESTIMATE
    assert after.cpu.kv_bytes == 300 * MiB and after.cpu.compute_bytes == 500 * MiB
    assert after.cpu.kv_source == after.cpu.compute_source == "llama.cpp projection, build 0c1e570"
    # A projection for other flags is not used for them.
    other = plan(machine(ram_gib=512), e.tensors, e.hparams, Request(ctx=8192, ubatch=512, projections=(proj,)))
    assert other.cpu.kv_source == ESTIMATE


def test_described_gpu_takes_context_from_a_cpu_projection_and_compute_from_the_model() -> None:
    e = _ds()
    kv = 2196 * MiB
    proj = Projection("0c1e570", 32768, 512, "f16", "f16", (DeviceRow(CPU, 0, kv, 440 * MiB),))
    p = plan(machine(48, ram_gib=512), e.tensors, e.hparams, Request(ctx=32768, ubatch=512, projections=(proj,)))
    gpu = p.gpu_devices[0]
    assert gpu.kv_bytes + p.cpu.kv_bytes == kv  # every layer's share, exactly llama.cpp's total
    assert gpu.kv_source == "llama.cpp projection, build 0c1e570"
    assert gpu.compute_source == ESTIMATE and p.cpu.compute_source == ESTIMATE  # CPU-only rows say nothing here


def test_size_book_uses_a_gpu_row_when_the_build_projected_that_gpu() -> None:
    proj = Projection("0c1e570", 4096, 512, "f16", "f16", parse_fit_print(FIT_OUTPUT))
    book = SizeBook(_ds().hparams, 4096, "f16", "f16", 512, (proj,))
    assert book.gpu_compute("CUDA0", has_output=True, offload_copy_bytes=0) == (340 * MiB, proj.source)
    assert book.gpu_compute("CUDA1", has_output=True, offload_copy_bytes=0)[1] == ESTIMATE
    assert book.cpu_compute(with_gpus=True) == (266 * MiB, proj.source)
    assert book.cpu_compute(with_gpus=False)[1] == ESTIMATE  # a GPU run's Host row is not a CPU-only run's


# --- the CUDA compute model against what llama.cpp allocated -------------------------------------------


# H200 rows (bench/gpu_fit_rows.json), the DeepSeek-R1-0528 UD-Q2_K_XL shape (the same tensors as V3.1's), -c 32768
# -ub 512, fa auto: 2,110 MiB on CUDA0 with the experts on the CPU (-cmoe), 412 MiB with them on the GPU.
H200_DS_CMOE_32K = 2110 * MiB


def test_cuda_compute_deepseek_v31_matches_the_h200_rows() -> None:
    e = _ds()
    hp = e.hparams
    assert mem.uses_flash_attention(hp)  # K 576 / V 512: CUDA's MLA kernel
    largest = max(t.nbytes for t in e.tensors.tensors if t.is_expert)
    b = mem.gpu_compute_bytes(hp, 32768, 512, offload_copy_bytes=largest)
    assert H200_DS_CMOE_32K < b <= H200_DS_CMOE_32K * 1.1
    # The old score-matrix formula (fa off) said 8.34 GiB.
    assert 412 * MiB < mem.gpu_compute_bytes(hp, 32768, 512) <= 412 * MiB * 1.1  # all experts on the GPU


def test_cuda_compute_never_below_the_cpu_projection_for_qwen3_235b() -> None:
    # CPU build, Qwen3-235B shape, fa on: 312 MiB at 4k/ub 512, 1,251 MiB at 32k/ub 2048 (llama-cpp.md).
    assert mem.uses_flash_attention(QWEN3_235B)
    assert mem.gpu_compute_bytes(QWEN3_235B, 4096, 512) >= 312 * MiB
    assert mem.gpu_compute_bytes(QWEN3_235B, 32768, 2048) >= 1251 * MiB
    # With experts on the CPU the GPU multiplies them too (op offload): a Q2_K expert tensor is copied in, on top
    # of the MoE activations (H200, -cmoe, -c 4096 -ub 512: 532 MiB with a 408 MiB copy, 124 MiB besides it).
    q2k_gate = 128 * 4096 * 1536 * 84 // 256
    assert mem.gpu_compute_bytes(QWEN3_235B, 4096, 512, offload_copy_bytes=q2k_gate) >= q2k_gate + 124 * MiB


def _llama_fit_weights(capacity: int, non_expert: int, layers: list[int]) -> int:
    """What llama.cpp's --fit keeps on the GPU, from the H200 rows: 1024 MiB margin, 2196 MiB context and 2,110 MiB
    compute at 32k, the non-expert weights, then whole expert layers while they fit."""
    room = capacity - 1024 * MiB - 2196 * MiB - H200_DS_CMOE_32K - non_expert
    kept = 0
    for b in layers:
        if b > room:
            break
        room -= b
        kept += b
    return non_expert + kept


@pytest.mark.parametrize("gib", [24, 48, 80])
def test_deepseek_v31_at_32k_keeps_gpu_weights_within_one_expert_layer_of_llama_fit(gib: int) -> None:
    e = _ds()
    t, hp = e.tensors, e.hparams
    moe_layers = sorted({x.layer for x in t.tensors if x.is_expert and x.layer is not None})
    layer_bytes = [t.expert_bytes(il) for il in moe_layers]
    non_expert = sum(x.nbytes for x in t.tensors if not x.is_expert and x.role.value != "token_embd")
    p = plan(machine(gib, ram_gib=512), t, hp, Request(ctx=32768, ubatch=512))
    gpu = p.gpu_devices[0]
    assert p.ngl == hp.n_layer + 1
    fit = _llama_fit_weights(gpu.capacity_bytes, non_expert, layer_bytes)
    assert abs(gpu.weights_bytes - fit) <= max(layer_bytes), (gib, gpu.weights_bytes / GiB, fit / GiB)
    assert gpu.compute_bytes > H200_DS_CMOE_32K  # never below what llama.cpp allocated


def test_small_ubatch_is_weighed_when_vram_is_short() -> None:
    # No flash attention (a head size CUDA has no kernel for): the score matrix grows with ubatch x ctx, so a
    # smaller ubatch keeps more layers on the GPU.
    e = _ds()
    hp = e.hparams
    from dataclasses import replace

    no_fa = replace(hp, key_length=hp.key_length + 8)
    assert not mem.uses_flash_attention(no_fa)
    p = plan(machine(24, ram_gib=512), e.tensors, no_fa, Request(ctx=32768))
    fixed = plan(machine(24, ram_gib=512), e.tensors, no_fa, Request(ctx=32768, ubatch=512))
    assert fixed.ngl < hp.n_layer + 1  # ubatch 512: whole layers on the CPU
    assert p.ubatch == 256 and p.ngl > fixed.ngl
    assert any(r.startswith("ubatch 256:") for r in p.reasons)


def test_fit_flags_leave_out_server_options_and_for_a_cpu_build_placement() -> None:
    from launcher.llama.argv import fit_flags

    e = _ds()
    p = plan(machine(24, ram_gib=512), e.tensors, e.hparams, Request(ctx=32768, ubatch=512))
    flags = fit_flags(p)
    assert "-cram" not in flags and "-ot" in flags and flags[flags.index("-c") + 1] == "32768"
    bare = fit_flags(p, placement=False)
    assert "-ot" not in bare and bare[bare.index("-ub") + 1] == "512" and "-ngl" in bare


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        # An abort can interleave llama.cpp's log with the C++ runtime's message (seen at 0c1e570).
        ("terminate called after throwing an instance of '0.00.015.326 E llama_model_load: error loading model: "
         "unknown model architecture: 'qwen9moe'\n0.00.015.332 E llama_model_load_from_file_impl: failed to load "
         "model\nstd::runtime_error'\n  what():  failed to load model\n",
         "llama_model_load: error loading model: unknown model architecture: 'qwen9moe'"),
        ("/src/models/qwen3moe.cpp:66: GGML_ASSERT(n_embd_head == n_rot) failed\n#2 ggml_abort ()\n",
         "GGML_ASSERT(n_embd_head == n_rot) failed"),
        ("terminate called after throwing an instance of 'std::runtime_error'\n  what():  failed to load model\n",
         "failed to load model"),
    ],
)  # fmt: skip
def test_llama_cpp_error_line(stderr: str, line: str) -> None:
    from launcher.llama.fit import _error_line

    assert _error_line(stderr) == line
