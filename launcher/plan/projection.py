"""llama.cpp's own memory projection as a planning input, and the sizes the planner uses with or without it.

Pure: no I/O. The edge (launcher/fitparams.py) runs `llama-fit-params -fitp on` with a
plan's flags and hands the result in as a `Projection`; `SizeBook` answers the
planner's questions (KV cache bytes of some layers, compute bytes of a device) from
the projection where it applies and from memory.py's model otherwise, and says
which one each number came from.

What a projection is good for (llama-cpp.md, "Sizes llama.cpp projects"):
- context (KV cache, recurrent state, sliding windows): exact, and the same on every
  backend, so a CPU build's projection also holds for a described GPU machine;
- compute: exact for the devices the build has (the CPU, and GPUs when it is a CUDA
  build on this machine); a described GPU takes memory.py's CUDA model instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.model.hparams import HParams
from launcher.plan import kv_cache, serving
from launcher.plan import memory as mem
from launcher.units import MiB

ESTIMATE = "runq estimate"
CPU = "CPU"


@dataclass(frozen=True)
class DeviceRow:
    """One device of `llama-fit-params -fitp on` (MiB, rounded down by llama.cpp), in bytes."""

    name: str  # "CUDA0", …, or "CPU" for llama.cpp's "Host"
    model_bytes: int
    context_bytes: int
    compute_bytes: int


@dataclass(frozen=True)
class Projection:
    """What llama.cpp projected for one set of flags."""

    build: str  # the build's short commit, e.g. "0c1e570"
    ctx: int
    ubatch: int
    cache_type_k: str
    cache_type_v: str
    rows: tuple[DeviceRow, ...]

    @property
    def source(self) -> str:
        return f"llama.cpp projection, build {self.build}"

    @property
    def context_bytes(self) -> int:
        return sum(r.context_bytes for r in self.rows)

    @property
    def has_gpus(self) -> bool:
        return any(r.name != CPU for r in self.rows)

    def row(self, name: str) -> DeviceRow | None:
        return next((r for r in self.rows if r.name == name), None)

    def same_cache(self, ctx: int, cache_type_k: str, cache_type_v: str) -> bool:
        return (self.ctx, self.cache_type_k, self.cache_type_v) == (ctx, cache_type_k, cache_type_v)


def parse_fit_print(stdout: str) -> tuple[DeviceRow, ...]:
    """The device rows `llama-fit-params -fitp on` prints: `NAME model context compute` in MiB."""
    rows = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            continue
        name = CPU if parts[0] == "Host" else parts[0]
        model, context, compute = (int(p) * MiB for p in parts[1:])
        rows.append(DeviceRow(name, model, context, compute))
    if not any(r.name == CPU for r in rows):
        raise ValueError("no Host row in llama-fit-params' output")
    return tuple(rows)


def distribute(total: int, weights: Sequence[int]) -> tuple[int, ...]:
    """`total` split over the layers in proportion to `weights` (evenly when all are 0); sums to total exactly."""
    n = len(weights)
    if n == 0:
        return ()
    w = list(weights) if sum(weights) > 0 else [1] * n
    s = sum(w)
    parts = [total * x // s for x in w]
    order = sorted(range(n), key=lambda i: -(total * w[i] % s))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return tuple(parts)


class SizeBook:
    """KV and compute bytes for one placement attempt (one ctx, cache types and ubatch), with their sources."""

    def __init__(
        self,
        hp: HParams,
        ctx: int,
        cache_type_k: str,
        cache_type_v: str,
        ubatch: int,
        projections: Sequence[Projection] = (),
        slots: int = 1,
        *,
        mtp: bool = False,
    ) -> None:
        """`mtp`: MTP drafting is on (--spec-type draft-mtp): the NextN layers' own KV cache and a second compute
        buffer (the MTP context's) come on top; llama-fit-params cannot project those, so they are runq's."""
        self.hp, self.ctx, self.ubatch, self.mtp = hp, ctx, ubatch, mtp
        layout = kv_cache.kv_layout(hp, cache_type_k, cache_type_v, ubatch)
        estimate = tuple(layout.bytes_for(ctx, [il]) for il in range(len(layout.per_layer)))
        # llama-fit-params projects one slot (it has no -kvu): what more slots add is serving.py's formula
        self._swa_mask = serving.swa_mask_bytes(hp, ctx, ubatch, slots)
        if slots > 1:
            layout = kv_cache.kv_layout(hp, cache_type_k, cache_type_v, ubatch, slots=slots)
            more = tuple(layout.bytes_for(ctx, [il]) - e for il, e in enumerate(estimate))
        else:
            more = ()
        mtp_layout = kv_cache.kv_layout(hp, cache_type_k, cache_type_v, ubatch, slots=slots, mtp=True) if mtp else None
        nextn = tuple(mtp_layout.bytes_for(ctx, [il]) for il in range(len(estimate))) if mtp_layout else ()
        same = [p for p in projections if p.same_cache(ctx, cache_type_k, cache_type_v)]
        # Sliding-window caches pad by ubatch: a projection for this very ubatch first.
        kv_proj = next((p for p in same if p.ubatch == ubatch), same[0] if same else None)
        if kv_proj is not None:
            total = sum(estimate)
            # llama.cpp prints whole MiB (rounded down): runq's bytes stand where they agree with that.
            if total // MiB * MiB != kv_proj.context_bytes:
                total = kv_proj.context_bytes
            self._kv = distribute(total, estimate)
            self.kv_source = kv_proj.source
        else:
            self._kv = estimate
            self.kv_source = ESTIMATE
        if any(more):
            self._kv = tuple(a + b for a, b in zip(self._kv, more, strict=True))
            if kv_proj is not None:
                self.kv_source += f" for 1 slot, + runq's formula for {slots} (llama-fit-params has no -kvu)"
        if nextn:  # the NextN layers' cache: what the MTP layout has beyond the trunk's
            trunk = kv_cache.kv_layout(hp, cache_type_k, cache_type_v, ubatch, slots=slots)
            extra = tuple(n - trunk.bytes_for(ctx, [il]) for il, n in enumerate(nextn))
            self._kv = tuple(a + b for a, b in zip(self._kv, extra, strict=True))
        # Compute depends on the placement too: the latest projection (of the flags nearest the final plan) first.
        self._computes = [
            p for p in reversed(projections) if p.same_cache(ctx, cache_type_k, cache_type_v) and p.ubatch == ubatch
        ]
        self._more = f", + runq's formula for {slots} slots" if self._swa_mask else ""  # the windows' bigger mask

    def kv_bytes(self, layers: Sequence[int] | range | None = None) -> int:
        chosen = range(len(self._kv)) if layers is None else layers
        return sum(self._kv[i] for i in chosen if i < len(self._kv))

    def gpu_compute(self, name: str, *, has_output: bool, offload_copy_bytes: int) -> tuple[int, str]:
        """A GPU's compute buffer: llama.cpp's row for it when this machine's build projected it, else the model."""
        twice = 2 if self.mtp and has_output else 1  # the MTP context's buffer, beside the NextN layer's
        for p in self._computes:
            row = p.row(name)
            if row is not None and row.model_bytes > 0:  # a projection that put nothing there says nothing of it
                return twice * row.compute_bytes + self._swa_mask, p.source + self._more
        b = mem.gpu_compute_bytes(
            self.hp, self.ctx, self.ubatch, has_output=has_output, offload_copy_bytes=offload_copy_bytes
        )
        return twice * b + self._swa_mask, ESTIMATE

    def cpu_compute(self, *, with_gpus: bool) -> tuple[int, str]:
        """The CPU's compute buffer: llama.cpp's Host row when the projection had the same devices, else the model."""
        twice = 2 if self.mtp and not with_gpus else 1  # no GPU: the MTP context's buffer is the CPU's too
        for p in self._computes:
            row = p.row(CPU)
            if row is not None and p.has_gpus == with_gpus:
                if with_gpus:  # the CPU's own buffer beside GPUs runs no attention
                    return row.compute_bytes, p.source
                return twice * row.compute_bytes + self._swa_mask, p.source + self._more
        if with_gpus:
            return mem.cpu_compute_bytes(self.hp, self.ubatch), ESTIMATE
        return twice * mem.cpu_only_compute_bytes(self.hp, self.ctx, self.ubatch) + self._swa_mask, ESTIMATE
