"""Per-layer facts of the late-2026 architectures from GGUF metadata, as their loaders derive them.

Pure: no I/O. Each rule cites the pinned llama.cpp (0c1e570) code it mirrors; the values feed
kv_cache.kv_layout (which layers cache what) and are checked against `llama-fit-params` on
generated models in tests/test_archs_real.py.
"""

from __future__ import annotations

from typing import Any

F32 = 4


def kda_state_bytes(d_conv: int, head_dim: int, n_head: int) -> int:
    """llama_hparams::n_embd_r + n_embd_s for Kimi Delta Attention (f32): the q/k/v short-convolution history,
    3 x (d_conv - 1) x n_head x head_dim, and the head_dim x head_dim state of every head."""
    return F32 * (3 * max(d_conv - 1, 0) * n_head * head_dim + head_dim * head_dim * n_head)


def mamba2_state_bytes(d_conv: int, d_inner: int, d_state: int, n_group: int) -> int:
    """llama_hparams::n_embd_r + n_embd_s for mamba2 (f32): the conv history over x, B and C, and d_state x
    d_inner of SSM state."""
    return F32 * (max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state) + d_state * d_inner)


def ple_conv_state_bytes(conv_kernel: int, ngram: int, hc_mult: int, n_embd: int) -> int:
    """llama_hparams::ple_conv_state (f32): qwen4exp's PLE conv history, dilated by the n-gram size, over the
    hyper-connection streams; its own row of the recurrent cache in the PLE layer."""
    return F32 * max(conv_kernel - 1, 0) * ngram * hc_mult * n_embd


def next_layer_kinds(
    arch: str,
    n_layer: int,
    get: Any,
    integer: Any,
    n_head: tuple[int, ...],
    n_head_kv: tuple[int, ...],
    n_ff: tuple[int, ...],
) -> dict[str, Any]:
    """HParams fields for qwen4exp, kimi-k3, glm5-next, minimax-m3, nemotron_h_moe and gemma4."""
    nextn = integer("nextn_predict_layers")
    trunk = n_layer - nextn
    out: dict[str, Any] = {}
    if arch == "qwen4exp":
        # llama_memory_hybrid_idx: one indexer key (indexer_head_size, K only) per token in the attention layers
        recurrent = _recurrent_from_interval(get, integer, n_layer, trunk)
        out["indexer_cache_k"] = integer("attention.indexer.key_length")
        out["indexer_layers"] = tuple(il < trunk and not recurrent[il] for il in range(n_layer))
        layers = get("ple.layers")
        if isinstance(layers, tuple) and layers:
            state = ple_conv_state_bytes(
                integer("ple.conv_kernel"), integer("ple.ngram_size"), integer("hyper_connection.count"),
                integer("embedding_length"),
            )  # fmt: skip
            out["layer_state_bytes"] = tuple(state if il in layers else 0 for il in range(n_layer))
    elif arch in ("kimi-k3", "glm5-next"):
        # kimi-k3.cpp / glm5-next.cpp: a layer with head_count_kv 0 is a KDA layer (recurrent), the others MLA
        recurrent = tuple(il < trunk and n_head_kv[il] == 0 for il in range(n_layer))
        out["recurrent_layers"] = recurrent
        out["recurrent_state_bytes"] = kda_state_bytes(
            integer("ssm.conv_kernel"), integer("kda.head_dim"), next((h for h in n_head if h), 0)
        )
        if arch == "kimi-k3":
            out["expert_latent"] = integer("expert_latent_length")
            out["attn_res_block"] = integer("attn_res.block_size")
        if arch == "glm5-next":  # llama_memory_hybrid_idx with the k-pool: key, gate and pooled value per token
            kpool = integer("attention.indexer.kpool")
            out["indexer_cache_k"] = integer("attention.indexer.key_length") * (3 if kpool else 1)
            types = get("attention.indexer.types")
            full = [bool(v) for v in types] if isinstance(types, tuple) and types else [True] * trunk
            full += [False] * n_layer
            out["indexer_layers"] = tuple(il < trunk and not recurrent[il] and full[il] for il in range(n_layer))
    elif arch == "minimax-m3":
        # llama_kv_cache_msa: an indexer cache in the layers after the dense lead, one head of
        # indexer_head_size keys and (hparams copied from the model) value_length values
        lead = integer("leading_dense_block_count")
        out["indexer_cache_k"] = integer("attention.indexer.key_length")
        out["indexer_cache_v"] = integer("attention.value_length")
        out["indexer_layers"] = tuple(il >= lead for il in range(n_layer))
    elif arch == "nemotron_h_moe":
        # nemotron-h.cpp: recurrent (mamba2) iff head_count_kv and feed_forward_length are both 0; the KV filter
        # (!recurrent and n_ff == 0) keeps the trailing MTP layer, so it gets a cache even with drafting off
        out["recurrent_layers"] = tuple(il < trunk and n_head_kv[il] == 0 and n_ff[il] == 0 for il in range(n_layer))
        out["recurrent_state_bytes"] = mamba2_state_bytes(
            integer("ssm.conv_kernel"), integer("ssm.inner_size"), integer("ssm.state_size"),
            integer("ssm.group_count"),
        )  # fmt: skip
        out["nextn_kv"] = True
        out["ssm_d_inner"] = integer("ssm.inner_size")
        out["expert_latent"] = integer("moe_latent_size")
    elif arch == "gemma4":
        out["key_length_swa"] = integer("attention.key_length_swa")
        out["value_length_swa"] = integer("attention.value_length_swa")
        shared = integer("attention.shared_kv_layers")
        out["kv_layers_from_start"] = n_layer - shared if shared else 0
    return out


def _recurrent_from_interval(get: Any, integer: Any, n_layer: int, trunk: int) -> tuple[bool, ...]:
    """qwen4exp.cpp: attention.recurrent_layers, else every full_attention_interval-th trunk layer is attention."""
    given = get("attention.recurrent_layers")
    if isinstance(given, tuple) and len(given) == n_layer:
        return tuple(bool(v) for v in given)
    k = integer("full_attention_interval", 4) or 4
    return tuple(il < trunk and (il + 1) % k != 0 for il in range(n_layer))
