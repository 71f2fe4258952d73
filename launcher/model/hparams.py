"""Architecture facts from GGUF metadata (`{arch}.block_count`, …), typed.

Pure: no I/O. Keys and defaults follow llama.cpp's `llama_model::load_hparams`;
values that may be per-layer arrays (head_count_kv, feed_forward_length) are
expanded to one value per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import GGUFError


@dataclass(frozen=True)
class HParams:
    arch: str
    name: str | None
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]  # per layer
    n_head_kv: tuple[int, ...]  # per layer
    key_length: int  # per head, as cached (for MLA GGUFs: kv_lora_rank + rope dims)
    value_length: int
    n_ff: tuple[int, ...]  # dense FFN width per layer (0 where none)
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_exp: int
    n_dense_lead: int
    kv_lora_rank: int  # > 0 for MLA (deepseek2 family)
    q_lora_rank: int
    sliding_window: int  # 0 when the model has no sliding-window attention
    file_type: int | None
    # Layer kinds beyond "full attention" (defaults: none). Per-layer tuples are empty or n_layer long.
    n_layer_nextn: int = 0  # NextN/MTP layers at the end of block_count: no KV cache unless MTP drafting is on
    swa_layers: tuple[bool, ...] = ()  # sliding-window layers (cache min(ctx, window + ubatch) cells)
    recurrent_layers: tuple[bool, ...] = ()  # linear-attention / SSM layers: a fixed state, no KV cache
    recurrent_state_bytes: int = 0  # per recurrent layer and sequence (conv + SSM state, f32)
    kv_compress: tuple[int, ...] = ()  # deepseek4: per-layer KV compression ratio (0 = sliding window only)
    indexer_head_size: int = 0  # DSA lightning indexer (deepseek32, glm-dsa, deepseek4): its keys are cached too
    # glm-dsa: the layers that run (and cache keys for) their own indexer; the others reuse one (empty: all do)
    indexer_layers: tuple[bool, ...] = ()
    # Late-2026 architectures. An indexer cache of its own (qwen4exp, glm5-next, minimax-m3): elements per token
    # and layer of its K and V planes, in indexer_layers (a per-token cache beside the attention one).
    indexer_cache_k: int = 0
    indexer_cache_v: int = 0
    layer_state_bytes: tuple[int, ...] = ()  # fixed bytes per layer besides the recurrent state (qwen4exp PLE conv)
    key_length_swa: int = 0  # gemma4: the sliding-window layers' head sizes (0: key_length / value_length)
    value_length_swa: int = 0
    kv_layers_from_start: int = 0  # gemma4: layers from here on reuse an earlier layer's KV (0: none do)
    nextn_kv: bool = False  # nemotron_h_moe: its MTP layer gets a KV cache even when MTP drafting is off
    ssm_d_inner: int = 0  # nemotron_h_moe mamba2 inner size (its compute phase)
    expert_latent: int = 0  # kimi-k3 expert_latent_length, nemotron_h_moe moe_latent_size
    attn_res_block: int = 0  # kimi-k3 attention residuals: layers per block (0: none)

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def expert_fraction(self) -> float:
        """Share of each routed-expert tensor read per token."""
        return self.n_expert_used / self.n_expert if self.n_expert else 0.0

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], source: str = "model") -> HParams:
        arch = md.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GGUFError(f"{source}: no general.architecture in the metadata (not a model file?)")

        def get(key: str, default: Any = None, *, required: bool = False) -> Any:
            full = f"{arch}.{key}"
            if full in md:
                return md[full]
            if required:
                raise GGUFError(f"{source}: metadata key {full!r} is missing")
            return default

        def integer(key: str, default: int = 0, *, required: bool = False) -> int:
            value = get(key, default, required=required)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GGUFError(f"{source}: metadata key {arch}.{key} should be a non-negative integer")
            return value

        n_layer = integer("block_count", required=True)
        if n_layer > 100_000:
            raise GGUFError(f"{source}: {arch}.block_count {n_layer} is absurd")

        def per_layer(key: str, default: int) -> tuple[int, ...]:
            value = get(key, default)
            if isinstance(value, tuple):
                if len(value) != n_layer or not all(isinstance(v, int) and v >= 0 for v in value):
                    raise GGUFError(f"{source}: {arch}.{key} should hold {n_layer} non-negative integers")
                return value
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GGUFError(f"{source}: metadata key {arch}.{key} should be a non-negative integer")
            return (value,) * n_layer

        n_embd = integer("embedding_length", required=True)
        n_head = per_layer("attention.head_count", 0)
        n_head_kv = per_layer("attention.head_count_kv", max(n_head, default=0))
        head0 = next((h for h in n_head if h), 0)
        default_head_dim = n_embd // head0 if head0 else 0
        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = integer("vocab_size", len(tokens) if isinstance(tokens, tuple) else 0)
        name = md.get("general.name")
        file_type = md.get("general.file_type")
        layers = _layer_kinds(arch, n_layer, get, integer)
        if arch in NEXT_HYBRIDS or arch in ("minimax-m3", "gemma4"):
            from launcher.model.hparams_next import next_layer_kinds  # late-2026 architectures

            n_ff = per_layer("feed_forward_length", 0)
            layers.update(next_layer_kinds(arch, n_layer, get, integer, n_head, n_head_kv, n_ff))
        return cls(
            arch=arch,
            name=name if isinstance(name, str) else None,
            n_layer=n_layer,
            n_ctx_train=integer("context_length"),
            n_embd=n_embd,
            n_vocab=n_vocab,
            n_head=n_head,
            n_head_kv=n_head_kv,
            key_length=integer("attention.key_length", default_head_dim),
            value_length=integer("attention.value_length", default_head_dim),
            n_ff=per_layer("feed_forward_length", 0),
            n_expert=integer("expert_count"),
            n_expert_used=max(per_layer("expert_used_count", 0), default=0),
            n_expert_shared=integer("expert_shared_count"),
            n_ff_exp=max(per_layer("expert_feed_forward_length", 0), default=0),
            n_dense_lead=integer("leading_dense_block_count"),
            kv_lora_rank=integer("attention.kv_lora_rank"),
            q_lora_rank=integer("attention.q_lora_rank"),
            sliding_window=integer("attention.sliding_window"),
            file_type=file_type if isinstance(file_type, int) else None,
            **layers,
        )


# Sliding-window pattern llama.cpp assumes when the GGUF has none (`load_swa_pattern(ml, N)` per arch).
_DEFAULT_SWA_PATTERN = {"gpt-oss": 2}
_HYBRIDS = frozenset({"qwen35moe", "qwen3next", "qwen4exp"})
NEXT_HYBRIDS = frozenset({"qwen4exp", "kimi-k3", "glm5-next", "nemotron_h_moe"})


def swa_pattern(n_layer: int, n_pattern: int) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern: every n_pattern-th layer is full attention, the rest sliding-window."""
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer))


def recurrent_pattern(n_layer: int, n_trunk: int, interval: int) -> tuple[bool, ...]:
    """Hybrids (qwen35moe, qwen3next): every interval-th trunk layer is full attention, the others recurrent."""
    return tuple(il < n_trunk and (il + 1) % interval != 0 for il in range(n_layer))


def delta_net_state_bytes(d_conv: int, d_state: int, n_group: int, dt_rank: int) -> int:
    """llama_hparams::n_embd_r + n_embd_s (f32): the conv and SSM state of one gated-DeltaNet layer."""
    d_inner = d_state * dt_rank
    return 4 * ((max(d_conv - 1, 0)) * (d_inner + 2 * n_group * d_state) + d_state * d_inner)


# llama.cpp models/glm-dsa.cpp GLM_5_2_DEFAULT_INDEXER_TYPES: GLM-5.2 (n_ctx_train >= 1M) runs its own indexer in
# layers 0, 1, then every 4th from 2; GLM-5/5.1 (shorter context) in every layer. `attention.indexer.types` overrides.
GLM_5_2_MIN_CTX = 1_048_576


def glm_dsa_indexer_layers(n_layer: int, n_trunk: int, n_ctx_train: int, get: Any = None) -> tuple[bool, ...]:
    """Which glm-dsa layers keep an indexer key cache (llama_model_glm_dsa::load_arch_hparams)."""
    types = get("attention.indexer.types") if get else None
    if isinstance(types, tuple) and types:
        full = tuple(bool(v) for v in types[:n_trunk])
    elif n_ctx_train < GLM_5_2_MIN_CTX:
        full = (True,) * n_trunk
    else:
        full = tuple(il < 2 or (il - 2) % 4 == 0 for il in range(n_trunk))
    return full + (False,) * (n_layer - len(full))


def _layer_kinds(arch: str, n_layer: int, get: Any, integer: Any) -> dict[str, Any]:
    """The per-layer kinds of an architecture from its metadata, as llama.cpp's loader derives them."""
    nextn = integer("nextn_predict_layers")
    out: dict[str, Any] = {"n_layer_nextn": nextn}
    if integer("attention.sliding_window") and arch != "deepseek4":
        pattern = get("attention.sliding_window_pattern", _DEFAULT_SWA_PATTERN.get(arch, 0))
        if isinstance(pattern, tuple):
            out["swa_layers"] = tuple(bool(v) for v in pattern[:n_layer]) + (False,) * (n_layer - len(pattern))
        elif isinstance(pattern, int) and not isinstance(pattern, bool):
            out["swa_layers"] = swa_pattern(n_layer, pattern)[: n_layer - nextn] + (False,) * nextn
    if arch in _HYBRIDS:
        recurrent = get("attention.recurrent_layers")
        if isinstance(recurrent, tuple) and len(recurrent) == n_layer:
            out["recurrent_layers"] = tuple(bool(v) for v in recurrent)
        else:
            out["recurrent_layers"] = recurrent_pattern(
                n_layer, n_layer - nextn, integer("full_attention_interval", 4) or 4
            )
        out["recurrent_state_bytes"] = delta_net_state_bytes(
            integer("ssm.conv_kernel"),
            integer("ssm.state_size"),
            integer("ssm.group_count"),
            integer("ssm.time_step_rank"),
        )
    if arch in ("deepseek32", "glm-dsa", "deepseek4"):
        out["indexer_head_size"] = integer("attention.indexer.key_length")
    if arch == "glm-dsa":
        out["indexer_layers"] = glm_dsa_indexer_layers(n_layer, n_layer - nextn, integer("context_length"), get)
    ratios = get("attention.compress_ratios")
    if arch == "deepseek4" and isinstance(ratios, tuple):
        out["kv_compress"] = tuple(int(r) for r in ratios[:n_layer])
    return out
