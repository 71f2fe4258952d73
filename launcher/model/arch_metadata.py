"""GGUF metadata of the late-2026 architectures (and deepseek4), written from a Shape.

Pure apart from calling the given `gguf.GGUFWriter`. Each writer puts down the keys that
architecture's `load_arch_hparams` reads at the pinned llama.cpp (`src/models/<arch>.cpp`),
with the values the converter (`conversion/<arch>.py`) would write for that shape; the common
keys (context, embedding, block count, heads, rope base, norm epsilon, expert counts) and the
tokenizer are the caller's. Used for tiny generated models (synth.py) and for real-shaped
header-only files (tests/sparse_models.py), so one recipe serves both.
"""

from __future__ import annotations

from typing import Any

from launcher.model.arch_shapes_next import ATTN, KDA, MAMBA, MLP, gemma4_is_swa, layer_kinds
from launcher.model.shape import Shape

# deepseek4 synth default: layer 0 hash-routed and sliding-window only, then compressed attention (4, 128)
DSV4_RATIOS = (0, 4, 128, 4, 128, 4, 128, 4)
# hidden-state mixing constants: arbitrary, but the hash is only defined for odd 64-bit multipliers
PLE_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)


def next_shape(spec: Any) -> Shape:
    """A tiny model's Shape for the late-2026 architectures, from the generic fields of a synth.SynthSpec (typed
    Any: synth.py imports this module, not the other way round)."""
    a, e = spec.arch, spec.n_embd
    common: dict[str, Any] = dict(
        arch=a, n_layer=spec.n_layer, n_vocab=0, n_embd=e, n_ff=spec.n_ff, n_ff_exp=spec.n_ff_exp,
        n_expert=spec.n_expert, n_expert_used=spec.n_expert_used, n_head=spec.n_head, n_head_kv=spec.n_head_kv,
        head_dim=spec.head_dim, n_expert_shared=1, layer_pattern=spec.layer_pattern,
        fused_gate_up=spec.fused_gate_up,
    )  # fmt: skip
    mla: dict[str, Any] = dict(
        q_lora_rank=spec.q_lora_rank, kv_lora_rank=spec.kv_lora_rank, qk_nope_dim=spec.qk_nope_dim,
        qk_rope_dim=spec.qk_rope_dim, v_head_dim=spec.v_head_dim,
    )  # fmt: skip
    if a == "qwen4exp":
        ngram, per = 3, 4  # 8 PLE heads of n_embd / 8: their rows concatenate to n_embd
        return Shape(
            **common, n_ff_shexp=spec.n_ff_exp, full_attn_interval=spec.full_attn_interval, ssm_d_conv=4,
            ssm_d_state=spec.ssm_d_state, ssm_n_group=spec.ssm_n_group, ssm_dt_rank=spec.ssm_dt_rank,
            hc_mult=4, hc_low_rank=16, indexer_n_head=4, indexer_head_size=64, ple_layer=1, ple_ngram=ngram,
            ple_heads_per_ngram=per, n_embd_per_layer=e // ((ngram - 1) * per), ple_rows=spec.ple_rows,
            ple_conv_kernel=4,
        )  # fmt: skip
    if a in ("kimi-k3", "glm5-next"):  # nope-only MLA: glm5-next.cpp asserts n_rot == 0, kimi-k3.cpp feeds no positions
        return Shape(
            **common, **{**mla, "qk_rope_dim": 0}, n_dense_lead=spec.n_dense_lead, full_attn_interval=3, ssm_d_conv=4,
            kda_head_dim=32, expert_latent=e // 2 if a == "kimi-k3" else 0, attn_res=a == "kimi-k3",
            n_nextn=spec.n_nextn if a == "glm5-next" else 0, hc_mult=4 if a == "glm5-next" else 0,
            indexer_n_head=4, indexer_head_size=64, indexer_kpool=4,
        )  # fmt: skip
    if a == "minimax-m3":
        # minimax-m3.cpp asserts one MSA indexer head per GQA group
        return Shape(**common, n_dense_lead=spec.n_dense_lead, indexer_n_head=spec.n_head_kv, indexer_head_size=64)
    if a == "nemotron_h_moe":
        return Shape(
            **{**common, "layer_pattern": spec.layer_pattern or "ME*EME*E"}, n_nextn=spec.n_nextn,
            ssm_d_conv=4, ssm_d_inner=2 * e, ssm_d_state=spec.ssm_d_state, ssm_n_group=spec.ssm_n_group,
            ssm_dt_rank=2 * e // 64, expert_latent=e // 2, n_ff_shexp=2 * spec.n_ff_exp,
        )  # fmt: skip
    if a == "gemma4":
        return Shape(
            **{**common, "n_head_kv": 1}, head_dim_swa=spec.head_dim // 2, n_head_kv_swa=spec.n_head_kv,
            swa_pattern=3, n_embd_per_layer=spec.n_embd_per_layer,
        )  # fmt: skip
    raise ValueError(f"{a} is not a late-2026 architecture")


def _u32(w: Any, key: str, value: int) -> None:
    w.add_uint32(key, value)


def _array(w: Any, key: str, values: list[int], sub: str) -> None:
    if not getattr(w, "typed_arrays", True):  # a recorder of values (catalog/arch_spec.py): no gguf (numpy) import
        w.add_array(key, list(values))
        return
    from gguf import GGUFValueType

    w.add_key_value(key, list(values), GGUFValueType.ARRAY, sub_type=GGUFValueType[sub])


def write_common(w: Any, s: Shape, n_ctx_train: int) -> None:
    """The keys every architecture reads (llama_model_base::load_hparams), for a real-shaped header."""
    a = s.arch
    for key, value in (("context_length", n_ctx_train), ("embedding_length", s.n_embd),
                       ("block_count", s.n_layer + s.n_nextn), ("attention.head_count", s.n_head),
                       ("expert_count", s.n_expert), ("expert_used_count", s.n_expert_used),
                       ("expert_feed_forward_length", s.n_ff_exp), ("vocab_size", s.n_vocab)):  # fmt: skip
        _u32(w, f"{a}.{key}", value)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)


def write_metadata(w: Any, s: Shape, *, sliding_window: int = 0) -> None:
    """The architecture's own keys for shape s (the caller wrote the common ones)."""
    {
        "qwen4exp": _qwen4exp,
        "kimi-k3": _kimi_k3,
        "glm5-next": _glm5_next,
        "minimax-m3": _minimax_m3,
        "nemotron_h_moe": _nemotron_h,
        "gemma4": _gemma4,
        "deepseek4": _deepseek4,
    }[s.arch](w, s, sliding_window or 128)


def _gqa(w: Any, s: Shape, rot: int) -> None:
    a = s.arch
    _u32(w, f"{a}.attention.head_count_kv", s.n_head_kv)
    _u32(w, f"{a}.attention.key_length", s.head_dim)
    _u32(w, f"{a}.attention.value_length", s.head_dim)
    _u32(w, f"{a}.rope.dimension_count", rot)


def _moe(w: Any, s: Shape, gating: int = 2) -> None:
    a = s.arch
    _u32(w, f"{a}.expert_shared_count", max(s.n_expert_shared, 1))
    _u32(w, f"{a}.leading_dense_block_count", s.n_dense_lead)
    _u32(w, f"{a}.feed_forward_length", s.n_ff)
    w.add_float32(f"{a}.expert_weights_scale", 2.5)
    w.add_bool(f"{a}.expert_weights_norm", True)
    _u32(w, f"{a}.expert_gating_func", gating)  # 2: sigmoid with exp_probs_b


def _qwen4exp(w: Any, s: Shape, _: int) -> None:
    """qwen4exp.cpp: the Qwen3.5 DeltaNet keys, hyper-connections, the QSA indexer, the PLE n-gram table."""
    a = s.arch
    rot = s.head_dim // 4  # partial rotary in interleaved mrope sections, as Qwen3.5
    _gqa(w, s, rot)
    w.add_array(f"{a}.rope.dimension_sections", [rot // 2 - rot // 4, rot // 4, 0, 0])
    _u32(w, f"{a}.expert_shared_feed_forward_length", s.n_ff_shexp or s.n_ff_exp)
    for key, value in (("conv_kernel", s.ssm_d_conv), ("state_size", s.ssm_d_state), ("group_count", s.ssm_n_group),
                       ("time_step_rank", s.ssm_dt_rank), ("inner_size", s.ssm_d_state * s.ssm_dt_rank)):  # fmt: skip
        _u32(w, f"{a}.ssm.{key}", value)
    _u32(w, f"{a}.full_attention_interval", s.full_attn_interval or 4)
    _u32(w, f"{a}.hyper_connection.count", s.hc_mult)
    _u32(w, f"{a}.hyper_connection.low_rank", s.hc_low_rank)
    _u32(w, f"{a}.attention.indexer.head_count", s.indexer_n_head)
    _u32(w, f"{a}.attention.indexer.key_length", s.indexer_head_size)
    _u32(w, f"{a}.attention.indexer.top_k", 2048)
    ratio = 64  # QSA block size: the converter writes indexer_compress_ratio on the full-attention layers
    w.add_array(f"{a}.attention.compress_ratios", [0 if k == KDA else ratio for k in layer_kinds(s)])
    if s.ple_layer < 0:
        return
    heads = (s.ple_ngram - 1) * s.ple_heads_per_ngram
    size = s.ple_rows // heads
    _array(w, f"{a}.ple.layers", [s.ple_layer], "UINT32")
    _u32(w, f"{a}.ple.ngram_size", s.ple_ngram)
    _u32(w, f"{a}.ple.heads_per_ngram", s.ple_heads_per_ngram)
    _u32(w, f"{a}.ple.conv_kernel", s.ple_conv_kernel)
    _u32(w, f"{a}.ple.eos_token_id", 0)
    _u32(w, f"{a}.embedding_length_per_layer_input", s.n_embd_per_layer)
    _array(w, f"{a}.ple.layer_multipliers", list(PLE_MULTIPLIERS[: s.ple_ngram]), "UINT64")
    _array(w, f"{a}.ple.head_offsets", [h * size for h in range(heads)], "UINT64")
    _array(w, f"{a}.ple.head_vocab_sizes", [size] * heads, "UINT64")


def _kda_mla(w: Any, s: Shape) -> None:
    """kimi-k3.cpp / glm5-next.cpp: KDA layers are the ones with head_count_kv 0; MLA caches the latent."""
    a = s.arch
    kinds = layer_kinds(s) + "A" * s.n_nextn
    w.add_array(f"{a}.attention.head_count_kv", [0 if k == KDA else 1 for k in kinds])
    _u32(w, f"{a}.attention.key_length", s.kv_lora_rank + s.qk_rope_dim)
    _u32(w, f"{a}.attention.value_length", s.kv_lora_rank)
    _u32(w, f"{a}.attention.key_length_mla", s.qk_nope_dim + s.qk_rope_dim)
    _u32(w, f"{a}.attention.value_length_mla", s.v_head_dim)
    _u32(w, f"{a}.attention.q_lora_rank", s.q_lora_rank)
    _u32(w, f"{a}.attention.kv_lora_rank", s.kv_lora_rank)
    _u32(w, f"{a}.rope.dimension_count", s.qk_rope_dim)
    _u32(w, f"{a}.ssm.conv_kernel", s.ssm_d_conv)
    _u32(w, f"{a}.kda.head_dim", s.kda_head_dim)
    _moe(w, s)


def _kimi_k3(w: Any, s: Shape, _: int) -> None:
    a = s.arch
    _kda_mla(w, s)
    if s.expert_latent:
        _u32(w, f"{a}.expert_latent_length", s.expert_latent)
    _u32(w, f"{a}.attn_res.block_size", 4 if s.attn_res else 0)
    w.add_float32(f"{a}.activation.situ_beta", 1.0)  # the situ activation's constants (config.json)
    w.add_float32(f"{a}.activation.situ_linear_beta", 1.0)


def _glm5_next(w: Any, s: Shape, _: int) -> None:
    a = s.arch
    _kda_mla(w, s)
    _u32(w, f"{a}.nextn_predict_layers", s.n_nextn)
    _u32(w, f"{a}.attention.indexer.head_count", s.indexer_n_head)
    _u32(w, f"{a}.attention.indexer.key_length", s.indexer_head_size)
    _u32(w, f"{a}.attention.indexer.top_k", 16 * s.indexer_kpool)  # must be a multiple of the k-pool
    _u32(w, f"{a}.attention.indexer.kpool", s.indexer_kpool)
    _u32(w, f"{a}.hyper_connection.count", s.hc_mult)  # mHC: the loader asserts 4
    _u32(w, f"{a}.hyper_connection.sinkhorn_iterations", 20)
    w.add_float32(f"{a}.hyper_connection.epsilon", 1e-6)


def _minimax_m3(w: Any, s: Shape, _: int) -> None:
    a = s.arch
    _gqa(w, s, s.head_dim // 2)  # partial rotary, as MiniMax-M2
    _moe(w, s)
    _u32(w, f"{a}.attention.indexer.head_count", s.indexer_n_head)
    _u32(w, f"{a}.attention.indexer.key_length", s.indexer_head_size)
    _u32(w, f"{a}.attention.indexer.top_k", 16)  # MSA: top-k blocks of block_size tokens, plus local blocks
    _u32(w, f"{a}.attention.indexer.block_size", 64)
    _u32(w, f"{a}.attention.indexer.local_blocks", 1)


def _nemotron_h(w: Any, s: Shape, _: int) -> None:
    """nemotron-h.cpp: a layer is mamba2 when head_count_kv and feed_forward_length are both 0, MoE when
    feed_forward_length is set, attention otherwise (conversion/nemotron.py writes both arrays)."""
    a = s.arch
    kinds = layer_kinds(s)
    heads_kv = [s.n_head_kv if k == ATTN else 0 for k in kinds] + [s.n_head_kv] * s.n_nextn
    w.add_array(f"{a}.attention.head_count_kv", heads_kv)
    ffn = {MAMBA: 0, ATTN: 0, MLP: s.n_ff}
    w.add_array(f"{a}.feed_forward_length", [ffn.get(k, s.n_ff_exp) for k in kinds] + [0] * s.n_nextn)
    _u32(w, f"{a}.attention.key_length", s.head_dim)
    _u32(w, f"{a}.attention.value_length", s.head_dim)
    w.add_float32(f"{a}.attention.layer_norm_epsilon", 1e-5)
    for key, value in (("conv_kernel", s.ssm_d_conv), ("state_size", s.ssm_d_state), ("group_count", s.ssm_n_group),
                       ("time_step_rank", s.ssm_dt_rank), ("inner_size", s.ssm_d_inner)):  # fmt: skip
        _u32(w, f"{a}.ssm.{key}", value)
    _u32(w, f"{a}.expert_shared_feed_forward_length", s.n_ff_shexp or s.n_ff_exp)
    _u32(w, f"{a}.expert_shared_count", 1)
    w.add_bool(f"{a}.expert_weights_norm", True)
    w.add_float32(f"{a}.expert_weights_scale", 2.5)
    if s.expert_latent:
        _u32(w, f"{a}.moe_latent_size", s.expert_latent)
    if s.n_nextn:
        _u32(w, f"{a}.nextn_predict_layers", s.n_nextn)


def _gemma4(w: Any, s: Shape, window: int) -> None:
    """gemma4.cpp: a per-layer sliding-window flag array, a head size of its own for those layers."""
    a = s.arch
    swa = [gemma4_is_swa(s, il) for il in range(s.n_layer)]
    w.add_array(f"{a}.attention.sliding_window_pattern", swa)
    w.add_array(f"{a}.attention.head_count_kv", [s.n_head_kv_swa if x else s.n_head_kv for x in swa])
    _u32(w, f"{a}.attention.sliding_window", window)
    _u32(w, f"{a}.attention.key_length", s.head_dim)
    _u32(w, f"{a}.attention.value_length", s.head_dim)
    _u32(w, f"{a}.attention.key_length_swa", s.head_dim_swa)
    _u32(w, f"{a}.attention.value_length_swa", s.head_dim_swa)
    _u32(w, f"{a}.rope.dimension_count", s.head_dim)
    _u32(w, f"{a}.rope.dimension_count_swa", s.head_dim_swa)
    _u32(w, f"{a}.feed_forward_length", s.n_ff)
    _u32(w, f"{a}.embedding_length_per_layer_input", s.n_embd_per_layer)
    _u32(w, f"{a}.attention.shared_kv_layers", 0)
    w.add_float32(f"{a}.final_logit_softcapping", 30.0)


def _deepseek4(w: Any, s: Shape, window: int) -> None:
    """deepseek4.cpp (llama_model_deepseek4::load_arch_hparams): one shared K=V head of head_dim, grouped
    low-rank output, hyper-connections, hash-routed leading layers, compressed KV with a sliding window."""
    a = s.arch
    _u32(w, f"{a}.attention.head_count_kv", 1)
    _u32(w, f"{a}.attention.key_length", s.head_dim)
    _u32(w, f"{a}.attention.value_length", s.head_dim)
    _u32(w, f"{a}.rope.dimension_count", 64 if s.head_dim >= 256 else s.head_dim // 4)
    _u32(w, f"{a}.attention.q_lora_rank", s.q_lora_rank)
    _u32(w, f"{a}.attention.sliding_window", window)
    _u32(w, f"{a}.expert_shared_count", 1)
    w.add_float32(f"{a}.expert_weights_scale", 1.5)
    w.add_bool(f"{a}.expert_weights_norm", True)
    w.add_float32(f"{a}.swiglu_clamp_exp", 10.0)
    _u32(w, f"{a}.attention.indexer.head_count", s.indexer_n_head)
    _u32(w, f"{a}.attention.indexer.key_length", s.indexer_head_size)
    _u32(w, f"{a}.attention.indexer.top_k", 64)
    _u32(w, f"{a}.attention.output_group_count", s.o_groups)
    _u32(w, f"{a}.attention.output_lora_rank", s.o_lora_rank)
    w.add_float32(f"{a}.attention.compress_rope_freq_base", 160000.0)
    _u32(w, f"{a}.hyper_connection.count", s.hc_mult)
    _u32(w, f"{a}.hyper_connection.sinkhorn_iterations", 20)
    w.add_float32(f"{a}.hyper_connection.epsilon", 1e-6)
    _u32(w, f"{a}.hash_layer_count", s.hash_layers)
    w.add_array(f"{a}.attention.compress_ratios", list(s.compress_ratios))
    _u32(w, f"{a}.expert_gating_func", 4)  # sqrt(softplus)
