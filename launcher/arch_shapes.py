"""Tensor names and shapes of each supported architecture, as llama.cpp creates them.

Pure: no I/O. Mirrors the `create_tensor` calls of `src/models/deepseek2.cpp`
(MLA GGUFs) and `src/models/qwen3moe.cpp` at the pinned llama.cpp commit.
Shapes are ggml `ne` order (row length first). Used both to write test models
(synth) and to estimate a real model's tensors before any header is at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["deepseek2", "qwen3moe"]


@dataclass(frozen=True)
class Shape:
    arch: Arch
    n_layer: int
    n_vocab: int
    n_embd: int
    n_ff: int  # dense FFN width (deepseek2's leading layers)
    n_ff_exp: int
    n_expert: int
    n_dense_lead: int = 0
    n_head: int = 0
    n_head_kv: int = 0  # GQA (qwen3moe)
    head_dim: int = 0  # GQA (qwen3moe)
    n_expert_shared: int = 0
    q_lora_rank: int = 0  # MLA (deepseek2) from here on
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    fused_gate_up: bool = False


def tensor_shapes(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, ne) of every tensor, in file order."""
    e, x, fe = s.n_embd, s.n_expert, s.n_ff_exp
    out: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (e, s.n_vocab)),
        ("output_norm.weight", (e,)),
        ("output.weight", (e, s.n_vocab)),
    ]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (e,)))
        if s.arch == "deepseek2":
            k_mla = s.qk_nope_dim + s.qk_rope_dim
            out += [
                (b + "attn_q_a_norm.weight", (s.q_lora_rank,)),
                (b + "attn_kv_a_norm.weight", (s.kv_lora_rank,)),
                (b + "attn_q_a.weight", (e, s.q_lora_rank)),
                (b + "attn_q_b.weight", (s.q_lora_rank, s.n_head * k_mla)),
                (b + "attn_kv_a_mqa.weight", (e, s.kv_lora_rank + s.qk_rope_dim)),
                (b + "attn_k_b.weight", (s.qk_nope_dim, s.kv_lora_rank, s.n_head)),
                (b + "attn_v_b.weight", (s.kv_lora_rank, s.v_head_dim, s.n_head)),
                (b + "attn_output.weight", (s.n_head * s.v_head_dim, e)),
            ]
        else:
            hd = s.head_dim
            out += [
                (b + "attn_q.weight", (e, s.n_head * hd)),
                (b + "attn_k.weight", (e, s.n_head_kv * hd)),
                (b + "attn_v.weight", (e, s.n_head_kv * hd)),
                (b + "attn_output.weight", (s.n_head * hd, e)),
                (b + "attn_q_norm.weight", (hd,)),
                (b + "attn_k_norm.weight", (hd,)),
            ]
        out.append((b + "ffn_norm.weight", (e,)))
        if i < s.n_dense_lead:
            out += [
                (b + "ffn_gate.weight", (e, s.n_ff)),
                (b + "ffn_down.weight", (s.n_ff, e)),
                (b + "ffn_up.weight", (e, s.n_ff)),
            ]
            continue
        out.append((b + "ffn_gate_inp.weight", (e, x)))
        if s.arch == "deepseek2":
            out.append((b + "exp_probs_b.bias", (x,)))
        if s.fused_gate_up:
            out.append((b + "ffn_gate_up_exps.weight", (e, 2 * fe, x)))
        else:
            out.append((b + "ffn_gate_exps.weight", (e, fe, x)))
            out.append((b + "ffn_up_exps.weight", (e, fe, x)))
        out.append((b + "ffn_down_exps.weight", (fe, e, x)))
        if s.n_expert_shared:
            fs = fe * s.n_expert_shared
            out += [
                (b + "ffn_gate_shexp.weight", (e, fs)),
                (b + "ffn_down_shexp.weight", (fs, e)),
                (b + "ffn_up_shexp.weight", (e, fs)),
            ]
    return out
