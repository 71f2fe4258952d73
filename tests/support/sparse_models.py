"""Real-shaped GGUF files without their weights: full headers, sparse data (hundreds of GB that take no disk).

They let tests serve a DeepSeek-V3.1-shaped quant from the local hub and plan it from its remote headers.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np

from launcher.catalog.arch_spec import shape_from_arch
from launcher.catalog.estimate import estimate
from launcher.catalog.profiles import Profile, QuantSpec
from launcher.model import arch_metadata
from launcher.model.arch_shapes import NEXT_ARCHS

N_MERGES = 127_741


def _rope_dim(profile: Profile) -> int:
    a = profile.arch
    if a.rope_dim:
        return a.rope_dim
    if a.name in ("glm4moe", "minimax-m2"):
        return a.key_length // 2  # partial rotary
    if a.name in ("qwen35moe", "qwen3next"):
        return a.key_length // 4
    if a.name == "deepseek4":
        return 64  # DeepSeek-V4's rotary part of its 512-wide head
    return a.key_length  # rope over the whole head


def _arch_keys(w: gguf.GGUFWriter, profile: Profile) -> None:
    """The keys each architecture's `load_arch_hparams` reads besides the common ones (as launcher/synth.py
    writes them for generated models), from the profile's real shape."""
    a, arch = profile.arch, profile.arch.name
    if a.nextn_layers:  # glm4moe and glm-dsa (GLM-5.x): without it llama.cpp loads the MTP block as a trunk layer
        w.add_uint32(f"{arch}.nextn_predict_layers", a.nextn_layers)  # and refuses its 4 nextn.* tensors
    if arch == "gpt-oss":
        w.add_uint32(f"{arch}.attention.sliding_window", a.sliding_window)
    if a.indexer_n_head:
        w.add_uint32(f"{arch}.attention.indexer.head_count", a.indexer_n_head)
        w.add_uint32(f"{arch}.attention.indexer.key_length", a.indexer_head_size)
        w.add_uint32(f"{arch}.attention.indexer.top_k", 2048)
    if arch == "deepseek4":  # as synth.py's deepseek4 metadata, with the profile's sizes
        w.add_uint32(f"{arch}.attention.sliding_window", a.sliding_window)
        w.add_float32(f"{arch}.swiglu_clamp_exp", 10.0)
        w.add_uint32(f"{arch}.attention.output_group_count", a.o_groups)
        w.add_uint32(f"{arch}.attention.output_lora_rank", a.o_lora_rank)
        w.add_float32(f"{arch}.attention.compress_rope_freq_base", 160000.0)
        w.add_uint32(f"{arch}.hyper_connection.count", a.hc_mult)
        w.add_uint32(f"{arch}.hyper_connection.sinkhorn_iterations", 20)
        w.add_float32(f"{arch}.hyper_connection.epsilon", 1e-6)
        w.add_uint32(f"{arch}.hash_layer_count", a.hash_layers)
        w.add_array(f"{arch}.attention.compress_ratios", list(a.compress_ratios))
    if arch in ("qwen35moe", "qwen3next"):
        rot = _rope_dim(profile)
        if arch == "qwen35moe":
            w.add_array(f"{arch}.rope.dimension_sections", [rot // 2 - rot // 4, rot // 4, 0, 0])
        w.add_uint32(f"{arch}.expert_shared_feed_forward_length", a.n_ff_shexp)
        w.add_uint32(f"{arch}.ssm.conv_kernel", a.ssm_d_conv or 4)
        w.add_uint32(f"{arch}.ssm.state_size", a.ssm_d_state)
        w.add_uint32(f"{arch}.ssm.group_count", a.ssm_n_group)
        w.add_uint32(f"{arch}.ssm.time_step_rank", a.ssm_dt_rank)
        w.add_uint32(f"{arch}.ssm.inner_size", a.ssm_d_state * a.ssm_dt_rank)
        w.add_uint32(f"{arch}.full_attention_interval", a.full_attn_interval)


def write_sparse_quant(profile: Profile, quant: QuantSpec, root: Path) -> list[Path]:
    """The quant's files (shards as in quant.path) under root, with real headers and sparse tensor data."""
    est = estimate(profile, quant)
    a = profile.arch
    target = root / quant.path
    target.parent.mkdir(parents=True, exist_ok=True)
    shards = quant.shards
    base = target
    if shards > 1:  # GGUFWriter names shards itself from the stem
        base = target.with_name(target.name.replace(f"-00001-of-{shards:05d}", ""))
    per = math.ceil(len(est.tensors) / shards) if shards > 1 else 0
    w = gguf.GGUFWriter(base, a.name, split_max_tensors=per)
    arch = a.name
    if arch in NEXT_ARCHS:  # the late-2026 ones: the metadata recipe generated models use, at the profile's shape
        shape = shape_from_arch(a)
        arch_metadata.write_common(w, shape, a.context_length)
        arch_metadata.write_metadata(w, shape, sliding_window=a.sliding_window)
    for key, value in {} if arch in NEXT_ARCHS else {
        "block_count": a.n_layer, "context_length": a.context_length, "embedding_length": a.n_embd,
        "feed_forward_length": a.n_ff_exp if a.name == "minimax-m2" else a.n_ff,
        "attention.head_count": a.n_head, "attention.head_count_kv": a.n_head_kv,
        "attention.key_length": a.key_length, "attention.value_length": a.value_length,
        "attention.key_length_mla": a.key_length_mla, "attention.value_length_mla": a.value_length_mla,
        "attention.q_lora_rank": a.q_lora_rank, "attention.kv_lora_rank": a.kv_lora_rank,
        "rope.dimension_count": _rope_dim(profile),
        "expert_feed_forward_length": a.n_ff_exp, "expert_count": a.n_expert,
        "expert_used_count": a.n_expert_used, "expert_shared_count": a.n_expert_shared,
        "leading_dense_block_count": a.n_dense_lead, "vocab_size": a.n_vocab,
    }.items():  # fmt: skip
        w.add_uint32(f"{arch}.{key}", value)
    # What llama.cpp needs besides (the replica tests run llama-fit-params on these headers).
    if arch not in NEXT_ARCHS:
        w.add_float32(f"{arch}.rope.freq_base", 10000.0)
        w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
        w.add_float32(f"{arch}.expert_weights_scale", 2.5)
        w.add_bool(f"{arch}.expert_weights_norm", True)
        w.add_uint32(f"{arch}.expert_gating_func", 4 if arch == "deepseek4" else 2)  # sqrt(softplus), or sigmoid
        _arch_keys(w, profile)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("deepseek-v3")
    w.add_token_list([f"t{i}" for i in range(a.n_vocab)])
    w.add_token_types([1] * a.n_vocab)
    w.add_token_merges([f"a{i} b{i}" for i in range(N_MERGES)])
    for t in est.tensors.tensors:
        np_shape = list(reversed(t.shape))
        if t.type.name == "F32":
            w.add_tensor_info(t.name, np_shape, np.dtype(np.float32), t.nbytes)
        else:
            row_bytes = t.shape[0] // t.type.block_elems * t.type.block_bytes
            byte_shape = [*np_shape[:-1], row_bytes]
            w.add_tensor_info(
                t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=gguf.GGMLQuantizationType(t.type.id)
            )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    names = [target] if shards == 1 else [
        target.with_name(target.name.replace("-00001-of-", f"-{i:05d}-of-")) for i in range(1, shards + 1)
    ]  # fmt: skip
    tensors = list(est.tensors.tensors)
    for i, path in enumerate(names):
        mine = tensors[i * per : (i + 1) * per] if shards > 1 else tensors
        data = sum((t.nbytes + 31) // 32 * 32 for t in mine[:-1]) + mine[-1].nbytes
        start = (path.stat().st_size + 31) // 32 * 32
        with path.open("r+b") as f:
            f.truncate(start + data)
    return names
