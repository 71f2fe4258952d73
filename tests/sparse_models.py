"""Real-shaped GGUF files without their weights: full headers, sparse data (hundreds of GB that take no disk).

They let tests serve a DeepSeek-V3.1-shaped quant from the local hub and plan it from its remote headers.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np

from launcher.catalog import Profile, QuantSpec
from launcher.estimate import estimate

N_MERGES = 127_741


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
    for key, value in {
        "block_count": a.n_layer, "context_length": a.context_length, "embedding_length": a.n_embd,
        "feed_forward_length": a.n_ff, "attention.head_count": a.n_head, "attention.head_count_kv": a.n_head_kv,
        "attention.key_length": a.key_length, "attention.value_length": a.value_length,
        "attention.key_length_mla": a.key_length_mla, "attention.value_length_mla": a.value_length_mla,
        "attention.q_lora_rank": a.q_lora_rank, "attention.kv_lora_rank": a.kv_lora_rank,
        "rope.dimension_count": a.rope_dim, "expert_feed_forward_length": a.n_ff_exp, "expert_count": a.n_expert,
        "expert_used_count": a.n_expert_used, "expert_shared_count": a.n_expert_shared,
        "leading_dense_block_count": a.n_dense_lead, "vocab_size": a.n_vocab,
    }.items():  # fmt: skip
        w.add_uint32(f"{arch}.{key}", value)
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
