"""The shape of a MoE model as runq's tensor lists need it, and the architectures runq knows.

Pure: no I/O, no logic beyond the per-layer predicates. Split from arch_shapes.py so that the
per-family tensor lists (arch_shapes.py, arch_shapes_next.py) can share it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal[
    "deepseek2",
    "deepseek32",
    "deepseek4",
    "glm-dsa",
    "glm4moe",
    "qwen3moe",
    "qwen35moe",
    "qwen3next",
    "gpt-oss",
    "minimax-m2",
    "mistral4",
    # late 2026, in arch_shapes_next.py
    "qwen4exp",
    "kimi-k3",
    "glm5-next",
    "minimax-m3",
    "nemotron_h_moe",
    "gemma4",
]
ARCHS: tuple[str, ...] = Arch.__args__  # type: ignore[attr-defined]
MLA_ARCHS = frozenset({"deepseek2", "deepseek32", "glm-dsa", "mistral4"})  # mistral4 is deepseek2's loader
NEXT_ARCHS = frozenset({"qwen4exp", "kimi-k3", "glm5-next", "minimax-m3", "nemotron_h_moe", "gemma4"})
HYBRID_ARCHS = frozenset({"qwen35moe", "qwen3next"})  # gated DeltaNet layers + full-attention layers

TensorList = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class Shape:
    arch: Arch
    n_layer: int  # trunk layers (block_count less the NextN/MTP layers)
    n_vocab: int
    n_embd: int
    n_ff: int  # dense FFN width (leading dense layers)
    n_ff_exp: int
    n_expert: int
    n_dense_lead: int = 0
    n_head: int = 0
    n_head_kv: int = 0  # GQA
    head_dim: int = 0  # GQA; deepseek4's single KV head
    n_expert_shared: int = 0
    q_lora_rank: int = 0  # MLA from here on
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    fused_gate_up: bool = False
    n_nextn: int = 0  # NextN / MTP layers after the trunk (block_count = n_layer + n_nextn)
    n_ff_shexp: int = 0  # shared expert width when it is not n_ff_exp x n_expert_shared (qwen35moe, qwen3next)
    n_expert_used: int = 0  # deepseek4's hash-routing table
    indexer_n_head: int = 0  # DSA lightning indexer
    indexer_head_size: int = 0
    full_attn_interval: int = 0  # hybrids: every Nth layer is full attention, the rest gated DeltaNet
    ssm_d_conv: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0  # key heads of the linear attention
    ssm_dt_rank: int = 0  # value heads of the linear attention
    o_groups: int = 0  # deepseek4 grouped low-rank output
    o_lora_rank: int = 0
    hc_mult: int = 0  # deepseek4 hyper-connection streams
    hash_layers: int = 0  # deepseek4 leading hash-routed layers
    compress_ratios: tuple[int, ...] = ()  # deepseek4, per layer: 0, 4 (with indexer) or 128
    attn_bias: bool = False  # gpt-oss: q/k/v/output and expert biases
    # late-2026 architectures (arch_shapes_next.py); see the field comments there for which arch reads which
    layer_pattern: str = ""  # one letter per trunk layer: K/A (KDA / attention), M/*/E/- (nemotron_h)
    hc_low_rank: int = 0  # qwen4exp low-rank hyper-connections (hc_mult streams)
    ple_layer: int = -1  # qwen4exp: the layer with the PLE n-gram module (-1: none)
    ple_rows: int = 0  # qwen4exp: rows of per_layer_token_embd (n-gram hash buckets)
    n_embd_per_layer: int = 0  # width of a per_layer_token_embd row (qwen4exp, gemma4)
    ple_ngram: int = 0  # qwen4exp: n-gram size and heads per n-gram (row width x heads = n_embd)
    ple_heads_per_ngram: int = 0
    ple_conv_kernel: int = 0
    kda_head_dim: int = 0  # kimi-k3, glm5-next: Kimi Delta Attention head size
    expert_latent: int = 0  # kimi-k3 expert_latent_length, nemotron_h_moe moe_latent_size
    attn_res: bool = False  # kimi-k3 attention residual scores (attn_res.block_size > 0)
    indexer_kpool: int = 0  # glm5-next: k-pool compressed indexer
    ssm_d_inner: int = 0  # nemotron_h_moe mamba2 inner size
    head_dim_swa: int = 0  # gemma4: sliding-window layers' head size and KV heads (full layers: head_dim, n_head_kv)
    n_head_kv_swa: int = 0
    swa_pattern: int = 0  # gemma4: every Nth layer full attention, the others sliding-window

    @property
    def n_layer_all(self) -> int:
        return self.n_layer + self.n_nextn

    def is_recurrent(self, il: int) -> bool:
        return bool(self.full_attn_interval) and il < self.n_layer and (il + 1) % self.full_attn_interval != 0
