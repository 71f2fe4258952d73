"""The architecture part of a profile (ArchSpec): a real model's shape, its HParams and its Shape.

Pure: no I/O. Field names follow llama.cpp's GGUF metadata names without the arch prefix. The
late-2026 architectures get their HParams by writing the metadata their converter would write
for this shape (arch_metadata.py) and reading it back like a real header, so a profile and the
GGUF it describes go through one set of rules.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from launcher.model.arch_shapes import HYBRID_ARCHS, MLA_ARCHS, NEXT_ARCHS, Arch, Shape
from launcher.model.hparams import (
    HParams,
    delta_net_state_bytes,
    glm_dsa_indexer_layers,
    recurrent_pattern,
    swa_pattern,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchSpec(_Strict):
    """The real model's shape (llama.cpp's GGUF metadata names, without the arch prefix)."""

    name: Arch
    n_layer: int = Field(gt=0, le=1000, description="block_count, NextN/MTP layers included")
    n_embd: int = Field(gt=0)
    n_vocab: int = Field(gt=0)
    context_length: int = Field(gt=0)
    n_head: int = Field(gt=0)
    n_head_kv: int = Field(gt=0)
    key_length: int = Field(gt=0)
    value_length: int = Field(gt=0)
    n_ff: int = Field(ge=0, default=0)
    n_ff_exp: int = Field(gt=0)
    n_expert: int = Field(gt=0)
    n_expert_used: int = Field(gt=0)
    n_expert_shared: int = Field(ge=0, default=0)
    n_dense_lead: int = Field(ge=0, default=0)
    nextn_layers: int = Field(ge=0, default=0, description="nextn_predict_layers (MTP), the last block(s)")
    # MLA (deepseek2, deepseek32, glm-dsa)
    key_length_mla: int = 0
    value_length_mla: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    # DSA lightning indexer (deepseek32, glm-dsa, deepseek4)
    indexer_n_head: int = Field(ge=0, default=0)
    indexer_head_size: int = Field(ge=0, default=0)
    # Sliding-window attention (gpt-oss: every 2nd layer full; deepseek4: every layer)
    sliding_window: int = Field(ge=0, default=0)
    swa_pattern: int = Field(ge=0, default=0)
    attn_bias: bool = False  # gpt-oss: attention and expert biases, attention sinks
    fused_gate_up: bool = False
    # Hybrids (qwen35moe, qwen3next): gated DeltaNet layers, every full_attn_interval-th layer full attention
    n_ff_shexp: int = Field(ge=0, default=0)
    full_attn_interval: int = Field(ge=0, default=0)
    ssm_d_conv: int = Field(ge=0, default=0)
    ssm_d_state: int = Field(ge=0, default=0)
    ssm_n_group: int = Field(ge=0, default=0)
    ssm_dt_rank: int = Field(ge=0, default=0)
    # deepseek4: grouped low-rank output, hyper-connections, hash-routed layers, compressed KV
    o_groups: int = Field(ge=0, default=0)
    o_lora_rank: int = Field(ge=0, default=0)
    hc_mult: int = Field(ge=0, default=0)
    hash_layers: int = Field(ge=0, default=0)
    compress_ratios: list[int] = []
    # Late-2026 architectures (arch_shapes_next.py; GGUF key names in arch_metadata.py)
    layer_pattern: str = Field(default="", pattern=r"^[KAME*\-]*$", description="a letter per trunk layer")
    hc_low_rank: int = Field(ge=0, default=0)  # qwen4exp
    ple_layer: int = Field(ge=-1, default=-1)  # qwen4exp: the PLE n-gram layer (-1: none)
    ple_rows: int = Field(ge=0, default=0)
    n_embd_per_layer: int = Field(ge=0, default=0)  # a per_layer_token_embd row (qwen4exp, gemma4)
    ple_ngram: int = Field(ge=0, default=0)
    ple_heads_per_ngram: int = Field(ge=0, default=0)
    ple_conv_kernel: int = Field(ge=0, default=0)
    kda_head_dim: int = Field(ge=0, default=0)  # kimi-k3, glm5-next
    expert_latent: int = Field(ge=0, default=0)  # kimi-k3 expert_latent_length, nemotron_h_moe moe_latent_size
    attn_res: bool = False  # kimi-k3 attention residuals
    indexer_kpool: int = Field(ge=0, default=0)  # glm5-next
    ssm_d_inner: int = Field(ge=0, default=0)  # nemotron_h_moe
    key_length_swa: int = Field(ge=0, default=0)  # gemma4: the sliding-window layers' head size and KV heads
    n_head_kv_swa: int = Field(ge=0, default=0)
    shape_source: Literal["gguf", "config", "approximate"] = "gguf"  # read from a GGUF, a config.json, or inferred

    @model_validator(mode="after")
    def _consistent(self) -> ArchSpec:
        if self.n_expert_used > self.n_expert:
            raise ValueError("n_expert_used is larger than n_expert")
        if self.n_dense_lead >= self.n_layer:
            raise ValueError("n_dense_lead must be smaller than n_layer")
        if self.name in MLA_ARCHS and not (self.kv_lora_rank and self.key_length_mla and self.rope_dim):
            raise ValueError(f"{self.name} needs kv_lora_rank, key_length_mla and rope_dim (MLA)")
        if self.name in HYBRID_ARCHS and not (self.full_attn_interval and self.ssm_d_state and self.ssm_dt_rank):
            raise ValueError(f"{self.name} needs full_attn_interval, ssm_d_state and ssm_dt_rank (hybrid layers)")
        if self.name == "deepseek4" and not (self.o_groups and self.hc_mult and self.sliding_window):
            raise ValueError("deepseek4 needs o_groups, hc_mult and sliding_window")
        if self.compress_ratios and len(self.compress_ratios) != self.n_layer:
            raise ValueError(f"compress_ratios needs {self.n_layer} values, one per block")
        if self.layer_pattern and len(self.layer_pattern) != self.n_trunk:
            raise ValueError(f"layer_pattern needs {self.n_trunk} letters, one per trunk layer")
        if self.name in ("kimi-k3", "glm5-next") and not (self.kda_head_dim and self.kv_lora_rank):
            raise ValueError(f"{self.name} needs kda_head_dim and kv_lora_rank (KDA + MLA layers)")
        if self.name == "nemotron_h_moe" and not (self.layer_pattern and self.ssm_d_inner):
            raise ValueError("nemotron_h_moe needs layer_pattern and ssm_d_inner")
        if (
            self.ple_layer >= 0
            and self.ple_rows
            and self.n_embd_per_layer * self.ple_heads_per_ngram * (self.ple_ngram - 1) != self.n_embd
        ):
            raise ValueError("the PLE heads' rows must add up to n_embd (qwen4exp.cpp's ple_key takes n_embd)")
        return self

    @property
    def n_trunk(self) -> int:
        return self.n_layer - self.nextn_layers

    def hparams(self, display_name: str | None = None) -> HParams:
        if self.name in NEXT_ARCHS:  # from the metadata their converters write: the same rules as a real header
            return next_hparams(shape_from_arch(self), self.context_length, display_name, self.sliding_window)
        n = self.n_layer
        heads_kv = self.n_head_kv
        return HParams(
            arch=self.name,
            name=display_name,
            n_layer=n,
            n_ctx_train=self.context_length,
            n_embd=self.n_embd,
            n_vocab=self.n_vocab,
            n_head=(self.n_head,) * n,
            n_head_kv=(heads_kv,) * n,
            key_length=self.key_length,
            value_length=self.value_length,
            n_ff=(self.n_ff,) * n,
            n_expert=self.n_expert,
            n_expert_used=self.n_expert_used,
            n_expert_shared=self.n_expert_shared,
            n_ff_exp=self.n_ff_exp,
            n_dense_lead=self.n_dense_lead,
            kv_lora_rank=self.kv_lora_rank,
            q_lora_rank=self.q_lora_rank,
            sliding_window=self.sliding_window,
            file_type=None,
            n_layer_nextn=self.nextn_layers,
            swa_layers=(
                swa_pattern(self.n_trunk, self.swa_pattern) + (False,) * self.nextn_layers
                if self.sliding_window and self.name != "deepseek4"
                else ()
            ),
            recurrent_layers=(
                recurrent_pattern(n, self.n_trunk, self.full_attn_interval) if self.name in HYBRID_ARCHS else ()
            ),
            recurrent_state_bytes=(
                delta_net_state_bytes(self.ssm_d_conv, self.ssm_d_state, self.ssm_n_group, self.ssm_dt_rank)
                if self.name in HYBRID_ARCHS
                else 0
            ),
            kv_compress=tuple(self.compress_ratios),
            indexer_head_size=self.indexer_head_size if self.name in ("deepseek32", "glm-dsa", "deepseek4") else 0,
            indexer_layers=(
                glm_dsa_indexer_layers(self.n_layer, self.n_trunk, self.context_length)
                if self.name == "glm-dsa"
                else ()
            ),
        )


def shape_from_arch(a: ArchSpec) -> Shape:
    mla = a.name in MLA_ARCHS or a.name in ("kimi-k3", "glm5-next")
    return Shape(
        arch=a.name,
        n_layer=a.n_trunk,
        n_nextn=a.nextn_layers,
        n_vocab=a.n_vocab,
        n_embd=a.n_embd,
        n_ff=a.n_ff,
        n_ff_exp=a.n_ff_exp,
        n_expert=a.n_expert,
        n_dense_lead=a.n_dense_lead,
        n_head=a.n_head,
        n_head_kv=a.n_head_kv,
        head_dim=a.key_length,
        n_expert_shared=a.n_expert_shared,
        q_lora_rank=a.q_lora_rank,
        kv_lora_rank=a.kv_lora_rank if mla else 0,
        qk_nope_dim=(a.key_length_mla - a.rope_dim) if mla else 0,
        qk_rope_dim=a.rope_dim if mla else 0,
        v_head_dim=a.value_length_mla if mla else 0,
        fused_gate_up=a.fused_gate_up,
        n_ff_shexp=a.n_ff_shexp,
        n_expert_used=a.n_expert_used,
        indexer_n_head=a.indexer_n_head,
        indexer_head_size=a.indexer_head_size,
        full_attn_interval=a.full_attn_interval,
        ssm_d_conv=a.ssm_d_conv,
        ssm_d_state=a.ssm_d_state,
        ssm_n_group=a.ssm_n_group,
        ssm_dt_rank=a.ssm_dt_rank,
        o_groups=a.o_groups,
        o_lora_rank=a.o_lora_rank,
        hc_mult=a.hc_mult,
        hash_layers=a.hash_layers,
        compress_ratios=tuple(a.compress_ratios),
        attn_bias=a.attn_bias,
        layer_pattern=a.layer_pattern,
        hc_low_rank=a.hc_low_rank,
        ple_layer=a.ple_layer,
        ple_rows=a.ple_rows,
        n_embd_per_layer=a.n_embd_per_layer,
        ple_ngram=a.ple_ngram,
        ple_heads_per_ngram=a.ple_heads_per_ngram,
        ple_conv_kernel=a.ple_conv_kernel,
        kda_head_dim=a.kda_head_dim,
        expert_latent=a.expert_latent,
        attn_res=a.attn_res,
        indexer_kpool=a.indexer_kpool,
        ssm_d_inner=a.ssm_d_inner,
        head_dim_swa=a.key_length_swa,
        n_head_kv_swa=a.n_head_kv_swa,
        swa_pattern=a.swa_pattern,
    )


class _Recorder:
    """Collects what a GGUF writer would write, as the header reader returns it (arrays as tuples)."""

    typed_arrays = False  # arch_metadata: arrays are recorded as values, without gguf's type enum

    def __init__(self) -> None:
        self.md: dict[str, Any] = {}

    def _set(self, key: str, value: Any, *_: Any, **__: Any) -> None:
        self.md[key] = tuple(value) if isinstance(value, list | tuple) else value

    add_uint32 = add_float32 = add_bool = add_string = add_array = add_key_value = _set


def next_hparams(s: Shape, n_ctx_train: int, display_name: str | None = None, sliding_window: int = 0) -> HParams:
    """HParams of a late-2026 shape, through the metadata its converter writes."""
    from launcher.model import arch_metadata

    w = _Recorder()
    w.add_string("general.architecture", s.arch)
    arch_metadata.write_common(w, s, n_ctx_train)
    arch_metadata.write_metadata(w, s, sliding_window=sliding_window)
    return replace(HParams.from_metadata(w.md, source="profile"), name=display_name)
