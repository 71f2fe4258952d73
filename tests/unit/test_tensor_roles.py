"""Tensor roles for every MoE architecture of the pinned llama.cpp (src/models/*.cpp with routed experts)."""

from __future__ import annotations

import pytest

from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import require_profile
from launcher.catalog.sources import ModelSource
from launcher.machine.spec import CPU as CPUInfo
from launcher.machine.spec import GPU, Machine
from launcher.model.ggml_types import TYPES_BY_NAME
from launcher.model.tensors import ModelTensor, Role, TensorSet, classify, unknown_tensors
from launcher.plan.choose import choose
from launcher.plan.place import plan
from launcher.plan.types import CPU, Request
from launcher.units import GiB
from launcher.view.plan import choice_text

R = Role
# Sample names per architecture (names and kinds from the loaders of the pinned commit 0c1e570).
TABLE: dict[str, list[tuple[str, Role]]] = {
    "deepseek2 (MLA)": [
        ("blk.0.ffn_gate.weight", R.DENSE_FFN),
        ("blk.3.attn_kv_a_mqa.weight", R.ATTENTION),
        ("blk.3.attn_k_b.weight", R.ATTENTION),
        ("blk.3.attn_q_a_norm.weight", R.NORM),
        ("blk.3.exp_probs_b.bias", R.ROUTER),
        ("blk.3.ffn_gate_inp.weight", R.ROUTER),
        ("blk.3.ffn_down_exps.weight", R.ROUTED_EXPERT),
        ("blk.3.ffn_up_shexp.weight", R.SHARED_EXPERT),
    ],
    "deepseek32 / glm-dsa (DSA indexer, NextN)": [
        ("blk.5.indexer.k_norm.bias", R.INDEXER),
        ("blk.5.indexer.proj.weight", R.INDEXER),
        ("blk.5.indexer.attn_q_b.weight", R.INDEXER),
        ("blk.78.nextn.eh_proj.weight", R.MTP),
        ("blk.78.nextn.shared_head_norm.weight", R.MTP),
        ("blk.78.ffn_gate_exps.weight", R.ROUTED_EXPERT),
    ],
    "deepseek4 (hash routing, compressed attention, hyper-connections)": [
        ("blk.0.ffn_gate_tid2eid.weight", R.ROUTER),
        ("blk.0.exp_probs_b_vl.bias", R.ROUTER),
        ("blk.4.attn_compressor_kv.weight", R.ATTENTION),
        ("blk.4.attn_compressor_norm.weight", R.NORM),
        ("blk.4.indexer_compressor_ape.weight", R.INDEXER),
        ("blk.4.hc_attn_fn.weight", R.HYPER_CONNECTION),
        ("output_hc_base.weight", R.HYPER_CONNECTION),
        ("blk.4.attn_output_a.weight", R.ATTENTION),
        ("blk.4.attn_sinks.weight", R.ATTENTION),
    ],
    "glm4moe (NextN)": [
        ("blk.92.nextn.embed_tokens.weight", R.MTP),
        ("blk.3.post_attention_norm.weight", R.NORM),
        ("blk.3.attn_q.bias", R.ATTENTION),
        ("blk.3.ffn_gate_shexp.weight", R.SHARED_EXPERT),
    ],
    "qwen3moe / qwen3vlmoe": [("blk.7.attn_k_norm.weight", R.NORM), ("blk.7.ffn_up_exps.weight", R.ROUTED_EXPERT)],
    "qwen35moe / qwen3next (gated DeltaNet)": [
        ("blk.0.ssm_conv1d.weight", R.RECURRENT),
        ("blk.0.ssm_a", R.RECURRENT),
        ("blk.0.ssm_dt.bias", R.RECURRENT),
        ("blk.0.ssm_ba.weight", R.RECURRENT),
        ("blk.0.ssm_out.weight", R.RECURRENT),
        ("blk.0.attn_qkv.weight", R.ATTENTION),
        ("blk.0.attn_gate.weight", R.ATTENTION),
        ("blk.0.ffn_gate_up_exps.weight", R.ROUTED_EXPERT),
        ("blk.0.ffn_gate_inp_shexp.weight", R.SHARED_EXPERT),
    ],
    "gpt-oss": [
        ("blk.1.attn_sinks.weight", R.ATTENTION),
        ("blk.1.ffn_gate_inp.bias", R.ROUTER),
        ("blk.1.ffn_gate_exps.bias", R.ROUTED_EXPERT),
        ("blk.1.attn_output.bias", R.ATTENTION),
    ],
    "minimax-m2": [("blk.61.ffn_down_exps.weight", R.ROUTED_EXPERT), ("blk.61.exp_probs_b.bias", R.ROUTER)],
    "grovemoe (chunked experts)": [
        ("blk.2.ffn_gate_chexps.weight", R.ROUTED_EXPERT),
        ("blk.2.ffn_down_chexps.weight", R.ROUTED_EXPERT),
    ],
    "nemotron_h_moe / kimi-k3 (latent MoE)": [
        ("blk.4.ffn_latent_down.weight", R.MOE_LATENT),
        ("blk.4.ffn_latent_up.weight", R.MOE_LATENT),
        ("blk.4.ffn_routed_up.weight", R.MOE_LATENT),
        ("blk.4.ssm_in.weight", R.RECURRENT),
    ],
    "kimi-linear (KDA)": [("blk.2.ssm_conv1d_q.weight", R.RECURRENT), ("blk.2.ssm_f_a.weight", R.RECURRENT)],
    "lfm2moe (short convolutions)": [("blk.0.shortconv.in_proj.weight", R.RECURRENT)],
    "arctic": [("blk.9.ffn_norm_exps.weight", R.NORM)],
    "mixtral-style legacy GGUFs (one tensor per expert)": [
        ("blk.3.ffn_up.7.weight", R.ROUTED_EXPERT),
        ("blk.3.ffn_down.0.weight", R.ROUTED_EXPERT),
    ],
    "qwen4exp (QSA, low-rank hyper-connections, PLE n-gram table)": [
        ("per_layer_token_embd.weight", R.LAZY_TABLE),
        ("output_hc_down.weight", R.HYPER_CONNECTION),
        ("blk.0.hc_attn_inject.weight", R.HYPER_CONNECTION),
        ("blk.0.hc_ffn_norm.weight", R.HYPER_CONNECTION),
        ("blk.1.ple_key.weight", R.OTHER),
        ("blk.1.ple_conv1d.weight", R.OTHER),
        ("blk.1.ple_norm_query.weight", R.NORM),
        ("blk.3.indexer.q_proj.weight", R.INDEXER),
        ("blk.3.indexer.k_norm.weight", R.INDEXER),
        ("blk.0.ffn_gate_inp_shexp.weight", R.SHARED_EXPERT),
    ],
    "kimi-k3 (KDA, nope MLA with output gate, latent MoE, attention residuals)": [
        ("blk.0.ssm_g.weight", R.RECURRENT),
        ("blk.0.ssm_conv1d_v.weight", R.RECURRENT),
        ("blk.3.attn_gate.weight", R.ATTENTION),
        ("blk.3.attn_k_b.weight", R.ATTENTION),
        ("blk.4.ffn_routed_down.weight", R.MOE_LATENT),
        ("blk.4.ffn_routed_norm.weight", R.MOE_LATENT),
        ("blk.4.ffn_gate_exps.weight", R.ROUTED_EXPERT),
        ("output_res_score.weight", R.OTHER),
    ],
    "glm5-next (KDA + k-pool DSA, mHC, NextN)": [
        ("blk.0.ssm_g_a.weight", R.RECURRENT),
        ("blk.3.indexer_compressor_gate.weight", R.INDEXER),
        ("blk.3.indexer_compressor_ape.weight", R.INDEXER),
        ("blk.3.hc_ffn_fn.weight", R.HYPER_CONNECTION),
        ("blk.45.nextn.eh_proj.weight", R.MTP),
        ("blk.45.ffn_down_exps.weight", R.ROUTED_EXPERT),
    ],
    "minimax-m3 (MSA)": [("blk.1.indexer.k_proj.weight", R.INDEXER), ("blk.1.ffn_up_shexp.weight", R.SHARED_EXPERT)],
    "nemotron_h_moe (mamba2, latent MoE, MTP)": [
        ("blk.0.ssm_d", R.RECURRENT),
        ("blk.0.ssm_conv1d.bias", R.RECURRENT),
        ("blk.1.ffn_latent_up.weight", R.MOE_LATENT),
        ("blk.1.ffn_up_exps.weight", R.ROUTED_EXPERT),
        ("blk.1.ffn_down_shexp.weight", R.SHARED_EXPERT),
        ("blk.52.nextn.enorm.weight", R.MTP),
    ],
    "gemma4 (dense FFN beside the experts, per-layer embeddings)": [
        ("per_layer_token_embd.weight", R.LAZY_TABLE),
        ("per_layer_model_proj.weight", R.OTHER),
        ("blk.0.ffn_gate_inp.scale", R.ROUTER),
        ("blk.0.ffn_down_exps.scale", R.ROUTED_EXPERT),
        ("blk.0.pre_ffw_norm_2.weight", R.NORM),
        ("blk.0.ffn_gate.weight", R.DENSE_FFN),
        ("blk.0.inp_gate.weight", R.OTHER),
    ],
    "gemma4-assistant (drafter)": [
        ("masked_embd_centroids.weight", R.OTHER),
        ("masked_embd_ordering", R.OTHER),
        ("nextn.pre_projection.weight", R.MTP),
    ],
    "deepseek41 (Engram n-gram tables, ik_llama.cpp / mainline PR #28696)": [
        ("blk.14.engram_embd.weight", R.LAZY_TABLE)
    ],
    "mistral4 / hy_v3 (deepseek2-style MoE)": [
        ("blk.3.attn_kv_a_mqa.weight", R.ATTENTION),
        ("blk.3.exp_probs_b", R.ROUTER),
        ("blk.3.ffn_gate_up_exps.weight", R.ROUTED_EXPERT),
    ],
    "llama4 / ernie4_5-moe / bailingmoe2 / step35 / mimo2": [
        ("rope_freqs.weight", R.OTHER),
        ("blk.1.layer_output_norm.weight", R.NORM),
        ("blk.1.ffn_down_shexp.weight", R.SHARED_EXPERT),
        ("blk.20.nextn.hnorm.weight", R.MTP),
        ("rope_factors_long.weight", R.OTHER),
    ],
}
CASES = [(arch, name, role) for arch, rows in TABLE.items() for name, role in rows]


@pytest.mark.parametrize(("arch", "name", "role"), CASES)
def test_roles_per_architecture(arch: str, name: str, role: Role) -> None:
    assert classify(name)[1] is role, arch


# Every tensor name the loaders of the 62 MoE architectures create (src/models/*.cpp that create *_exps),
# from LLM_TENSOR_NAMES in src/llama-arch.cpp.
BLOCK_KINDS = """
attn_compressor_ape attn_compressor_gate attn_compressor_kv attn_compressor_norm attn_conv_base attn_conv_proj
attn_gate attn_k attn_k_b attn_k_norm attn_kv attn_kv_a_mqa attn_kv_a_norm attn_kv_b attn_norm attn_norm_2
attn_output attn_output_a attn_output_b attn_output_norm attn_q attn_q_a attn_q_a_norm attn_q_b attn_q_norm
attn_qkv attn_res_score attn_sinks attn_v attn_v_b exp_probs_b exp_probs_b_vl ffn_conv_base ffn_conv_proj ffn_down
ffn_down_chexps ffn_down_exps ffn_down_shexp ffn_gate ffn_gate_chexps ffn_gate_exps ffn_gate_inp ffn_gate_inp_shexp
ffn_gate_shexp ffn_gate_tid2eid ffn_gate_up_exps ffn_latent_down ffn_latent_up ffn_norm ffn_norm_exps ffn_res_score
ffn_routed_down ffn_routed_norm ffn_routed_up ffn_up ffn_up_chexps ffn_up_exps ffn_up_shexp hc_attn_base
hc_attn_down hc_attn_fn hc_attn_inject hc_attn_norm hc_attn_scale hc_attn_up hc_ffn_base hc_ffn_down hc_ffn_fn
hc_ffn_inject hc_ffn_norm hc_ffn_scale hc_ffn_up indexer.attn_k indexer.attn_q_b indexer.k_norm indexer.k_proj
indexer.proj indexer.q_norm indexer.q_proj indexer_compressor_ape indexer_compressor_gate indexer_compressor_kv
indexer_compressor_norm inp_gate layer_output_norm layer_output_scale nextn.eh_proj nextn.embed_tokens nextn.enorm
nextn.hnorm nextn.shared_head_head nextn.shared_head_norm ple_conv1d ple_key ple_norm_conv ple_norm_key
ple_norm_query ple_value post_attention_norm post_ffw_norm post_ffw_norm_1 post_ffw_norm_2 post_norm pre_ffw_norm_2
proj shortconv.conv shortconv.in_proj shortconv.out_proj ssm_a ssm_alpha ssm_b_norm ssm_ba ssm_beta ssm_c_norm
ssm_conv1d ssm_conv1d_k ssm_conv1d_q ssm_conv1d_v ssm_d ssm_dt ssm_dt_norm ssm_f_a ssm_f_b ssm_g ssm_g_a ssm_g_b
ssm_in ssm_norm ssm_out ssm_x
""".split()  # noqa: SIM905
GLOBAL_KINDS = """
conf_proj d2t dense_2 enc.output_norm fc markov_w1 markov_w2 output output_hc_base output_hc_down output_hc_fn
output_hc_norm output_hc_scale output_hc_up output_norm output_res_score per_layer_model_proj per_layer_proj_norm
per_layer_token_embd rope_factors_long rope_factors_short rope_freqs selector_hidden selector_predecessor
selector_successor token_embd token_embd_norm token_types
""".split()  # noqa: SIM905


def test_no_name_of_any_moe_architecture_is_unknown() -> None:
    names = [f"blk.12.{k}" + ("" if k == "ssm_a" else ".weight") for k in BLOCK_KINDS]
    names += [f"{k}.weight" for k in GLOBAL_KINDS]
    assert len(names) == 158
    assert unknown_tensors(names) == []
    experts = [n for n in names if classify(n)[1] is Role.ROUTED_EXPERT]
    routed = sorted(f"ffn_{p}_{k}" for p in ("down", "gate", "up") for k in ("exps", "chexps"))
    assert sorted(n.split(".")[2] for n in experts) == sorted([*routed, "ffn_gate_up_exps"])
    assert all(classify(n)[0] == 12 for n in names if n.startswith("blk."))


def test_every_tensor_of_the_late_2026_loaders_has_a_role() -> None:
    """The full tensor lists runq builds for the new architectures (as their loaders create them): no unknown name,
    the lazy lookup tables apart, and their bytes summed on their own."""
    from launcher.catalog.estimate import estimate as est
    from launcher.measure.synth import SynthSpec, tensor_shapes
    from launcher.model.arch_shapes import NEXT_ARCHS

    for arch in sorted(NEXT_ARCHS):
        names = [n for n, _ in tensor_shapes(SynthSpec(arch=arch, n_layer=8))]  # type: ignore[arg-type]
        assert names and unknown_tensors(names) == [], arch
        lazy = [n for n in names if classify(n)[1] is Role.LAZY_TABLE]
        assert lazy == (["per_layer_token_embd.weight"] if arch == "qwen4exp" else []), arch
    p = require_profile("qwen3.8-flash-next")
    tensors = est(p, p.quant("UD-Q4_K_XL")).tensors
    table = tensors["per_layer_token_embd.weight"]
    assert table.layer is None and not table.is_expert
    assert tensors.lazy_table_bytes() == table.nbytes == pytest.approx(28.8e9, rel=0.01)  # landscape-2026-12 §5


def test_unknown_names_are_reported_and_never_experts() -> None:
    assert classify("blk.4.mystery_proj.weight") == (4, Role.UNKNOWN)
    assert classify("vision_tower.weight") == (None, Role.UNKNOWN)
    assert unknown_tensors(["blk.4.mystery_proj.weight", "blk.4.ffn_up_exps.weight"]) == ["blk.4.mystery_proj.weight"]


def test_an_unknown_tensor_stays_on_the_gpu_side_of_a_plan() -> None:
    p = require_profile("qwen3.6-35b-a3b")
    est = estimate(p, p.quants[0])
    q8 = TYPES_BY_NAME["Q8_0"]
    odd = ModelTensor("blk.20.mystery_proj.weight", (2048, 4096), q8, q8.nbytes(2048 * 4096), 0, 0, 20, Role.UNKNOWN)
    tensors = TensorSet((*est.tensors.tensors, odd))
    gpu = GPU(0, "GPU (described)", 12 * GiB, 12 * GiB)
    machine = Machine(gpus=(gpu,), ram_total_bytes=64 * GiB, ram_available_bytes=64 * GiB,
                      cpu=CPUInfo(physical_cores=8, logical_cores=8))  # fmt: skip
    pl = plan(machine, tensors, est.hparams, Request(ctx=8192))
    assert pl.fits
    assert pl.placement["blk.20.ffn_down_exps.weight"] == CPU  # experts of layer 20 do go to the CPU here
    assert pl.placement["blk.20.mystery_proj.weight"] != CPU
    src = ModelSource("UD-Q4_K_XL", tensors, est.hparams, exact=False, size_bytes=p.quants[0].size_bytes)
    text = choice_text(choose(p.display_name, machine, [src], Request(ctx=8192)), machine, ["llama-server"])
    assert "blk.20.mystery_proj.weight" in text and "runq does not know" in text
