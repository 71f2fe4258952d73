"""What each tensor is, for the planner: its layer and its role.

Pure: no I/O. Names follow llama.cpp's `src/llama-arch.cpp` (`blk.N.<kind>.<suffix>`).
The role decides placement: routed experts are the bulk of a MoE model and are
read sparsely (experts used / experts per token), so they are what goes to CPU;
everything else is read for every token and belongs on the GPU first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from launcher.ggml_types import GGMLType


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
    ROUTED_EXPERT = "routed_expert"  # blk.N.ffn_{gate,up,down,gate_up}_{,ch}exps
    SHARED_EXPERT = "shared_expert"  # blk.N.ffn_*_shexp, ffn_gate_inp_shexp
    ROUTER = "router"  # blk.N.ffn_gate_inp, blk.N.exp_probs_b
    ATTENTION = "attention"  # blk.N.attn_* (not norms)
    DENSE_FFN = "dense_ffn"  # blk.N.ffn_{gate,up,down} of dense layers
    NORM = "norm"
    TOKEN_EMBD = "token_embd"
    OUTPUT = "output"
    OTHER = "other"  # rope factors, MTP/nextn blocks, anything new


_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([^.]+)")
_ROUTED_RE = re.compile(r"^ffn_[a-z_]+?_(?:ch)?exps$")
_DENSE_FFN = frozenset({"ffn_gate", "ffn_up", "ffn_down", "ffn_gate_up"})
_ROUTER = frozenset({"ffn_gate_inp", "exp_probs_b"})


def classify(name: str) -> tuple[int | None, Role]:  # noqa: PLR0911 - a decision table: one return per role
    """(layer index or None, role) of a tensor name."""
    m = _BLOCK_RE.match(name)
    if m is None:
        kind = name.split(".", 1)[0]
        if kind == "token_embd":
            return None, Role.TOKEN_EMBD
        if kind == "output":
            return None, Role.OUTPUT
        if kind.endswith("_norm"):
            return None, Role.NORM
        return None, Role.OTHER
    layer, kind = int(m.group(1)), m.group(2)
    if _ROUTED_RE.match(kind):
        return layer, Role.ROUTED_EXPERT
    if "shexp" in kind:
        return layer, Role.SHARED_EXPERT
    if kind in _ROUTER:
        return layer, Role.ROUTER
    if kind.endswith("_norm") or kind == "norm":
        return layer, Role.NORM
    if kind.startswith("attn_"):
        return layer, Role.ATTENTION
    if kind in _DENSE_FFN:
        return layer, Role.DENSE_FFN
    return layer, Role.OTHER


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

    @property
    def is_expert(self) -> bool:
        return self.role is Role.ROUTED_EXPERT


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
        return sum(t.nbytes for t in self.tensors if t.is_expert and (layer is None or t.layer == layer))

    def non_expert_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if not t.is_expert)

    @cached_property
    def expert_layers(self) -> tuple[int, ...]:
        """Layers that have routed experts, ascending."""
        return tuple(sorted({t.layer for t in self.tensors if t.is_expert and t.layer is not None}))

    def expert_bytes_per_layer(self) -> dict[int, int]:
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
