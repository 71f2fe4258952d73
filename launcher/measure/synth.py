"""Tiny random-weight MoE models that real llama.cpp loads and runs.

Written with the official `gguf` package (imported lazily: it pulls numpy).
Used by the tests, the benchmarks and `runq demo`; the output of such a model
is gibberish by design. The metadata recipe follows llama.cpp's loaders
(`src/models/deepseek2.cpp`, `src/models/qwen3moe.cpp`): deepseek2 with MLA
attention, leading dense layers, routed + shared experts and sigmoid gating
with `exp_probs_b`; qwen3moe with GQA and routed experts only. Both carry a
byte-level BPE tokenizer with real merges and a chat template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.measure.vocab import bpe_vocab
from launcher.model import arch_metadata, arch_shapes
from launcher.model.arch_metadata import DSV4_RATIOS
from launcher.model.arch_shapes import Arch, Shape

if TYPE_CHECKING:
    import numpy as np

DEEPSEEK_SPECIALS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜></think>{{ m['content'] }}<｜end▁of▁sentence｜>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜></think>{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class SynthSpec:
    """Shape of a generated model. Defaults give a model of about 1 MiB that loads in well under a second."""

    arch: Arch = "deepseek2"
    n_layer: int = 4
    n_dense_lead: int = 1  # deepseek2 and glm4moe only
    n_expert: int = 8
    n_expert_used: int = 2
    n_embd: int = 64
    n_ff: int = 128  # dense FFN width (deepseek2 leading layers)
    n_ff_exp: int = 32  # expert FFN width
    n_head: int = 4
    n_head_kv: int = 2  # qwen3moe only; MLA caches one latent "head"
    head_dim: int = 32  # qwen3moe
    q_lora_rank: int = 32  # deepseek2
    kv_lora_rank: int = 32
    qk_nope_dim: int = 32
    qk_rope_dim: int = 16
    v_head_dim: int = 32
    n_ctx_train: int = 32768
    weight_type: str = "Q8_0"  # any ggml type name; types gguf-py cannot quantize are written as zeros
    expert_type: str | None = None  # routed experts' type, default weight_type
    fused_gate_up: bool = False  # one ffn_gate_up_exps instead of ffn_gate_exps + ffn_up_exps
    n_nextn: int = 0  # glm4moe, glm5-next, nemotron_h_moe: NextN/MTP layers after the trunk (n_layer: the trunk)
    sliding_window: int = 0  # gpt-oss: window of the sliding-window layers (every other layer)
    full_attn_interval: int = 4  # qwen35moe: every 4th layer full attention, the others gated DeltaNet
    ssm_d_state: int = 16  # qwen35moe linear attention: head size, key heads, value heads
    ssm_n_group: int = 2
    ssm_dt_rank: int = 4
    layer_pattern: str = ""  # nemotron_h_moe (M/*/E/-), kimi-k3 / glm5-next (K/A): one letter per trunk layer
    ple_rows: int = 1024  # qwen4exp: rows of its n-gram table (per_layer_token_embd, a lazy lookup table)
    n_embd_per_layer: int = 0  # gemma4: per-layer token embeddings of this width (0: none, like the 26B)
    lazy_type: str | None = None  # the lookup table's type (default weight_type)
    chat_template: bool = True  # write tokenizer.chat_template (False: a GGUF without one, as some converters make)
    n_merges: int = 120
    seed: int = 0
    name: str = field(default="")
    extra_kv: tuple[tuple[str, float | int], ...] = ()  # more metadata, e.g. ("general.sampling.temp", 0.7)

    def with_(self, **kw: Any) -> SynthSpec:
        return replace(self, **kw)


@dataclass(frozen=True)
class SynthModel:
    spec: SynthSpec
    paths: tuple[Path, ...]  # shard 1 first

    @property
    def path(self) -> Path:
        return self.paths[0]


# --- tensors ---------------------------------------------------------------------------------


MLA = ("deepseek2", "deepseek32", "glm-dsa", "mistral4")  # MLA attention (mistral4: deepseek2's loader)
DEEPSEEK_TOKENS = (*MLA, "deepseek4")  # DeepSeek's tokens and template
SHARED_EXPERT_ARCHS = (*DEEPSEEK_TOKENS, "glm4moe", "qwen35moe", "qwen3next")
NEXTN_ARCHS = ("glm4moe", "glm5-next", "nemotron_h_moe")
HYBRIDS = ("qwen35moe", "qwen3next")


def shape_of(spec: SynthSpec) -> Shape:
    if spec.arch in arch_shapes.NEXT_ARCHS:
        return replace(arch_metadata.next_shape(spec), n_vocab=_n_vocab(spec))
    return Shape(
        arch=spec.arch,
        n_layer=spec.n_layer,
        n_vocab=_n_vocab(spec),
        n_embd=spec.n_embd,
        n_ff=spec.n_ff,
        n_ff_exp=spec.n_ff_exp,
        n_expert=spec.n_expert,
        n_dense_lead=spec.n_dense_lead if spec.arch in (*MLA, "glm4moe") else 0,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,
        head_dim=spec.head_dim,
        n_expert_shared=1 if spec.arch in SHARED_EXPERT_ARCHS else 0,
        n_nextn=spec.n_nextn if spec.arch == "glm4moe" else 0,
        n_ff_shexp=spec.n_ff_exp if spec.arch in HYBRIDS else 0,
        full_attn_interval=spec.full_attn_interval if spec.arch in HYBRIDS else 0,
        indexer_n_head=4 if spec.arch in ("deepseek32", "glm-dsa", "deepseek4") else 0,
        indexer_head_size=64 if spec.arch in ("deepseek32", "glm-dsa", "deepseek4") else 0,  # rotated in 64s
        n_expert_used=spec.n_expert_used,
        o_groups=2,
        o_lora_rank=spec.q_lora_rank,
        hc_mult=4 if spec.arch == "deepseek4" else 0,
        hash_layers=1,
        compress_ratios=DSV4_RATIOS[: spec.n_layer] if spec.arch == "deepseek4" else (),
        ssm_d_conv=4,
        ssm_d_state=spec.ssm_d_state,
        ssm_n_group=spec.ssm_n_group,
        ssm_dt_rank=spec.ssm_dt_rank,
        attn_bias=spec.arch == "gpt-oss",
        q_lora_rank=spec.q_lora_rank,
        kv_lora_rank=spec.kv_lora_rank,
        qk_nope_dim=spec.qk_nope_dim,
        qk_rope_dim=spec.qk_rope_dim,
        v_head_dim=spec.v_head_dim,
        fused_gate_up=spec.fused_gate_up,
    )


def tensor_shapes(spec: SynthSpec) -> list[tuple[str, tuple[int, ...]]]:
    """(name, ggml ne shape) of every tensor, in file order."""
    return arch_shapes.tensor_shapes(shape_of(spec))


def _n_vocab(spec: SynthSpec) -> int:
    tokens, _ = bpe_vocab(spec.n_merges)
    specials = DEEPSEEK_SPECIALS if spec.arch in DEEPSEEK_TOKENS else QWEN_SPECIALS
    return len(tokens) + len(specials)


def _tensor_type(spec: SynthSpec, name: str, shape: tuple[int, ...]) -> str:
    if "ffn_gate_tid2eid" in name:  # deepseek4 hash routing: expert ids per token
        return "I32"
    if len(shape) == 1 or name.endswith(".bias") or "ffn_gate_inp" in name or "exp_probs_b" in name:
        return "F32"
    if "hc_" in name or "_ape." in name:  # deepseek4 hyper-connection mixers and compressor positions
        return "F32"
    if "ssm_conv1d" in name or "ssm_alpha" in name or "ssm_beta" in name:  # small, kept F32 as converters do
        return "F32"
    if "norm" in name or "conv1d" in name or name.endswith((".ssm_a", ".ssm_d")):  # 2-D gammas (hyper-connection,
        return "F32"  # PLE, mamba2 group norms), convolutions and mamba2's A / D: element-wise ops want F32
    wanted = spec.expert_type if (spec.expert_type and "_exps." in name) else spec.weight_type
    if spec.lazy_type and name.startswith("per_layer_token_embd."):
        wanted = spec.lazy_type
    from launcher.model.ggml_types import type_by_name

    return wanted if shape[0] % type_by_name(wanted).block_elems == 0 else "F16"


def _tensor_data(rng: np.random.Generator, name: str, shape: tuple[int, ...], type_name: str) -> tuple[Any, Any]:
    """(array, raw ggml type or None) for GGUFWriter.add_tensor."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    np_shape = tuple(reversed(shape))
    qtype = GGMLQuantizationType[type_name]
    if qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.I32) and not (
        _can_quantize(type_name)
    ):
        # Zeros of the right size, without drawing random values first (GBs of them for the big test models).
        from launcher.model.ggml_types import type_by_name

        t = type_by_name(type_name)
        row_bytes = shape[0] // t.block_elems * t.block_bytes
        return np.zeros((*np_shape[:-1], row_bytes), dtype=np.uint8), qtype
    if type_name == "I32":  # hash routing table: each token's experts, distinct per row
        n_expert_used = shape[0]
        return (
            rng.permuted(np.tile(np.arange(2 * n_expert_used, dtype=np.int32), (np_shape[0], 1)), axis=1)[
                :, :n_expert_used
            ].copy(),
            None,
        )
    if name.endswith("norm.weight"):
        values = np.ones(np_shape, dtype=np.float32)
    elif name.endswith(".ssm_a"):  # the DeltaNet decay: negative, as -exp(A_log)
        values = -np.ones(np_shape, dtype=np.float32)
    elif "exp_probs_b" in name:
        values = np.zeros(np_shape, dtype=np.float32)
    else:
        values = (rng.standard_normal(np_shape, dtype=np.float32) * 0.02).astype(np.float32)
    if qtype == GGMLQuantizationType.F32:
        return values, None
    if qtype == GGMLQuantizationType.F16:
        return values.astype(np.float16), None
    return quantize(values, qtype), qtype


@cache
def _can_quantize(type_name: str) -> bool:
    """Whether gguf-py implements this type's quantization (Q8_0 yes, the K-quants no)."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from launcher.model.ggml_types import type_by_name

    try:
        quantize(np.zeros((1, type_by_name(type_name).block_elems), dtype=np.float32), GGMLQuantizationType[type_name])
    except NotImplementedError:
        return False
    return True


# --- writer ----------------------------------------------------------------------------------


def write_model(spec: SynthSpec, path: str | Path, *, shards: int = 1) -> SynthModel:
    """Write the model to `path` (a .gguf name); with shards > 1, as `<stem>-0000k-of-0000N.gguf`."""
    import numpy as np
    from gguf import GGUFWriter, TokenType

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(spec)
    per_shard = math.ceil(len(shapes) / shards) if shards > 1 else 0
    w = GGUFWriter(path, spec.arch, split_max_tensors=per_shard)
    _write_metadata(w, spec, TokenType)
    rng = np.random.default_rng(spec.seed)
    for name, shape in shapes:
        data, raw = _tensor_data(rng, name, shape, _tensor_type(spec, name, shape))
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if shards > 1:
        paths = tuple(path.with_name(f"{path.stem}-{i:05d}-of-{shards:05d}.gguf") for i in range(1, shards + 1))
    else:
        paths = (path,)
    return SynthModel(spec=spec, paths=paths)


def _write_metadata(w: Any, spec: SynthSpec, token_type: Any) -> None:
    a = spec.arch
    file_types = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}
    w.add_name(spec.name or f"runq tiny {a}")
    w.add_uint32("general.file_type", file_types.get(spec.weight_type, 7))
    w.add_uint32(f"{a}.context_length", spec.n_ctx_train)
    w.add_uint32(f"{a}.embedding_length", spec.n_embd)
    w.add_uint32(f"{a}.block_count", spec.n_layer + (spec.n_nextn if a in NEXTN_ARCHS else 0))
    w.add_uint32(f"{a}.attention.head_count", spec.n_head)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{a}.expert_count", spec.n_expert)
    w.add_uint32(f"{a}.expert_used_count", spec.n_expert_used)
    w.add_uint32(f"{a}.expert_feed_forward_length", spec.n_ff_exp)
    tokens, merges = bpe_vocab(spec.n_merges)
    if a == "deepseek4" or a in arch_shapes.NEXT_ARCHS:
        arch_metadata.write_metadata(w, shape_of(spec), sliding_window=spec.sliding_window)
    if a == "deepseek4":
        w.add_uint32(f"{a}.vocab_size", len(tokens) + len(DEEPSEEK_SPECIALS))
        specials, pre, template = DEEPSEEK_SPECIALS, "deepseek-v3", DEEPSEEK_TEMPLATE
        bos, eos = len(tokens), len(tokens) + 1
    elif a in MLA:
        _deepseek2_metadata(w, spec, len(tokens))
        specials, pre, template = DEEPSEEK_SPECIALS, "deepseek-v3", DEEPSEEK_TEMPLATE
        bos, eos = len(tokens), len(tokens) + 1
    else:
        if a not in arch_shapes.NEXT_ARCHS:
            _gqa_metadata(w, spec)
        specials, pre, template = QWEN_SPECIALS, "qwen2", CHATML_TEMPLATE
        bos, eos = len(tokens), len(tokens) + 2  # <|endoftext|>, <|im_end|>
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens + specials)
    w.add_token_types([token_type.NORMAL] * len(tokens) + [token_type.CONTROL] * len(specials))
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(a in DEEPSEEK_TOKENS)
    if spec.chat_template:
        w.add_chat_template(template)
    for key, value in spec.extra_kv:
        if isinstance(value, int):
            w.add_int32(key, value)
        else:
            w.add_float32(key, value)


def _deepseek2_metadata(w: Any, spec: SynthSpec, n_tokens: int) -> None:
    a = spec.arch
    w.add_uint32(f"{a}.feed_forward_length", spec.n_ff)
    w.add_uint32(f"{a}.attention.head_count_kv", 1)
    w.add_uint32(f"{a}.leading_dense_block_count", spec.n_dense_lead)
    w.add_uint32(f"{a}.vocab_size", n_tokens + len(DEEPSEEK_SPECIALS))
    w.add_uint32(f"{a}.attention.q_lora_rank", spec.q_lora_rank)
    w.add_uint32(f"{a}.attention.kv_lora_rank", spec.kv_lora_rank)
    w.add_uint32(f"{a}.attention.key_length", spec.kv_lora_rank + spec.qk_rope_dim)
    w.add_uint32(f"{a}.attention.value_length", spec.kv_lora_rank)
    w.add_uint32(f"{a}.attention.key_length_mla", spec.qk_nope_dim + spec.qk_rope_dim)
    w.add_uint32(f"{a}.attention.value_length_mla", spec.v_head_dim)
    w.add_uint32(f"{a}.rope.dimension_count", spec.qk_rope_dim)
    w.add_uint32(f"{a}.expert_shared_count", 1)
    w.add_float32(f"{a}.expert_weights_scale", 2.5)
    w.add_bool(f"{a}.expert_weights_norm", True)
    w.add_uint32(f"{a}.expert_gating_func", 2)  # sigmoid
    if a in ("deepseek32", "glm-dsa"):  # the DSA lightning indexer
        w.add_uint32(f"{a}.attention.indexer.head_count", 4)
        w.add_uint32(f"{a}.attention.indexer.key_length", 64)
        w.add_uint32(f"{a}.attention.indexer.top_k", 64)


def _gqa_metadata(w: Any, spec: SynthSpec) -> None:
    """qwen3moe, gpt-oss, glm4moe, minimax-m2 and qwen35moe: GQA attention, each with its own extras
    (the keys their `load_arch_hparams` read at the pinned llama.cpp)."""
    a = spec.arch
    w.add_uint32(f"{a}.feed_forward_length", spec.n_ff_exp if a == "minimax-m2" else spec.n_ff)
    w.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", spec.head_dim)
    w.add_uint32(f"{a}.attention.value_length", spec.head_dim)
    if a == "gpt-oss":
        w.add_uint32(f"{a}.attention.sliding_window", spec.sliding_window or 128)
        w.add_uint32(f"{a}.rope.dimension_count", spec.head_dim)
    if a in ("glm4moe", "minimax-m2"):
        w.add_uint32(f"{a}.rope.dimension_count", spec.head_dim // 2)  # partial rotary, as GLM-4.x and MiniMax
        w.add_uint32(f"{a}.expert_gating_func", 2)  # sigmoid with exp_probs_b
    if a == "glm4moe":
        w.add_uint32(f"{a}.leading_dense_block_count", spec.n_dense_lead)
        w.add_uint32(f"{a}.expert_shared_count", 1)
        w.add_float32(f"{a}.expert_weights_scale", 2.5)
        w.add_bool(f"{a}.expert_weights_norm", True)
        w.add_uint32(f"{a}.nextn_predict_layers", spec.n_nextn)
    if a in HYBRIDS:
        rot = spec.head_dim // 4  # partial rotary (Qwen3.5: 64 of 256), split in mrope sections (qwen35moe)
        w.add_uint32(f"{a}.rope.dimension_count", rot)
        if a == "qwen35moe":
            w.add_array(f"{a}.rope.dimension_sections", [rot // 2 - rot // 4, rot // 4, 0, 0])
        w.add_uint32(f"{a}.expert_shared_feed_forward_length", spec.n_ff_exp)
        w.add_uint32(f"{a}.ssm.conv_kernel", 4)
        w.add_uint32(f"{a}.ssm.state_size", spec.ssm_d_state)
        w.add_uint32(f"{a}.ssm.group_count", spec.ssm_n_group)
        w.add_uint32(f"{a}.ssm.time_step_rank", spec.ssm_dt_rank)
        w.add_uint32(f"{a}.ssm.inner_size", spec.ssm_d_state * spec.ssm_dt_rank)
        w.add_uint32(f"{a}.full_attention_interval", spec.full_attn_interval)
