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

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import arch_shapes
from launcher.arch_shapes import Arch, Shape

if TYPE_CHECKING:
    import numpy as np

_CORPUS = """
The quick brown fox jumps over the lazy dog. A mixture of experts model routes every token
to a few experts out of many, so most of its weights sit idle for any one token. That is why
the experts can live in system memory while attention and the shared weights stay on the GPU.
Hello there! How are you today? I am fine, thank you. What is the capital of France? Paris is.
Please write a short poem about the sea, the wind and the stars in the night sky above us all.
The model reads the prompt, thinks for a while and then answers with the words it has learned.
"""

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
    n_dense_lead: int = 1  # deepseek2 only
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
    n_merges: int = 120
    seed: int = 0
    name: str = field(default="")

    def with_(self, **kw: Any) -> SynthSpec:
        return replace(self, **kw)


@dataclass(frozen=True)
class SynthModel:
    spec: SynthSpec
    paths: tuple[Path, ...]  # shard 1 first

    @property
    def path(self) -> Path:
        return self.paths[0]


# --- tokenizer -------------------------------------------------------------------------------


@cache
def _byte_encoder() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies store)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def bpe_vocab(n_merges: int) -> tuple[list[str], list[str]]:
    """(tokens, merges) of a byte-level BPE trained on a small fixed corpus: deterministic."""
    enc = _byte_encoder()
    words = Counter(
        "".join(enc[b] for b in w.encode("utf-8"))
        for w in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", _CORPUS)
    )
    splits = {w: list(w) for w in words}
    tokens = [enc[b] for b in range(256)]
    known = set(tokens)
    merges: list[str] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, count in words.items():
            parts = splits[w]
            for a, b in itertools.pairwise(parts):
                pairs[a, b] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        if merged not in known:
            tokens.append(merged)
            known.add(merged)
        for w, parts in splits.items():
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            splits[w] = out
    return tokens, merges


# --- tensors ---------------------------------------------------------------------------------


def shape_of(spec: SynthSpec) -> Shape:
    ds = spec.arch == "deepseek2"
    return Shape(
        arch=spec.arch,
        n_layer=spec.n_layer,
        n_vocab=_n_vocab(spec),
        n_embd=spec.n_embd,
        n_ff=spec.n_ff,
        n_ff_exp=spec.n_ff_exp,
        n_expert=spec.n_expert,
        n_dense_lead=spec.n_dense_lead if ds else 0,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,
        head_dim=spec.head_dim,
        n_expert_shared=1 if ds else 0,
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
    specials = DEEPSEEK_SPECIALS if spec.arch == "deepseek2" else QWEN_SPECIALS
    return len(tokens) + len(specials)


def _tensor_type(spec: SynthSpec, name: str, shape: tuple[int, ...]) -> str:
    if len(shape) == 1 or "ffn_gate_inp" in name or "exp_probs_b" in name:
        return "F32"
    wanted = spec.expert_type if (spec.expert_type and "_exps." in name) else spec.weight_type
    from launcher.ggml_types import type_by_name

    return wanted if shape[0] % type_by_name(wanted).block_elems == 0 else "F16"


def _tensor_data(rng: np.random.Generator, name: str, shape: tuple[int, ...], type_name: str) -> tuple[Any, Any]:
    """(array, raw ggml type or None) for GGUFWriter.add_tensor."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    np_shape = tuple(reversed(shape))
    if name.endswith("norm.weight"):
        values = np.ones(np_shape, dtype=np.float32)
    elif "exp_probs_b" in name:
        values = np.zeros(np_shape, dtype=np.float32)
    else:
        values = (rng.standard_normal(np_shape, dtype=np.float32) * 0.02).astype(np.float32)
    qtype = GGMLQuantizationType[type_name]
    if qtype == GGMLQuantizationType.F32:
        return values, None
    if qtype == GGMLQuantizationType.F16:
        return values.astype(np.float16), None
    try:
        return quantize(values, qtype), qtype
    except NotImplementedError:
        from launcher.ggml_types import type_by_name

        t = type_by_name(type_name)
        row_bytes = shape[0] // t.block_elems * t.block_bytes
        return np.zeros((*np_shape[:-1], row_bytes), dtype=np.uint8), qtype


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
    w.add_uint32(f"{a}.block_count", spec.n_layer)
    w.add_uint32(f"{a}.attention.head_count", spec.n_head)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{a}.expert_count", spec.n_expert)
    w.add_uint32(f"{a}.expert_used_count", spec.n_expert_used)
    w.add_uint32(f"{a}.expert_feed_forward_length", spec.n_ff_exp)
    tokens, merges = bpe_vocab(spec.n_merges)
    if a == "deepseek2":
        w.add_uint32(f"{a}.feed_forward_length", spec.n_ff)
        w.add_uint32(f"{a}.attention.head_count_kv", 1)
        w.add_uint32(f"{a}.leading_dense_block_count", spec.n_dense_lead)
        w.add_uint32(f"{a}.vocab_size", len(tokens) + len(DEEPSEEK_SPECIALS))
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
        specials, pre, template = DEEPSEEK_SPECIALS, "deepseek-v3", DEEPSEEK_TEMPLATE
        bos, eos = len(tokens), len(tokens) + 1
    else:
        w.add_uint32(f"{a}.feed_forward_length", spec.n_ff)
        w.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
        w.add_uint32(f"{a}.attention.key_length", spec.head_dim)
        w.add_uint32(f"{a}.attention.value_length", spec.head_dim)
        specials, pre, template = QWEN_SPECIALS, "qwen2", CHATML_TEMPLATE
        bos, eos = len(tokens), len(tokens) + 2  # <|endoftext|>, <|im_end|>
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens + specials)
    w.add_token_types([token_type.NORMAL] * len(tokens) + [token_type.CONTROL] * len(specials))
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(a == "deepseek2")
    w.add_chat_template(template)
