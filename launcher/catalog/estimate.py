"""Estimated tensors of a quant when no GGUF header is at hand (offline, before any download).

Pure: no I/O. The tensor list is the real model's (names and shapes from the
profile's architecture); the types are chosen so that the routed experts carry
the quant's published expert bits (Unsloth's "down / up / gate" bits) and the
whole adds up to the quant's published size. Fractional bits are realised as a
per-layer mix of the two neighbouring ggml types, as Unsloth's own files mix
Q3_K and Q4_K down projections.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.catalog.arch_spec import ArchSpec, shape_from_arch
from launcher.catalog.profiles import Profile, QuantSpec
from launcher.model.arch_shapes import TensorList, tensor_shapes
from launcher.model.ggml_types import TYPES_BY_NAME, GGMLType
from launcher.model.hparams import HParams
from launcher.model.tensors import ModelTensor, Role, TensorSet, classify

# Types a dynamic quant draws from, by bits per weight.
# Q4_0 and Q5_0 (32-element blocks) follow their K-quant twins: rows not divisible by 256 (gpt-oss: 2880) use them.
_LADDER_NAMES = "IQ1_S TQ1_0 IQ1_M IQ2_XXS IQ2_XS IQ2_S Q2_K IQ3_XXS Q3_K IQ4_XS Q4_K Q4_0 Q5_K Q5_0 Q6_K Q8_0 F16"
LADDER = [TYPES_BY_NAME[n] for n in _LADDER_NAMES.split()]
Q1_0 = TYPES_BY_NAME["Q1_0"]  # 1.125 bits: 128 weights in 18 bytes (block_q1_0: an f16 scale + 128 sign bits)
F32 = TYPES_BY_NAME["F32"]
I32 = TYPES_BY_NAME["I32"]

# Unsloth's dynamic quants keep attention, shared experts and dense layers at "6-8 bit" (models.md §3);
# the one measured case (V3 UD-Q2_K_XL: about 18 GB over 17.1 B non-expert weights) is 8.5 bits.
# Plain quants (IQ4_XS, Q4_K_M…) keep the rest near their own type.
UD_REST_BPW = 8.5
REST_BPW_RANGE = (4.0, 16.0)
EXPERT_BPW_RANGE = (LADDER[0].bits_per_weight, 16.0)  # a UD-Q1_0's experts go down to Q1_0 (_ladder)
LAZY_DEFAULT_BPW = 4.5
# GGUF header bytes: vocabulary strings dominate (about 40 B per token with merges), ~80 B per tensor info.
HEADER_BYTES_PER_TOKEN = 40
HEADER_BYTES_PER_TENSOR = 80


@dataclass(frozen=True)
class Estimate:
    tensors: TensorSet
    hparams: HParams
    header_bytes: int
    expert_bpw: dict[str, float]  # realised bits per weight of down / up / gate experts
    rest_bpw: float


def _kind(name: str) -> str:
    """'blk.7.ffn_down_exps.weight' -> 'ffn_down_exps.weight'."""
    return name.split(".", 2)[2] if name.startswith("blk.") else name


def _expert_proj(kind: str) -> str:
    for proj in ("down", "up", "gate"):
        if kind.startswith(f"ffn_{proj}_"):
            return proj
    return "gate"  # fused gate_up: counted with gate


_F32_KINDS = ("ffn_gate_inp", "exp_probs_b", "attn_sinks", "hc_", "output_hc_", "ssm_conv1d", "ssm_a", "ssm_dt",
              "ssm_d", "_norm", "conv1d")  # fmt: skip


def _fixed_type(name: str, shape: tuple[int, ...]) -> GGMLType | None:
    """The type llama.cpp's quantizer never changes: F32 for vectors, biases, routers and small mixing
    tensors; I32 for deepseek4's hash-routing table."""
    if "ffn_gate_tid2eid" in name:
        return I32
    if len(shape) == 1 or name.endswith(".bias"):
        return F32
    kind = _kind(name)
    return F32 if any(k in kind for k in _F32_KINDS) else None


def _ladder(quant: QuantSpec) -> list[GGMLType]:
    """The types a quant's experts draw from: Unsloth's UD-Q1_0 quants go below IQ1_S with ggml's Q1_0."""
    return [Q1_0, *LADDER] if "Q1_0" in quant.name.upper() and "TQ1_0" not in quant.name.upper() else LADDER


def _mix(n_elems: list[int], row: int, bpw: float, ladder: list[GGMLType] | None = None) -> list[GGMLType]:
    """Types for a group of same-shaped tensors whose mean bits per weight is as close to bpw as possible."""
    allowed = [t for t in ladder or LADDER if row % t.block_elems == 0] or [TYPES_BY_NAME["F16"]]
    lo = max((t for t in allowed if t.bits_per_weight <= bpw), key=lambda t: t.bits_per_weight, default=allowed[0])
    hi = min((t for t in allowed if t.bits_per_weight >= bpw), key=lambda t: t.bits_per_weight, default=allowed[-1])
    if lo is hi or hi.bits_per_weight == lo.bits_per_weight:
        return [lo] * len(n_elems)
    frac = (bpw - lo.bits_per_weight) / (hi.bits_per_weight - lo.bits_per_weight)
    out, acc = [], 0.0
    for _ in n_elems:  # spread the higher type evenly over the group (Bresenham)
        acc += frac
        if acc >= 0.5:
            out.append(hi)
            acc -= 1.0
        else:
            out.append(lo)
    return out


def _n_of(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class _Group:
    """Same-kind, same-shape tensors (one per layer): they get one mix of types."""

    kind: str
    shape: tuple[int, ...]
    names: list[str]
    fixed: GGMLType | None
    expert: bool
    elems: int  # per tensor


def _lazy_type(quant: QuantSpec, row: int) -> GGMLType:
    """A lazy lookup table's type: the quant's own when known (Qwen3.8-Flash-Next's 28.8 GB PLE table is Q4_0),
    else the ladder type nearest below the experts' nominal up bits (the bulk, quantized like them)."""
    if quant.lazy_type:
        return TYPES_BY_NAME[quant.lazy_type]
    bits = quant.expert_bits.up if quant.expert_bits else LAZY_DEFAULT_BPW
    fits = [t for t in LADDER if row % t.block_elems == 0 and t.bits_per_weight <= bits + 0.2]
    return max(fits, key=lambda t: t.bits_per_weight, default=TYPES_BY_NAME["F16"])


def _groups(layout: _Layout, quant: QuantSpec) -> list[_Group]:
    out = []
    for (kind, s), names, role in layout.groups:
        fixed = _lazy_type(quant, s[0]) if role is Role.LAZY_TABLE else _fixed_type(names[0], s)
        out.append(_Group(kind, s, names, fixed, role is Role.ROUTED_EXPERT, _n_of(s)))
    return out


def _bits_split(groups: list[_Group], quant: QuantSpec, budget_bits: float) -> tuple[dict[str, float], float, dict]:
    """(expert bits per weight of down / up / gate, the rest's bits per weight, expert elements per projection)."""
    expert_elems = {"down": 0, "up": 0, "gate": 0}
    rest_elems = 0
    for g in groups:
        if g.fixed is not None:
            continue
        if g.expert:
            expert_elems[_expert_proj(g.kind)] += g.elems * len(g.names)
        else:
            rest_elems += g.elems * len(g.names)
    rest = rest_bpw(quant)
    if quant.expert_type:  # experts stored natively in one type (gpt-oss MXFP4): the rest takes the remainder
        bpw = TYPES_BY_NAME[quant.expert_type].bits_per_weight
        expert_bpw = dict.fromkeys(expert_elems, bpw)
        spent = sum(expert_elems.values()) * bpw
        return expert_bpw, min(max((budget_bits - spent) / rest_elems, 2.0), REST_BPW_RANGE[1]), expert_elems
    # The published expert bits are nominal ("2.5 bit" is Q2_K, 2.625 real): keep their down/up/gate
    # ratio and scale them so that experts + the rest add up to the published size.
    nominal = quant.expert_bits.model_dump() if quant.expert_bits else dict.fromkeys(("down", "up", "gate"), 1.0)
    weighted = sum(expert_elems[p] * nominal[p] for p in expert_elems)
    scale = (budget_bits - rest * rest_elems) / weighted
    floor = _ladder(quant)[0].bits_per_weight
    expert_bpw = {p: _clamp_expert(nominal[p] * scale, floor) for p in nominal}
    if any(nominal[p] * scale != expert_bpw[p] for p in nominal):  # clamped: the rest absorbs the difference
        spent = sum(expert_elems[p] * expert_bpw[p] for p in expert_elems)
        rest = min(max((budget_bits - spent) / rest_elems, REST_BPW_RANGE[0]), REST_BPW_RANGE[1])
    return expert_bpw, rest, expert_elems


@dataclass(frozen=True)
class _Layout:
    """An architecture's tensors as every quant of its profile shares them: names and shapes, each one's (layer,
    role) and element count, and the same-kind same-shape groups that get one mix of types."""

    shapes: TensorList
    roles: tuple[tuple[int | None, Role], ...]
    elems: tuple[int, ...]
    groups: tuple[tuple[tuple[str, tuple[int, ...]], list[str], Role], ...]


_LAYOUTS: dict[str, _Layout] = {}


def _layout(a: ArchSpec) -> _Layout:
    """Worked out once per architecture and process (`runq models` estimates every quant of every profile)."""
    key = a.model_dump_json()
    if key not in _LAYOUTS:
        if len(_LAYOUTS) >= 128:
            _LAYOUTS.clear()
        shapes = tensor_shapes(shape_from_arch(a))
        by_key: dict[tuple[str, tuple[int, ...]], list[str]] = {}
        for name, s in shapes:
            by_key.setdefault((_kind(name), s), []).append(name)
        groups = tuple((k, names, classify(names[0])[1]) for k, names in by_key.items())
        roles = tuple(classify(name) for name, _ in shapes)
        _LAYOUTS[key] = _Layout(shapes, roles, tuple(_n_of(s) for _, s in shapes), groups)
    return _LAYOUTS[key]


def estimate(profile: Profile, quant: QuantSpec) -> Estimate:
    a = profile.arch
    layout = _layout(a)
    shapes = layout.shapes
    groups = _groups(layout, quant)
    ladder = _ladder(quant)
    header = a.n_vocab * HEADER_BYTES_PER_TOKEN + len(shapes) * HEADER_BYTES_PER_TENSOR
    fixed_bytes = sum(g.fixed.nbytes(g.elems) * len(g.names) for g in groups if g.fixed is not None)
    expert_bpw, rest, expert_elems = _bits_split(groups, quant, (quant.size_bytes - header - fixed_bytes) * 8)

    types: dict[str, GGMLType] = {}
    realised_bits = dict.fromkeys(expert_elems, 0)
    for g in groups:
        if g.fixed is not None:
            chosen = [g.fixed] * len(g.names)
        elif g.expert and quant.expert_type:
            chosen = [TYPES_BY_NAME[quant.expert_type]] * len(g.names)
        elif g.expert:
            chosen = _mix([g.elems] * len(g.names), g.shape[0], expert_bpw[_expert_proj(g.kind)], ladder)
        else:
            chosen = _mix([g.elems] * len(g.names), g.shape[0], rest)
        if g.expert:
            realised_bits[_expert_proj(g.kind)] += sum(t.nbytes(g.elems) * 8 for t in chosen)
        types.update(zip(g.names, chosen, strict=True))

    tensors = []
    for (name, s), (layer, role), n in zip(shapes, layout.roles, layout.elems, strict=True):
        t = types[name]
        tensors.append(ModelTensor(name, s, t, t.nbytes(n), 0, 0, layer, role))
    return Estimate(
        tensors=TensorSet(tuple(tensors)),
        hparams=a.hparams(profile.display_name),
        header_bytes=header,
        expert_bpw={p: realised_bits[p] / expert_elems[p] for p in expert_elems if expert_elems[p]},
        rest_bpw=rest,
    )


def param_counts(profile: Profile) -> tuple[float, float]:
    """(total, active per token) parameters in billions: the published figures, else counted from the shapes."""
    if profile.params_b and profile.active_b:
        return profile.params_b, profile.active_b
    a = profile.arch
    total = active = 0.0
    for name, s in tensor_shapes(shape_from_arch(a)):
        n = _n_of(s)
        total += n
        active += n * a.n_expert_used / a.n_expert if classify(name)[1] is Role.ROUTED_EXPERT else n
    return profile.params_b or total / 1e9, profile.active_b or active / 1e9


def rest_bpw(quant: QuantSpec) -> float:
    """Assumed bits per weight of everything that is not a routed expert."""
    if quant.name.upper().startswith("UD-"):
        return UD_REST_BPW
    base = quant.name.upper()
    for suffix in ("_XL", "_L", "_M", "_S"):
        if base.endswith(suffix) and base.removesuffix(suffix) in TYPES_BY_NAME:
            base = base.removesuffix(suffix)
            break
    t = TYPES_BY_NAME.get(base)
    return max(t.bits_per_weight, REST_BPW_RANGE[0]) if t else UD_REST_BPW


def _clamp_expert(bpw: float, floor: float = EXPERT_BPW_RANGE[0]) -> float:
    return min(max(bpw, floor), EXPERT_BPW_RANGE[1])
