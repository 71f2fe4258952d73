"""The KV cache model: bytes per context token of each layer, for every cache layout llama.cpp keeps.

Pure: no I/O. Full attention, MLA's latent-only cache, sliding windows, recurrent state, DSA and sparse
indexers, DeepSeek-V4's compressed caches, NextN/MTP layers; slots as serving.py counts them.
Sources: docs/reference/llama-cpp.md (llama.cpp 0c1e570), checked against `llama-fit-params -fitp on`.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.model.hparams import HParams
from launcher.plan import serving

# --- cache types --------------------------------------------------------------------------------
# Bytes per element of the cache types llama.cpp accepts for -ctk/-ctv.
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                 "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}  # fmt: skip
# MLA models (deepseek2) cache K only at this commit (PR #19067, "V-less cache"): 576 x 2 B x 61 = 70,272 B/token,
# which `llama-fit-params -fitp on` confirmed (274 / 2,196 / 8,784 MiB at -c 4096 / 32768 / 131072).
MLA_V_LESS = True


# Sliding-window layers cache min(ctx, PAD(n_swa x slots + n_ubatch, 256)) cells (llama_kv_cache_iswa): serving.py.
# deepseek4 (llama-kv-cache-dsv4.cpp, llama_kv_cache_dsv4): besides the raw window of every layer, a compressed K
# cache of GGML_PAD(ceil(ctx / ratio), 256) cells per ratio-4 (CSA) and ratio-128 (HCA) layer; CSA layers also
# cache lightning-indexer keys (indexer_head_size wide) in as many cells. Compressor states are f32, a kv and a
# score plane each: CSA 2 x ratio rows x 2 x head_dim, its indexer 2 x ratio rows x 2 x indexer_head_size, HCA
# ratio rows x head_dim (llama_dsv4_comp_state; one sequence, n_rs_seq 0). Checked against llama-fit-params on the
# DeepSeek-V4-Flash shape: 75 / 139 / 258 / 323 MiB at -c 4096 / 4096 / 32768 / 32768, -ub 512 / 2048 / 512 / 2048.
DSV4_CSA_RATIO = 4
DSV4_COMPRESSED_PAD_CELLS = 256
STATE_BYTES = 4


@dataclass(frozen=True)
class KVLayout:
    """KV cache bytes per context token for each layer; sliding-window parts and fixed recurrent state aside."""

    per_layer: tuple[int, ...]  # bytes per context token (full-attention cache)
    windowed: tuple[int, ...] = ()  # bytes per cell of a sliding-window cache, capped at window_cells
    window_cells: int = 0
    fixed: tuple[int, ...] = ()  # bytes independent of the context (recurrent state of linear-attention layers)
    compressed: tuple[tuple[int, int], ...] = ()  # (ratio, bytes per cell) of a compressed cache (deepseek4)

    def bytes_for(self, ctx: int, layers: list[int] | range | None = None) -> int:
        chosen = range(len(self.per_layer)) if layers is None else layers
        total = sum(self.per_layer[i] for i in chosen) * ctx
        if self.windowed:
            total += sum(self.windowed[i] for i in chosen) * min(ctx, self.window_cells)
        if self.fixed:
            total += sum(self.fixed[i] for i in chosen)
        if self.compressed:
            total += sum(_compressed_cells(ctx, self.compressed[i][0]) * self.compressed[i][1] for i in chosen)
        return int(total)

    @property
    def per_token(self) -> int:
        return int(sum(self.per_layer) + sum(b / r for r, b in self.compressed if r))


def _compressed_cells(ctx: int, ratio: int) -> int:
    if not ratio:
        return 0
    return -(-max(1, -(-ctx // ratio)) // DSV4_COMPRESSED_PAD_CELLS) * DSV4_COMPRESSED_PAD_CELLS


def _flag(values: tuple[bool, ...] | tuple[int, ...], il: int) -> int:
    return int(values[il]) if il < len(values) else 0


def _dsv4_layer(hp: HParams, il: int, kb: float) -> tuple[float, tuple[int, int], int]:
    """deepseek4 layer: (bytes per window cell, (ratio, bytes per compressed cell), compressor state bytes)."""
    ratio, width = _flag(hp.kv_compress, il), hp.key_length
    if not ratio:
        return width * kb, (0, 0), 0
    if ratio == DSV4_CSA_RATIO:
        isz = hp.indexer_head_size
        state = 2 * (2 * ratio) * (2 * width + 2 * isz) * STATE_BYTES
        return width * kb, (ratio, round((width + isz) * kb)), state
    return width * kb, (ratio, round(width * kb)), 2 * ratio * width * STATE_BYTES


def kv_layout(
    hp: HParams,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    ubatch: int = 512,
    *,
    slots: int = 1,
    mtp: bool = False,
) -> KVLayout:
    """(key + value) x KV heads x element size per layer, `slots` sharing one cache (serving.py); MLA: latent K only.

    NextN/MTP layers get no cache unless MTP drafting is on (`mtp`: then its context caches them); recurrent layers
    keep a fixed state; sliding-window layers a window; deepseek4 a window plus caches compressed by its ratio;
    DSA (deepseek32, glm-dsa) one indexer key head per token in the layers that run their own indexer."""
    kb, vb = KV_TYPE_BYTES[cache_type_k], KV_TYPE_BYTES[cache_type_v]
    per, windowed, fixed, compressed = [], [], [], []
    trunk = hp.n_layer - hp.n_layer_nextn
    for il in range(hp.n_layer):
        kv_heads = hp.n_head_kv[il]
        swa = _flag(hp.swa_layers, il)
        k = (hp.key_length_swa if swa and hp.key_length_swa else hp.key_length) * kv_heads * kb
        v_len = hp.value_length_swa if swa and hp.value_length_swa else hp.value_length
        v = 0.0 if (hp.is_mla and MLA_V_LESS) else v_len * kv_heads * vb
        full, win, state, comp = k + v + _indexer_bytes(hp, il, trunk, kb, vb), 0.0, 0, (0, 0)
        if hp.layer_state_bytes:
            state += hp.layer_state_bytes[il]
        if (il >= trunk and not (hp.nextn_kv or mtp)) or (hp.kv_layers_from_start and il >= hp.kv_layers_from_start):
            full = 0.0  # MTP layers (llama.cpp skips them unless drafting) and gemma4's that reuse an earlier's KV
        elif _flag(hp.recurrent_layers, il):
            full, state = 0.0, state + hp.recurrent_state_bytes
        elif hp.arch == "deepseek4":  # one shared K=V head: a window of raw cells + the compressed caches
            full = 0.0
            win, comp, state = _dsv4_layer(hp, il, kb)
        elif swa:
            full, win = 0.0, k + v
        per.append(round(full))
        windowed.append(round(win))
        fixed.append(state)
        compressed.append(comp)
    n = slots if hp.arch in serving.PER_SLOT_STREAMS else 1  # deepseek4: every cache once per slot
    return KVLayout(
        tuple(b * n for b in per),
        tuple(b * n for b in windowed) if any(windowed) else (),
        serving.window_cells(hp.sliding_window, ubatch, slots // n),
        tuple(b * slots for b in fixed) if any(fixed) else (),  # recurrent state: one per slot
        tuple((r, b * n) for r, b in compressed) if any(r for r, _ in compressed) else (),
    )


def _indexer_bytes(hp: HParams, il: int, trunk: int, kb: float, vb: float) -> float:
    """Bytes per token of a layer's indexer key cache: DSA (deepseek32, glm-dsa) one indexer_head_size key in
    the MLA cache's layers that run an indexer; qwen4exp / glm5-next / minimax-m3 a cache of their own
    (llama_memory_hybrid_idx, llama_kv_cache_msa) with the widths hparams_next.py reads."""
    if hp.indexer_cache_k:
        return (hp.indexer_cache_k * kb + hp.indexer_cache_v * vb) if _flag(hp.indexer_layers, il) else 0.0
    if hp.is_mla and _flag(hp.indexer_layers or (True,) * trunk, il):
        return hp.indexer_head_size * kb
    return 0.0
