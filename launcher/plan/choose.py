"""Choose the quant: plan every candidate, pick the largest that fits, explain the trade-off.

Pure: no I/O. When nothing fits, say what would: the context that fits, or the machine needed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.catalog.sources import ModelSource
from launcher.errors import DoesNotFitError, UsageError
from launcher.machine.spec import Machine
from launcher.model.hparams import HParams
from launcher.model.tensors import TensorSet
from launcher.plan.place import beyond_every_budget, plan
from launcher.plan.types import Plan, Request
from launcher.units import GiB, fmt_bytes

MIN_CTX = 2048


@dataclass(frozen=True)
class Candidate:
    source: ModelSource
    plan: Plan


@dataclass(frozen=True)
class Choice:
    model: str
    chosen: Candidate
    candidates: tuple[Candidate, ...]  # smallest first
    reasons: tuple[str, ...]


def choose(
    model: str,
    machine: Machine,
    sources: list[ModelSource],
    req: Request,
    *,
    pinned: str | None = None,
    ctx_pinned: bool = False,
    pinned_why: str | None = "pinned with --quant",
) -> Choice:
    """Plan every source and choose: the pinned one (`pinned_why` says who pinned it), else the largest that
    fits."""
    for s in sources:
        if req.ctx > s.hparams.n_ctx_train > 0:
            raise UsageError(
                f"--ctx {req.ctx:,} is more than {model} was trained for ({s.hparams.n_ctx_train:,} tokens)",
                hint=f"use --ctx {s.hparams.n_ctx_train} or less",
            )
    cands = tuple(Candidate(s, plan(machine, s.tensors, s.hparams, req)) for s in sources)
    reasons: list[str] = []
    if pinned is not None:
        matching = [c for c in cands if c.source.name == pinned]
        if not matching:
            raise UsageError(f"{model} has no quant {pinned!r}")
        chosen = matching[0]
        if not chosen.plan.fits:
            raise _does_not_fit(model, machine, [chosen], req, ctx_pinned, pin=pinned)
        if pinned_why:
            reasons.append(f"{pinned}: {pinned_why}")
    else:
        fitting = [c for c in cands if c.plan.fits]
        if not fitting:
            raise _does_not_fit(model, machine, list(cands), req, ctx_pinned)
        chosen = max(fitting, key=lambda c: c.source.size_bytes)
        if len(cands) > 1:
            reasons.append(
                f"{chosen.source.name}: the largest of {len(cands)} quants that fits "
                f"({fmt_bytes(chosen.source.size_bytes)}; size stands in for quality)"
            )
    return Choice(model=model, chosen=chosen, candidates=cands, reasons=tuple(reasons))


def max_fitting_ctx(machine: Machine, source: ModelSource, req: Request) -> int | None:
    """The largest context (a multiple of 1024, at least MIN_CTX) at which this source fits, or None."""

    def fits(ctx: int) -> bool:
        return plan(machine, source.tensors, source.hparams, replace(req, ctx=ctx)).fits

    lo, hi = MIN_CTX, req.ctx
    if beyond_every_budget(machine, source.tensors) or not fits(lo):
        return None
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        if mid <= lo:
            break
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _does_not_fit(
    model: str,
    machine: Machine,
    cands: list[Candidate],
    req: Request,
    ctx_pinned: bool,
    pin: str | None = None,
) -> DoesNotFitError:
    smallest = min(cands, key=lambda c: c.source.size_bytes)
    what = f"{model} ({smallest.source.name}) does not fit" if pin or len(cands) == 1 else f"no quant of {model} fits"
    message = f"{what} this machine at {req.ctx:,} tokens of context: " + "; ".join(smallest.plan.problems)
    ctx = max_fitting_ctx(machine, smallest.source, req)
    hints = []
    if ctx is not None:
        hints.append(f"{smallest.source.name} fits with --ctx {ctx}")
    need = _machine_needed(smallest, machine)
    if need:
        hints.append(need)
    return DoesNotFitError(message, hint="; or ".join(hints) if hints else None, detail=cands)


def _machine_needed(c: Candidate, machine: Machine) -> str:
    """The smallest change that would make this plan fit: more RAM with these GPUs."""
    p = c.plan
    short = p.cpu.used_bytes - p.cpu.budget_bytes
    if short > 0:
        total = machine.ram_available_bytes + short
        gpus = ", ".join(fmt_bytes(d.capacity_bytes) for d in p.gpu_devices) or "no GPU"
        return f"{c.source.name} needs about {_round_gib(total)} of available RAM with {gpus}"
    for d in p.gpu_devices:
        if not d.fits:
            return f"{c.source.name} needs a GPU with about {_round_gib(d.used_bytes + d.margin_bytes)} free"
    return ""


def _round_gib(n: int) -> str:
    return f"{-(-n // GiB)} GiB"


@dataclass(frozen=True)
class Replan:
    """The plan after llama.cpp ran out of memory loading the last one: more margin on every GPU."""

    choice: Choice
    request: Request
    margin_added_bytes: int
    layers_moved: int  # expert layers that went from the GPUs to the CPU

    def message(self, attempt: int, attempts: int) -> str:
        return (
            f"Out of memory while loading: re-planning with {self.margin_added_bytes / GiB:.1f} GiB more margin "
            f"per GPU ({self.layers_moved} more expert layer(s) on the CPU), attempt {attempt} of {attempts}"
        )


def replan_after_oom(machine: Machine, choice: Choice, req: Request) -> Replan:
    """The same quant re-planned with one more expert layer's bytes of margin per GPU (llama.cpp's real compute
    buffers or fragmentation took more than predicted). Raises DoesNotFitError when nothing is left to move."""
    source = choice.chosen.source
    biggest = max((source.tensors.expert_bytes(il) for il in source.tensors.expert_layers), default=0)
    new_req = replace(req, margin_extra_bytes=req.margin_extra_bytes + biggest)
    new = choose(choice.model, machine, [source], new_req)
    before = sum(len(v) for v in choice.chosen.plan.expert_layers.values())
    after = sum(len(v) for v in new.chosen.plan.expert_layers.values())
    return Replan(new, new_req, biggest, before - after)


def gpu_for_half_the_experts(tensors: TensorSet, hp: HParams, ctx: int, ubatch: int) -> int:
    """A GPU size with room for the non-expert weights, the KV cache, the compute buffer and about half of the
    expert layers: the demo's pretend GPU, so its plan shows both sides of the placement."""
    from launcher.plan import kv_cache, memory

    kv = kv_cache.kv_layout(hp, ubatch=ubatch).bytes_for(ctx)
    base = tensors.non_expert_bytes() + kv + memory.gpu_compute_bytes(hp, ctx, ubatch)
    half = sum(tensors.expert_bytes(il) for il in tensors.expert_layers[: len(tensors.expert_layers) // 2])
    return memory.CUDA_CONTEXT_BYTES + memory.GPU_MARGIN_BYTES + base + half
