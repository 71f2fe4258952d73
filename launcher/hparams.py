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
        )
