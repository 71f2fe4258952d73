"""Tensor names and shapes of each supported MoE architecture, as llama.cpp creates them.

Pure: no I/O. Mirrors the `load_arch_tensors` functions of `src/models/*.cpp` at
the pinned llama.cpp commit (deepseek2.cpp MLA GGUFs, also used by mistral4,
deepseek32.cpp, glm-dsa.cpp, deepseek4.cpp, glm4-moe.cpp, qwen3moe.cpp,
qwen35moe.cpp, qwen3next.cpp, openai-moe.cpp for gpt-oss, minimax-m2.cpp; the
late-2026 ones in arch_shapes_next.py): the required tensors, and the optional
ones real GGUFs carry (gpt-oss attention biases). Shapes are ggml `ne` order
(row length first). Used both to write test models (synth) and to estimate a
real model's tensors before any header is at hand.
"""

from __future__ import annotations

from launcher.model import arch_shapes_next
from launcher.model.shape import ARCHS, HYBRID_ARCHS, MLA_ARCHS, NEXT_ARCHS, Arch, Shape, TensorList

__all__ = ["ARCHS", "HYBRID_ARCHS", "MLA_ARCHS", "NEXT_ARCHS", "Arch", "Shape", "TensorList", "tensor_shapes"]


def tensor_shapes(s: Shape) -> TensorList:
    """(name, ne) of every tensor, in file order."""
    if s.arch in NEXT_ARCHS:
        return arch_shapes_next.tensor_shapes(s)
    e = s.n_embd
    out: TensorList = [
        ("token_embd.weight", (e, s.n_vocab)),
        ("output_norm.weight", (e,)),
        ("output.weight", (e, s.n_vocab)),
    ]
    if s.arch == "deepseek4":
        hc = s.hc_mult * e
        out += [
            ("output_hc_fn.weight", (hc, s.hc_mult)),
            ("output_hc_base.weight", (s.hc_mult,)),
            ("output_hc_scale.weight", (1,)),
        ]
    for i in range(s.n_layer_all):
        out += _layer(s, i)
    return out


def _layer(s: Shape, i: int) -> TensorList:
    b = f"blk.{i}."
    out: TensorList = [(b + "attn_norm.weight", (s.n_embd,))]
    out += [(b + n, sh) for n, sh in _attention(s, i)]
    if s.arch in ("glm4moe", "gpt-oss", "qwen35moe", "qwen3next"):
        out.append((b + "post_attention_norm.weight", (s.n_embd,)))
    else:
        out.append((b + "ffn_norm.weight", (s.n_embd,)))
    out += [(b + n, sh) for n, sh in _ffn(s, i)]
    if i >= s.n_layer:
        e = s.n_embd
        out += [
            (b + "nextn.eh_proj.weight", (2 * e, e)),
            (b + "nextn.enorm.weight", (e,)),
            (b + "nextn.hnorm.weight", (e,)),
            (b + "nextn.shared_head_norm.weight", (e,)),
        ]
    return out


def _attention(s: Shape, i: int) -> TensorList:
    if s.arch in MLA_ARCHS:
        return _mla(s)
    if s.arch == "deepseek4":
        return _dsv4_attention(s, i)
    if s.arch in HYBRID_ARCHS and s.is_recurrent(i):
        return _delta_net(s)
    e, hd = s.n_embd, s.head_dim
    q = s.n_head * hd * (2 if s.arch in HYBRID_ARCHS else 1)  # hybrids: query + output gate
    kv = s.n_head_kv * hd
    out: TensorList = [
        ("attn_q.weight", (e, q)),
        ("attn_k.weight", (e, kv)),
        ("attn_v.weight", (e, kv)),
        ("attn_output.weight", (s.n_head * hd, e)),
    ]
    if s.arch == "glm4moe":  # GLM-4.x: q/k/v biases and q/k norms (1759 tensors in GLM-4.6, as the real file)
        out += [("attn_q.bias", (q,)), ("attn_k.bias", (kv,)), ("attn_v.bias", (kv,))]
    if s.attn_bias:
        out += [
            ("attn_q.bias", (q,)),
            ("attn_k.bias", (kv,)),
            ("attn_v.bias", (kv,)),
            ("attn_output.bias", (e,)),
            ("attn_sinks.weight", (s.n_head,)),
        ]
    elif s.arch == "minimax-m2":  # q/k norms over all heads
        out += [("attn_q_norm.weight", (s.n_head * hd,)), ("attn_k_norm.weight", (kv,))]
    else:
        out += [("attn_q_norm.weight", (hd,)), ("attn_k_norm.weight", (hd,))]
    return out


def _mla(s: Shape) -> TensorList:
    e, k_mla = s.n_embd, s.qk_nope_dim + s.qk_rope_dim
    out: TensorList = [
        ("attn_q_a_norm.weight", (s.q_lora_rank,)),
        ("attn_kv_a_norm.weight", (s.kv_lora_rank,)),
        ("attn_q_a.weight", (e, s.q_lora_rank)),
        ("attn_q_b.weight", (s.q_lora_rank, s.n_head * k_mla)),
        ("attn_kv_a_mqa.weight", (e, s.kv_lora_rank + s.qk_rope_dim)),
        ("attn_k_b.weight", (s.qk_nope_dim, s.kv_lora_rank, s.n_head)),
        ("attn_v_b.weight", (s.kv_lora_rank, s.v_head_dim, s.n_head)),
        ("attn_output.weight", (s.n_head * s.v_head_dim, e)),
    ]
    if s.indexer_n_head:  # deepseek32 / glm-dsa lightning indexer
        ih, isz = s.indexer_n_head, s.indexer_head_size
        out += [
            ("indexer.k_norm.weight", (isz,)),
            ("indexer.k_norm.bias", (isz,)),
            ("indexer.proj.weight", (e, ih)),
            ("indexer.attn_k.weight", (e, isz)),
            ("indexer.attn_q_b.weight", (s.q_lora_rank, ih * isz)),
        ]
    return out


def _dsv4_attention(s: Shape, i: int) -> TensorList:
    e, hd, q = s.n_embd, s.head_dim, s.q_lora_rank
    hc, mix = s.hc_mult * e, (2 + s.hc_mult) * s.hc_mult
    out: TensorList = [
        ("attn_sinks.weight", (s.n_head,)),
        ("attn_q_a.weight", (e, q)),
        ("attn_q_a_norm.weight", (q,)),
        ("attn_q_b.weight", (q, s.n_head * hd)),
        ("attn_kv.weight", (e, hd)),
        ("attn_kv_a_norm.weight", (hd,)),
        ("attn_output_a.weight", (s.n_head * hd // s.o_groups, s.o_lora_rank, s.o_groups)),
        ("attn_output_b.weight", (s.o_groups * s.o_lora_rank, e)),
        ("hc_attn_fn.weight", (hc, mix)),
        ("hc_attn_base.weight", (mix,)),
        ("hc_attn_scale.weight", (3,)),
        ("hc_ffn_fn.weight", (hc, mix)),
        ("hc_ffn_base.weight", (mix,)),
        ("hc_ffn_scale.weight", (3,)),
    ]
    ratio = s.compress_ratios[i] if i < len(s.compress_ratios) else 0
    if ratio:
        c = (2 if ratio == 4 else 1) * hd
        out += [
            ("attn_compressor_kv.weight", (e, c)),
            ("attn_compressor_gate.weight", (e, c)),
            ("attn_compressor_ape.weight", (c, ratio)),
            ("attn_compressor_norm.weight", (hd,)),
        ]
    if ratio == 4:
        ih, isz = s.indexer_n_head, s.indexer_head_size
        out += [
            ("indexer.proj.weight", (e, ih)),
            ("indexer.attn_q_b.weight", (q, ih * isz)),
            ("indexer_compressor_kv.weight", (e, 2 * isz)),
            ("indexer_compressor_gate.weight", (e, 2 * isz)),
            ("indexer_compressor_ape.weight", (2 * isz, ratio)),
            ("indexer_compressor_norm.weight", (isz,)),
        ]
    return out


def _delta_net(s: Shape) -> TensorList:
    """Gated DeltaNet (linear attention) layer of qwen35moe / qwen3next."""
    e, dk = s.n_embd, s.ssm_d_state
    key_dim, value_dim = dk * s.ssm_n_group, dk * s.ssm_dt_rank
    conv_dim = 2 * key_dim + value_dim
    out: TensorList = []
    if s.arch == "qwen3next":
        out += [("ssm_in.weight", (e, 2 * key_dim + 2 * value_dim)), ("ssm_ba.weight", (e, 2 * s.ssm_dt_rank))]
    else:
        out += [
            ("attn_qkv.weight", (e, conv_dim)),
            ("attn_gate.weight", (e, value_dim)),
            ("ssm_beta.weight", (e, s.ssm_dt_rank)),
            ("ssm_alpha.weight", (e, s.ssm_dt_rank)),
        ]
    out += [
        ("ssm_conv1d.weight", (s.ssm_d_conv, conv_dim)),
        ("ssm_dt.bias", (s.ssm_dt_rank,)),
        ("ssm_a", (s.ssm_dt_rank,)),
        ("ssm_norm.weight", (dk,)),
        ("ssm_out.weight", (value_dim, e)),
    ]
    return out


def _ffn(s: Shape, i: int) -> TensorList:
    e, x, fe = s.n_embd, s.n_expert, s.n_ff_exp
    if i < s.n_dense_lead:
        return [("ffn_gate.weight", (e, s.n_ff)), ("ffn_down.weight", (s.n_ff, e)), ("ffn_up.weight", (e, s.n_ff))]
    out: TensorList = [("ffn_gate_inp.weight", (e, x))]
    if s.arch == "deepseek4" and i < s.hash_layers:
        out.append(("ffn_gate_tid2eid.weight", (s.n_expert_used, s.n_vocab)))
    elif s.arch in ("deepseek2", "deepseek32", "deepseek4", "glm-dsa", "glm4moe", "minimax-m2", "mistral4"):
        out.append(("exp_probs_b.bias", (x,)))
    if s.fused_gate_up:
        out.append(("ffn_gate_up_exps.weight", (e, 2 * fe, x)))
    else:
        out += [("ffn_gate_exps.weight", (e, fe, x)), ("ffn_up_exps.weight", (e, fe, x))]
    out.append(("ffn_down_exps.weight", (fe, e, x)))
    if s.attn_bias:  # gpt-oss expert biases
        out += [
            ("ffn_gate_inp.bias", (x,)),
            ("ffn_gate_exps.bias", (fe, x)),
            ("ffn_down_exps.bias", (e, x)),
            ("ffn_up_exps.bias", (fe, x)),
        ]
    fs = s.n_ff_shexp or fe * s.n_expert_shared
    if s.arch in HYBRID_ARCHS:
        out.append(("ffn_gate_inp_shexp.weight", (e,)))
    if fs and (s.n_expert_shared or s.n_ff_shexp):
        out += [
            ("ffn_gate_shexp.weight", (e, fs)),
            ("ffn_down_shexp.weight", (fs, e)),
            ("ffn_up_shexp.weight", (e, fs)),
        ]
    return out
