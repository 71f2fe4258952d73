"""Every MoE architecture runq plans, in the real llama.cpp: generated models load with an expert -ot plan,
generate tokens, and pass runq's placement verification (every planned tensor moved, nothing else); for the
late-2026 ones, runq's KV cache and CPU compute buffer against `llama-fit-params -fitp on`, on generated models and
on real-shaped header-only files of their profiles."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from launcher.catalog.profiles import require_profile
from launcher.llama.build import Build
from launcher.measure.synth import SynthModel, SynthSpec, write_model
from launcher.model.shards import open_local
from launcher.model.tensors import Role
from launcher.plan.kv_cache import kv_layout
from launcher.plan.memory import cpu_only_compute_bytes
from launcher.plan.projection import parse_fit_print
from launcher.units import MiB
from tests.helpers import RunningRunq, serve_verified
from tests.support.sparse_models import write_sparse_quant

BASE = SynthSpec(n_layer=6, n_embd=256, n_ff=512, n_ff_exp=256, n_expert=16, n_head_kv=2, head_dim=64)
SPECS = {
    "deepseek2": BASE.with_(arch="deepseek2"),  # MLA, dense leading layer, shared expert
    "qwen3moe": BASE.with_(arch="qwen3moe"),
    "gpt-oss": BASE.with_(arch="gpt-oss", expert_type="MXFP4", sliding_window=128),  # sinks, biases, SWA
    "glm4moe": BASE.with_(arch="glm4moe", n_nextn=1),  # a NextN layer llama.cpp skips
    "minimax-m2": BASE.with_(arch="minimax-m2"),
    "qwen35moe": BASE.with_(arch="qwen35moe", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),  # hybrid
    "qwen3next": BASE.with_(arch="qwen3next", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),  # hybrid
    "deepseek32": BASE.with_(arch="deepseek32"),  # MLA + DSA lightning indexer
    "glm-dsa": BASE.with_(arch="glm-dsa"),
    # hash-routed layer 0, compressed attention (ratios 4 with the indexer, 128), hyper-connections, sinks
    "deepseek4": BASE.with_(arch="deepseek4"),
    # late 2026 (arch_shapes_next.py)
    "mistral4": BASE.with_(arch="mistral4"),  # deepseek2's loader
    # gated DeltaNet + QSA attention with its indexer cache, low-rank hyper-connections, a PLE n-gram table
    "qwen4exp": BASE.with_(arch="qwen4exp", n_layer=8, ssm_d_state=32, ssm_n_group=2, ssm_dt_rank=4),
    "kimi-k3": BASE.with_(arch="kimi-k3"),  # KDA + nope MLA with output gate, latent MoE, attention residuals
    "glm5-next": BASE.with_(arch="glm5-next", n_nextn=1),  # KDA + DSA with a k-pool indexer, mHC, NextN
    "minimax-m3": BASE.with_(arch="minimax-m3"),  # GQA + MSA block-sparse indexer cache
    # mamba2 / attention / latent-MoE layers (non-gated experts), an MTP layer that still gets a KV cache
    "nemotron_h_moe": BASE.with_(arch="nemotron_h_moe", n_layer=8, n_nextn=1, ssm_d_state=16, ssm_n_group=2),
    "gemma4": BASE.with_(arch="gemma4", sliding_window=128),  # iSWA with its own SWA head size, dense FFN + experts
    "deepseek2 Q1_0": BASE.with_(arch="deepseek2", expert_type="Q1_0"),  # ggml's 1-bit type (Unsloth's UD-Q1_0)
}
NEW = ("mistral4", "qwen4exp", "kimi-k3", "glm5-next", "minimax-m3", "nemotron_h_moe", "gemma4")


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SynthModel]:
    d = tmp_path_factory.mktemp("arch-models")
    return {arch: write_model(spec, d / f"tiny-{arch}.gguf") for arch, spec in SPECS.items()}


def test_generated_models_carry_each_architectures_features(arch_models: dict[str, SynthModel]) -> None:
    gpt = open_local(arch_models["gpt-oss"].path)
    assert gpt.tensors["blk.0.ffn_up_exps.weight"].type.name == "MXFP4"
    assert gpt.tensors["blk.0.attn_sinks.weight"].role is Role.ATTENTION
    assert gpt.hparams.swa_layers == (True, False) * 3
    glm = open_local(arch_models["glm4moe"].path)
    assert glm.hparams.n_layer == 7 and glm.hparams.n_layer_nextn == 1
    assert glm.tensors["blk.6.nextn.eh_proj.weight"].role is Role.MTP
    v4 = open_local(arch_models["deepseek4"].path)
    assert v4.tensors["blk.0.ffn_gate_tid2eid.weight"].type.name == "I32"
    assert v4.hparams.kv_compress == (0, 4, 128, 4, 128, 4)
    assert v4.tensors["blk.1.indexer_compressor_kv.weight"].role is Role.INDEXER
    q35 = open_local(arch_models["qwen35moe"].path)
    assert q35.hparams.recurrent_layers == (True, True, True, False) * 2
    assert q35.tensors["blk.0.ssm_out.weight"].role is Role.RECURRENT
    assert open_local(arch_models["deepseek2 Q1_0"].path).tensors["blk.1.ffn_up_exps.weight"].type.name == "Q1_0"


def test_generated_late_2026_models_carry_their_features(arch_models: dict[str, SynthModel]) -> None:
    q4 = open_local(arch_models["qwen4exp"].path)
    ple = q4.tensors["per_layer_token_embd.weight"]  # the PLE n-gram table: a lazy lookup table
    assert ple.role is Role.LAZY_TABLE and q4.tensors.lazy_table_bytes() == ple.nbytes and ple.shape == (32, 1024)
    assert q4.hparams.recurrent_layers == (True, True, True, False) * 2
    assert q4.hparams.indexer_layers == (False, False, False, True) * 2  # QSA keys in the attention layers
    assert q4.hparams.layer_state_bytes[1] == 4 * 3 * 3 * 4 * 256  # the PLE conv history (kernel 4, 3-grams, 4 HC)
    assert q4.tensors["blk.1.ple_key.weight"].role is Role.OTHER
    assert q4.tensors["blk.3.indexer.q_proj.weight"].role is Role.INDEXER
    assert q4.tensors["output_hc_down.weight"].role is Role.HYPER_CONNECTION
    assert "output_norm.weight" not in {t.name for t in q4.tensors.tensors}  # the final HC mixer carries it
    k3 = open_local(arch_models["kimi-k3"].path)
    assert k3.hparams.recurrent_layers == (True, True, False) * 2 and k3.hparams.is_mla  # KDA : MLA 2:1 here
    assert k3.hparams.n_head_kv == (0, 0, 1, 0, 0, 1)  # how the GGUF marks KDA layers
    assert k3.tensors["blk.1.ffn_routed_down.weight"].role is Role.MOE_LATENT
    assert k3.tensors["blk.1.ffn_up_exps.weight"].shape[0] == 128  # the experts work in the latent width
    assert k3.tensors["blk.0.ssm_g.weight"].role is Role.RECURRENT
    assert k3.tensors["blk.2.attn_gate.weight"].role is Role.ATTENTION
    glm = open_local(arch_models["glm5-next"].path)
    assert glm.hparams.n_layer_nextn == 1 and glm.hparams.indexer_cache_k == 3 * 64  # key, gate and pooled value
    assert glm.tensors["blk.6.nextn.eh_proj.weight"].role is Role.MTP
    assert glm.tensors["blk.2.indexer_compressor_ape.weight"].role is Role.INDEXER
    assert glm.tensors["blk.2.hc_attn_fn.weight"].role is Role.HYPER_CONNECTION
    mm = open_local(arch_models["minimax-m3"].path)
    assert mm.hparams.indexer_layers == (False,) + (True,) * 5  # MSA keys in the MoE layers only
    assert mm.tensors["blk.1.indexer.k_proj.weight"].role is Role.INDEXER
    nh = open_local(arch_models["nemotron_h_moe"].path)  # pattern ME*EME*E + an MTP layer
    assert nh.hparams.recurrent_layers == (True, False, False, False, True, False, False, False, False)
    assert nh.hparams.nextn_kv and sum(1 for b in kv_layout(nh.hparams).per_layer if b) == 3
    assert nh.tensors["blk.1.ffn_latent_down.weight"].role is Role.MOE_LATENT
    assert "blk.1.ffn_gate_exps.weight" not in {t.name for t in nh.tensors.tensors}  # relu^2 experts: no gate
    g4 = open_local(arch_models["gemma4"].path)
    assert g4.hparams.swa_layers == (True, True, False) * 2 and g4.hparams.key_length_swa == 32
    assert g4.tensors["blk.0.ffn_gate_inp.scale"].role is Role.ROUTER
    assert g4.tensors["blk.0.ffn_gate.weight"].role is Role.DENSE_FFN  # the dense FFN beside the experts
    assert open_local(arch_models["mistral4"].path).hparams.is_mla


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_each_architecture_loads_generates_and_verifies(
    arch: str,
    arch_models: dict[str, SynthModel],
    env: dict[str, str],
    running: list[RunningRunq],
) -> None:
    r, _, out, answer = serve_verified(arch_models[arch].path, env, running)
    assert "on the CPU" in out
    assert answer["usage"]["completion_tokens"] > 0  # type: ignore[index]
    r.proc.send_signal(signal.SIGINT)
    code, _, err = r.finish()
    assert code == 130, err


def _fit_params(build: Build, model: Path, ctx: int, ubatch: int) -> tuple[int, int]:
    """(context, compute) bytes of llama.cpp's own CPU projection, whole MiB as it prints them."""
    r = subprocess.run(
        [str(build.binary("llama-fit-params")), "-m", str(model), "-c", str(ctx), "-ngl", "0", "-ub", str(ubatch),
         "-b", str(max(ubatch, 2048)), "-fitp", "on"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(x for x in parse_fit_print(r.stdout) if x.name in ("CPU", "Host"))
    return row.context_bytes, row.compute_bytes


@pytest.mark.parametrize("arch", NEW)
def test_kv_and_compute_of_the_late_2026_architectures_match_llama_cpp(
    arch: str, arch_models: dict[str, SynthModel], llama_build: Build
) -> None:
    hp = open_local(arch_models[arch].path).hparams
    context, compute = _fit_params(llama_build, arch_models[arch].path, 32768, 512)
    assert kv_layout(hp).bytes_for(32768) // MiB * MiB == context  # to the MiB llama.cpp prints
    assert 0.95 * compute <= cpu_only_compute_bytes(hp, 32768, 512) <= 1.12 * compute


# The profiles' real shapes as header-only files; contexts where the terms runq models are the peak.
REAL = {
    "qwen3.8-flash-next": (131072, 0.02),  # QSA attention phase
    "kimi-k3": (32768, 0.02),  # MoE phase beside the attention-residual history
    "glm-5.3-flash": (131072, 0.02),  # k-pool DSA attention phase
    "minimax-m3": (131072, 0.02),  # MSA prefill scores
    "nemotron-3-ultra": (32768, 0.03),  # latent-MoE phase
    "nemotron-3.5-lightning": (32768, 0.09),  # output phase (with the GQA slack)
    "gemma-4-26b-a4b": (32768, 0.12),  # output phase (with the GQA slack)
    "mistral-small-4": (32768, 0.18),  # deepseek2's MLA model, fitted on 128 heads: above with 32
    "deepseek-v4-flash-0731": (32768, 0.13),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_kv_and_compute_of_the_new_profiles_real_shapes_match_llama_cpp(
    name: str, llama_build: Build, tmp_path: Path
) -> None:
    p = require_profile(name)
    first = write_sparse_quant(p, p.quants_by_size()[0], tmp_path)[0]
    ctx, tolerance = REAL[name]
    context, compute = _fit_params(llama_build, first, ctx, 512)
    from_file, from_profile = open_local(first).hparams, p.arch.hparams()
    assert kv_layout(from_file).bytes_for(ctx) // MiB * MiB == context
    assert kv_layout(from_profile).bytes_for(ctx) == kv_layout(from_file).bytes_for(ctx)  # one set of rules
    assert 0.99 * compute <= cpu_only_compute_bytes(from_profile, ctx, 512) <= (1 + tolerance) * compute
