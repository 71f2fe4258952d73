"""The planner: placement rules, memory model, speed model, monotonicity, quant choice."""

from __future__ import annotations

import math
import re

import pytest

from launcher.catalog.profiles import require_profile
from launcher.catalog.sources import ModelSource, profile_sources
from launcher.errors import DoesNotFitError, UsageError
from launcher.machine.spec import Machine
from launcher.measure.synth import SynthModel
from launcher.model.arch_shapes import Shape, tensor_shapes
from launcher.model.ggml_types import TYPES_BY_NAME
from launcher.model.hparams import HParams
from launcher.model.shards import open_local
from launcher.model.tensors import ModelTensor, TensorSet, classify
from launcher.plan import kv_cache
from launcher.plan import memory as mem
from launcher.plan.choose import choose
from launcher.plan.overrides import Override, effective_buffers
from launcher.plan.place import plan
from launcher.plan.predict import predict_tg
from launcher.plan.types import Request
from launcher.units import GiB, MiB
from tests.helpers import gpu_for, machine

DS = require_profile("deepseek-v3.1")


def ds_choice(m: Machine, **req: object):  # type: ignore[no-untyped-def]
    return choose(DS.display_name, m, profile_sources(DS), Request(ctx=DS.default_ctx, **req))  # type: ignore[arg-type]


# --- KV cache ------------------------------------------------------------------------------


def test_kv_mla_matches_llama_cpp() -> None:
    hp = DS.arch.hparams()
    kv = kv_cache.kv_layout(hp)
    assert kv.per_token == 70_272  # 576 x 2 B x 61 layers, K only (V-less MLA cache)
    # llama-fit-params -fitp on reported 274 / 2,196 / 8,784 MiB of context at these sizes.
    for ctx, mib in ((4096, 274), (32768, 2196), (131072, 8784)):
        assert kv.bytes_for(ctx) / MiB == pytest.approx(mib, abs=1)


def test_kv_gqa_qwen3_235b() -> None:
    hp = HParams("qwen3moe", None, 94, 262144, 4096, 151936, (64,) * 94, (4,) * 94, 128, 128, (0,) * 94,
                 128, 8, 0, 1536, 0, 0, 0, 0, None)  # fmt: skip
    kv = kv_cache.kv_layout(hp)
    assert kv.per_token == 192_512  # 2 x 4 x 128 x 2 B x 94
    assert kv.bytes_for(4096) / MiB == pytest.approx(752, abs=1)
    assert kv.bytes_for(32768) / MiB == pytest.approx(6016, abs=1)
    q8 = kv_cache.kv_layout(hp, "q8_0", "q8_0")
    assert q8.per_token == round(192_512 * 34 / 32 / 2)


# --- quant choice: expectations derived by hand from the published sizes ------------------------
# DeepSeek-V3.1 non-expert weights are about 17 GiB (16.3 on the GPU, token_embd 0.9 on the CPU);
# the KV cache at 16K is 1.07 GiB; the CUDA compute buffer about 2.2-3 GiB (flash attention on: the largest
# expert tensor copied for op offload, 1.9-2.0 GiB, + logits; memory.py); llama-server's prompt cache 8 GiB of
# RAM (shrinkable to 1), RAM margin 5%.


def test_24gib_gpu_256gib_ram_picks_the_largest_that_fits() -> None:
    # RAM budget 256 x 0.95 = 243.2 GiB. IQ3_XXS 279 GB = 259.8 GiB: 259.8 - 16.3 - 2.3 (a partial expert layer on
    # the GPU) + 0.5 compute + 1 GiB shrunk prompt cache = 243 fits; Q3_K_XL 279.4 GiB does not.
    c = ds_choice(machine(24, ram_gib=256))
    p = c.chosen.plan
    assert c.chosen.source.name == "UD-IQ3_XXS"
    assert p.ngl == 62 and p.expert_layers["CUDA0"] == ()
    assert [il for il, dev, _ in p.partials] == [3]  # the first MoE layer's experts, in part
    assert p.load_mode == "none"
    assert mem.SERVER_CACHE_RAM_MIN_BYTES <= p.cache_ram_bytes < mem.SERVER_CACHE_RAM_BYTES  # shrunk to fit
    fits = {x.source.name: x.plan.fits for x in c.candidates}
    assert fits["UD-Q2_K_XL"] and fits["UD-IQ3_XXS"] and not fits["UD-Q3_K_XL"]
    q2 = next(x.plan for x in c.candidates if x.source.name == "UD-Q2_K_XL")
    assert [str(o) for o in q2.overrides][-1].endswith("=CPU") and q2.partials
    assert 3 < p.predicted_tg_tps < 12  # the seed reports ~5 t/s on 24 GB + 128 GB


def test_80gib_gpu_512gib_ram_picks_the_largest() -> None:
    # Q5_K_XL 485 GB = 451.7 GiB; minus ~70 GiB on the GPU leaves ~382 GiB < 486 GiB of RAM budget.
    c = ds_choice(machine(80, ram_gib=512, cores=32))
    p = c.chosen.plan
    assert c.chosen.source.name == "UD-Q5_K_XL"
    assert len(p.expert_layers["CUDA0"]) >= 5  # (78.5 - 16.3 - 1.1 - 4.3) / 7.5 GiB per layer = 7
    gpu = p.devices[0]
    assert gpu.used_bytes <= gpu.budget_bytes


def test_two_gpus_split_layers_and_fill_each() -> None:
    # Two 24 GiB GPUs hold ~40 GiB of weights between them; RAM budget 243.2 - 1 GiB prompt cache leaves room
    # for a file of ~282 GiB: Q3_K_XL (279.4 GiB) fits, IQ4_XS (332.5 GiB) does not.
    c = ds_choice(machine(24, 24, ram_gib=256))
    p = c.chosen.plan
    assert c.chosen.source.name == "UD-Q3_K_XL"
    assert p.tensor_split is not None and sum(p.tensor_split) == 62
    assert p.expert_layers["CUDA0"] and p.expert_layers["CUDA1"]
    assert all(d.used_bytes <= d.budget_bytes for d in p.devices)


def test_cpu_only_plan_has_no_overrides() -> None:
    # 243.2 GiB budget: Q2_K_XL 237.9 GiB + KV 1.07 + compute 0.42 (512 x (2 B x 16K + 4 B x (vocab + 10 x embd)))
    # + prompt cache shrunk to at least 1 GiB = 240.4 fits; IQ3_XXS (259.8 GiB) does not.
    c = ds_choice(machine(ram_gib=256))
    p = c.chosen.plan
    assert c.chosen.source.name == "UD-Q2_K_XL"
    assert mem.SERVER_CACHE_RAM_MIN_BYTES <= p.cache_ram_bytes < mem.SERVER_CACHE_RAM_BYTES  # shrunk to fit
    assert p.ngl == 0 and p.overrides == () and p.gpu_devices == ()
    assert p.load_mode == "mmap"
    assert "no GPU: everything runs on the CPU, no overrides" in p.reasons


def test_nothing_fits_exit_3_with_the_machine_it_needs() -> None:
    # Smallest quant TQ1_0: 158.8 GiB - 16.3 on the GPU = 142.5 GiB > 121.6 GiB of RAM budget.
    with pytest.raises(DoesNotFitError) as e:
        ds_choice(machine(24, ram_gib=128))
    assert e.value.exit_code == 3
    assert "no quant of DeepSeek-V3.1 fits" in e.value.message
    assert e.value.hint and "UD-TQ1_0 needs about" in e.value.hint and "GiB of available RAM" in e.value.hint
    assert len(e.value.detail) == len(DS.quants)


def test_context_that_does_not_fit_says_what_would() -> None:
    m = machine(24, ram_gib=240)
    with pytest.raises(DoesNotFitError) as e:
        choose(DS.display_name, m, profile_sources(DS), Request(ctx=163840), pinned="UD-Q2_K_XL")
    assert e.value.hint and re.search(r"UD-Q2_K_XL fits with --ctx \d+", e.value.hint)
    ctx = int(re.search(r"--ctx (\d+)", e.value.hint).group(1))  # type: ignore[union-attr]
    ok = choose(DS.display_name, m, profile_sources(DS), Request(ctx=ctx), pinned="UD-Q2_K_XL")
    assert ok.chosen.plan.ctx == ctx  # never shrunk silently: the plan has exactly what was asked


def test_ctx_beyond_training_is_refused() -> None:
    with pytest.raises(UsageError, match="trained for"):
        choose(DS.display_name, machine(80, ram_gib=512), profile_sources(DS), Request(ctx=500_000))


def test_pinned_quant_is_used_even_if_a_larger_fits() -> None:
    c = choose(DS.display_name, machine(80, ram_gib=512), profile_sources(DS), Request(ctx=16384), pinned="UD-TQ1_0")
    assert c.chosen.source.name == "UD-TQ1_0"


# --- placement rules on generated models ---------------------------------------------------------


def _source(model: SynthModel) -> ModelSource:
    m = open_local(model.path)
    return ModelSource(model.path.name, m.tensors, m.hparams, exact=True, size_bytes=m.file_bytes)


def _effective(p, tensors: TensorSet) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What llama.cpp would do with the plan's -ngl and -ot."""
    n_layer = p.n_layer
    start = n_layer + 1 - p.ngl
    default = {}
    for t in tensors.tensors:
        slot = t.layer if t.layer is not None else n_layer
        on_gpu = p.ngl > 0 and slot >= start and t.name != "token_embd.weight"
        default[t.name] = "CUDA0" if on_gpu else "CPU"
    return effective_buffers([t.name for t in tensors.tensors], p.overrides, default)


@pytest.mark.parametrize("ubatch", [512, 2048])
def test_more_vram_never_puts_more_on_cpu(any_model: SynthModel, ubatch: int) -> None:
    src = _source(any_model)
    req = Request(ctx=2048, ubatch=ubatch)
    base = plan(gpu_for(0), src.tensors, src.hparams, req)
    need = (
        mem.gpu_compute_bytes(src.hparams, 2048, ubatch)
        + src.tensors.total_bytes
        + kv_cache.kv_layout(src.hparams).bytes_for(2048)
    )
    prev_cpu, prev_tps = None, 0.0
    steps = 24
    for i in range(steps + 2):
        extra = need * i // steps
        p = plan(gpu_for(extra), src.tensors, src.hparams, req)
        cpu_weights = p.cpu.weights_bytes
        if prev_cpu is not None:
            assert cpu_weights <= prev_cpu
            assert p.predicted_tg_tps >= prev_tps - 1e-9
        prev_cpu, prev_tps = cpu_weights, p.predicted_tg_tps
        for d in p.devices:
            if p.fits:
                assert d.used_bytes <= d.budget_bytes
        # The emitted -ngl/-ot put exactly the planned tensors where the plan says.
        assert _effective(p, src.tensors) == p.placement
    assert base.cpu.weights_bytes >= prev_cpu  # type: ignore[operator]
    assert p.cpu.weights_bytes == src.tensors["token_embd.weight"].nbytes  # everything else fit at the end


def test_user_overrides_are_kept_first(models: dict[str, SynthModel]) -> None:
    src = _source(models["deepseek2-q8"])
    mine = Override(r"blk\.1\.ffn_down_exps", "CPU")
    p = plan(gpu_for(GiB), src.tensors, src.hparams, Request(ctx=2048, user_overrides=(mine,)))
    assert p.overrides[0] == mine
    assert p.placement["blk.1.ffn_down_exps.weight"] == "CPU"
    assert p.placement["blk.1.ffn_up_exps.weight"] == "CUDA0"


def test_pinned_ngl_is_respected(models: dict[str, SynthModel]) -> None:
    src = _source(models["qwen3moe-q8"])
    p = plan(gpu_for(GiB), src.tensors, src.hparams, Request(ctx=2048, ngl=2))
    assert p.ngl == 2
    assert p.placement["blk.0.attn_q.weight"] == "CPU"
    assert p.placement["blk.2.attn_q.weight"] == "CUDA0"
    assert _effective(p, src.tensors) == p.placement


# --- speed model against the H200 measurements (llama-cpp.md) ---------------------------------------


def _h200_model() -> tuple[TensorSet, HParams]:
    """The measured random-weight deepseek2: Q8_0, 17 layers (1 dense), 64 experts, 4 used, expert FFN 1024."""
    s = Shape(arch="deepseek2", n_layer=17, n_vocab=32000, n_embd=4096, n_ff=4096, n_ff_exp=1024, n_expert=64,
              n_dense_lead=1, n_head=32, n_expert_shared=1, q_lora_rank=1024, kv_lora_rank=512, qk_nope_dim=128,
              qk_rope_dim=64, v_head_dim=128)  # fmt: skip
    q8, f32 = TYPES_BY_NAME["Q8_0"], TYPES_BY_NAME["F32"]
    out = []
    for name, shape in tensor_shapes(s):
        n = math.prod(shape)
        t = f32 if len(shape) == 1 or "gate_inp" in name or "probs" in name else q8
        layer, role = classify(name)
        out.append(ModelTensor(name, shape, t, t.nbytes(n), 0, 0, layer, role))
    hp = HParams("deepseek2", None, 17, 4096, 4096, 32000, (32,) * 17, (1,) * 17, 576, 512, (4096,) * 17,
                 64, 4, 1, 1024, 1, 512, 1024, 0, None)  # fmt: skip
    return TensorSet(tuple(out)), hp


def test_speed_model_predicts_the_h200_table() -> None:
    """Calibrated on the all-on-GPU and all-experts-on-CPU rows; predicts the other rows within 15%."""
    tensors, hp = _h200_model()
    assert tensors.total_bytes / GiB == pytest.approx(13.4, rel=0.05)
    assert tensors.expert_bytes(5) == pytest.approx(855e6, rel=0.01)
    bw = {"CUDA0": 4.8e12}

    def tps(cpu_layers: set[int], kinds: tuple[str, ...] = ("gate", "up", "down")) -> float:
        placement = {}
        for t in tensors.tensors:
            on_cpu = t.is_expert and t.layer in cpu_layers and t.name.split(".")[2].split("_")[1] in kinds
            placement[t.name] = "CPU" if on_cpu or t.name == "token_embd.weight" else "CUDA0"
        return predict_tg(tensors, hp, placement, bw, threads=16, ram_bandwidth=None)

    moe = set(range(1, 17))
    measured = {
        "all on GPU": (tps(set()), 426.5),
        "all experts on CPU": (tps(moe), 56.9),
        "up|down on CPU": (tps(moe, ("up", "down")), 81.3),
        "-ncmoe 13": (tps(set(range(1, 13))), 81.9),
        "-ncmoe 9": (tps(set(range(1, 9))), 104.8),
        "-ncmoe 5": (tps(set(range(1, 5))), 174.0),
    }
    for row, (predicted, real) in measured.items():
        assert predicted == pytest.approx(real, rel=0.15), row
