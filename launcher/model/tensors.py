"""What each tensor is, for the planner: its layer and its role.

Pure: no I/O. Names follow llama.cpp's `src/llama-arch.cpp` (`blk.N.<kind>.<suffix>`).
The role decides placement: routed experts are the bulk of a MoE model and are
read sparsely (experts used / experts per token), so they are what goes to CPU;
lazy lookup tables (per-layer token embeddings, Engram n-gram tables) are read a
few rows per token and stay memory-mapped on the CPU; everything else is read for
every token and belongs on the GPU first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from launcher.model.ggml_types import GGMLType


def layer_ranges(layers: Iterable[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out: list[str] = []
    nums = sorted(set(layers))
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(f"{nums[i]}-{nums[j]}" if j > i else f"{nums[i]}")
        i = j + 1
    return ", ".join(out)


class Role(StrEnum):
    ROUTED_EXPERT = "routed_expert"  # blk.N.ffn_{gate,up,down,gate_up}_{,ch}exps, legacy blk.N.ffn_up.E
    SHARED_EXPERT = "shared_expert"  # blk.N.ffn_*_shexp, ffn_gate_inp_shexp
    ROUTER = "router"  # blk.N.ffn_gate_inp, exp_probs_b, ffn_gate_tid2eid (hash routing)
    MOE_LATENT = "moe_latent"  # blk.N.ffn_latent_*, ffn_routed_*: every token passes them (latent MoE)
    ATTENTION = "attention"  # blk.N.attn_* (not norms), incl. compressed attention (attn_compressor_*)
    INDEXER = "indexer"  # blk.N.indexer.*, indexer_compressor_* (DSA lightning indexer)
    RECURRENT = "recurrent"  # blk.N.ssm_*, time_mix_*, shortconv.* (linear attention / SSM layers)
    HYPER_CONNECTION = "hyper_connection"  # blk.N.hc_*, output_hc_* (manifold hyper-connections)
    MTP = "mtp"  # blk.N.nextn.* (multi-token prediction layer)
    DENSE_FFN = "dense_ffn"  # blk.N.ffn_{gate,up,down} of dense layers
    NORM = "norm"
    TOKEN_EMBD = "token_embd"
    # per_layer_token_embd, blk.N.engram_embd: row-lookup tables llama.cpp reads on demand (TENSOR_READ_LAZY,
    # --lazy-mode; qwen4exp's n-gram PLE, gemma4's per-layer embeddings, DeepSeek-V4.1's Engram): a few rows per
    # token, tens of GB, kept on the CPU and memory-mapped rather than resident
    LAZY_TABLE = "lazy_table"
    OUTPUT = "output"
    OTHER = "other"  # rope factors and other small known tensors
    UNKNOWN = "unknown"  # a name runq does not know: kept with the layer (GPU side), reported by name


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([^.]+)(?:\.(\d+))?")
_ROUTED_RE = re.compile(r"^ffn_[a-z_]+?_(?:ch)?exps$")
_LEGACY_EXPERT = frozenset({"ffn_gate", "ffn_up", "ffn_down"})  # blk.N.ffn_up.E.weight (one tensor per expert)
_DENSE_FFN = frozenset({"ffn_gate", "ffn_up", "ffn_down", "ffn_gate_up"})
_ROUTER = frozenset({"ffn_gate_inp", "exp_probs_b", "exp_probs_b_vl", "ffn_gate_tid2eid"})
_RECURRENT_PREFIXES = ("ssm_", "time_mix_", "channel_mix_", "shortconv")
_OTHER_GLOBAL = frozenset(
    {"rope_freqs", "rope_factors_long", "rope_factors_short", "token_types", "position_embd", "output_res_score",
     "per_layer_model_proj", "dense_2", "dense_3", "altup_proj", "altup_unembd_proj",
     "masked_embd_centroids", "masked_embd_ordering",  # gemma4-assistant's masked embedding
     # draft-model heads (eagle3, dflash)
     "fc", "d2t", "markov_w1", "markov_w2", "conf_proj",
     "selector_hidden", "selector_predecessor", "selector_successor"}
)  # fmt: skip
# qwen4exp's ple_key / ple_value / ple_conv1d are the PLE module's projections: read for every token, unlike its table
_OTHER_IN_BLOCK = frozenset(
    {"ffn", "attn_rot_embd", "layer_output_scale", "inp_gate", "proj", "attn_res_score", "ffn_res_score",
     "ple_key", "ple_value", "ple_conv1d", "ffn_conv_base", "ffn_conv_proj", "attn_conv_base", "attn_conv_proj",
     "altup_correct_coef", "altup_correct_scale", "altup_predict_coef", "altup_router", "laurel_l", "laurel_r"}
)  # fmt: skip


def classify(name: str) -> tuple[int | None, Role]:
    """(layer index or None, role) of a tensor name (llama.cpp's `LLM_TENSOR_NAMES` at the pinned commit)."""
    m = _BLOCK_RE.match(name)
    if m is None:
        return None, _global_role(name.split(".", 1)[0])
    layer, kind = int(m.group(1)), m.group(2)
    if m.group(3) is not None:  # blk.N.ffn_up.E.weight: a legacy per-expert tensor
        return layer, Role.ROUTED_EXPERT if kind in _LEGACY_EXPERT else Role.UNKNOWN
    return layer, _block_role(kind)


LAZY_TABLES = frozenset({"per_layer_token_embd", "engram_embd"})
# Kept on the CPU by llama.cpp whatever -ngl says, and not read whole per token: the input embedding (one row) and
# the lazy lookup tables (a few rows, gathered on the host: llama_model_loader::lazy_read::buft).
INPUT_SIDE_ROLES = frozenset({Role.TOKEN_EMBD, Role.LAZY_TABLE})


def _global_role(kind: str) -> Role:  # noqa: PLR0911 - a decision table, as _block_role
    if kind in LAZY_TABLES:
        return Role.LAZY_TABLE
    if kind == "token_embd":
        return Role.TOKEN_EMBD
    if kind == "output":
        return Role.OUTPUT
    if kind.startswith("output_hc_"):
        return Role.HYPER_CONNECTION
    if kind.endswith("_norm") or kind == "enc":  # enc.output_norm
        return Role.NORM
    if kind == "nextn":
        return Role.MTP
    return Role.OTHER if kind in _OTHER_GLOBAL else Role.UNKNOWN


def _block_role(kind: str) -> Role:  # noqa: PLR0911, PLR0912 - a decision table: one return per role, in priority order
    if kind == "ffn_norm_exps":  # arctic: a norm vector in front of the experts, not an expert tensor
        return Role.NORM
    if kind in LAZY_TABLES:  # DeepSeek-V4.1 Engram tables sit in their layer (blk.1, blk.14)
        return Role.LAZY_TABLE
    if _ROUTED_RE.match(kind):
        return Role.ROUTED_EXPERT
    if "shexp" in kind:
        return Role.SHARED_EXPERT
    if kind in _ROUTER:
        return Role.ROUTER
    if kind.startswith(("ffn_latent_", "ffn_routed_")):  # nemotron-h latent MoE, kimi-k3 routed projections
        return Role.MOE_LATENT
    if kind == "nextn":
        return Role.MTP
    if kind == "indexer" or kind.startswith("indexer_"):
        return Role.INDEXER
    if kind.startswith("hc_"):
        return Role.HYPER_CONNECTION
    if kind.startswith(_RECURRENT_PREFIXES):
        return Role.RECURRENT
    if kind.endswith("_norm") or kind == "norm" or kind.startswith(("post_", "pre_ffw_norm", "ple_norm_", "attn_norm")):
        return Role.NORM
    if kind.startswith("attn_"):
        return Role.ATTENTION
    if kind in _DENSE_FFN:
        return Role.DENSE_FFN
    return Role.OTHER if kind in _OTHER_IN_BLOCK else Role.UNKNOWN


def unknown_tensors(names: Iterable[str]) -> list[str]:
    """The names runq cannot classify (kept on the GPU side of a plan, never moved as experts)."""
    return [n for n in names if classify(n)[1] is Role.UNKNOWN]


@dataclass(frozen=True, slots=True)
class ModelTensor:
    """One tensor of a (possibly split) model, with where its bytes live."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    nbytes: int
    shard: int  # 0-based index into the model's shards
    offset: int  # absolute byte offset in that shard's file
    layer: int | None
    role: Role
    is_expert: bool = field(init=False, repr=False, compare=False)  # role is ROUTED_EXPERT (asked millions of times)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_expert", self.role is Role.ROUTED_EXPERT)


@dataclass(frozen=True)
class TensorSet:
    """A model's tensors with the sums the planner asks for."""

    tensors: tuple[ModelTensor, ...]

    @cached_property
    def _by_name(self) -> dict[str, ModelTensor]:
        return {t.name: t for t in self.tensors}

    def __getitem__(self, name: str) -> ModelTensor:
        return self._by_name[name]

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def bytes_by_role(self) -> dict[Role, int]:
        out: dict[Role, int] = {}
        for t in self.tensors:
            out[t.role] = out.get(t.role, 0) + t.nbytes
        return out

    def expert_bytes(self, layer: int | None = None) -> int:
        """Routed-expert bytes of one layer, or of the whole model when layer is None."""
        per_layer = self._expert_bytes_per_layer
        if layer is None:
            return sum(t.nbytes for t in self.tensors if t.is_expert)
        return per_layer.get(layer, 0)

    @cached_property
    def largest_expert_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors if t.is_expert), default=0)

    @cached_property
    def lazy_tables(self) -> tuple[str, ...]:
        """The row-lookup tables (Role.LAZY_TABLE), in file order."""
        return tuple(t.name for t in self.tensors if t.role is Role.LAZY_TABLE)

    def non_expert_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if not t.is_expert)

    def lazy_table_bytes(self) -> int:
        """Bytes of the row-lookup tables llama.cpp can read on demand (Role.LAZY_TABLE)."""
        return sum(t.nbytes for t in self.tensors if t.role is Role.LAZY_TABLE)

    @cached_property
    def expert_layers(self) -> tuple[int, ...]:
        """Layers that have routed experts, ascending."""
        return tuple(sorted({t.layer for t in self.tensors if t.is_expert and t.layer is not None}))

    def expert_bytes_per_layer(self) -> dict[int, int]:
        return dict(self._expert_bytes_per_layer)

    @cached_property
    def _expert_bytes_per_layer(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for t in self.tensors:
            if t.is_expert and t.layer is not None:
                out[t.layer] = out.get(t.layer, 0) + t.nbytes
        return dict(sorted(out.items()))

    def type_histogram(self) -> dict[str, int]:
        """Tensor count per ggml type name, most common first."""
        return dict(Counter(t.type.name for t in self.tensors).most_common())

    def type_bytes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type.name] = out.get(t.type.name, 0) + t.nbytes
        return out


def loaded_tensors(tensors: TensorSet, n_layer: int, n_nextn: int) -> TensorSet:
    """The tensors llama.cpp loads: without the trailing NextN/MTP layers' (block_count - nextn_predict_layers
    and up), which its loaders create with TENSOR_SKIP unless MTP drafting is on — no memory, no -ot lines."""
    if not n_nextn:
        return tensors
    first = n_layer - n_nextn
    return TensorSet(tuple(t for t in tensors.tensors if t.layer is None or t.layer < first))
